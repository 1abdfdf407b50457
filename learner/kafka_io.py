"""Kafka consumers behind one small interface, a prefetch thread and the dead-letter producer.

Only :mod:`learner.loop` uses this module (with it, the loop is the only place doing Kafka I/O).

``Source`` is what the loop needs from a consumer group member: ``poll`` a chunk of records,
``commit`` offsets, ``close``; the group's partition assignment calls back ``on_assign(partitions)``
(which returns the offsets to resume from, i.e. the PS-stored ones) and ``on_revoke(partitions)``.
Two backends: kafka-python (the default; record-batch CRCs are checked with the ``crc32c`` C extension, at
~5% of its consume rate where its pure-Python CRC halved it) and confluent-kafka (librdkafka, optional), both
with the TLS / SASL settings of :mod:`lfm_stream.kafka_security`.  :func:`make_source` builds one within the
retry budget and wraps it in :class:`learner.kafka_guard.GuardedSource`, which rides out broker outages.

Every chunk carries each record's event sequence number (``seqs``, from the ``lfm-seq`` header the replay
writes, :mod:`lfm_stream.event_seq`; -1 without one), read in the same pass as the offsets.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lfm_stream.backoff import ExponentialBackoff, Outage, RetryBudgetExceeded
from lfm_stream.event_seq import NO_SEQ, seqs_of
from lfm_stream.kafka_probe import probe_broker
from learner.config import LearnerConfig
from learner.kafka_guard import GuardedSource, KafkaFailure

OnAssign = Callable[[list[int]], dict[int, int]]
OnRevoke = Callable[[list[int]], None]

COMMIT_TIMEOUT_MS = 5000  # a commit while the broker is away gives up after this (it is not needed to resume)
CLOSE_TIMEOUT_MS = 5000  # leaving the group at exit, when the broker may be gone


@dataclass
class Chunk:
    """Records of one poll: partition, offset, value, key and event sequence number of each, plus the assignment
    generation.  ``seqs`` (int64, -1 where a record has no ``lfm-seq`` header) defaults to all -1."""

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
        self.expected: dict[int, int] = {}  # partition -> offset sought on assignment, until its first record
        self.consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap.split(","), group_id=cfg.group, client_id=f"lfm-learner-{cfg.group}",
            enable_auto_commit=False, auto_offset_reset="earliest", check_crcs=True,
            session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_records=max_records, fetch_max_bytes=8 << 20, max_partition_fetch_bytes=8 << 20,
            fetch_max_wait_ms=100, bootstrap_timeout_ms=_connect_timeout_ms(cfg),
            allow_auto_create_topics=False,  # the producer creates the topic, with its partitions
            **cfg.kafka_security.kafka_python())
        consumer = self.consumer
        tp = self._tp
        source = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                source.expected = {}
                on_revoke(sorted(t.partition for t in revoked))

            def on_partitions_assigned(self, assigned):
                parts = sorted(t.partition for t in assigned)
                seek = on_assign(parts)
                for p, off in seek.items():
                    consumer.seek(tp(p), off)
                source.expected = dict(seek)

        self.consumer.subscribe([cfg.topic], listener=Listener())
        self.max_records = max_records

    def poll(self, timeout: float) -> Chunk | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds."""
        got = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=self.max_records)
        if not got:
            return None
        parts, offs, values, keys, seqs = [], [], [], [], []
        for t, recs in got.items():
            if not recs:
                continue
            parts.append(np.full(len(recs), t.partition, np.int32))
            offs.append(np.fromiter((r.offset for r in recs), np.int64, len(recs)))
            seqs.append(seqs_of([r.headers for r in recs]))
            values.extend(r.value for r in recs)
            keys.extend(r.key for r in recs)
        if not values:
            return None
        return Chunk(np.concatenate(parts), np.concatenate(offs), values, keys, seqs=np.concatenate(seqs))

    def commit(self, offsets: dict[int, int]) -> None:
        """Synchronous commit of ``{partition: next offset}``."""
        from kafka import OffsetAndMetadata

        self.consumer.commit({self._tp(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()},
                             timeout_ms=COMMIT_TIMEOUT_MS)

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
        self.consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)


class ConfluentSource:
    """confluent-kafka (librdkafka) consumer in a consumer group, same contract as the kafka-python one."""

    def __init__(self, cfg: LearnerConfig, on_assign: OnAssign, on_revoke: OnRevoke, max_records: int):
        from confluent_kafka import Consumer, TopicPartition

        self._TP = TopicPartition
        self.topic = cfg.topic
        self.expected: dict[int, int] = {}  # partition -> offset sought on assignment, until its first record
        self.consumer = Consumer({
            "bootstrap.servers": cfg.bootstrap, "group.id": cfg.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": cfg.heartbeat_interval_ms, "fetch.queue.backoff.ms": 10,
            "enable.partition.eof": False, "client.id": f"lfm-learner-{cfg.group}",
            # librdkafka logs each failed reconnect (every ~50 ms while a broker is away); the guard reports
            # outages, and errors reach poll() as events
            "log_level": 2,
            **cfg.kafka_security.confluent(),
        })

        def assign_cb(consumer, partitions):
            seek = on_assign(sorted(t.partition for t in partitions))
            for t in partitions:
                if t.partition in seek:
                    t.offset = seek[t.partition]
            consumer.assign(partitions)
            self.expected = dict(seek)

        def revoke_cb(consumer, partitions):
            self.expected = {}
            on_revoke(sorted(t.partition for t in partitions))
            consumer.unassign()

        self.consumer.subscribe([cfg.topic], on_assign=assign_cb, on_revoke=revoke_cb)
        self.max_records = max_records

    def poll(self, timeout: float) -> Chunk | None:
        """Up to ``max_records`` records.  Error events: fatal ones and a refused authentication raise
        :class:`KafkaFailure`; others (the broker is away) raise ``ConnectionError`` when no record came, for the
        guard to retry, and are logged otherwise."""
        msgs = self.consumer.consume(num_messages=self.max_records, timeout=timeout)
        if not msgs:
            return None
        bad = [m for m in msgs if m.error() is not None]  # error events are rare: one cheap pass
        good = [m for m in msgs if m.error() is None] if bad else msgs
        if bad:
            self._errors([m.error() for m in bad], bool(good))
        if not good:
            return None
        n = len(good)
        return Chunk(np.fromiter((m.partition() for m in good), np.int32, n),
                     np.fromiter((m.offset() for m in good), np.int64, n),
                     [m.value() for m in good], [m.key() for m in good],
                     seqs=seqs_of([m.headers() for m in good]))

    @staticmethod
    def _errors(errors: list, records_too: bool) -> None:
        from confluent_kafka import KafkaError

        for err in errors:
            if err.fatal():
                raise KafkaFailure(f"kafka consumer fatal error: {err}")
            if err.code() == KafkaError._AUTHENTICATION:
                raise KafkaFailure(f"Kafka authentication failed: {err.str()} (check KAFKA_SECURITY_PROTOCOL, "
                                   "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)")
        text = "; ".join(sorted({e.str() for e in errors}))
        if not records_too:
            raise ConnectionError(text)
        print(f"learner: kafka consumer warning: {text}", file=sys.stderr)

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


def _connect_timeout_ms(cfg: LearnerConfig) -> int:
    """How long one attempt to reach the broker may take (within the retry budget)."""
    return int(1000 * min(10.0, cfg.retry_budget_s or 10.0))


def make_source(cfg: LearnerConfig, on_assign: OnAssign, on_revoke: OnRevoke, max_records: int,
                say: Callable[[str], None] | None = None) -> GuardedSource:
    """The consumer of ``cfg.backend`` behind a :class:`GuardedSource`; building it (which reaches the broker)
    is retried with backoff within ``cfg.retry_budget_s``.

    Raises:
        KafkaFailure: the broker could not be reached within the budget (or refused the settings).
    """
    say = say or (lambda s: print(f"learner: {s}", file=sys.stderr))
    cls = ConfluentSource if cfg.backend == "confluent" else KafkaPythonSource
    outage = Outage(f"connecting to Kafka broker {cfg.bootstrap} ({cfg.kafka_security.describe()})",
                    ExponentialBackoff(0.1, cfg.retry_max_s), cfg.retry_budget_s)
    while True:
        try:
            # asked first: a client may wait without end for a broker that cannot answer its settings
            unanswered = probe_broker(cfg.bootstrap, cfg.kafka_security)
            if unanswered is not None:
                raise ConnectionError(unanswered)
            source = cls(cfg, on_assign, on_revoke, max_records)
            break
        except (ImportError, TypeError, ValueError, AssertionError):
            raise  # a missing client or a bad setting: retrying cannot help
        except Exception as exc:
            if type(exc).__name__ == "KafkaConfigurationError":  # kafka-python's bad setting (its own class)
                raise KafkaFailure(f"Kafka client settings refused: {exc}") from exc
            # NoBrokersAvailable, KafkaTimeoutError, KafkaException, OSError, ...: the broker is not there (yet)
            try:
                delay = outage.failed(exc)
            except RetryBudgetExceeded as failed:
                raise KafkaFailure(f"{failed}. Is the broker running, and are the Kafka settings right "
                                   "(--bootstrap, KAFKA_SECURITY_PROTOCOL and the TLS / SASL settings)?") from None
            say(f"cannot reach Kafka broker {cfg.bootstrap} yet ({type(exc).__name__}: {exc}); retry "
                f"{outage.failures} in {delay:.1f}s")
            time.sleep(delay)
    return GuardedSource(source, cfg.bootstrap, cfg.kafka_security, cfg.retry_budget_s, cfg.retry_max_s, say)


class Fetcher:
    """Feeds chunks to the loop, directly or from a prefetch thread that owns the consumer.

    Kafka clients are not thread-safe, so with ``prefetch`` the consumer (poll, seek, commit and the
    rebalance callbacks) lives on one background thread; the loop hands it offsets to commit.
    ``gen()`` is the assignment generation: chunks stamped with an older one were consumed before a
    rebalance and are dropped by the loop (their partitions resume from the PS offsets).  Broker outages are the
    source's (:class:`learner.kafka_guard.GuardedSource`); a :class:`KafkaFailure` it raises reaches the loop
    from :meth:`get` (or from the constructor) as it is.
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
                chunk = self._polled(self.source.poll(self.poll_timeout))
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
            chunk = self._polled(self.source.poll(timeout))
            if chunk is not None:
                chunk.gen = self.generation
                if self._decode is not None:
                    chunk.decoded = self._decode(chunk.values)
            return chunk
        if self.error is not None:
            if isinstance(self.error, KafkaFailure):
                raise self.error
            raise RuntimeError(f"consumer thread failed: {self.error}") from self.error
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
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
