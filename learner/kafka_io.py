"""Kafka consumers behind one small interface, a prefetch thread and the dead-letter producer.

Only :mod:`learner.loop` uses this module (with it, the loop is the only place doing Kafka I/O).

``Source`` is what the loop needs from a consumer group member: ``poll`` a chunk of records,
``commit`` offsets, ``close``; the group's partition assignment calls back ``on_assign(partitions)``
(which returns the offsets to resume from, i.e. the PS-stored ones) and ``on_revoke(partitions)``.
Two backends: kafka-python (the default; record-batch CRCs are checked with the ``crc32c`` C extension, at
~5% of its consume rate where its pure-Python CRC halved it) and confluent-kafka (librdkafka, optional).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lfm_stream.event_seq import NO_SEQ
from learner.config import LearnerConfig

OnAssign = Callable[[list[int]], dict[int, int]]
OnRevoke = Callable[[list[int]], None]


@dataclass
class Chunk:
    """Records of one poll: partition, offset and value of each, plus the assignment generation."""

    parts: np.ndarray
    offsets: np.ndarray
    values: list[bytes]
    keys: list[bytes | None] = field(default_factory=list)
    gen: int = 0
    decoded: object = None  # what the Fetcher's ``decode`` made of the values (e.g. learner.input.Decoded)
    ends: dict[int, int] | None = None  # partition -> end offset (high watermark) the consumer knew at the poll
    seqs: np.ndarray | None = None  # int64 event sequence numbers (header lfm-seq), -1 = none

    def __post_init__(self) -> None:
        if self.seqs is None:
            self.seqs = np.full(len(self.values), NO_SEQ, np.int64)

    def __len__(self) -> int:
        return len(self.values)


def drain_queue(q: queue.Queue) -> None:
    """Drop what ``q`` holds now."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


class KafkaPythonSource:
    """kafka-python ``KafkaConsumer`` in a consumer group (manual commits, CRC-checked record batches)."""

    def __init__(self, cfg: LearnerConfig, on_assign: OnAssign, on_revoke: OnRevoke, max_records: int):
        from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

        self._tp = lambda p: TopicPartition(cfg.topic, p)
        self.topic = cfg.topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap.split(","), group_id=cfg.group, client_id=f"lfm-learner-{cfg.group}",
            enable_auto_commit=False, auto_offset_reset="earliest", check_crcs=True,
            session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_records=max_records, fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20,
            fetch_max_wait_ms=100)
        consumer = self.consumer
        tp = self._tp

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                on_revoke(sorted(t.partition for t in revoked))

            def on_partitions_assigned(self, assigned):
                parts = sorted(t.partition for t in assigned)
                for p, off in on_assign(parts).items():
                    consumer.seek(tp(p), off)

        self.consumer.subscribe([cfg.topic], listener=Listener())
        self.max_records = max_records

    def poll(self, timeout: float) -> Chunk | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds."""
        got = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=self.max_records)
        if not got:
            return None
        parts, offs, values, keys = [], [], [], []
        for t, recs in got.items():
            if not recs:
                continue
            parts.append(np.full(len(recs), t.partition, np.int32))
            offs.append(np.fromiter((r.offset for r in recs), np.int64, len(recs)))
            values.extend(r.value for r in recs)
            keys.extend(r.key for r in recs)
        if not values:
            return None
        return Chunk(np.concatenate(parts), np.concatenate(offs), values, keys)

    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronous commit of ``{partition: next offset}``."""
        from kafka import OffsetAndMetadata

        self.consumer.commit({self._tp(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})

    def end_offsets(self) -> dict[int, int]:
        """The assigned partitions' high watermarks from the last fetch responses (no request; a partition not
        fetched yet is left out).  Tansu reports the start of the last batch + 1: a lag from it undercounts."""
        out = {}
        for t in self.consumer.assignment():
            hw = self.consumer.highwater(t)
            if hw is not None:
                out[t.partition] = hw
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class ConfluentSource:
    """confluent-kafka (librdkafka) consumer in a consumer group, same contract as the kafka-python one."""

    def __init__(self, cfg: LearnerConfig, on_assign: OnAssign, on_revoke: OnRevoke, max_records: int):
        from confluent_kafka import Consumer, TopicPartition

        self._TP = TopicPartition
        self.topic = cfg.topic
        self.consumer = Consumer({
            "bootstrap.servers": cfg.bootstrap, "group.id": cfg.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": cfg.heartbeat_interval_ms, "fetch.queue.backoff.ms": 10,
            "enable.partition.eof": False, "client.id": f"lfm-learner-{cfg.group}",
        })

        def assign_cb(consumer, partitions):
            seek = on_assign(sorted(t.partition for t in partitions))
            for t in partitions:
                if t.partition in seek:
                    t.offset = seek[t.partition]
            consumer.assign(partitions)

        def revoke_cb(consumer, partitions):
            on_revoke(sorted(t.partition for t in partitions))
            consumer.unassign()

        self.consumer.subscribe([cfg.topic], on_assign=assign_cb, on_revoke=revoke_cb)
        self.max_records = max_records

    def poll(self, timeout: float) -> Chunk | None:
        msgs = self.consumer.consume(num_messages=self.max_records, timeout=timeout)
        if not msgs:
            return None
        bad = [m for m in msgs if m.error() is not None]  # error events are rare: one cheap pass
        for m in bad:
            err = m.error()
            if not err.retriable() and err.fatal():
                raise RuntimeError(f"kafka consumer error: {err}")
            print(f"learner: kafka consumer warning: {err}", file=sys.stderr)
        good = [m for m in msgs if m.error() is None] if bad else msgs
        if not good:
            return None
        n = len(good)
        return Chunk(np.fromiter((m.partition() for m in good), np.int32, n),
                     np.fromiter((m.offset() for m in good), np.int64, n),
                     [m.value() for m in good], [m.key() for m in good])

    def commit(self, offsets: dict[int, int]) -> None:
        self.consumer.commit(offsets=[self._TP(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)

    def end_offsets(self) -> dict[int, int]:
        """The assigned partitions' high watermarks librdkafka cached from its fetches (no request; unknown ones
        are left out).  Tansu reports the start of the last batch + 1: a lag from it undercounts."""
        out = {}
        for t in self.consumer.assignment():
            marks = self.consumer.get_watermark_offsets(t, cached=True)
            if marks is not None and marks[1] >= 0:
                out[t.partition] = marks[1]
        return out

    def close(self) -> None:
        self.consumer.close()


def make_source(cfg: LearnerConfig, on_assign: OnAssign, on_revoke: OnRevoke, max_records: int):
    """The consumer of ``cfg.backend``."""
    cls = ConfluentSource if cfg.backend == "confluent" else KafkaPythonSource
    return cls(cfg, on_assign, on_revoke, max_records)


class Fetcher:
    """Feeds chunks to the loop, directly or from a prefetch thread that owns the consumer.

    Kafka clients are not thread-safe, so with ``prefetch`` the consumer (poll, seek, commit and the
    rebalance callbacks) lives on one background thread; the loop hands it offsets to commit.
    ``gen()`` is the assignment generation: chunks stamped with an older one were consumed before a
    rebalance and are dropped by the loop (their partitions resume from the PS offsets).
    """

    def __init__(self, factory: Callable[[], object], prefetch: bool, poll_timeout: float = 0.1,
                 depth: int = 8, log: Callable[[str], None] | None = None,
                 decode: Callable[[list[bytes]], object] | None = None):
        self._factory = factory
        self._decode = decode  # run on each chunk's values (on the prefetch thread: overlaps the loop's work)
        self.prefetch = prefetch
        self.poll_timeout = poll_timeout
        self._log = log or (lambda s: print(s, file=sys.stderr))
        self._commit: dict[int, int] = {}
        self._commit_lock = threading.Lock()
        self._stop = threading.Event()
        self.generation = 0
        self.error: BaseException | None = None
        self._last_size = 0
        if prefetch:
            self._q: queue.Queue = queue.Queue(maxsize=depth)
            self._ready = threading.Event()
            self._thread = threading.Thread(target=self._run, name="lfm-prefetch", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self.error is not None:
                raise self.error
        else:
            self.source = factory()

    def backlog(self) -> int:
        """Chunks consumed and waiting for the loop (0 without prefetch)."""
        return self._q.qsize() if self.prefetch else 0

    @property
    def at_end(self) -> bool:
        """Whether the last poll returned less than a full chunk: the consumer reached the end of its
        partitions (a learner keeping up with the stream) rather than draining a backlog."""
        return self._last_size < getattr(getattr(self, "source", None), "max_records", 1)

    def _polled(self, chunk: Chunk | None) -> Chunk | None:
        self._last_size = len(chunk) if chunk is not None else 0
        if chunk is not None:
            chunk.ends = self.source.end_offsets()
        return chunk

    # -- consumer thread
    def _run(self) -> None:
        try:
            self.source = self._factory()
        except BaseException as exc:  # reported to the loop
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                chunk = self._poll_retry()
                self._flush_commit()
                if chunk is not None:
                    chunk.gen = self.generation
                    if self._decode is not None:
                        chunk.decoded = self._decode(chunk.values)
                    while not self._stop.is_set():
                        try:
                            self._q.put(chunk, timeout=0.1)
                            break
                        except queue.Full:
                            self._flush_commit()
        except BaseException as exc:
            self.error = exc
        finally:
            self._flush_commit()
            try:
                self.source.close()
            except Exception as exc:  # closing is best effort
                self._log(f"learner: closing the consumer failed: {exc}")

    def _poll_retry(self) -> Chunk | None:
        delay = 0.1
        while True:
            try:
                return self._polled(self.source.poll(self.poll_timeout))
            except Exception as exc:
                if self._stop.is_set():
                    return None
                self._log(f"learner: poll failed ({type(exc).__name__}: {exc}); retrying in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _flush_commit(self) -> None:
        with self._commit_lock:
            offsets, self._commit = self._commit, {}
        if offsets:
            try:
                self.source.commit(offsets)
            except Exception as exc:  # the PS offsets are the truth; a failed commit only delays lag reports
                self._log(f"learner: kafka commit of {offsets} failed ({type(exc).__name__}: {exc})")

    # -- loop side
    def get(self, timeout: float) -> Chunk | None:
        """Next chunk or None after ``timeout`` seconds."""
        if not self.prefetch:
            self._flush_commit()
            chunk = self._poll_retry_direct(timeout)
            if chunk is not None:
                chunk.gen = self.generation
                if self._decode is not None:
                    chunk.decoded = self._decode(chunk.values)
            return chunk
        if self.error is not None:
            raise RuntimeError(f"consumer thread failed: {self.error}") from self.error
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _poll_retry_direct(self, timeout: float) -> Chunk | None:
        try:
            return self._polled(self.source.poll(timeout))
        except Exception as exc:
            self._log(f"learner: poll failed ({type(exc).__name__}: {exc}); retrying")
            time.sleep(min(timeout, 0.5))
            return None

    def drain(self) -> None:
        """Drop queued chunks (called on revocation, under the loop's lock)."""
        if self.prefetch:
            drain_queue(self._q)

    def commit(self, offsets: dict[int, int]) -> None:
        """Ask for a commit of ``{partition: next offset}`` (done by the consumer's thread)."""
        with self._commit_lock:
            for p, o in offsets.items():
                self._commit[p] = max(o, self._commit.get(p, -1))

    def close(self) -> None:
        """Commit what is pending and close the consumer (leaves the group)."""
        if self.prefetch:
            self._stop.set()
            self._thread.join(timeout=30)
        else:
            self._flush_commit()
            self.source.close()
