"""Helpers for the data-preparation tests: read a prepared directory back with TensorFlow."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def read_records(out: Path, split: str) -> list[bytes]:
    """Raw record bytes of a split, shards in name order (TFRecordDataset checks the CRCs)."""
    import tensorflow as tf

    files = sorted(str(p) for p in (Path(out) / split).glob("part-*.tfrecord"))
    if not files:
        return []
    return [r for batch in tf.data.TFRecordDataset(files).batch(1 << 16) for r in batch.numpy().tolist()]


def read_file(path: Path) -> dict[str, np.ndarray]:
    """Columns of one shard, parsed with the documented feature spec."""
    import tensorflow as tf

    from lfm_stream.schema import feature_spec

    parts = [tf.io.parse_example(b, feature_spec()) for b in tf.data.TFRecordDataset(str(path)).batch(1 << 16)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


@lru_cache(maxsize=16)
def _read_split(out: str, split: str, stamp: tuple) -> dict[str, np.ndarray]:
    from lfm_stream.schema import FEATURES

    files = sorted((Path(out) / split).glob("part-*.tfrecord"))
    if not files:
        return {name: np.zeros(0) for name in FEATURES}
    parts = [read_file(f) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def read_split(out: Path, split: str) -> dict[str, np.ndarray]:
    """Columns of a split (shards in name order) parsed with the documented feature spec."""
    stamp = tuple((f.name, f.stat().st_mtime_ns) for f in sorted((Path(out) / split).glob("part-*.tfrecord")))
    return _read_split(str(out), split, stamp)
