"""The learner's consumer paths on a real broker: every record's event sequence number (header ``lfm-seq``, written
by the real replay) arrives in ``Chunk.seqs``, with both clients, in the learner's process and through the child
process's pipe; a record without the header (or with a malformed one) gets -1.  ``Pending`` keeps them aligned."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from learner.config import LearnerConfig
from learner.consumer_process import ProcessFetcher
from learner.kafka_io import Chunk, Fetcher, make_source
from learner.pending import Pending
from producer.publish import PublishConfig
from producer.replay import ReplayConfig, run
from producer.throttle import ThrottleConfig
from tests._replay_util import prepare_synthetic, read_stream

EXTRA = [(b"no-header", None), (b"bad-header", [("lfm-seq", b"12x")]), (b"other-header", [("x", b"1")])]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, bootstrap):
    """A 2-partition topic filled by the real replay (700 records), then three records without a valid lfm-seq."""
    from kafka import KafkaProducer

    data = prepare_synthetic(tmp_path_factory.mktemp("seq") / "data", n=700, shard_size=300)
    topic = f"seq-{uuid.uuid4().hex[:8]}"
    cfg = ReplayConfig(data_dir=data, publish=PublishConfig(bootstrap, topic, partitions=2),
                       throttle=ThrottleConfig(rate=0), state_file=data / "st.json")
    summary = run(cfg, progress_tty=False)
    values = read_stream(data)[0]
    assert summary.events == len(values)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value, headers in EXTRA:
        p.send(topic, value=value, key=b"1", headers=headers, partition=0)
    p.flush()
    p.close()
    return topic, values


def _consume(fetcher, want: int, timeout_s: float = 60.0) -> list[Chunk]:
    chunks, got, deadline = [], 0, time.monotonic() + timeout_s
    while got < want and time.monotonic() < deadline:
        chunk = fetcher.get(0.2)
        if chunk is not None:
            chunks.append(chunk)
            got += len(chunk)
    return chunks


@pytest.mark.parametrize("backend", ["kafka-python", "confluent"])
@pytest.mark.parametrize("in_child", [True, False], ids=["child-process", "in-process"])
def test_every_record_brings_its_sequence_number(bootstrap, replayed, backend, in_child):
    topic, values = replayed
    cfg = LearnerConfig(bootstrap=bootstrap, topic=topic, group=f"g-{uuid.uuid4().hex[:8]}", backend=backend,
                        session_timeout_ms=3000, heartbeat_interval_ms=500)
    assign, revoke = (lambda parts: {}), (lambda parts: None)  # the learner's answers: no PS offsets yet
    if in_child:
        fetcher = ProcessFetcher(cfg, 1000, assign, revoke)
    else:
        fetcher = Fetcher(lambda: make_source(cfg, assign, revoke, 1000), prefetch=True)
    try:
        chunks = _consume(fetcher, len(values) + len(EXTRA))
    finally:
        fetcher.close()
    assert all(c.seqs.dtype == np.int64 and len(c.seqs) == len(c) for c in chunks)
    seq_of_value = {v: s for c in chunks for v, s in zip(c.values, c.seqs.tolist())}
    assert len(seq_of_value) == len(values) + len(EXTRA)
    assert [seq_of_value[v] for v in values] == list(range(len(values)))  # the value's index in the stream
    assert [seq_of_value[v] for v, _ in EXTRA] == [-1, -1, -1]
    # per partition, sequence numbers grow with offsets (the replay sends in stream order)
    for p in (0, 1):
        seqs = np.concatenate([c.seqs[c.parts == p] for c in chunks])
        seqs = seqs[seqs >= 0]
        assert len(seqs) and (np.diff(seqs) > 0).all()


def test_pending_cuts_keep_sequence_numbers_aligned():
    a = Chunk(np.zeros(5, np.int32), np.arange(5, dtype=np.int64), [b"a%d" % i for i in range(5)],
              seqs=np.array([10, 11, -1, 13, 14]))
    b = Chunk(np.ones(3, np.int32), np.arange(3, dtype=np.int64), [b"b%d" % i for i in range(3)])  # no seqs given
    assert b.seqs.tolist() == [-1, -1, -1]
    pending = Pending()
    pending.add(a)
    pending.add(b)
    first = pending.take(3)
    assert first.values == [b"a0", b"a1", b"a2"] and first.seqs.tolist() == [10, 11, -1]
    rest = pending.take(5)
    assert rest.values == [b"a3", b"a4", b"b0", b"b1", b"b2"] and rest.seqs.tolist() == [13, 14, -1, -1, -1]
