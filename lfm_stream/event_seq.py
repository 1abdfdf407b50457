"""The event sequence number every replayed Kafka record carries: header ``lfm-seq``.

The value is the ASCII decimal of the record's index in the replay's time-ordered stream (its *global index*,
:mod:`producer.stream`, 0-based).  It is deterministic: a resumed replay continues the same numbering and a
record the producer sends again (after a broker outage) carries the same number, so the learner can tell a
re-sent event from a new one whatever Kafka offset it landed at.  A record without the header, or with a value
that is not 1 to 18 ASCII digits, has no sequence number: :func:`seq_of` returns -1 (:data:`NO_SEQ`).
"""

from __future__ import annotations

SEQ_HEADER = "lfm-seq"
NO_SEQ = -1


def seq_header(index: int) -> tuple[str, bytes]:
    """The ``(key, value)`` header of the record with global index ``index``."""
    return SEQ_HEADER, b"%d" % index


def seq_of(headers) -> int:
    """The sequence number in a record's headers (a list of ``(str, bytes)`` pairs, as kafka-python and
    confluent-kafka give them; None = no headers), or :data:`NO_SEQ`."""
    for key, value in headers or ():
        if key == SEQ_HEADER:
            if isinstance(value, bytes) and 0 < len(value) <= 18 and value.isdigit():
                return int(value)
            return NO_SEQ
    return NO_SEQ
