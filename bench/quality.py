"""Model and recall quality through the whole stream path (JSON on stdout).

For each run: prepare the data → replay it into the broker → ``python -m learner`` and ``python -m learner.items``
to the end of the stream → the learner's test metrics (AUC with 95% bootstrap intervals over users) and the
served recall of ``bench/recall.py`` (the recall service's own code: served HR@10 / HR@50 / Recall@50, the channel
ablations, popularity, i2i next-item), all against the run's held-out ratings:

    python bench/quality.py --runs val,cut50,cut75,half0,half1    # validation folds (choose settings here)
    python bench/quality.py --runs test,seed                      # the test split, read once at the end
    python bench/quality.py --runs val --set lr=0.05              # a variant (key=value model overrides)

Runs: the folds of ``bench/folds.py`` (cut from the train split only), ``test`` (the seed protocol's test split)
and ``seed`` (the test split with ``--preset seed``).  Prints ``{"runs": {name: {test_auc, test_auc_ci, warm_auc,
prequential_auc, served_hr_at_10, served_hr_at_50, served_recall_at_50 (each with _ci), served_ann_* (the same
through the Faiss path: each channel's candidates re-ranked exactly), popularity_hr_at_50, ablations: {...},
i2i: {...}, ...}}, "spread": {...}}``.
Starts its own redis-server + Tansu (``LocalStack(use_env=False)``) unless --redis-url / --bootstrap are given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import folds  # noqa: E402
import recall  # noqa: E402

DEFAULT_RATINGS = folds.DEFAULT_RATINGS


def prepare(ratings: Path, out: Path) -> Path:
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "producer.prepare", "--ratings", str(ratings), "--out", str(out),
                        "--force"], cwd=ROOT, env=recall.child_env(), check=True, capture_output=True)
    return out


def data_for(run: str, ratings: Path, work: Path) -> Path:
    """The prepared data of a run: a fold of the train split, or the test split itself."""
    if run in ("test", "seed"):
        return prepare(ratings, work / "test")
    src = work / "folds" / run / "ratings.csv"
    if not src.exists():
        folds.write_ratings(folds.fold(None if run == "synthetic" else folds.train_split(ratings), run), src)
    return prepare(src, work / "folds" / run / "data")


def parse_grid(text: str) -> list[dict]:
    """``"a=1,2;b=0.1,0.2"`` → every combination as a dict of contract changes (floats)."""
    import itertools

    if not text:
        return []
    axes = []
    for part in text.split(";"):
        key, _, values = part.partition("=")
        axes.append([(key.strip(), float(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def one_run(name: str, data: Path, redis_url: str, bootstrap: str, learner_args: list[str], items_args: list[str],
            work: Path, n_boot: int, grid: list[dict] = ()) -> dict:
    """Train the learner and the item channel on ``data``'s stream, then evaluate both with intervals."""
    from learner.config import preset
    from learner.evaluate import evaluate
    from learner.input import InputFn, shard_paths
    from learner.metrics import bootstrap_auc_ci
    from ps_redis import ParameterServer
    from recall_api import Catalog, RecallStore, StoreConfig

    run_dir = work / f"run-{name}-{int(time.time())}"
    run_dir.mkdir(parents=True)
    t0 = time.time()
    trained = recall.train(data, redis_url, bootstrap, run_dir,
                           # the topic is pre-filled: only the last micro-batch is partial.  The default 200 ms
                           # would also flush one whenever the consumer stalls that long mid-stream, which moves
                           # the micro-batch boundaries (and so the figures) from run to run
                           ("--flush-ms", "2000", "--metrics", str(run_dir / "metrics.jsonl"), *learner_args),
                           tuple(items_args))
    end = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    overrides = _model_overrides(learner_args)
    cfg = preset(overrides.pop("preset", "default"), **overrides)
    ns = trained["namespace"]
    ps = ParameterServer.get(redis_url, ns, cfg.dim)
    test = InputFn().read_all(shard_paths(data, "test"))
    r = evaluate(ps, None, cfg, test)
    out = {k: end.get(k) for k in ("prequential_auc", "events", "poison")}
    out["wall_seconds"] = round(time.time() - t0, 1)
    auc, lo, hi = bootstrap_auc_ci(r.users, r.labels, r.preds, n_boot=n_boot)
    out["test_auc"], out["test_auc_ci"] = round(auc, 4), [round(lo, 4), round(hi, 4)]
    w = r.warm
    auc, lo, hi = bootstrap_auc_ci(r.users[w], r.labels[w], r.preds[w], n_boot=n_boot)
    out["warm_auc"], out["warm_auc_ci"] = round(auc, 4), [round(lo, 4), round(hi, 4)]
    out["coverage"] = round(r.metrics["coverage"], 4)
    store = RecallStore(StoreConfig(redis_url, ns), Catalog.load(data))
    if not store.refresh_once():
        raise RuntimeError(f"cannot load the model: {store.stats.last_error}")
    served = recall.evaluate(store, test)
    for key in ("hr_at_10", "hr_at_50", "recall_at_50"):
        out[f"served_{key}"] = served["served"][key]["mean"]
        out[f"served_{key}_ci"] = served["served"][key]["ci95"]
        out[f"popularity_{key}"] = served["popularity"][key]["mean"]
    out["ablations"] = {name: {k: v["mean"] for k, v in served[name].items()} for name in recall.ABLATIONS}
    out["i2i"] = {name[4:]: served[name]["next_item_hr_at_50"] for name in served if name.startswith("i2i_")}
    ann = RecallStore(StoreConfig(redis_url, ns, faiss=True), Catalog.load(data))
    if not ann.refresh_once():
        raise RuntimeError(f"cannot load the model: {ann.stats.last_error}")
    got = recall.evaluate(ann, test, ablations={"served": {}}, baselines=False)["served"]
    for key in ("hr_at_10", "hr_at_50", "recall_at_50"):
        out[f"served_ann_{key}"] = got[key]["mean"]
    if grid:
        out["grid"] = evaluate_grid(store, test, grid)
    out["ranked_users"] = served["users"]
    out["contract"] = served["contract"]
    out["learner_args"] = learner_args
    out["items_args"] = items_args
    return out


def evaluate_grid(store, test: dict, grid: list[dict]) -> dict:
    """Each grid variant's served HR / Recall (means) on the run's state.  Most contract fields only change the
    ranking; ``neighbors`` (neighbours served per movie) changes what the item channel reads from Redis, so each
    distinct value is served by a rebuild under that contract (written where the learner writes it, the run's
    contract restored afterwards)."""
    from lfm_stream.scoring import contract_key

    served = store.channels.contract
    key = contract_key(store.ps.namespace)
    original = store.ps.redis.get(key)

    def serve(raw: str | bytes) -> None:
        """``raw`` as the namespace's contract, and the channels rebuilt from it."""
        store.ps.redis.set(key, raw)
        snap = store.matrix.snapshot()
        store.channels.build(store.ps, snap.raw_pos, snap.n)

    def neighbors_of(change: dict) -> int:
        return int(change.get("neighbors", served.neighbors))

    out = {}
    try:
        for neighbors in sorted({neighbors_of(change) for change in grid}):
            serve(served.replace(neighbors=neighbors).to_json())
            variants = {json.dumps(change, sort_keys=True): {k: v for k, v in change.items() if k != "neighbors"}
                        for change in grid if neighbors_of(change) == neighbors}
            got = recall.evaluate(store, test, ablations=variants, n_boot=50, baselines=False)
            out.update({name: {m: v["mean"] for m, v in got[name].items()} for name in variants})
    finally:
        serve(original)  # a run's learner always wrote one
    return out


def _model_overrides(learner_args: list[str]) -> dict:
    """``--preset`` and model flags of a learner command line, as ``preset()`` keyword arguments."""
    from learner.__main__ import build_parser

    a, _ = build_parser().parse_known_args(learner_args)
    out = {k[2:]: v for k, v in vars(a).items() if k.startswith("m_") and v is not None}
    out["preset"] = a.preset
    return out


def spread(runs: dict, keys=("test_auc", "served_hr_at_10", "served_hr_at_50", "served_recall_at_50",
                             "popularity_hr_at_50")) -> dict:
    """Mean, min and max of each metric over the validation folds among ``runs``."""
    fold_runs = [r for name, r in runs.items() if name in folds.FOLDS]
    out = {}
    for key in keys:
        vals = [r[key] for r in fold_runs if r.get(key) is not None]
        if vals:
            out[key] = {"mean": round(float(np.mean(vals)), 4), "min": round(min(vals), 4),
                        "max": round(max(vals), 4), "folds": len(vals)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/quality.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", type=Path, default=DEFAULT_RATINGS, help="MovieLens ratings file")
    p.add_argument("--runs", default=",".join(folds.FOLDS),
                   help=f"comma list of: {', '.join(folds.ALL_FOLDS)} (validation folds), test, seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model override for every run except seed (e.g. --set lr=0.05)")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag (repeatable)")
    p.add_argument("--items-arg", action="append", default=[], help="extra learner.items flag (repeatable)")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="prepared data + metrics (default: a temp dir)")
    p.add_argument("--bootstrap-samples", type=int, default=300)
    p.add_argument("--grid", default="", help="serving-time contract variants re-ranked on each run's state, e.g. "
                                             "'covisit_eps=0.003,0.01;popularity_weight=0.1,0.2' (every combination; "
                                             "neighbors up to neighbor_hold: the item channel is re-read for each)")
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
        from lfm_local.stack import LocalStack

        stack = LocalStack(work / "stack", use_env=False).start()
    redis_url = args.redis_url or stack.redis_url
    bootstrap = args.bootstrap or stack.bootstrap
    result = {"ratings": str(args.ratings), "runs": {}}
    try:
        for run in args.runs.split(","):
            data = data_for(run, args.ratings, work)
            la = (["--preset", "seed"] if run == "seed" else extra) + args.learner_arg
            t = time.time()
            result["runs"][run] = one_run(run, data, redis_url, bootstrap, la, args.items_arg, work,
                                          args.bootstrap_samples, parse_grid(args.grid))
            print(f"{run}: {json.dumps(result['runs'][run])} ({time.time() - t:.0f}s)", file=sys.stderr, flush=True)
        result["spread"] = spread(result["runs"])
    finally:
        if stack is not None:
            stack.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
