"""The fast protocol (recall_api.protocol, a subclass of uvicorn's private ``HttpToolsProtocol``) runs only on the
uvicorn releases it is tested with: the installed one must be one of them, and pyproject.toml pins the same range.

Its behaviour is tested over real HTTP in tests/test_recall_api.py (same bytes as the FastAPI routes, pipelining)
and tests/test_recall_dashboard.py.  When a new uvicorn fails here, run those tests on it, then widen
``TESTED_UVICORN`` and the pin together.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import uvicorn

from recall_api.protocol import TESTED_UVICORN, unsupported_uvicorn, uvicorn_pin

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_uvicorn_is_a_tested_release():
    assert unsupported_uvicorn() is None, unsupported_uvicorn()
    assert unsupported_uvicorn(uvicorn.__version__) is None


def test_pyproject_pins_uvicorn_to_the_tested_range():
    assert uvicorn_pin() == ">=0.29,<0.56" and TESTED_UVICORN == ((0, 29), (0, 56))
    recall = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["recall"]
    assert f"uvicorn{uvicorn_pin()}" in recall, recall


def test_other_releases_are_served_without_the_fast_protocol():
    for ok in ("0.29.0", "0.40.0", "0.55.0", "0.55.9"):
        assert unsupported_uvicorn(ok) is None, ok
    for other in ("0.28.1", "0.56.0", "0.60.2", "1.0.0"):
        assert unsupported_uvicorn(other) == f"uvicorn {other} is not in the tested range >=0.29,<0.56"
