"""The source stage: the Kafka consumer of one learner and the records it consumed that are not trained yet.

The consumer runs in a child process (``--in-child``, :class:`learner.consumer_process.ProcessFetcher`) or on a
prefetch thread (:class:`learner.kafka_io.Fetcher`); either joins the consumer group and calls the learner back
when partitions are assigned or revoked.  Chunks are stamped with the assignment generation they were consumed
in: a chunk of an older generation (consumed before a revocation) is dropped, never trained.
"""

from __future__ import annotations

from learner.config import LearnerConfig
from learner.consumer_process import ProcessFetcher
from learner.kafka_io import Chunk, Fetcher, make_source
from learner.pending import Pending


class RecordSource:
    """The consumer (opened by :meth:`open`) and the consumed records not trained yet (``pending``)."""

    def __init__(self, cfg: LearnerConfig, decode, on_assign, on_revoke, say):
        self.cfg = cfg
        self.decode, self.on_assign, self.on_revoke, self.say = decode, on_assign, on_revoke, say
        self.poll_records = max(4 * cfg.model.batch_size, 10000)
        self.pending = Pending()
        self.fetcher: Fetcher | ProcessFetcher | None = None

    def open(self) -> None:
        """Start the consumer; it joins the group (the assignment arrives through ``on_assign``)."""
        cfg = self.cfg
        if cfg.in_child:
            self.fetcher = ProcessFetcher(cfg, self.poll_records, self.on_assign, self.on_revoke, log=self.say,
                                          decode=self.decode)
        else:
            self.fetcher = Fetcher(
                lambda: make_source(cfg, self.on_assign, self.on_revoke, self.poll_records, say=self.say),
                cfg.prefetch, log=self.say, decode=self.decode)

    def close(self) -> None:
        """Stop the consumer (it leaves the group)."""
        if self.fetcher is not None:
            self.fetcher.close()

    def fetch(self, timeout: float) -> Chunk | None:
        """The next consumed chunk, waiting up to ``timeout`` seconds (None: nothing arrived)."""
        return self.fetcher.get(timeout=timeout)

    def accept(self, chunk: Chunk) -> bool:
        """Add a fetched chunk to the pending records unless it was consumed before the last revocation."""
        if chunk.gen != self.fetcher.generation:
            return False
        self.pending.add(chunk)
        return True

    @property
    def n_pending(self) -> int:
        return self.pending.n

    def take(self, n: int) -> Chunk:
        """The first ``n`` pending records as one chunk."""
        return self.pending.take(n)

    def consumed_columns(self, limit: int) -> dict | None:
        """The decoded columns of the pending records, after taking in what the consumer holds ready (up to
        ``limit`` records pending); None when a chunk is not decoded."""
        if self.fetcher is not None:
            self.pending.absorb(self.fetcher, limit)
        return self.pending.columns()

    def caught_up(self) -> bool:
        """Whether the consumer has nothing more ready and its last poll reached the end of its partitions."""
        return not self.fetcher.backlog() and self.fetcher.at_end

    def revoke(self) -> int:
        """After a revocation: drop what was consumed and not trained (the next owner consumes it again) and what
        the consumer still holds; returns how many pending records were dropped."""
        if self.fetcher is not None:
            self.fetcher.generation += 1
            self.fetcher.drain()
        dropped = self.pending.n
        self.pending.clear()
        return dropped

    def commit(self, offsets: dict[int, int]) -> None:
        """Kafka commit after a PS write (none before the consumer exists: the PS offsets are the truth)."""
        if self.fetcher is not None:
            self.fetcher.commit(offsets)
