"""producer.prepare leaves nothing behind when stopped by a signal, and refuses a preparation without train records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.prepare import main
from tests._prepare_util import manifest

ROOT = Path(__file__).resolve().parents[1]


def _run_until_tmp_dir(cmd: list[str], parent: Path, prefix: str) -> subprocess.Popen:
    """Start ``cmd`` and return once it has created ``parent/<prefix>*`` (its temporary directory)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(prefix) for p in parent.iterdir()):
        assert proc.poll() is None, f"prepare ended before its temporary directory appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temporary directory after 120 s"
        time.sleep(0.001)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_shards_removes_the_temporary_directory(ml_small_ratings, tmp_path, sig):
    """Stopped while its shards are written (many small ones, so that takes a while), prepare removes its
    temporary directory, exits 128 + signal and leaves the previous output untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    cmd = [sys.executable, "-m", "producer.prepare", "--ratings", str(ml_small_ratings), "--out", str(out),
           "--force", "--shard-size", "500"]
    proc = _run_until_tmp_dir(cmd, tmp_path, ".out.tmp-")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}; temporary files removed" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]


def test_a_signal_while_generating_synthetic_data_removes_it(tmp_path):
    """The synthetic generator's directory (OUT's sibling until the shards are written) goes too."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "producer.prepare", "--synthetic", "3000000", "--out", str(out)]
    proc = _run_until_tmp_dir(cmd, tmp_path, ".out.synthetic-")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lines,extra", [
    (["1,2,4.0,10"], []),  # one rating: it is its user's test record
    (["1,2,4.0,10", "1,3,3.0,11", "2,2,5.0,12"], []),  # every user has at most test_per_user ratings
    (["1,2,4.0,10", "1,3,3.0,11", "1,4,5.0,12"], ["--max-user-ratings", "2"]),  # the only user is dropped
    (["1,2,4.0,10", "1,3,3.0,11", "1,4,5.0,12", "1,5,5.0,13"], ["--validation"]),  # held out twice
])
def test_no_train_records_is_an_error_naming_the_file(tmp_path, capsys, lines, extra):
    src = tmp_path / "ratings.csv"
    src.write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    assert main(["--ratings", str(src), "--out", str(tmp_path / "out"), *extra]) == 1
    err = capsys.readouterr().err
    assert f"error: {src}: no train records left: ratings {len(lines)}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]


def test_one_train_record_is_enough(tmp_path):
    src = tmp_path / "ratings.csv"
    src.write_text("userId,movieId,rating,timestamp\n1,2,4.0,10\n1,3,3.0,11\n1,4,5.0,12\n")
    assert main(["--ratings", str(src), "--out", str(tmp_path / "out")]) == 0
    assert manifest(tmp_path / "out")["train_records"] == 1
