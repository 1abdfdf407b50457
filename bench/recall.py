"""Recall quality of the served path: u2i HR@10/@50 and Recall@50 of the test positives, channel ablations, i2i.

    python bench/recall.py --train                        # prepare ml-latest-small, replay, learn, evaluate
    python bench/recall.py --redis-url URL --namespace lfm --data-dir DIR   # a model trained elsewhere

For every test user with a positive test record (``rating >= pos_threshold``), the top k come from
:meth:`recall_api.store.RecallStore.u2i` — the very function behind ``GET /u2i/{user}`` (the learner's score
contract from Redis, vectors from the refreshed in-memory matrix, the item channel and stream popularity of
``python -m learner.items``, the user's row, rated and recent movies from Redis; rated = train items excluded).

* ``served``: the contract as the learner wrote it; the ablations re-rank with one or all but one channel
  switched off in the same store (``lfm_only``, ``covisit_only``, ``popularity_only``, ``minus_lfm``,
  ``minus_covisit``, ``minus_popularity``; an "only" channel gets weight 1);
* HR@k: share of those users with at least one positive test movie in the top k;
* Recall@50: mean over those users of (positive test movies in the top 50) / (positive test movies);
* i2i next-item: share of those users whose positive test movie is among the 50 neighbours
  (``GET /i2i/{movie}?source=…``) of their last train movie, per i2i source;
* 95% intervals: percentile bootstrap over users.

``--train`` starts a local redis-server + Tansu (or uses REDIS_URL / KAFKA_BOOTSTRAP), prepares the data
(``--ratings``, default ml-latest-small) into ``--data-dir`` if missing, replays the train shards as fast as
possible and runs the learner (``python -m learner``) and the item channel (``python -m learner.items``) until
both have seen every train event.
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

from lfm_local.stack import LocalStack  # noqa: E402

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


def start_items(redis_url: str, bootstrap: str, namespace: str, topic: str, log_path: Path, max_events: int = 0,
                extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """The item-channel worker on ``topic`` writing ``namespace`` (its own consumer group)."""
    argv = [sys.executable, "-m", "learner.items", "--redis-url", redis_url, "--bootstrap", bootstrap,
            "--topic", topic, "--namespace", namespace, "--group", f"items-{namespace}",
            "--session-timeout-ms", "3000", "--idle-timeout", "60", *extra]
    if max_events:
        argv += ["--max-events", str(max_events)]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def replay(data_dir: Path, bootstrap: str, topic: str, rate: float, state: Path, log_path: Path,
           extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``python -m producer.replay`` subprocess (rate 0 = as fast as possible)."""
    argv = [sys.executable, "-m", "producer.replay", "--data-dir", str(data_dir), "--bootstrap", bootstrap,
            "--topic", topic, "--rate", str(rate), "--state-file", str(state),
            # one partition: the learner sees the stream in its global time order, so runs repeat exactly
            "--partitions", "1", *extra]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` (kept if it exists)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def train(data_dir: Path, redis_url: str, bootstrap: str, run_dir: Path, learner_args: tuple[str, ...] = (),
          items_args: tuple[str, ...] = ()) -> dict:
    """Replay every train event once; the learner and the item channel consume all of them."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    namespace, topic = f"rb{uuid.uuid4().hex[:8]}", f"ratings-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    n = manifest["train_records"]
    create_topic(bootstrap, topic, 1)  # before the consumers subscribe (a broker may auto-create it otherwise)
    learner = start_learner(data_dir, redis_url, bootstrap, namespace, topic, run_dir / "learner.log", n,
                            learner_args)
    items = start_items(redis_url, bootstrap, namespace, topic, run_dir / "items.log", n, items_args)
    rp = replay(data_dir, bootstrap, topic, 0, run_dir / "replay-state.json", run_dir / "replay.log")
    if rp.wait(600) != 0:
        learner.kill()
        items.kill()
        raise RuntimeError(f"replay failed; see {run_dir / 'replay.log'}")
    if learner.wait(1800) != 0:
        items.kill()
        raise RuntimeError(f"learner failed; see {run_dir / 'learner.log'}")
    if items.wait(1800) != 0:
        raise RuntimeError(f"item channel failed; see {run_dir / 'items.log'}")
    return {"namespace": namespace, "topic": topic, "train_records": n,
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


#: channel weights of each ablation (None keeps the served contract's weight)
ABLATIONS = {
    "served": {},
    "lfm_only": {"lfm_weight": 1.0, "covisit_weight": 0.0, "popularity_weight": 0.0},
    "covisit_only": {"lfm_weight": 0.0, "covisit_weight": 1.0, "popularity_weight": 0.0},
    "popularity_only": {"lfm_weight": 0.0, "covisit_weight": 0.0, "popularity_weight": 1.0},
    "minus_lfm": {"lfm_weight": 0.0},
    "minus_covisit": {"covisit_weight": 0.0},
    "minus_popularity": {"popularity_weight": 0.0},
}


def positives_of(test: dict[str, np.ndarray]) -> dict[int, set[int]]:
    """raw user → raw movies of their positive test records."""
    pos = test["label"] > 0.5
    out: dict[int, set[int]] = {}
    for u, m in zip(test["raw_user_id"][pos].tolist(), test["raw_movie_id"][pos].tolist()):
        out.setdefault(u, set()).add(m)
    return out


def _ci(values: list[float], n_boot: int) -> dict:
    from learner.metrics import bootstrap_mean_ci

    m, lo, hi = bootstrap_mean_ci(np.asarray(values, np.float64), n_boot=n_boot)
    return {"mean": round(m, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def evaluate(store, test: dict[str, np.ndarray], ks: tuple[int, ...] = (10, 50), ablations: dict | None = None,
             n_boot: int = 1000, baselines: bool = True) -> dict:
    """Served u2i, its ablations, popularity (the activity log's positive counts) and i2i next-item, per user with
    intervals.  Contexts are read once per user; each variant re-ranks with ``store``'s own code."""
    from recall_api.store import SOURCE_POPULARITY, NotFound
    from recall_api.types import I2I_SOURCES

    ablations = ABLATIONS if ablations is None else ablations
    kmax = max(ks)
    positives = positives_of(test)
    served = store.channels.contract
    per: dict[str, dict[str, list[float]]] = {}

    def add(name: str, key: str, value: float) -> None:
        per.setdefault(name, {}).setdefault(key, []).append(value)

    def score(name: str, want: set[int], movies: list[int]) -> None:
        for k in ks:
            add(name, f"hr_at_{k}", float(bool(want & set(movies[:k]))))
        add(name, f"recall_at_{kmax}", len(want & set(movies[:kmax])) / len(want))

    fallback = unknown = 0
    t0 = time.perf_counter()
    contexts = {u: store.user_context(u) for u in positives}
    for name, change in ablations.items():
        store.channels.use_contract(served.replace(**change))
        for u, want in positives.items():
            query, seen, recent = contexts[u]
            try:
                ans = store._rank_user(store.matrix, u, kmax, query, np.asarray(sorted(seen), np.int64), recent)
            except NotFound:
                ans = None
            if ans is None:
                ans = store.popularity(kmax, seen)
                unknown += name == "served"
            fallback += name == "served" and ans.source == SOURCE_POPULARITY
            score(name, want, ans.movies)
    store.channels.use_contract(served)
    for u, want in positives.items() if baselines else ():
        score("popularity", want, store.popularity(kmax, contexts[u][1]).movies)
        recent = contexts[u][2]
        last = int(recent[1][-1]) if recent is not None and len(recent[1]) else None
        for source in I2I_SOURCES:
            hit = 0.0
            if last is not None:
                try:
                    hit = float(bool(want & set(store.i2i(last, kmax, source).movies)))
                except NotFound:
                    pass
            add(f"i2i_{source}", f"next_item_hr_at_{kmax}", hit)
    elapsed = time.perf_counter() - t0
    out: dict = {"users": len(positives), "fallback_users": fallback, "unknown_users": unknown,
                 "items_ranked": len(store.matrix), "contract": served.__dict__,
                 "seconds": round(elapsed, 2)}
    for name, metrics in per.items():
        out[name] = {key: _ci(vals, n_boot) for key, vals in metrics.items()}
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
    p.add_argument("--items-arg", action="append", default=[], help="extra learner.items flag (repeatable)")
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
            result["training"] = train(data_dir, redis_url, stack.bootstrap, run_dir, tuple(args.learner_arg),
                                       tuple(args.items_arg))
            namespace = result["training"]["namespace"]
        else:
            if not (args.redis_url and args.namespace and args.data_dir):
                p.error("give --train, or --redis-url, --namespace and --data-dir of a trained model")
            data_dir, redis_url, namespace = Path(args.data_dir), args.redis_url, args.namespace
        ps = ParameterServer.get(redis_url, namespace, dim=None)
        catalog = Catalog.load(data_dir)
        test = read_test(data_dir)
        store = RecallStore(StoreConfig(redis_url, namespace), catalog)
        if not store.refresh_once():
            raise RuntimeError(f"cannot load the model: {store.stats.last_error}")
        result["metrics"] = evaluate(store, test)
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
