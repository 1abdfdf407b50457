"""Helpers of the learner tests and benches: prepare a small data set, fill a topic, run learner processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def prepare(out: Path, *, synthetic: int | None = None, ratings: Path | None = None, validation: bool = False,
            extra: list[str] | None = None) -> Path:
    """``python -m producer.prepare`` into ``out`` (once; reused when the manifest exists)."""
    if (out / "manifest.json").exists():
        return out
    cmd = [sys.executable, "-m", "producer.prepare", "--out", str(out), "--force"]
    cmd += ["--synthetic", str(synthetic)] if synthetic else ["--ratings", str(ratings)]
    if validation:
        cmd.append("--validation")
    subprocess.run(cmd + (extra or []), check=True, cwd=ROOT, env=child_env(), capture_output=True)
    return out


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def train_records(data_dir: Path) -> list[bytes]:
    """Serialized train records in stream (manifest) order."""
    import tensorflow as tf

    man = json.loads((data_dir / "manifest.json").read_text())
    files = [str(data_dir / s["file"]) for s in man["train_shards"]]
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
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


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1,
            keys: list[bytes] | None = None) -> None:
    """Publish ``values`` as the replay does: key = hashed user id (ASCII), timestamp = event time (ms).

    Records that do not decode (poison tests) get the key ``b"0"`` and timestamp 0.
    """
    from kafka import KafkaProducer

    from lfm_stream.schema import parse_batch

    create_topic(bootstrap, topic, partitions)
    if keys is None:
        keys, stamps = [], []
        try:
            c = parse_batch(values)
            keys = [str(u).encode() for u in c["user_id"].tolist()]
            stamps = (c["timestamp"] * 1000).tolist()
            values_ok = True
        except Exception:
            values_ok = False
        for v in ([] if values_ok else values):
            try:
                c = parse_batch([v])
                keys.append(str(int(c["user_id"][0])).encode())
                stamps.append(int(c["timestamp"][0]) * 1000)
            except Exception:
                keys.append(b"0")
                stamps.append(0)
    else:
        stamps = [None] * len(values)
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=256 << 10)
    for k, v, t in zip(keys, values, stamps):
        prod.send(topic, value=v, key=k, timestamp_ms=t)
    prod.flush()
    prod.close()


def learner_cmd(redis_url: str, bootstrap: str, topic: str, namespace: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "learner", "--redis-url", redis_url, "--bootstrap", bootstrap, "--topic", topic,
            "--namespace", namespace, "--group", f"g-{namespace}", *args]


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics file; a line being written (no newline yet) or torn by a SIGKILL is left out."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece is unterminated (or empty)
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a record torn by a kill: the learner starts its next record on a new line
    return out


def event_counts(values: list[bytes]) -> tuple[dict[int, int], dict[int, int]]:
    """Events per hashed user id and per hashed movie id."""
    from lfm_stream.schema import parse_batch

    c = parse_batch(values)
    u, nu = np.unique(c["user_id"], return_counts=True)
    i, ni = np.unique(c["movie_id"], return_counts=True)
    return dict(zip(u.tolist(), nu.tolist())), dict(zip(i.tolist(), ni.tolist()))


FAST = ["--session-timeout-ms", "3000", "--heartbeat-interval-ms", "500", "--flush-ms", "100", "--dim", "8"]


def ps_state(redis_url: str, namespace: str, dim: int = 8):
    """(ParameterServer, {table: {id: count}}) of a namespace."""
    from ps_redis import ParameterServer

    ps = ParameterServer.get(redis_url, namespace, dim)
    counts = {}
    for table in ("user", "item", "global"):
        counts[table] = {int(i): int(c) for r in ps.scan(table) for i, c in zip(r.ids, r.count)}
    return ps, counts


def assert_activity_exactly_once(redis_url: str, namespace: str, values: list[bytes]) -> None:
    """The activity log's positive count of every movie equals the stream's (and every rating is in a seen set)."""
    from lfm_stream.schema import parse_batch
    from ps_redis.activity import ActivityLog

    c = parse_batch(values)
    pos = c["label"] > 0.5
    movies, n = np.unique(c["raw_movie_id"][pos], return_counts=True)
    ps, _ = ps_state(redis_url, namespace)
    log = ActivityLog(ps)
    stored = dict(log.popular(len(movies) + 10))
    off = {m: (stored.get(m), k) for m, k in zip(movies.tolist(), n.tolist()) if stored.get(m) != k}
    assert not off, f"{len(off)} movies with (logged positives, stream positives) off, e.g. {list(off.items())[:3]}"
    users = np.unique(c["raw_user_id"])
    seen = dict(zip(users.tolist(), log.seen_many(users.tolist())))
    missing = [(u, m) for u, m in zip(c["raw_user_id"].tolist(), c["raw_movie_id"].tolist()) if m not in seen[u]]
    assert not missing, f"{len(missing)} ratings missing from the seen sets, e.g. {missing[:3]}"


def assert_exactly_once(redis_url: str, namespace: str, values: list[bytes]) -> None:
    """Every user / movie row's update count equals its number of events; μ's count equals all events."""
    users, items = event_counts(values)
    _, counts = ps_state(redis_url, namespace)
    bad_u = {u: (counts["user"].get(u), n) for u, n in users.items() if counts["user"].get(u) != n}
    bad_i = {i: (counts["item"].get(i), n) for i, n in items.items() if counts["item"].get(i) != n}
    assert not bad_u, f"{len(bad_u)} users with (count, events) off, e.g. {list(bad_u.items())[:3]}"
    assert not bad_i, f"{len(bad_i)} items with (count, events) off, e.g. {list(bad_i.items())[:3]}"
    assert counts["global"] == {0: len(values)}
