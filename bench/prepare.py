"""Benchmark of data preparation: wall time, CPU time and peak RSS, printed as JSON.

Runs each step as its own process (``python -m producer.prepare`` / ``python -m producer.synthetic``) and
reads that process's resource usage (``os.wait4``), so peak RSS is the step's own:

    python bench/prepare.py                          # ml-latest-small + 25M synthetic ratings
    python bench/prepare.py --synthetic 5000000      # a smaller synthetic set
    python bench/prepare.py --synthetic 0            # ml-latest-small only

CPU time (user + system) is reported next to wall time because the wall time is only meaningful on a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lfm_stream.config import DATASET_DIR_ENV, env_default, env_help

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> dict:
    """Run ``cmd``; returns wall / cpu seconds, peak RSS (MiB) of that process and its last stdout line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves to get its own rusage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "summary": stdout.strip().splitlines()[-1] if stdout.strip() else ""}


def _records(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    return {k: m[k] for k in ("input_ratings", "train_records", "test_records", "users_dropped")}


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_small = Path(env_default(DATASET_DIR_ENV, str(ROOT.parent / "shared" / "data"))) / "ml-latest-small" / "ratings.csv"
    p.add_argument("--ratings", default=str(default_small),
                   help=env_help("real ratings file to prepare", DATASET_DIR_ENV, "../shared/data/ml-latest-small/ratings.csv"))
    p.add_argument("--synthetic", type=int, default=25_000_000, help="synthetic ratings (0 = skip; default 25M)")
    p.add_argument("--workdir", help="scratch directory (default: a temporary one, removed at the end)")
    args = p.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lfm-bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    result: dict = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        if args.ratings and Path(args.ratings).is_file():
            out = work / "small"
            shutil.rmtree(out, ignore_errors=True)
            r = run([py, "-m", "producer.prepare", "--ratings", args.ratings, "--out", str(out)])
            result["real"] = {"ratings": args.ratings, **r, **_records(out)}
        if args.synthetic:
            raw, out = work / "raw", work / "synthetic"
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            gen = run([py, "-m", "producer.synthetic", str(args.synthetic), str(raw)])
            prep = run([py, "-m", "producer.prepare", "--ratings", str(raw / "ratings.csv"), "--out", str(out)])
            result["synthetic"] = {"n": args.synthetic, "generate": gen, "prepare": {**prep, **_records(out)},
                                   "ratings_csv_mib": round((raw / "ratings.csv").stat().st_size / 2**20, 1),
                                   "shards_mib": round(sum(f.stat().st_size for f in out.rglob("*.tfrecord")) / 2**20, 1)}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
