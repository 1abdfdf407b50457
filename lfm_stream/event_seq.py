"""The event sequence number every replayed Kafka record carries: header ``lfm-seq``.

The value is the ASCII decimal of the record's index in the replay's time-ordered stream (its *global index*,
:mod:`producer.stream`, 0-based).  It is deterministic: a resumed replay continues the same numbering and a
record the producer sends again (after a broker outage) carries the same number, so the learner can tell a
re-sent event from a new one whatever Kafka offset it landed at.  A record without the header, or with a value
that is not 1 to 18 ASCII digits, has no sequence number: :func:`seq_of` returns -1 (:data:`NO_SEQ`).
"""

from __future__ import annotations

import numpy as np

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
            if type(value) is bytes and 0 < len(value) <= 18 and value.isdigit():
                return int(value)
            return NO_SEQ
    return NO_SEQ


def seqs_of(headers: list) -> np.ndarray:
    """:func:`seq_of` of every record of a consumer's batch, as int64.

    The usual case, ``lfm-seq`` as a record's first header, is checked inline (~0.3 µs a record; a call of
    :func:`seq_of` per record costs three times that), every other record goes through :func:`seq_of`.
    """
    return np.array([int(v) if h and h[0][0] == SEQ_HEADER and type(v := h[0][1]) is bytes and 0 < len(v) <= 18
                     and v.isdigit() else seq_of(h) for h in headers], np.int64)
