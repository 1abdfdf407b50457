"""RowWindow: the PS rows a learner holds between two syncs with the PS (pure numpy, no I/O).

The learner pulls a row the first time a micro-batch of the window touches it, trains it in place for
every later micro-batch of the window, and writes it back once when the window is synced (see
:mod:`learner.loop`).  Between syncs the window is the learner's view of those rows: as the only
writer of its rows (assign mode) this is exactly the per-batch pull → step → push result, with one
pull and one write per distinct row instead of one per micro-batch.  For gradient pushes the window
keeps each row as pulled (``base``) next to its trained value (``cur``) so the sync can send the
difference.
"""

from __future__ import annotations

import numpy as np

from ps_redis.codec import row_dtype


class RowWindow:
    """Rows of one PS table held since the last sync.

    Rows live in append-only slots (grown by doubling); a sorted id index maps ids to slots, so holding
    more rows never moves the ones already held.

    Attributes:
        ids: int64 ids of the held rows, in slot order.
        cur: structured rows (:func:`ps_redis.codec.row_dtype`) as trained, in slot order.
        base: the same rows as pulled.
        new: rows that did not exist in the PS when pulled.
    """

    def __init__(self, dim: int):
        self.dtype = row_dtype(dim)
        self.clear()

    def clear(self) -> None:
        """Forget every row (after a sync: the PS is the truth again)."""
        self.n = 0
        self._ids = np.zeros(0, np.int64)
        self._cur = np.zeros(0, self.dtype)
        self._base = np.zeros(0, self.dtype)
        self._new = np.zeros(0, bool)
        self._sorted = np.zeros(0, np.int64)  # ids, sorted
        self._slot = np.zeros(0, np.int64)  # slot of each sorted id

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    @property
    def cur(self) -> np.ndarray:
        return self._cur[: self.n]

    @property
    def base(self) -> np.ndarray:
        return self._base[: self.n]

    @property
    def new(self) -> np.ndarray:
        return self._new[: self.n]

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot of each id, held mask)."""
        pos = np.searchsorted(self._sorted, ids)
        hit = np.zeros(len(ids), bool)
        inside = pos < len(self._sorted)
        hit[inside] = self._sorted[pos[inside]] == ids[inside]
        slots = np.zeros(len(ids), np.int64)
        slots[hit] = self._slot[pos[hit]]
        return slots, hit

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask over ``ids``: True where the row is not held."""
        return ~self._find(np.asarray(ids, np.int64))[1]

    def add(self, ids: np.ndarray, rows: np.ndarray, new: np.ndarray | None = None,
            cur: np.ndarray | None = None) -> None:
        """Hold pulled rows (distinct ids not held yet; ``rows`` structured as stored, ``new`` = not stored in
        the PS yet, ``cur`` = the values to train from when they differ from the stored ones)."""
        ids = np.asarray(ids, np.int64)
        k = len(ids)
        if not k:
            return
        if self.n + k > len(self._ids):
            size = max(2 * len(self._ids), self.n + k, 1024)
            for name in ("_ids", "_cur", "_base", "_new"):
                old = getattr(self, name)
                grown = np.zeros(size, old.dtype)
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        at = slice(self.n, self.n + k)
        self._ids[at] = ids
        self._base[at] = rows
        self._cur[at] = rows if cur is None else cur
        self._new[at] = False if new is None else new
        slots = np.arange(self.n, self.n + k)
        self.n += k
        merged = np.concatenate([self._sorted, ids])
        order = np.argsort(merged, kind="stable")
        self._sorted = merged[order]
        self._slot = np.concatenate([self._slot, slots])[order]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Current rows of held ``ids`` (a copy, in the order asked)."""
        slots, hit = self._find(np.asarray(ids, np.int64))
        if not hit.all():
            raise KeyError(f"{int((~hit).sum())} ids are not held, e.g. {int(np.asarray(ids)[~hit][0])}")
        return self._cur[slots]

    def update(self, ids: np.ndarray, *, vec=None, bias=None, accum=None, count=None) -> None:
        """Assign the given fields of held rows; ``count`` is added."""
        slots, hit = self._find(np.asarray(ids, np.int64))
        if not hit.all():
            raise KeyError(f"{int((~hit).sum())} ids are not held")
        for name, value in (("vec", vec), ("bias", bias), ("accum", accum)):
            if value is not None:
                self._cur[name][slots] = value
        if count is not None:
            self._cur["count"][slots] += np.asarray(count, np.int64)
