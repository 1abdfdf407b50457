"""Poison records of the chaos bench (``bench/chaos.py``) and the thread that mixes them into a live stream.

Every kind a stream can carry that the learner must dead-letter instead of training or crashing on: event times
of 2^62 and before 1970, negative and out-of-range ids, infinite / NaN / out-of-range / negative ratings, labels
that are no 0/1 or do not match the rating, an unknown schema version, null and empty values, bytes that are no
Example, 256 KiB of them, a feature missing, of the wrong type, or with 65,536 values.  Each record has ids no
good record has (so a poison row in the PS would show), and the Kafka key ``poison-<n>`` (the dead letter keeps
the key, so the bench can tell which record each dead letter is).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

BAD_USER, BAD_MOVIE, BAD_RAW = 10**15, 2 * 10**15, 900_000  # + n: ids of poison record n (no good record has them)
HUGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class PoisonRecord:
    """One poison record: its number ``n``, ``kind``, the reason the learner must give (``lfm-reason``), value."""

    n: int
    kind: str
    reason: str
    value: bytes | None

    @property
    def key(self) -> bytes:
        return b"poison-%d" % self.n


def _fields(n: int, **over) -> dict:
    """The fields of a good-looking record with poison ids (``over`` replaces some)."""
    f = dict(user_id=BAD_USER + n, movie_id=BAD_MOVIE + n, raw_user_id=BAD_RAW + n, raw_movie_id=BAD_RAW + n,
             rating=4.0, label=1.0, timestamp=10**9)
    f.update(over)
    return f


def _example(n: int, **features) -> bytes:
    """An Example whose features are replaced by ``features`` (a tf.train.Feature, or None: left out)."""
    import tensorflow as tf

    from lfm_stream.schema import INT_FEATURES

    feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) if k in INT_FEATURES
             else tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
             for k, v in {"schema_version": 1, **_fields(n)}.items()}
    feats.update(features)
    feats = {k: v for k, v in feats.items() if v is not None}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _kinds() -> list[tuple[str, str, Callable[[int], bytes | None]]]:
    """(kind, reason the learner gives, builder of record n) of every poison kind."""
    import tensorflow as tf

    from lfm_stream.schema import make_example

    def ex(**over):
        return lambda n: make_example(**_fields(n, **over))

    floats = lambda values: tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return [
        ("timestamp_2^62", "timestamp_out_of_range", ex(timestamp=2**62)),
        ("timestamp_negative", "timestamp_out_of_range", ex(timestamp=-86400)),
        ("user_id_negative", "id_out_of_range", lambda n: make_example(**_fields(n, user_id=-7 - n))),
        ("raw_movie_id_negative", "id_out_of_range", ex(raw_movie_id=-1)),
        ("user_id_huge", "id_out_of_range", lambda n: make_example(**_fields(n, user_id=2**62 + n))),
        ("raw_user_id_huge", "id_out_of_range", ex(raw_user_id=2**40)),
        ("rating_inf", "rating_not_finite", ex(rating=float("inf"))),
        ("rating_nan", "rating_not_finite", ex(rating=float("nan"))),
        ("rating_7", "rating_out_of_range", ex(rating=7.0)),
        ("rating_huge", "rating_out_of_range", ex(rating=1e30)),
        ("rating_negative", "rating_out_of_range", ex(rating=-3.0, label=0.0)),
        ("label_2", "label_invalid", ex(label=2.0)),
        ("label_nan", "label_invalid", ex(label=float("nan"))),
        ("label_mismatch", "label_mismatch", ex(rating=1.0, label=1.0)),
        ("schema_version_99", "schema_version", ex(schema_version=99)),
        ("null_value", "null_value", lambda n: None),
        ("empty_value", "empty_value", lambda n: b""),
        ("garbage_bytes", "not_an_example", lambda n: b"\x08\xffnot a protobuf %d" % n),
        ("garbage_huge", "not_an_example", lambda n: b"\xff" * HUGE_BYTES),
        ("feature_missing", "missing_feature", lambda n: _example(n, label=None)),
        ("feature_wrong_type", "wrong_type",
         lambda n: _example(n, user_id=tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"7"])))),
        ("feature_huge_list", "wrong_length", lambda n: _example(n, rating=floats([4.0] * (HUGE_BYTES // 4)))),
    ]


def poison_records(count: int) -> list[PoisonRecord]:
    """``count`` poison records, the kinds taken in turn (so every kind occurs once ``count`` reaches their
    number)."""
    kinds = _kinds()
    return [PoisonRecord(n, kinds[n % len(kinds)][0], kinds[n % len(kinds)][1], kinds[n % len(kinds)][2](n))
            for n in range(count)]


def kind_count() -> int:
    """How many poison kinds there are."""
    return len(_kinds())


@dataclass
class Injected:
    """What the injector published: the Kafka offset of each record it sent, by record number."""

    offsets: dict[int, int] = field(default_factory=dict)
    error: str | None = None


class PoisonInjector(threading.Thread):
    """Publishes ``records`` to partition 0 of ``topic`` beside a live replay: whenever the topic has grown by
    ``1 / share`` good records, the next poison record goes out (acks=all, one at a time), so they are spread
    over the stream; once ``replay_done`` is set the rest follow.

    Args:
        bootstrap: the broker.
        topic: the stream's topic (one partition).
        records: the poison records in order.
        share: poison records per good record.
        replay_done: set when the replay has published its last record.
    """

    def __init__(self, bootstrap: str, topic: str, records: list[PoisonRecord], share: float,
                 replay_done: threading.Event):
        super().__init__(name=f"poison-{topic}", daemon=True)
        self.bootstrap, self.topic, self.records, self.share = bootstrap, topic, records, share
        self.replay_done = replay_done
        self.result = Injected()

    def run(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                 max_request_size=4 * HUGE_BYTES, request_timeout_ms=10000)
        watch = KafkaConsumer(bootstrap_servers=self.bootstrap)
        tp = TopicPartition(self.topic, 0)
        sent = 0
        try:
            while sent < len(self.records):
                done = self.replay_done.is_set()
                good = watch.end_offsets([tp])[tp] - sent
                due = len(self.records) if done else min(len(self.records), int(good * self.share))
                while sent < due:
                    rec = self.records[sent]
                    meta = producer.send(self.topic, value=rec.value, key=rec.key, partition=0).get(timeout=30)
                    self.result.offsets[rec.n] = meta.offset
                    sent += 1
                if not done:
                    time.sleep(0.1)
        except Exception as exc:  # reported in the bench's JSON: the run's poison figures are then incomplete
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            producer.close(5)
            watch.close()
