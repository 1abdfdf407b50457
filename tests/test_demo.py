"""The one-command demo, for real: local redis-server + Tansu, prepare → replay → two learners → plot → recall API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_once_on_a_slice(ml_small_ratings, tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "lfm_local.cli", "demo", "--once", "--port", "0", "--max-events", "20000",
         "--ratings", str(ml_small_ratings), "--workdir", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(Path.home()), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((work / "report.json").read_text())
    assert report["events"] == 20000
    default, seed = report["models"]["default"], report["models"]["seed"]
    assert default["events"] == seed["events"] == 20000
    # the default model learns; the seed preset stays near chance
    assert default["prequential_auc"] > 0.6 and default["warm_auc"] > 0.6
    assert abs(seed["test_auc"] - 0.5) < 0.1
    assert default["hr_at_50"] > seed["hr_at_50"]
    # recall examples from the running API, with titles
    assert report["u2i"]["items"] and report["u2i"]["source"] == "model"
    assert all(it["title"] for it in report["u2i"]["items"])
    assert report["i2i"]["items"] and report["i2i"]["movie_id"] not in [it["movie_id"] for it in report["i2i"]["items"]]
    assert Path(report["plot"]).stat().st_size > 10_000
    assert "FCALL lfm_movie 0 lfm-demo" in report["redis_cli"]
    # the human-readable report and the live AUC log lines
    assert "test AUC" in proc.stdout and "u2i for user" in proc.stdout and "redis-cli" in proc.stdout
    assert "train auc=" in proc.stderr


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment with no MovieLens anywhere: no ``$LFM_DATA``, an empty download cache, and a download
    server that refuses connections (a loopback port nobody listens on)."""
    from lfm_local.stack import free_port

    return {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(Path.home()), "TF_CPP_MIN_LOG_LEVEL": "2",
            "LFM_CACHE_DIR": str(tmp_path / "cache"), "LFM_MOVIELENS_URL": f"http://127.0.0.1:{free_port()}"}


def _demo(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lfm_local.cli", "demo", "--once", "--port", "0", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_data_problems_are_reported_before_any_server_starts(tmp_path):
    work = tmp_path / "demo"
    missing = _demo(["--ratings", str(tmp_path / "nope" / "ratings.csv"), "--workdir", str(work)], _offline_env(tmp_path))
    assert missing.returncode == 1
    assert f"--ratings {tmp_path / 'nope' / 'ratings.csv'}: no such file" in missing.stderr
    # a download asked for by name that fails: what to do instead, and no substitute data
    offline = _demo(["--download", "ml-latest-small", "--workdir", str(work)], _offline_env(tmp_path))
    assert offline.returncode == 1, offline.stderr[-3000:]
    assert "Connection refused" in offline.stderr
    assert "could not download MovieLens ml-latest-small" in offline.stderr
    assert "./lfm demo --ratings PATH/ratings.csv" in offline.stderr and "LFM_DATA=DIR ./lfm demo" in offline.stderr
    assert "the download of ml-latest-small failed" in offline.stderr
    for proc in (missing, offline):
        assert "[demo] Redis " not in proc.stderr and "SYNTHETIC" not in proc.stderr
    assert not (work / "run").exists()  # the stack's directory: no server was started


def test_offline_first_run_completes_on_labelled_synthetic_data(tmp_path):
    work = tmp_path / "demo"
    proc = _demo(["--max-events", "3000", "--no-seed", "--workdir", str(work)], _offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = proc.stderr
    hint = err.index("could not download MovieLens ml-latest-small")
    assert hint < err.index("continuing with SYNTHETIC data") < err.index("[demo] Redis ")  # data before servers
    assert "./lfm demo --ratings PATH/ratings.csv" in err
    report = json.loads((work / "report.json").read_text())
    assert report["data"]["synthetic"] is True and report["data"]["label"].startswith("SYNTHETIC data (100,000")
    assert report["events"] == 3000 and report["models"]["default"]["events"] == 3000
    assert report["u2i"]["items"] and all(it["title"].startswith("Synthetic Movie") for it in report["u2i"]["items"])
    assert "LFM Stream demo — 3000 events of SYNTHETIC data" in proc.stdout
    manifest = json.loads((Path(report["data"]["prepared"]) / "manifest.json").read_text())
    assert manifest["synthetic"]["n"] == 100_000 and manifest["synthetic"]["planted"] is True
