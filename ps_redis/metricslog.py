"""The learner's log records in a capped Redis stream, for the recall service's live dashboard.

Key ``<ns>:@metrics`` (one stream per namespace; ``@`` never appears in a table name, so it cannot collide with
rows): one entry per record, field ``json`` = the record as JSON.  The learner appends what it writes to its
metrics file (``train``, ``test``, ``assign``, ``end`` … records: see :mod:`learner.report`) plus a
``progress`` record every few seconds (events, rate, consumer lag, state); the stream is trimmed to about
``maxlen`` entries (``XADD MAXLEN ~``), so it holds the recent past of every learner writing to the namespace.
The recall service reads it with :meth:`MetricsLog.read` (``XRANGE`` after the last id a client has).
"""

from __future__ import annotations

import json

DEFAULT_MAXLEN = 20_000  # entries kept (approximately): ~5 h of progress records, every train/test record of a run


def metrics_key(namespace: str) -> str:
    """The stream's key for ``namespace``."""
    return f"{namespace}:@metrics"


class MetricsLog:
    """Append to / read from the metrics stream of one namespace.

    Args:
        redis: a redis-py client (``redis.Redis`` or ``RedisCluster``; the stream is one key).
        namespace: the PS namespace.
        maxlen: approximate number of entries kept.
    """

    def __init__(self, redis, namespace: str, maxlen: int = DEFAULT_MAXLEN) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1 (got {maxlen})")
        self.redis, self.key, self.maxlen = redis, metrics_key(namespace), maxlen

    def append(self, record: dict) -> str:
        """Append one record; returns its stream id."""
        sid = self.redis.xadd(self.key, {"json": json.dumps(record, separators=(",", ":"))},
                              maxlen=self.maxlen, approximate=True)
        return sid.decode() if isinstance(sid, bytes) else sid

    def tail(self, count: int = 5000) -> tuple[list[dict], str | None]:
        """The newest ``count`` records, oldest first, and the id of the newest (None when the stream is empty)."""
        entries = self.redis.xrevrange(self.key, max="+", min="-", count=count)
        return self._decode(reversed(entries), None)

    def read(self, after: str | None = None, count: int = 5000) -> tuple[list[dict], str | None]:
        """Up to ``count`` records after stream id ``after`` (from the oldest kept when None), oldest first, and
        the id of the last one (``after`` when there is none).  An entry that is not valid JSON is skipped."""
        start = f"({after}" if after else "-"
        return self._decode(self.redis.xrange(self.key, min=start, max="+", count=count), after)

    @staticmethod
    def _decode(entries, last: str | None) -> tuple[list[dict], str | None]:
        out = []
        for sid, fields in entries:
            last = sid.decode() if isinstance(sid, bytes) else sid
            raw = fields.get(b"json", fields.get("json"))
            try:
                out.append(json.loads(raw))
            except (TypeError, ValueError):
                continue
        return out, last
