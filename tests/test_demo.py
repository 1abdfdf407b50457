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
        [sys.executable, "-m", "lfm_stream.cli", "demo", "--once", "--port", "0", "--max-events", "20000",
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
