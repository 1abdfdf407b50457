"""Helpers for the replay tests: small prepared data sets, hand-made shards, a topic reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lfm_stream.schema import make_example

ROOT = Path(__file__).resolve().parents[1]


def prepare_synthetic(out: Path, n: int = 3000, shard_size: int = 700) -> Path:
    """A real prepared directory from ``producer.prepare --synthetic`` (several ordered train shards)."""
    from producer.prepare import main as prepare_main

    assert prepare_main(["--synthetic", str(n), "--out", str(out), "--shard-size", str(shard_size)]) == 0
    return out


def write_shards(out: Path, shards: list[list[tuple[int, int]]], *, test: list[tuple[int, int]] | None = None) -> Path:
    """A prepared-like directory from explicit ``(timestamp, raw_user_id)`` lists, one per train shard.

    Record ``j`` of shard ``s`` gets ``raw_movie_id = 1000 * s + j`` so tests can tell records apart.
    The manifest follows docs/design.md (only the fields the replay reads are meaningful).
    """
    import tensorflow as tf

    from lfm_stream.hashing import movie_hash, user_hash

    out.mkdir(parents=True, exist_ok=True)

    def write(rel: str, rows: list[tuple[int, int]], base: int) -> dict:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(path)) as w:
            for j, (ts, user) in enumerate(rows):
                movie = base + j
                w.write(make_example(user_id=user_hash(user), movie_id=movie_hash(movie), raw_user_id=user,
                                     raw_movie_id=movie, rating=4.0, label=1.0, timestamp=ts))
        return {"file": rel, "records": len(rows), "first_ts": rows[0][0] if rows else 0,
                "last_ts": rows[-1][0] if rows else 0}

    train = [write(f"train/part-{s:05d}.tfrecord", rows, 1000 * s) for s, rows in enumerate(shards)]
    tests = [write("test/part-00000.tfrecord", test, 999_000)] if test else []
    all_ts = [t for rows in shards for t, _ in rows]
    manifest = {"schema_version": 1, "train_records": sum(e["records"] for e in train),
                "test_records": sum(e["records"] for e in tests), "users_dropped": 0,
                "train_positive_rate": 1.0, "test_positive_rate": 1.0, "users": 0, "movies": 0,
                "time_range": [min(all_ts), max(all_ts)], "source": {"path": "hand-made", "format": "test", "sha256": ""},
                "params": {}, "train_shards": train, "test_shards": tests}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def read_stream(data_dir: Path) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Expected stream: all train records sorted by (timestamp, shard, position), read independently.

    Returns values, timestamps and hashed user ids.
    """
    import tensorflow as tf

    from lfm_stream.schema import parse_batch

    manifest = json.loads((data_dir / "manifest.json").read_text())
    rows = []
    for s, entry in enumerate(manifest["train_shards"]):
        vals = [r.numpy() for r in tf.data.TFRecordDataset(str(data_dir / entry["file"]))]
        if not vals:
            continue
        cols = parse_batch(vals)
        rows += [(int(t), s, j, v, int(u)) for j, (v, t, u) in enumerate(zip(vals, cols["timestamp"], cols["user_id"]))]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return [r[3] for r in rows], np.array([r[0] for r in rows], np.int64), np.array([r[4] for r in rows], np.int64)


def consume(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 15.0) -> dict[int, list]:
    """All messages of ``topic`` per partition, from the beginning (manual assignment, no group).

    Reads until every partition is at its end offset (and, when ``expect`` is given, at least that many
    messages arrived) or ``timeout_s`` passes.
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                      fetch_max_wait_ms=100, consumer_timeout_ms=500)
    try:
        parts = sorted(c.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: dict[int, list] = {p: [] for p in parts}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=200, max_records=100_000).items():
                out[tp.partition].extend(msgs)
            ends = c.end_offsets(tps)
            done = all(c.position(tp) >= ends[tp] for tp in tps)
            if done and (expect is None or sum(map(len, out.values())) >= expect):
                break
        return out
    finally:
        c.close()


def replay_cmd(*args: str) -> list[str]:
    """Command line running the replay as a script from the repository root."""
    return [sys.executable, str(ROOT / "producer" / "replay.py"), *args]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for replay subprocesses (quiet TensorFlow, no inherited LFM/Kafka settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LFM_", "KAFKA_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def run_replay(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the replay script to completion, capturing output."""
    return subprocess.run(replay_cmd(*args), cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=timeout)
