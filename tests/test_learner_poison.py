"""Poison records on real servers: one of each kind amid good records, on both decode paths (consumer in a child
process, and in the learner's process): the learner trains exactly the good ones, dead-letters every bad one with
its reason, counts them per reason, and writes no PS row, activity or popularity count for them."""

from __future__ import annotations

import numpy as np
import pytest

from _learner_util import (assert_activity_exactly_once, assert_exactly_once, event_counts, produce, ps_state,
                           read_metrics)
from learner_fixtures import run_learner, syn_dir, syn_values  # noqa: F401 (fixtures)

BAD_USER, BAD_MOVIE, BAD_RAW = 10**15, 2 * 10**15, 900_000  # ids no good record has (+ j per poison record)


def poison_values() -> list[tuple[bytes | None, str, str]]:
    """(value, reason kind, words of the ``error`` header) of one record of each poison kind."""
    import tensorflow as tf

    from lfm_stream.schema import INT_FEATURES, make_example

    def rec(j: int, **over) -> dict:
        r = dict(user_id=BAD_USER + j, movie_id=BAD_MOVIE + j, raw_user_id=BAD_RAW + j, raw_movie_id=BAD_RAW + j,
                 rating=4.0, label=1.0, timestamp=10**9)
        r.update(over)
        return r

    def example(j: int, **features) -> bytes:  # a record with some features replaced (None: removed)
        feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[1 if k == "schema_version" else v]))
                 if k in INT_FEATURES else tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                 for k, v in {"schema_version": 1, **rec(j)}.items()}
        feats.update(features)
        feats = {k: v for k, v in feats.items() if v is not None}
        return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()

    return [
        (make_example(**rec(0, timestamp=2**62)), "timestamp_out_of_range", "(got 4611686018427387904)"),
        (make_example(**rec(1, timestamp=-86400)), "timestamp_out_of_range", "(got -86400)"),
        (make_example(**rec(2, user_id=-7)), "id_out_of_range", "user_id -7 outside"),
        (make_example(**rec(3, raw_movie_id=-1)), "id_out_of_range", "raw_movie_id -1 outside"),
        (make_example(**rec(4, rating=float("inf"))), "rating_not_finite", "rating is inf"),
        (make_example(**rec(5, rating=float("nan"))), "rating_not_finite", "rating is nan"),
        (make_example(**rec(6, rating=7.0)), "rating_out_of_range", "rating 7.0 outside [0.5, 5.0]"),
        (make_example(**rec(7, label=2.0)), "label_invalid", "label is 2.0, not 0 or 1"),
        (make_example(**rec(8, label=float("nan"))), "label_invalid", "label is nan"),
        (make_example(**rec(9, rating=1.0, label=1.0)), "label_mismatch", "does not match rating 1.0"),
        (make_example(**rec(10), schema_version=99), "schema_version", "unknown schema_version 99"),
        (None, "null_value", "no value (null)"),
        (b"", "empty_value", "empty"),
        (b"\x08\xffnot a protobuf", "not_an_example", "not a valid rating Example"),
        (example(11, label=None), "missing_feature", "label (data type: float) is required"),
        (example(12, rating=tf.train.Feature()), "missing_feature", "rating (data type: float) is required"),
        (example(13, rating=tf.train.Feature(float_list=tf.train.FloatList(value=[]))), "missing_feature",
         "Values size: 0"),
        (example(14, user_id=tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"7"]))), "wrong_type",
         "Data types don't match"),
        (example(15, rating=tf.train.Feature(float_list=tf.train.FloatList(value=[4.0, 4.0]))), "wrong_length",
         "Values size: 2"),
    ]


@pytest.mark.parametrize("flags", [(), ("--no-consumer-process",)], ids=["child-process", "in-process"])
def test_every_poison_kind_is_dead_lettered_with_its_reason(redis_url, bootstrap, topic, namespace, syn_values,
                                                            tmp_path, flags):
    from kafka import KafkaConsumer, TopicPartition

    from lfm_stream.schema import parse_batch
    from ps_redis.activity import ActivityLog

    good = syn_values[:300]
    poison = poison_values()
    values, where = list(good), {}
    for j, (value, kind, words) in enumerate(poison):
        pos = 5 + 16 * j
        values.insert(pos, value)
        where[pos] = (value, kind, words)
    # explicit keys: the helper's default would stamp each record with its event time, and 2**62 s is no Kafka time
    keys = [str(u).encode() for u in parse_batch(good)["user_id"].tolist()]
    for pos in where:
        keys.insert(pos, b"poison")
    produce(bootstrap, topic, values, partitions=1, keys=keys)
    metrics = tmp_path / "m.jsonl"
    r = run_learner(redis_url, bootstrap, topic, namespace, metrics, "--batch-size", "32", "--idle-timeout", "4",
                    *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    for pos, (_, kind, _) in where.items():
        assert f"poison record at {topic}[0]@{pos} ({kind})" in r.stderr
    end = read_metrics(metrics)[-1]
    assert end["event"] == "end" and end["events"] == len(good) and end["records"] == len(values)
    assert end["poison"] == len(poison)
    kinds = [kind for _, kind, _ in poison]
    assert end["poison_by_reason"] == {k: kinds.count(k) for k in set(kinds)}

    # trained exactly the good records; nothing of the bad ones in the PS
    assert_exactly_once(redis_url, namespace, good)
    assert_activity_exactly_once(redis_url, namespace, good)
    ps, counts = ps_state(redis_url, namespace)
    users, items = event_counts(good)
    assert set(counts["user"]) == set(users) and set(counts["item"]) == set(items)  # no other row
    bad_ids = np.array([BAD_USER + j for j in range(len(poison))] + [-7])
    assert not ps.pull("user", bad_ids, create=False).found.any()
    assert not ps.pull("item", bad_ids + (BAD_MOVIE - BAD_USER), create=False).found.any()
    log = ActivityLog(ps)
    assert not any(log.seen(BAD_RAW + j) for j in range(len(poison)))
    movies = [m for m, _ in log.popular(10**6)]
    assert movies and 0 <= min(movies) and max(movies) < BAD_RAW  # no bad movie counted as popular
    assert sum(ps.offsets(f"g-{namespace}", topic).values()) == len(values)  # the stream is done, poison included

    # each bad record is in the dead-letter topic, unchanged, with its reason
    dlq = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, auto_offset_reset="earliest")
    tp = TopicPartition(f"{topic}.dlq", 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    got = list(dlq)
    dlq.close()
    assert len(got) == len(poison)
    for rec in got:
        h = {k: v.decode() for k, v in rec.headers}
        value, kind, words = where[int(h["offset"])]
        assert h["topic"] == topic and h["partition"] == "0"
        assert rec.value == (value if value is not None else b"")
        assert h["lfm-reason"] == kind and words in h["error"], (kind, h)
