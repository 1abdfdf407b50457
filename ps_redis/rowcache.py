"""The PS's row cache: the rows of this process's recent pulls and pushes, per table.

What the assign fast path (:mod:`ps_redis.fastpath`) builds whole rows from: references to the arrays the PS
built anyway (no copies), newest first, a few entries per table.  The PS drops a table's entries whenever the
server changes its rows another way (server-side pushes, delete, put_rows, flush, load).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class RowCache:
    """Rows of recent pulls / pushes per table (structured arrays of ``row_dtype``); newest first."""

    def __init__(self, depth: int = 4):
        self.depth = depth
        self._entries: dict[str, deque] = {}

    def remember(self, table: str, ids: np.ndarray, rows: np.ndarray, keys: list[bytes] | None = None,
                 new: np.ndarray | None = None) -> None:
        """Record rows as they are stored now (the arrays must not be modified afterwards).

        ``new`` marks rows that are not stored yet (a deferred create): the next fast push writes them
        and adds them to the table's row counter.
        """
        if new is not None and not new.any():
            new = None
        self._entries.setdefault(table, deque(maxlen=self.depth)).appendleft([ids, rows, None, keys, new])

    def forget(self, table: str | None = None) -> None:
        """Drop cached rows (of one table or all): after delete / flush / load / server-side pushes."""
        if table is None:
            self._entries.clear()
        else:
            self._entries.pop(table, None)

    def lookup(self, table: str, ids: np.ndarray) -> tuple[np.ndarray, list | None, np.ndarray | None] | None:
        """(rows for ``ids`` in order, keys or None, new-row mask or None), or None if any id is not cached.

        ``keys`` are the row keys remembered with an entry holding exactly ``ids`` in this order.
        """
        entries = self._entries.get(table)
        if not entries or not len(ids):
            return None
        entries = list(entries)  # a snapshot: other threads may pull (and append) meanwhile
        first = entries[0]
        if len(first[0]) == len(ids) and np.array_equal(first[0], ids):
            return first[1], first[3], first[4]
        out = np.empty(len(ids), dtype=first[1].dtype)
        new = np.zeros(len(ids), dtype=bool)
        todo = np.ones(len(ids), dtype=bool)
        for entry in entries:
            cids, crows, order, _, cnew = entry
            if order is None:
                order = entry[2] = np.argsort(cids, kind="stable")
            sorted_ids = cids[order]
            pos = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
            hit = todo & (sorted_ids[pos] == ids)
            out[hit] = crows[order[pos[hit]]]
            if cnew is not None:
                new[hit] = cnew[order[pos[hit]]]
            todo &= ~hit
            if not todo.any():
                return out, None, new if new.any() else None
        return None
