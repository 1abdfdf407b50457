"""Poison records: counted per reason, logged with partition and offset, copied to the dead-letter topic; never fatal.

A record is poison when it has no value, is not a valid rating Example, lacks a field or has one of the wrong type
or length, or has a field outside its range (:mod:`learner.input` and :mod:`learner.validate` say which, as a
:class:`~learner.validate.Poison` reason).  :class:`PoisonRecords` handles a chunk's poison records before the
chunk's offsets can be committed: the dead letters are flushed (acknowledged by the broker) first, so none is lost
when the learner dies right after.  Dead letters carry the record's key and value unchanged (an empty value for a
null one) and headers ``lfm-reason`` (the reason's kind, e.g. ``timestamp_out_of_range``), ``error`` (the detail,
e.g. ``timestamp out of range [0, 1767312000] (got 4611686018427387904)``), ``topic``, ``partition``, ``offset``.
"""

from __future__ import annotations

from typing import Callable

from lfm_stream.kafka_security import KafkaSecurity
from learner.backoff import retry
from learner.config import LearnerConfig
from learner.kafka_io import Chunk
from learner.validate import Poison

REASON_HEADER = "lfm-reason"


class PoisonRecords:
    """Counts poison records (``count``, and per reason kind in ``by_reason``), logs each one (a line and a
    ``poison`` metrics event) and copies it to the dead-letter topic ``<topic>.dlq`` (``cfg.dlq``), retrying
    broker errors with backoff."""

    def __init__(self, cfg: LearnerConfig, say: Callable[[str], None], emit: Callable[..., dict]):
        self.topic, self.max_s = cfg.topic, cfg.retry_max_s
        self.say, self.emit = say, emit
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self.dlq = DeadLetters(cfg.bootstrap, cfg.dlq_topic, security=cfg.kafka_security) if cfg.dlq else None

    def handle(self, batch: Chunk, bad: list[tuple[int, Poison]]) -> None:
        """The poison records of ``batch``: ``(index in the batch, reason)``."""
        for idx, reason in bad:
            if not isinstance(reason, Poison):
                reason = Poison("invalid", str(reason))
            p, o = int(batch.parts[idx]), int(batch.offsets[idx])
            self.count += 1
            self.by_reason[reason.kind] = self.by_reason.get(reason.kind, 0) + 1
            self.say(f"poison record at {self.topic}[{p}]@{o} ({reason.kind}): {reason.detail}")
            self.emit("poison", partition=p, offset=o, kind=reason.kind, reason=reason.detail)
            if self.dlq is not None:
                key = batch.keys[idx] if batch.keys else None
                retry("dead-letter send", self.dlq.send, batch.values[idx], key, self.topic, p, o, reason,
                      say=self.say, max_s=self.max_s)
        if self.dlq is not None:  # dead letters are durable before the batch's offsets can be committed
            retry("dead-letter flush", self.dlq.flush, say=self.say, max_s=self.max_s)

    def close(self) -> None:
        """Flush and close the dead-letter producer."""
        if self.dlq is not None:
            self.dlq.close()


class DeadLetters:
    """Copies poison records to ``<topic>.dlq`` with headers naming partition, offset and reason."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 1, security: KafkaSecurity = KafkaSecurity()):
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.security = security
        self._producer = None

    def _ensure(self):
        if self._producer is None:
            from kafka import KafkaAdminClient, KafkaProducer
            from kafka.admin import NewTopic
            from kafka.errors import TopicAlreadyExistsError

            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap.split(","), request_timeout_ms=10000,
                                     **self.security.kafka_python())
            try:
                if self.topic not in admin.list_topics():
                    admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
            except TopicAlreadyExistsError:
                pass
            finally:
                admin.close()
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap.split(","), acks=1, retries=10,
                                           **self.security.kafka_python())
        return self._producer

    def send(self, value: bytes | None, key: bytes | None, source_topic: str, partition: int, offset: int,
             reason: Poison) -> None:
        """Queue one dead letter (call :meth:`flush` before committing past it)."""
        headers = [(REASON_HEADER, reason.kind.encode()), ("error", reason.detail.encode()),
                   ("topic", source_topic.encode()),
                   ("partition", str(partition).encode()), ("offset", str(offset).encode())]
        self._ensure().send(self.topic, value=value if value is not None else b"", key=key, headers=headers)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued dead letter is acknowledged."""
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self) -> None:
        """Flush and close the producer."""
        if self._producer is not None:
            self._producer.flush(10)
            self._producer.close(5)
            self._producer = None
