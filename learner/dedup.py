"""Re-sent records: drop the events the learner has applied already, by their event sequence number.

The replay stamps every record with its index in the time-ordered stream (header ``lfm-seq``,
:mod:`lfm_stream.event_seq`, ``Chunk.seqs``); a record the producer sends again after a broker hiccup carries the
same number at a later Kafka offset of the same partition (same key).  Per partition the learner keeps the
highest seq it has taken (the *mark*) and drops a record whose seq is at or below it, so an event is trained,
logged and counted once whatever the producer re-sent.  The PS holds the marks next to the offsets, raised in the
same fenced write (``Fence.seqs``): a restarted learner resumes from both (:meth:`SeqFilter.resume`).  Records
without a seq (-1) are always kept; dropped ones are counted (``duplicates``), not dead-lettered.

A mark cannot tell a re-send from a first send that arrives after a later event of its partition; the replay
numbers and sends each partition's records in order, so that happens only when a broker reorders a producer's
retries (the idempotent producer, where the broker supports it, rules that out).
"""

from __future__ import annotations

import numpy as np



class SeqFilter:
    """The per-partition marks of the records taken so far and the count of records dropped."""

    def __init__(self):
        self.marks: dict[int, int] = {}
        self.duplicates = 0

    def resume(self, marks: dict[int, int], partitions: list[int]) -> None:
        """Marks of newly assigned ``partitions`` as the PS holds them (none: -1); other partitions are kept."""
        for p in partitions:
            self.marks[int(p)] = int(marks.get(p, -1))

    def reset(self) -> None:
        """Forget every mark (the next assignment reads them from the PS again)."""
        self.marks.clear()

    def keep(self, parts: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """Which records to take: a seq above its partition's mark and above every seq before it in the batch
        (a re-send may follow its original within one batch); the marks move to the largest seq taken.

        >>> f = SeqFilter(); f.resume({0: 5}, [0])
        >>> f.keep(np.array([0, 0, 0, 0, 0]), np.array([4, 6, 6, -1, 7])).tolist()
        [False, True, False, True, True]
        >>> f.marks, f.duplicates
        ({0: 7}, 2)
        """
        keep = np.ones(len(seqs), dtype=bool)
        numbered = seqs >= 0
        if not numbered.any():
            return keep
        for p in np.unique(parts[numbered]).tolist():
            at = np.flatnonzero((parts == p) & numbered)
            s = seqs[at]
            mark = self.marks.get(p, -1)
            before = np.maximum.accumulate(np.concatenate(([mark], s)))[:-1]  # highest seq seen before each
            keep[at] = s > before
            self.marks[p] = max(mark, int(s.max()))
        self.duplicates += int(len(keep) - np.count_nonzero(keep))
        return keep


def valid_seqs(seqs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The records' seqs with -1 (no seq) where a record is not ``valid``: poison takes no part in deduplication.

    >>> valid_seqs(np.array([4, 10**9, 5]), np.array([True, False, True])).tolist()
    [4, -1, 5]
    """
    return np.where(valid, seqs, -1)
