"""``--version`` on every command: each console script of pyproject.toml and each ``python -m`` module prints the
one version of the package (``lfm_stream.version``, from the installed distribution's metadata)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from lfm_stream.version import version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lfm_stream", "lfm_local", "producer", "learner", "ps_redis", "recall_api")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _main_modules() -> list[str]:
    """Every module of the packages that runs as ``python -m`` (has a ``__main__`` guard)."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            if re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M):
                found.append(f"{pkg}.{path.stem}")
    return found


ENTRY_POINTS = sorted({target.split(":")[0] for target in SCRIPTS.values()} | set(_main_modules()))


def test_the_version_is_the_distributions():
    from importlib import metadata

    assert version() == metadata.version("lfm-stream")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version())


def test_every_entry_point_is_found():
    assert {"learner.__main__", "recall_api.__main__", "producer.replay", "learner.plot", "lfm_local.cli"} <= set(
        ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_version_flag(module, capsys):
    main = importlib.import_module(module).main
    try:
        code = main(["--version"])
    except SystemExit as exc:  # argparse's version action exits
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out.strip()
    assert out.endswith(f" {version()}"), f"{module} --version printed {out!r}"
