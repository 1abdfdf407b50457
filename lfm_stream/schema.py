"""The rating record schema: one place for the feature names, types and the tf.train.Example codec.

A rating event is a ``tf.train.Example`` with these features (all scalars):

=================  =======  ==========================================================
feature            dtype    meaning (and the range the learner accepts)
=================  =======  ==========================================================
``schema_version`` int64    :data:`SCHEMA_VERSION`; consumers reject other versions
``user_id``        int64    ``bkdr2hash64("UserID=<raw>")`` (60 bits: [0, 2**60))
``movie_id``       int64    ``bkdr2hash64("MovieID=<raw>")`` (60 bits: [0, 2**60))
``raw_user_id``    int64    MovieLens user id ([0, 2**32))
``raw_movie_id``   int64    MovieLens movie id ([0, 2**32))
``rating``         float32  0.5 .. 5 stars (finite, in the learner's rating range)
``label``          float32  1.0 if rating >= pos_threshold else 0.0 (exactly 0 or 1)
``timestamp``      int64    seconds since the epoch (default window [0, now + 1 day])
=================  =======  ==========================================================

Every feature holds exactly one value.  The same serialized bytes are stored in the TFRecord shards and
carried unchanged as Kafka message values, so the learner decodes files and stream with one feature spec
(:func:`feature_spec`); a stream record outside these ranges is dead-lettered by the learner
(``learner.validate``), never trained.
TensorFlow is imported lazily: the recall service uses this module without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA_VERSION = 1

INT_FEATURES = ("schema_version", "user_id", "movie_id", "raw_user_id", "raw_movie_id", "timestamp")
FLOAT_FEATURES = ("rating", "label")
FEATURES = INT_FEATURES + FLOAT_FEATURES


def feature_spec() -> dict[str, Any]:
    """``tf.io.parse_example`` spec for a rating record (every feature required)."""
    import tensorflow as tf

    spec: dict[str, Any] = {name: tf.io.FixedLenFeature([], tf.int64) for name in INT_FEATURES}
    spec.update({name: tf.io.FixedLenFeature([], tf.float32) for name in FLOAT_FEATURES})
    return spec


def make_example(
    *,
    user_id: int,
    movie_id: int,
    raw_user_id: int,
    raw_movie_id: int,
    rating: float,
    label: float,
    timestamp: int,
    schema_version: int = SCHEMA_VERSION,
) -> bytes:
    """Serialize one rating record as a ``tf.train.Example`` (slow path; for tests and tools)."""
    import tensorflow as tf

    ints = dict(
        schema_version=schema_version,
        user_id=user_id,
        movie_id=movie_id,
        raw_user_id=raw_user_id,
        raw_movie_id=raw_movie_id,
        timestamp=timestamp,
    )
    feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)])) for k, v in ints.items()}
    feats["rating"] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(rating)]))
    feats["label"] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def parse_batch(serialized: list[bytes] | np.ndarray) -> dict[str, np.ndarray]:
    """Decode a batch of serialized records into numpy columns (int64 / float32).

    Raises ``tf.errors.InvalidArgumentError`` when any record is not a valid rating Example;
    callers that must survive poison records split the batch and retry record by record.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(tf.constant(list(serialized), dtype=tf.string), feature_spec())
    return {k: v.numpy() for k, v in parsed.items()}


# --- vectorized encoder -------------------------------------------------------------------------------
# A tf.train.Example is Features(field 1) -> map<string, Feature> entries (field 1 each, key = field 1,
# value = field 2); a Feature holds float_list (field 2) or int64_list (field 3), each a packed
# `value` (field 1).  Every length below 128 fits one byte except the total Features length, so a
# record is a fixed pattern of bytes apart from the varints; we lay each record out in a row of a
# byte matrix with room for the longest varints and drop the unused bytes with one boolean mask.

_VARINT_MAX = 10


def encode_varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf base-128 varints of an int64 array (negatives as 10-byte two's complement).

    Returns:
        ``(bytes, lengths)``: uint8 ``[n, 10]`` (byte k of each varint in column k, unused columns 0)
        and int64 ``[n]`` (how many leading columns each varint uses).
    """
    u = np.asarray(values).astype(np.int64).view(np.uint64)
    lengths = np.ones(u.shape, dtype=np.int64)
    for k in range(1, _VARINT_MAX):
        lengths += u >= np.uint64(1 << (7 * k))
    out = np.empty(u.shape + (_VARINT_MAX,), dtype=np.uint8)
    for k in range(_VARINT_MAX):
        low7 = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[:, k] = np.where(lengths > k + 1, low7 | np.uint8(0x80), low7)
    return out, lengths


def encode_examples(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Serialize rating records as ``tf.train.Example`` bytes without a Python loop per record.

    The bytes parse with :func:`feature_spec` exactly like :func:`make_example`'s (same features and
    values; int64 lists packed, features in :data:`FEATURES` order).

    Args:
        columns: one array per name in :data:`FEATURES` except ``schema_version`` (optional; defaults
            to :data:`SCHEMA_VERSION`), all of the same length ``n``.

    Returns:
        ``(buffer, offsets)``: uint8 array with the records back to back, and int64 ``[n + 1]`` offsets
        (record ``i`` is ``buffer[offsets[i]:offsets[i + 1]]``).
    """
    missing = [name for name in FEATURES if name not in columns and name != "schema_version"]
    if missing:
        raise ValueError(f"encode_examples: missing columns {missing}")
    n = len(columns["user_id"])
    cols = dict(columns)
    cols.setdefault("schema_version", np.full(n, SCHEMA_VERSION, dtype=np.int64))
    blocks: list[tuple[np.ndarray, np.ndarray | None]] = []  # (uint8 [n, w], keep mask or None = all)
    features_len = np.zeros(n, dtype=np.int64)
    for name in FEATURES:
        key = name.encode()
        if len(cols[name]) != n:
            raise ValueError(f"encode_examples: column {name!r} has {len(cols[name])} values, expected {n}")
        if name in INT_FEATURES:
            vb, vlen = encode_varints(cols[name])
            entry_len = 2 + len(key) + 2 + 4 + vlen
            head = np.empty((n, 2 + 2 + len(key) + 2 + 4), dtype=np.uint8)
            head[:, 0] = 0x0A  # Features.feature entry
            head[:, 1] = entry_len
            head[:, 2] = 0x0A  # entry key
            head[:, 3] = len(key)
            head[:, 4:4 + len(key)] = np.frombuffer(key, dtype=np.uint8)
            j = 4 + len(key)
            head[:, j] = 0x12  # entry value: Feature
            head[:, j + 1] = 4 + vlen
            head[:, j + 2] = 0x1A  # Feature.int64_list
            head[:, j + 3] = 2 + vlen
            head[:, j + 4] = 0x0A  # Int64List.value, packed
            head[:, j + 5] = vlen
            blocks.append((head, None))
            blocks.append((vb, np.arange(_VARINT_MAX)[None, :] < vlen[:, None]))
            features_len += 2 + entry_len
        else:
            fixed = bytes([0x0A, 2 + len(key) + 2 + 8, 0x0A, len(key)]) + key + bytes([0x12, 8, 0x12, 6, 0x0A, 4])
            block = np.empty((n, len(fixed) + 4), dtype=np.uint8)
            block[:, :len(fixed)] = np.frombuffer(fixed, dtype=np.uint8)
            block[:, len(fixed):] = np.ascontiguousarray(cols[name], dtype="<f4").view(np.uint8).reshape(n, 4)
            blocks.append((block, None))
            features_len += len(fixed) + 4
    fb, flen = encode_varints(features_len)
    head = np.full((n, 1), 0x0A, dtype=np.uint8)  # Example.features
    blocks = [(head, None), (fb[:, :3], np.arange(3)[None, :] < flen[:, None])] + blocks
    matrix = np.concatenate([b for b, _ in blocks], axis=1)
    keep = np.ones(matrix.shape, dtype=bool)
    col = 0
    for b, m in blocks:
        if m is not None:
            keep[:, col:col + b.shape[1]] = m
        col += b.shape[1]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(flen + features_len + 1, out=offsets[1:])  # 0x0A + varint(length) + features
    return matrix[keep], offsets
