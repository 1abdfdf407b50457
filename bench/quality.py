"""Model quality through the whole stream path on MovieLens (JSON on stdout).

prepare (test split and, for choosing hyperparameters, the validation split) → replay into the broker →
``python -m learner`` to end of stream → metrics against the PS with 95% bootstrap intervals over users:

    python bench/quality.py                               # defaults + --preset seed on ml-latest-small
    python bench/quality.py --runs default --set lr=0.05  # one variant (key=value model overrides)

Prints ``{"runs": {name: {test_auc, warm_auc, prequential_auc, prequential_hr_at_50, hr_at_10, hr_at_50,
recall_at_50, popularity_hr_at_50, events, seconds, ...}}}``; intervals as ``<metric>_ci: [lo, hi]``.
Starts its own redis-server + Tansu (``LocalStack(use_env=False)``) unless --redis-url / --bootstrap are given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_RATINGS = ROOT.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, check=True, text=True, **kw)


def prepare(ratings: Path, out: Path, validation: bool) -> Path:
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "producer.prepare", "--ratings", str(ratings), "--out", str(out), "--force"]
        sh(cmd + (["--validation"] if validation else []), capture_output=True)
    return out


def one_run(name: str, data: Path, redis_url: str, bootstrap: str, learner_args: list[str], work: Path,
            n_boot: int) -> dict:
    """Replay ``data`` into a fresh topic, train one learner to the end, evaluate with intervals."""
    from learner.config import preset
    from learner.evaluate import evaluate
    from learner.input import InputFn, shard_paths
    from learner.metrics import bootstrap_auc_ci, bootstrap_mean_ci
    from ps_redis import ParameterServer
    from ps_redis.activity import ActivityLog

    topic, ns = f"q-{name}-{uuid.uuid4().hex[:6]}", f"q{uuid.uuid4().hex[:8]}"
    sh([sys.executable, "-m", "producer.replay", "--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic,
        "--rate", "0", "--partitions", "1", "--state-file", str(work / f"{topic}.state")], capture_output=True)
    metrics = work / f"{name}.jsonl"
    t0 = time.time()
    sh([sys.executable, "-m", "learner", "--redis-url", redis_url, "--bootstrap", bootstrap, "--topic", topic,
        "--namespace", ns, "--group", f"g-{ns}", "--data-dir", str(data), "--metrics", str(metrics),
        "--idle-timeout", "3", "--train-log-steps", "400",
        # the topic is pre-filled: only the last micro-batch is partial.  The default 200 ms would also flush
        # a partial micro-batch whenever the consumer stalls that long mid-stream, which changes the micro-batch
        # boundaries (and so the figures) from run to run
        "--flush-ms", "2000", *learner_args], stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    end = recs[-1]
    overrides = _model_overrides(learner_args)
    cfg = preset(overrides.pop("preset", "default"), **overrides)
    ps = ParameterServer.get(redis_url, ns, cfg.dim)
    test = InputFn().read_all(shard_paths(data, "test"))
    r = evaluate(ps, ActivityLog(ps), cfg, test, popularity=True)
    out = {k: end.get(k) for k in ("prequential_auc", "prequential_hr_at_50", "hr_samples", "events", "poison")}
    out["seconds"] = end["seconds"]
    out["wall_seconds"] = round(wall, 1)
    out["events_per_s"] = round(end["events"] / max(end["seconds"], 1e-9), 1)
    auc, lo, hi = bootstrap_auc_ci(r.users, r.labels, r.preds, n_boot=n_boot)
    out["test_auc"], out["test_auc_ci"] = round(auc, 4), [round(lo, 4), round(hi, 4)]
    w = r.warm
    auc, lo, hi = bootstrap_auc_ci(r.users[w], r.labels[w], r.preds[w], n_boot=n_boot)
    out["warm_auc"], out["warm_auc_ci"] = round(auc, 4), [round(lo, 4), round(hi, 4)]
    out["coverage"] = round(r.metrics["coverage"], 4)
    for key, vals in r.per_user.items():
        m, lo, hi = bootstrap_mean_ci(vals, n_boot=1000)
        out[key], out[f"{key}_ci"] = round(m, 4), [round(lo, 4), round(hi, 4)]
    out["ranked_users"] = r.metrics.get("ranked_users")
    out["learner_end_line"] = {k: end.get(k) for k in ("test_auc", "warm_auc", "hr_at_10", "hr_at_50", "recall_at_50")}
    out["learner_args"] = learner_args
    return out


def _model_overrides(learner_args: list[str]) -> dict:
    """``--preset`` and model flags of a learner command line, as ``preset()`` keyword arguments."""
    from learner.__main__ import build_parser

    a = build_parser().parse_args(learner_args)
    out = {k[2:]: v for k, v in vars(a).items() if k.startswith("m_") and v is not None}
    out["preset"] = a.preset
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", type=Path, default=DEFAULT_RATINGS, help="MovieLens ratings file")
    p.add_argument("--runs", default="validation,default,seed",
                   help="comma list of: validation (defaults on the validation split), default, seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model override for every run except seed (e.g. --set lr=0.05)")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag (repeatable)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="prepared data + metrics (default: a temp dir)")
    p.add_argument("--bootstrap-samples", type=int, default=300)
    args = p.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lfm-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = []
    for kv in args.set:
        k, _, v = kv.partition("=")
        extra += [f"--{k.replace('_', '-')}", v] if v not in ("true", "false") else \
            [f"--{'' if v == 'true' else 'no-'}{k.replace('_', '-')}"]
    stack = None
    if not (args.redis_url and args.bootstrap):
        from lfm_stream.stack import LocalStack

        stack = LocalStack(work / "stack", use_env=False).start()
    redis_url = args.redis_url or stack.redis_url
    bootstrap = args.bootstrap or stack.bootstrap
    result = {"ratings": str(args.ratings), "runs": {}}
    try:
        for run in args.runs.split(","):
            validation = run == "validation"
            data = prepare(args.ratings, work / ("val" if validation else "test"), validation)
            la = (["--preset", "seed"] if run == "seed" else extra) + args.learner_arg
            t = time.time()
            result["runs"][run] = one_run(run, data, redis_url, bootstrap, la, work, args.bootstrap_samples)
            print(f"{run}: {json.dumps(result['runs'][run])} ({time.time() - t:.0f}s)", file=sys.stderr, flush=True)
    finally:
        if stack is not None:
            stack.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
