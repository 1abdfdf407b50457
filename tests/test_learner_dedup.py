"""End-to-end exactly-once when the producer re-sends: records carry their event seq (header ``lfm-seq``); the
learner drops those at or below the partition's mark, which the PS stores with the offsets (SIGKILL-safe)."""

from __future__ import annotations

import numpy as np

from learner.dedup import SeqFilter, select
from learner.kafka_io import Chunk


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


def test_select_keeps_records_and_their_decoded_fields_aligned():
    from learner.input import InputFn
    from lfm_stream.schema import make_example

    good = [make_example(user_id=u, movie_id=10 + u, raw_user_id=u, raw_movie_id=10 + u, rating=4.0, label=1.0,
                         timestamp=1_000_000) for u in range(1, 4)]
    values = [good[0], b"not a record", good[1], good[2]]
    chunk = Chunk(np.array([0, 0, 1, 1], np.int32), np.arange(4, dtype=np.int64), values, [b"a", b"b", b"c", b"d"],
                  seqs=np.array([5, 6, 7, 8]))
    chunk.decoded = InputFn().decode(values)
    assert select(chunk, np.ones(4, bool)) is chunk
    kept = select(chunk, np.array([False, True, False, True]))
    assert kept.offsets.tolist() == [1, 3] and kept.keys == [b"b", b"d"] and kept.seqs.tolist() == [6, 8]
    parsed = kept.decoded.parsed()
    assert [i for i, _ in parsed.bad] == [0]  # the poison record, renumbered
    assert parsed.columns["raw_user_id"].tolist() == [3]
