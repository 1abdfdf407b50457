"""Recall quality of the u2i service path: HitRate@10/@50 and Recall@50 of the test positives, vs popularity.

    python bench/recall.py --train                        # prepare ml-latest-small, replay, learn, evaluate
    python bench/recall.py --redis-url URL --namespace lfm --data-dir DIR   # a model trained elsewhere

For every test user with a positive test record (``rating >= pos_threshold``), the top k come from
:meth:`recall_api.store.RecallStore.u2i` — the very function behind ``GET /u2i/{user}`` (vectors from the
refreshed in-memory matrix, the user row and rated movies from Redis, rated = train items excluded,
popularity fallback for users without a vector) — and, in the same run, from
:meth:`~recall_api.store.RecallStore.popularity` with the same exclusions.

Scored as ``python -m recall_api`` scores by default (``q·v + b`` plus the learner's time-aware popularity
prior, :mod:`recall_api.prior`); ``metrics_plain_score`` has the plain ``q·v + b`` ranking for comparison
(``--no-score-prior``: the plain score only).

* HR@k: share of those users with at least one positive test movie in the top k;
* Recall@50: mean over those users of (positive test movies in the top 50) / (positive test movies).

``--train`` starts a local redis-server + Tansu (or uses REDIS_URL / KAFKA_BOOTSTRAP), prepares the data
(``--ratings``, default ml-latest-small) into ``--data-dir`` if missing, replays the train shards as fast as
possible and runs one learner (``python -m learner``, default preset) until it has seen every train event.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_stream.stack import LocalStack  # noqa: E402

DEFAULT_RATINGS = ROOT.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def prepare(ratings: Path, out: Path, extra: tuple[str, ...] = ()) -> None:
    """``python -m producer.prepare --ratings R --out OUT --if-missing``."""
    subprocess.run([sys.executable, "-m", "producer.prepare", "--ratings", str(ratings), "--out", str(out),
                    "--if-missing", *extra], cwd=ROOT, env=child_env(), check=True, stdout=subprocess.DEVNULL)


def start_learner(data_dir: Path, redis_url: str, bootstrap: str, namespace: str, topic: str, log_path: Path,
                  max_events: int = 0, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """One learner subprocess on ``topic`` writing ``namespace`` (short session timeout: Tansu joins fast)."""
    argv = [sys.executable, "-m", "learner", "--redis-url", redis_url, "--bootstrap", bootstrap, "--topic", topic,
            "--namespace", namespace, "--group", f"g-{namespace}", "--session-timeout-ms", "3000",
            "--heartbeat-interval-ms", "500", "--idle-timeout", "60", "--data-dir", str(data_dir), *extra]
    if max_events:
        argv += ["--max-events", str(max_events)]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def replay(data_dir: Path, bootstrap: str, topic: str, rate: float, state: Path, log_path: Path,
           extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python -m producer.replay`` subprocess (rate 0 = as fast as possible)."""
    argv = [sys.executable, "-m", "producer.replay", "--data-dir", str(data_dir), "--bootstrap", bootstrap,
            "--topic", topic, "--rate", str(rate), "--state-file", str(state), *extra]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def train(data_dir: Path, redis_url: str, bootstrap: str, run_dir: Path, learner_args: tuple[str, ...] = ()
          ) -> dict:
    """Replay every train event once and learn them; returns namespace, topic and timings."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    namespace, topic = f"rb{uuid.uuid4().hex[:8]}", f"ratings-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    learner = start_learner(data_dir, redis_url, bootstrap, namespace, topic, run_dir / "learner.log",
                            manifest["train_records"], learner_args)
    rp = replay(data_dir, bootstrap, topic, 0, run_dir / "replay-state.json", run_dir / "replay.log")
    if rp.wait(600) != 0:
        learner.kill()
        raise RuntimeError(f"replay failed; see {run_dir / 'replay.log'}")
    if learner.wait(1800) != 0:
        raise RuntimeError(f"learner failed; see {run_dir / 'learner.log'}")
    return {"namespace": namespace, "topic": topic, "train_records": manifest["train_records"],
            "train_s": round(time.perf_counter() - t0, 1), "learner_log": str(run_dir / "learner.log")}


def read_test(data_dir: Path) -> dict[str, np.ndarray]:
    """Columns of the test shards listed in the manifest (TensorFlow parses them)."""
    import tensorflow as tf

    from lfm_stream.schema import feature_spec

    manifest = json.loads((data_dir / "manifest.json").read_text())
    files = [str(data_dir / s["file"]) for s in manifest["test_shards"]]
    parts = [{k: v.numpy() for k, v in tf.io.parse_example(b, feature_spec()).items()}
             for b in tf.data.TFRecordDataset(files).batch(65536)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate(store, test: dict[str, np.ndarray], ks: tuple[int, ...] = (10, 50)) -> dict:
    """HR@k and Recall@max(k) of the service's u2i and of popularity over the test positives."""
    from recall_api.store import SOURCE_POPULARITY, NotFound

    kmax = max(ks)
    pos = test["label"] > 0.5
    positives: dict[int, set[int]] = {}
    for u, m in zip(test["raw_user_id"][pos].tolist(), test["raw_movie_id"][pos].tolist()):
        positives.setdefault(u, set()).add(m)
    hits = {name: {k: [] for k in ks} for name in ("model", "popularity")}
    recall = {"model": [], "popularity": []}
    fallback = unknown = 0
    t0 = time.perf_counter()
    for u, want in positives.items():
        try:
            ans = store.u2i(u, kmax)
        except NotFound:
            unknown += 1
            ans = None
        _, seen, _ = store.user_context(u)
        pop = store.popularity(kmax, seen)
        if ans is None:
            ans = pop
        fallback += ans.source == SOURCE_POPULARITY
        for name, a in (("model", ans), ("popularity", pop)):
            for k in ks:
                hits[name][k].append(bool(want & set(a.movies[:k])))
            recall[name].append(len(want & set(a.movies[:kmax])) / len(want))
    elapsed = time.perf_counter() - t0
    out: dict = {"users": len(positives), "fallback_users": fallback, "unknown_users": unknown,
                 "items_ranked": len(store.matrix), "ms_per_user": round(1000 * elapsed / max(1, len(positives)), 3)}
    for name in ("model", "popularity"):
        for k in ks:
            out[f"{name}_hr_at_{k}"] = round(float(np.mean(hits[name][k])), 4)
        out[f"{name}_recall_at_{kmax}"] = round(float(np.mean(recall[name])), 4)
    n = len(positives)
    out["hr50_ci95_halfwidth"] = round(1.96 * float(np.sqrt(0.25 / max(n, 1))), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/recall.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--train", action="store_true", help="train a model first (local stack unless env says otherwise)")
    p.add_argument("--ratings", default=str(DEFAULT_RATINGS), help="ratings file to prepare with --train")
    p.add_argument("--data-dir", default=None, help="prepared data directory (default with --train: a cache "
                                                    "under /tmp)")
    p.add_argument("--redis-url", default=None, help="PS of a trained model (without --train)")
    p.add_argument("--namespace", default=None, help="namespace of a trained model (without --train)")
    p.add_argument("--learner-arg", action="append", default=[], help="extra learner flag (repeatable), e.g. "
                                                                         "--learner-arg=--dim=32")
    p.add_argument("--score-prior", action=argparse.BooleanOptionalAction, default=True,
                   help="score as the service does by default: q·v + the learner's time-aware popularity prior "
                        "(recall_api.prior); the plain q·v + b score is reported too, as metrics_plain_score")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    from ps_redis import ParameterServer
    from recall_api import Catalog, RecallStore, StoreConfig

    result: dict = {"bench": "recall_quality", "note": "measured on a shared 2-core machine"}
    run_dir = Path(tempfile.mkdtemp(prefix="bench-recall-"))
    stack = None
    try:
        if args.train:
            data_dir = Path(args.data_dir or "/tmp/lfm-bench-data/" + Path(args.ratings).parent.name)
            prepare(Path(args.ratings), data_dir)
            stack = LocalStack(run_dir, use_env=True).start()
            redis_url = stack.redis_url
            result["training"] = train(data_dir, redis_url, stack.bootstrap, run_dir, tuple(args.learner_arg))
            namespace = result["training"]["namespace"]
        else:
            if not (args.redis_url and args.namespace and args.data_dir):
                p.error("give --train, or --redis-url, --namespace and --data-dir of a trained model")
            data_dir, redis_url, namespace = Path(args.data_dir), args.redis_url, args.namespace
        ps = ParameterServer.get(redis_url, namespace, dim=None)
        catalog = Catalog.load(data_dir)
        test = read_test(data_dir)
        for key, prior in (("metrics", args.score_prior), ("metrics_plain_score", False)):
            if key != "metrics" and not args.score_prior:
                continue  # the main figures are already the plain score
            store = RecallStore(StoreConfig(redis_url, namespace, score_prior=prior), catalog)
            if not store.refresh_once():
                raise RuntimeError(f"cannot load the model: {store.stats.last_error}")
            result[key] = {"score": "q·v + b + popularity prior" if prior else "q·v + b", **evaluate(store, test)}
        result["model"] = {"namespace": namespace, "dim": ps.dim, "items": ps.count("item"),
                           "users": ps.count("user"), "data_dir": str(data_dir)}
        if args.train:  # the learner's own end-of-run test line, for a cross-check of the metric definitions
            lines = [ln for ln in Path(result["training"]["learner_log"]).read_text().splitlines() if "] test " in ln]
            if lines:
                result["learner_reported"] = {kv.split("=")[0]: float(kv.split("=")[1]) for kv in lines[-1].split()
                                              if "=" in kv and kv.split("=")[0].startswith(("hr_at", "recall_at"))}
    finally:
        if stack is not None:
            stack.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
