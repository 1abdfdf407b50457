"""The rating record schema: one place for the feature names, types and the tf.train.Example codec.

A rating event is a ``tf.train.Example`` with these features (all scalars):

=================  =======  ==========================================================
feature            dtype    meaning
=================  =======  ==========================================================
``schema_version`` int64    :data:`SCHEMA_VERSION`; consumers reject other versions
``user_id``        int64    ``bkdr2hash64("UserID=<raw>")`` (60 bits)
``movie_id``       int64    ``bkdr2hash64("MovieID=<raw>")`` (60 bits)
``raw_user_id``    int64    MovieLens user id
``raw_movie_id``   int64    MovieLens movie id
``rating``         float32  0.5 .. 5 stars
``label``          float32  1.0 if rating >= pos_threshold else 0.0
``timestamp``      int64    seconds since the epoch
=================  =======  ==========================================================

The same serialized bytes are stored in the TFRecord shards and carried unchanged as Kafka message
values, so the learner decodes files and stream with one feature spec (:func:`feature_spec`).
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
