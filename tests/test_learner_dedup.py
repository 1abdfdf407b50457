"""End-to-end exactly-once when the producer re-sends: records carry their event seq (header ``lfm-seq``); the
learner drops those at or below the partition's mark, which the PS stores with the offsets (SIGKILL-safe)."""

from __future__ import annotations

import subprocess
import time
import uuid

import numpy as np
import pytest

from _learner_util import (FAST, ROOT, assert_activity_exactly_once, assert_exactly_once, child_env, create_topic,
                           learner_cmd, read_metrics)
from learner.dedup import SeqFilter, valid_seqs
from learner_fixtures import COMMON, run_learner, syn_dir, syn_values  # noqa: F401


# ------------------------------------------------------------------------------------------------- pure
def test_seq_filter_drops_seqs_at_or_below_the_partitions_mark():
    f = SeqFilter()
    f.resume({0: 10}, [0, 1])  # partition 1: nothing applied yet
    parts = np.array([0, 0, 1, 0, 1, 1, 0, 0])
    seqs = np.array([9, 11, 3, 10, 3, -1, 11, 12])
    assert f.keep(parts, seqs).tolist() == [False, True, True, False, False, True, False, True]
    assert f.marks == {0: 12, 1: 3} and f.duplicates == 4
    assert f.keep(np.array([1, 0]), np.array([2, 13])).tolist() == [False, True]  # marks carry across batches
    assert f.duplicates == 5
    f.resume({}, [1])  # a reassigned partition takes the PS's mark (none here); the others keep theirs
    assert f.marks == {0: 13, 1: -1}
    f.reset()
    assert f.marks == {} and f.keep(np.array([0]), np.array([0])).tolist() == [True]


def test_poison_records_are_kept_and_never_move_a_mark():
    """A malformed record with a forged, too-high seq: dead-lettered (kept), and the valid records after it with
    lower seqs are still taken; the parsed columns keep only the taken valid records, indexes into the input."""
    from learner.input import InputFn
    from lfm_stream.schema import make_example

    good = [make_example(user_id=u, movie_id=10 + u, raw_user_id=u, raw_movie_id=10 + u, rating=4.0, label=1.0,
                         timestamp=1_000_000) for u in range(1, 5)]
    values = [good[0], b"not a record", good[1], good[2], good[3]]
    parts, seqs = np.zeros(5, np.int32), np.array([5, 10**9, 6, 5, 7])
    parsed = InputFn().parse(values)
    f = SeqFilter()
    keep = f.keep(parts, valid_seqs(seqs, parsed.valid_mask(len(values))))
    assert keep.tolist() == [True, True, True, False, True]  # seq 5 again: a re-send; 10**9: poison, ignored
    assert f.marks == {0: 7} and f.duplicates == 1
    taken = parsed.taking(keep)
    assert taken.valid.tolist() == [0, 2, 4] and taken.columns["raw_user_id"].tolist() == [1, 2, 4]
    assert [i for i, _ in taken.bad] == [1]
    assert parsed.taking(np.ones(5, bool)) is parsed


# ------------------------------------------------------------------------------------------ learner runs
FORGED_SEQ = 10**9  # the lfm-seq of a malformed record: far above every real one


def produce_numbered(bootstrap: str, topic: str, values: list[bytes], seqs: list[int], partitions: int = 2,
                     forged_at: int | None = None) -> None:
    """Publish as the replay does (key = hashed user id, timestamp = event time, header lfm-seq = the seq); with
    ``forged_at``, a malformed record with lfm-seq FORGED_SEQ follows record ``forged_at`` (same key)."""
    from kafka import KafkaProducer

    from lfm_stream.event_seq import seq_header
    from lfm_stream.schema import parse_batch

    create_topic(bootstrap, topic, partitions)
    c = parse_batch(values)
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
    for i, (v, u, ts, s) in enumerate(zip(values, c["user_id"].tolist(), c["timestamp"].tolist(), seqs)):
        prod.send(topic, value=v, key=str(u).encode(), timestamp_ms=int(ts) * 1000, headers=[seq_header(s)])
        if i == forged_at:
            prod.send(topic, value=b"\x00 not a rating", key=str(u).encode(), timestamp_ms=int(ts) * 1000,
                      headers=[seq_header(FORGED_SEQ)])
    prod.flush()
    prod.close()


def resent(n: int, every: int, lo: int, hi: int) -> list[int]:
    """Indexes in [lo, hi) a producer re-sends: every ``every``-th, plus a run of 20 back to back."""
    return sorted(set(range(lo, hi, every)) | set(range(lo + 5, min(hi, lo + 25))))


@pytest.fixture
def dtopic() -> str:
    return f"dedup-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("flags", [(), ("--push-mode", "gradient")])
def test_re_sent_records_are_applied_once(redis_url, bootstrap, dtopic, namespace, syn_values, tmp_path, flags):
    """The stream with 10% of its records sent twice (later in the stream, and back to back) and one malformed
    record with a forged, too-high seq early on: every event is applied once, the re-sends are counted as
    duplicates, the malformed record is dead-lettered without moving a mark, and the PS holds each partition's
    highest seq (with gradient pushes the marks go with ``lfm_push``'s offsets)."""
    n = len(syn_values)
    again = resent(n, 10, 0, n)
    order = list(range(n // 2)) + [i for i in again if i < n // 2] + list(range(n // 2, n)) + \
        [i for i in again if i >= n // 2]
    produce_numbered(bootstrap, dtopic, [syn_values[i] for i in order], order, forged_at=10)
    r = run_learner(redis_url, bootstrap, dtopic, namespace, tmp_path / "m.jsonl", *COMMON, *flags,
                    "--idle-timeout", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    end = read_metrics(tmp_path / "m.jsonl")[-1]
    assert end["duplicates"] == len(again) and end["records"] == len(order) + 1 and end["poison"] == 1
    assert_exactly_once(redis_url, namespace, syn_values)
    assert_activity_exactly_once(redis_url, namespace, syn_values)
    from ps_redis import ParameterServer

    offsets, marks = ParameterServer.get(redis_url, namespace, 8).fence_state(f"g-{namespace}", dtopic)
    assert sum(offsets.values()) == len(order) + 1 and max(marks.values()) == n - 1 and len(marks) == 2


def test_the_mark_survives_a_sigkill_like_the_offsets(redis_url, bootstrap, dtopic, namespace, syn_values, tmp_path):
    """Killed after writing the first half: the re-sends of first-half records that arrive after the restart are
    dropped by the mark the PS stored with the offsets (a mark kept only in memory would apply them again)."""
    from _learner_util import ps_state

    n, half = len(syn_values), len(syn_values) // 2
    produce_numbered(bootstrap, dtopic, syn_values[:half], list(range(half)))
    metrics = tmp_path / "m.jsonl"
    cmd = learner_cmd(redis_url, bootstrap, dtopic, namespace, "--metrics", str(metrics), *FAST, *COMMON,
                      "--idle-timeout", "90")
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.DEVNULL)
    ps, _ = ps_state(redis_url, namespace)
    deadline = time.monotonic() + 120
    while sum(ps.offsets(f"g-{namespace}", dtopic).values()) != half:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert max(ps.fence_state(f"g-{namespace}", dtopic)[1].values()) == half - 1
    again = resent(n, 7, 0, half)
    produce_numbered(bootstrap, dtopic, [syn_values[i] for i in again] + syn_values[half:],
                     again + list(range(half, n)))
    r = run_learner(redis_url, bootstrap, dtopic, namespace, tmp_path / "m2.jsonl", *COMMON, "--idle-timeout", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_metrics(tmp_path / "m2.jsonl")[-1]["duplicates"] == len(again)
    assert_exactly_once(redis_url, namespace, syn_values)
    assert_activity_exactly_once(redis_url, namespace, syn_values)
