"""The only code that writes to Kafka: topic creation, sending, acknowledgement tracking, recovery.

Every record carries its event sequence number, header ``lfm-seq`` = its global stream index
(:mod:`lfm_stream.event_seq`): the same number whenever it is sent, so a re-sent record can be told from a new
one downstream.  Delivery is at-least-once, kept here rather than in kafka-python's own retries:

- Records are sent in chunks tagged with their global stream indices; a chunk stays buffered until
  every record in it is acknowledged. :attr:`Publisher.acked` is the watermark: every record before
  it is acknowledged (the exact resume position).
- Any failed record, a broker that stops acknowledging for ``stall_s`` while the topic has vanished or
  the broker does not answer, or partition offsets going backwards (a broker that lost its log, e.g.
  Tansu with memory storage after a restart) triggers recovery: drop the producer, wait for the broker
  with capped exponential backoff (``retry_budget_s`` in total), recreate the topic if it is missing,
  and re-send every buffered chunk from the watermark on, in order. Records after the watermark that
  had already reached the broker are sent twice (at-least-once, not exactly-once).
- A restart is handled by a fresh producer after an explicit topic check, never by kafka-python's own
  retries: Tansu (memory storage) accepts writes to a topic that no longer exists after a restart, and an
  idempotent producer's id is unknown to a restarted broker.
- With ``acks=all`` the producer is idempotent where the broker supports it (``idempotent``, the default): its
  own retries of a request whose answer was lost (a dropped connection, a timeout) are then deduplicated by the
  broker, which needs kafka-python's retries on (bounded by ``delivery_timeout_ms``).  Where the client or the
  broker refuses it, the publisher falls back to a plain producer with ``retries=0`` and says so once.  Records
  re-sent by a recovery are new sends for the broker either way: ``lfm-seq`` is what identifies them.
- Waiting follows :mod:`lfm_stream.backoff` (capped exponential backoff); one outage (from the first failure
  to the next acknowledgement) may last ``retry_budget_s``, then :class:`PublishError` names what failed.

What at-least-once means with a memory broker: the replay guarantees every record from its resume
position on reaches the broker it is connected to at least once. Records that a broker acknowledged
and then lost by restarting (Tansu keeps topics in memory) are not re-sent: they were delivered as far
as Kafka semantics go. The warning logged on such a restart names the offsets.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lfm_stream.backoff import ExponentialBackoff, Outage, RetryBudgetExceeded
from lfm_stream.event_seq import SEQ_HEADER
from lfm_stream.kafka_probe import probe_broker
from lfm_stream.kafka_security import KafkaSecurity

log = logging.getLogger("producer.publish")

ACKS = {"0": 0, "1": 1, "all": "all", "-1": "all"}
# delivery errors that mean the broker does not take the idempotent producer (its id or sequence numbers)
_IDEMPOTENCE_REFUSED = ("ClusterAuthorizationFailedError", "UnsupportedVersionError", "UnsupportedForMessageFormatError")


class PublishError(RuntimeError):
    """The broker could not be reached (or kept failing) within the retry budget."""


class Interrupted(Exception):
    """A stop was requested while waiting for the broker."""


@dataclass(frozen=True)
class PublishConfig:
    """Kafka publishing parameters.

    Attributes:
        bootstrap: Kafka bootstrap servers (``host:port[,host:port]``).
        topic: topic to write.
        partitions: partitions of the topic when this creates it (an existing topic is used as is).
        acks: ``"0"``, ``"1"`` or ``"all"``; with ``"0"`` nothing is acknowledged, so nothing can be re-sent.
        retry_budget_s: how long the broker may stay unreachable (or keep failing) before giving up.
        retries: recoveries allowed in one run (None: unlimited within the budget).
        linger_ms / batch_size / max_in_flight / request_timeout_ms: kafka-python producer tuning.
        stall_s: no acknowledgement for this long with records pending -> check the broker and topic.
        max_pending: records sent but not yet acknowledged before :meth:`Publisher.send` waits.
        idempotent: use the idempotent producer when ``acks`` is ``all`` and the broker supports it.
        security: TLS / SASL settings of the clients.
    """

    bootstrap: str
    topic: str
    partitions: int = 1
    acks: str = "all"
    retry_budget_s: float = 60.0
    retries: int | None = None
    linger_ms: int = 20
    batch_size: int = 256 * 1024
    max_in_flight: int = 1
    request_timeout_ms: int = 10_000
    stall_s: float = 2.0
    max_pending: int = 200_000
    idempotent: bool = True
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        if self.acks not in ACKS:
            raise ValueError(f"acks must be one of 0, 1, all (got {self.acks!r})")
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1 (got {self.partitions})")
        if self.retry_budget_s <= 0:
            raise ValueError(f"retry budget must be > 0 seconds (got {self.retry_budget_s})")
        if not self.topic:
            raise ValueError("topic must not be empty")


@dataclass
class _Chunk:
    start: int
    values: list[bytes]
    keys: list[bytes]
    ts_ms: list[int]
    parts: list[int]
    futures: list = field(default_factory=list)


class Publisher:
    """Sends records with their stream indices and tracks what the broker acknowledged.

    Args:
        config: publishing parameters.
        should_stop: polled while waiting for the broker; when it returns True, :class:`Interrupted` is raised.
        notify: receives human-readable status lines (broker lost / back / giving up).
    """

    def __init__(self, config: PublishConfig, should_stop: Callable[[], bool] = lambda: False,
                 notify: Callable[[str], None] = log.warning):
        self.config = config
        self.should_stop = should_stop
        self.notify = notify
        self.acked = 0
        self.sent_to = 0
        self.recoveries = 0
        self.resent = 0
        self.n_partitions = 0
        self._partitions_used: int | None = None  # the partition count the keys were spread over so far
        self._chunks: deque[_Chunk] = deque()
        self._producer = None
        self._admin = None
        self._keys: dict[int, tuple[bytes, int]] = {}
        self._max_offset: dict[int, int] = {}
        self._last_progress = time.monotonic()
        self._stall_reported = False
        # the current outage, from its first failure to the next acknowledgement (or successful connect)
        self._outage = Outage(f"Kafka broker {config.bootstrap}", ExponentialBackoff(0.1, 2.0), config.retry_budget_s)
        self.idempotent: bool | None = None  # whether the current producer is idempotent (None: none yet)
        self._idempotence_said = False
        self.last_acked_ts_ms: int | None = None

    # -- connection ---------------------------------------------------------------------------
    def connect(self, start_index: int = 0) -> None:
        """Reach the broker (within the retry budget), create the topic if missing, start a producer.

        Raises:
            PublishError: the broker did not answer within ``retry_budget_s``.
        """
        self.acked = self.sent_to = start_index
        self._open_with_retries("connecting")
        self._outage.ok()

    def _open_with_retries(self, why: str) -> None:
        """Open the clients, backing off between attempts within the current outage's budget."""
        cfg = self.config
        while True:
            try:
                self._open()
                return
            except PublishError:
                raise
            except Exception as exc:  # kafka-python raises many types (NoBrokersAvailable, KafkaError, OSError)
                if type(exc).__name__ == "KafkaConfigurationError":  # a bad setting: retrying cannot help
                    raise PublishError(f"Kafka client settings refused ({cfg.security.describe()}): {exc}") from exc
                try:
                    delay = self._outage.failed(exc)
                except RetryBudgetExceeded:
                    raise PublishError(
                        f"Kafka broker {cfg.bootstrap} unreachable for {cfg.retry_budget_s:g} s (retry budget, "
                        f"{self._outage.failures} attempts, {why}): {type(exc).__name__}: {exc}. Is it running, and "
                        f"does it take these settings ({cfg.security.describe()}; KAFKA_SECURITY_PROTOCOL ...)? "
                        "(`python -m lfm_local.stack up` starts a local one)") from exc
                if self._outage.failures == 1 or self._outage.failures % 5 == 0:
                    self.notify(f"waiting for Kafka broker {cfg.bootstrap} ({why}; {type(exc).__name__}: "
                                f"{str(exc)[:120]}); {self._outage.left:.0f} s of retry budget left")
                self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if self.should_stop():
                raise Interrupted()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def _open(self) -> None:
        from kafka import KafkaAdminClient

        cfg = self.config
        self._close_clients()
        # asked first: kafka-python may wait without end for a broker that cannot answer its settings
        unanswered = probe_broker(cfg.bootstrap, cfg.security)
        if unanswered is not None:
            raise ConnectionError(unanswered)
        timeout = int(max(1000, min(cfg.request_timeout_ms, cfg.retry_budget_s * 1000)))
        self._admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap, request_timeout_ms=timeout,
                                       bootstrap_timeout_ms=timeout, client_id="lfm-replay-admin",
                                       **cfg.security.kafka_python())
        self.n_partitions = self._ensure_topic()
        self._producer = self._new_producer(timeout)
        # fetch metadata now so that a missing topic fails here, not in the first send
        parts = self._producer.partitions_for(cfg.topic)
        if not parts:
            raise ConnectionError(f"topic {cfg.topic!r} has no partitions on {cfg.bootstrap} yet")
        self.n_partitions = self._keyed_partitions(len(parts))
        self._keys.clear()
        self._last_progress = time.monotonic()
        self._stall_reported = False

    def _keyed_partitions(self, n: int) -> int:
        """How many partitions the keys spread over: the topic's count, except after a broker restart, where a key
        keeps the partition it had.  A broker that lost the topic recreates it on the first write that reaches it
        (Tansu does, with its default partition count, even for a producer that does not ask for it)."""
        used = self._partitions_used
        if used is None or n == used:
            self._partitions_used = n
            return n
        topic = self.config.topic
        if n < used:
            raise PublishError(f"topic {topic!r} has {n} partition(s) since the broker came back, fewer than the {used} "
                               "this replay writes to: a user's records would change partition and lose their order. "
                               f"Recreate the topic with {used} partitions and continue with --resume")
        self.notify(f"topic {topic!r} has {n} partitions since the broker came back (recreated by the broker on a "
                    f"write?); records keep going to the first {used}, so a user's events stay in one partition, "
                    "in order")
        return used

    def _new_producer(self, timeout_ms: int):
        """An idempotent producer where it applies and the client and broker take it, else a plain one."""
        from kafka import KafkaProducer

        cfg = self.config
        common = dict(
            bootstrap_servers=cfg.bootstrap, client_id="lfm-replay", acks=ACKS[cfg.acks], linger_ms=cfg.linger_ms,
            batch_size=cfg.batch_size, max_in_flight_requests_per_connection=cfg.max_in_flight,
            request_timeout_ms=cfg.request_timeout_ms, delivery_timeout_ms=cfg.request_timeout_ms + cfg.linger_ms + 1000,
            max_block_ms=timeout_ms, allow_auto_create_topics=False, bootstrap_timeout_ms=timeout_ms,
            **cfg.security.kafka_python())
        why_not = None
        if not cfg.idempotent:
            why_not = "turned off"
        elif cfg.acks != "all":
            why_not = f"it needs acks=all (--acks {cfg.acks})"
        elif self.idempotent is False:
            why_not = self._idempotence_refused
        else:
            try:
                producer = KafkaProducer(enable_idempotence=True, retries=3, **common)
            except (TypeError, AssertionError) as exc:  # a kafka-python without enable_idempotence
                why_not = f"this kafka-python does not offer it ({exc})"
            except Exception as exc:
                if type(exc).__name__ not in ("KafkaConfigurationError", "UnsupportedVersionError"):
                    raise  # the broker is away: the caller retries
                why_not = f"refused ({type(exc).__name__}: {exc})"  # an old broker, or settings it conflicts with
            else:
                self._say_idempotence(True, "the broker deduplicates the producer's own retries")
                return producer
        self._refuse_idempotence(why_not)
        return KafkaProducer(enable_idempotence=False, retries=0, **common)

    def _refuse_idempotence(self, why: str) -> None:
        self._idempotence_refused = why
        self._say_idempotence(False, why)

    def _say_idempotence(self, on: bool, why: str) -> None:
        """One log line per run on whether the producer is idempotent (and again if that changes)."""
        if self.idempotent is not on or not self._idempotence_said:
            self._idempotence_said = True
            self.notify(f"idempotent producer {'on' if on else 'off'}: {why}"
                        + ("" if on else "; every record still carries its lfm-seq header"))
        self.idempotent = on

    def _ensure_topic(self) -> int:
        """Create the topic when missing; return its partition count."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        cfg = self.config
        n = self._topic_partitions()
        if n:
            if n != cfg.partitions and not getattr(self, "_warned_parts", False):
                self._warned_parts = True
                self.notify(f"topic {cfg.topic!r} exists with {n} partitions (--partitions {cfg.partitions} applies "
                            "only when creating it)")
            return n
        try:
            self._admin.create_topics([NewTopic(cfg.topic, cfg.partitions, 1)])
            self.notify(f"created topic {cfg.topic!r} with {cfg.partitions} partition(s) on {cfg.bootstrap}")
        except TopicAlreadyExistsError:
            pass
        return self._topic_partitions() or cfg.partitions

    def _topic_partitions(self) -> int:
        desc = self._admin.describe_topics([self.config.topic])
        for t in desc:
            if t.get("name") == self.config.topic and not t.get("error_code"):
                return len(t.get("partitions") or [])
        return 0

    def _close_clients(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0, null_logger=True)
            except Exception:  # closing a producer whose broker is gone may raise; it is dropped anyway
                pass
            self._producer = None
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None

    # -- sending ------------------------------------------------------------------------------
    def keys_for(self, user_ids: np.ndarray) -> tuple[list[bytes], list[int]]:
        """Message keys (hashed user id as ASCII decimal) and partitions (Kafka's murmur2 default).

        Computed once per user: the default partitioner is Java-compatible, so other Kafka clients
        place the same key in the same partition.
        """
        from kafka.partitioner.default import murmur2

        cache, n = self._keys, self.n_partitions
        ids = user_ids.tolist()
        for u in set(ids).difference(cache):
            k = str(u).encode("ascii")
            cache[u] = (k, (murmur2(k) & 0x7FFFFFFF) % n)
        pairs = [cache[u] for u in ids]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def send(self, start: int, values: list[bytes], keys: list[bytes], ts_ms: list[int], parts: list[int]) -> None:
        """Send records ``start .. start + len(values) - 1`` of the stream (must follow the previous call)."""
        if start != self.sent_to:
            raise ValueError(f"records must be sent in stream order: expected #{self.sent_to}, got #{start}")
        while self.sent_to - self.acked >= self.config.max_pending:
            if not self.poll():
                time.sleep(0.002)
        chunk = _Chunk(start, values, keys, ts_ms, parts)
        if not self._chunks:  # the stall clock runs only while something is pending
            self._last_progress = time.monotonic()
        self._chunks.append(chunk)
        self.sent_to = start + len(values)
        try:
            self._send_chunk(chunk)
        except Exception as exc:  # e.g. KafkaTimeoutError when the buffer cannot drain: recover and re-send
            self._recover(f"send failed: {type(exc).__name__}: {exc}")

    def _send_chunk(self, chunk: _Chunk) -> None:
        send, topic = self._producer.send, self.config.topic
        chunk.futures = [send(topic, v, k, [(SEQ_HEADER, b"%d" % seq)], p, t)
                         for seq, v, k, p, t in zip(range(chunk.start, chunk.start + len(chunk.values)), chunk.values,
                                                    chunk.keys, chunk.parts, chunk.ts_ms)]

    # -- acknowledgements ---------------------------------------------------------------------
    def poll(self) -> bool:
        """Retire acknowledged chunks (advancing :attr:`acked`); recover from failures. True if progress."""
        progressed = False
        while self._chunks:
            chunk = self._chunks[0]
            futs = chunk.futures
            if not futs or not futs[-1].is_done or not all(f.is_done for f in futs):
                break
            failed = next((f for f in futs if f.failed()), None)
            if failed is not None:
                error = failed.exception
                if self.idempotent and type(error).__name__ in _IDEMPOTENCE_REFUSED:
                    self._refuse_idempotence(f"the broker refused it ({type(error).__name__}: {error})")
                self._recover(f"delivery failed: {type(error).__name__}: {error}")
                return progressed
            lost = self._check_offsets(chunk)
            if lost:
                self._recover(lost)
                return progressed
            self._chunks.popleft()
            self.acked = chunk.start + len(chunk.values)
            self.last_acked_ts_ms = chunk.ts_ms[-1]
            progressed = True
            self._outage.ok()
        now = time.monotonic()
        if progressed or not self._chunks:
            if self._stall_reported:
                self.notify(f"broker {self.config.bootstrap} acknowledging again (up to record #{self.acked})")
            self._last_progress, self._stall_reported = now, False
        elif now - self._last_progress > self.config.stall_s:
            self._check_stall(now)
        return progressed

    def _check_offsets(self, chunk: _Chunk) -> str | None:
        """Offsets of a partition must grow, record by record; a step back means the broker lost its log.

        Every record is checked, not only a chunk's first: a chunk's records travel in several
        requests, so one chunk can straddle a broker restart (its head acknowledged by the old broker,
        its tail by the new one, from offset 0 again).
        """
        if self.config.acks == "0":
            return None
        parts = np.asarray(chunk.parts)
        offs = np.fromiter((f.value.offset for f in chunk.futures), np.int64, len(chunk.futures))
        order = np.argsort(parts, kind="stable")  # each partition's records, in send order
        p, o = parts[order], offs[order]
        head = np.r_[True, p[1:] != p[:-1]]
        prev = np.r_[-1, o[:-1]]
        prev[head] = [self._max_offset.get(x, -1) for x in p[head].tolist()]
        back = np.flatnonzero(o <= prev)
        if back.size:
            i = back[0]
            return (f"partition {p[i]} of {self.config.topic!r} restarted at offset {o[i]} after {prev[i]}: the "
                    "broker lost its log (restarted with memory storage?)")
        tail = np.r_[head[1:], True]
        self._max_offset.update(zip(p[tail].tolist(), o[tail].tolist()))
        return None

    def _check_stall(self, now: float) -> None:
        pending = self.sent_to - self.acked
        if not self._stall_reported:
            self._stall_reported = True
            self.notify(f"no acknowledgement from {self.config.bootstrap} for {now - self._last_progress:.1f} s "
                        f"({pending} records pending from #{self.acked}); checking the broker")
        try:
            ok = self._admin is not None and self._topic_partitions() > 0
            reason = f"topic {self.config.topic!r} is gone from the broker"
        except Exception as exc:
            ok, reason = False, f"broker not answering ({type(exc).__name__})"
        if not ok:
            self._recover(reason)
        else:
            self._last_progress = now  # broker and topic are there: keep waiting for kafka-python

    def _recover(self, reason: str) -> None:
        """Reconnect (within the retry budget) and re-send every unacknowledged chunk in order."""
        cfg = self.config
        self.recoveries += 1
        if cfg.retries is not None and self.recoveries > cfg.retries:
            raise PublishError(f"giving up after {cfg.retries} recoveries (--retries): {reason}")
        failing_again = self._outage.active  # right after a recovery (e.g. a topic still settling): back off
        try:
            delay = self._outage.failed(reason)
        except RetryBudgetExceeded:
            raise PublishError(f"no acknowledgement from {cfg.bootstrap} for {self._outage.seconds:.0f} s "
                               f"(retry budget {cfg.retry_budget_s:g} s): {reason}") from None
        if failing_again:
            self._sleep(delay)
        pending = self.sent_to - self.acked
        self.notify(f"broker trouble: {reason}. Waiting for {cfg.bootstrap} (retry budget {cfg.retry_budget_s:g} s); "
                    f"will re-send {pending} records from #{self.acked} (at-least-once: some may arrive twice)")
        started = time.monotonic()
        self._close_clients()
        while True:
            self._open_with_retries("recovering")
            self._max_offset.clear()
            try:
                for chunk in self._chunks:
                    self._send_chunk(chunk)
                break
            except Exception as exc:
                try:
                    delay = self._outage.failed(exc)
                except RetryBudgetExceeded:
                    raise PublishError(f"re-sending to {cfg.bootstrap} kept failing for {self._outage.seconds:.0f} s "
                                       f"(retry budget {cfg.retry_budget_s:g} s): {type(exc).__name__}: {exc}") from exc
                self._sleep(delay)
        self.resent += pending
        self.notify(f"broker {cfg.bootstrap} back after {time.monotonic() - started:.1f} s; resumed from record "
                    f"#{self.acked} ({pending} records re-sent)")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every sent record is acknowledged (recovering as needed). False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._producer is not None:
            try:
                self._producer.flush(timeout=0)
            except Exception:  # flush(timeout=0) only nudges the sender; errors surface in poll()
                pass
        while self._chunks:
            if not self.poll():
                if deadline is not None and time.monotonic() > deadline:
                    return False
                if self.should_stop() and deadline is None:
                    raise Interrupted()
                time.sleep(0.002)
        return True

    def close(self) -> None:
        """Close the Kafka clients (without waiting for unacknowledged records)."""
        self._close_clients()
