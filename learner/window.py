"""RowWindow: the PS rows a learner holds and trains in place between syncs with the PS (pure numpy, no I/O).

The learner pulls a row the first time a micro-batch touches it, trains it in place for every later
micro-batch, and writes the rows touched since the last sync back at each sync (see :mod:`learner.sync`).
Held rows are the learner's view of those rows: as the only writer of its rows (assign mode) this is
exactly the per-batch pull → step → push result, with one pull per distinct row and one write per row
and sync instead of one of each per micro-batch.  A single writer keeps its rows across syncs (a row is
pulled once); for gradient pushes the window is dropped after each sync (other workers change the same
rows) and keeps each row as pulled (``base``) next to its trained value (``cur``) so the sync can send the
difference.
"""

from __future__ import annotations

import numpy as np

from learner.idindex import IdIndex
from ps_redis.codec import row_dtype


class RowWindow:
    """Rows of one PS table held by the learner.

    Rows live in append-only slots (grown by doubling), so holding more rows never moves the ones already
    held; an :class:`~learner.idindex.IdIndex` maps ids to slots.  Micro-batches look their ids up once
    (:meth:`slots`) and then read and write rows by slot.

    Attributes:
        ids: int64 ids of the held rows, in slot order.
        cur: structured rows (:func:`ps_redis.codec.row_dtype`) as trained, in slot order.
        base: the same rows as of the last sync (or as pulled).
        new: rows that do not exist in the PS yet.
        dirty: rows changed since the last sync.
    """

    def __init__(self, dim: int):
        self.dtype = row_dtype(dim)
        self.clear()

    def clear(self) -> None:
        """Forget every row (the PS is the truth again)."""
        self.n = 0
        self._ids = np.zeros(0, np.int64)
        self._cur = np.zeros(0, self.dtype)
        self._base = np.zeros(0, self.dtype)
        self._new = np.zeros(0, bool)
        self._dirty = np.zeros(0, bool)
        self._index = IdIndex()  # id → slot

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

    @property
    def dirty(self) -> np.ndarray:
        return self._dirty[: self.n]

    def packed(self) -> np.ndarray:
        """``[n, 2d + 2]`` float32 view of the held rows' leading fields ``vec | bias | accum`` (the TF step's
        row layout); writing into it writes the rows (valid until more rows are added)."""
        cur = self._cur[: self.n]
        return cur.view(np.float32).reshape(self.n, -1)[:, : 2 * self.dtype["vec"].shape[0] + 2]

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where the row is not held."""
        return self._index.find(ids)

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask over ``ids``: True where the row is not held."""
        return self.slots(ids) < 0

    def add(self, ids: np.ndarray, rows: np.ndarray, new: np.ndarray | None = None) -> np.ndarray:
        """Hold pulled rows (distinct ids not held yet; ``rows`` structured as stored, ``new`` = not stored in
        the PS yet); returns their slots.  Added rows are clean until changed (:meth:`update_at`)."""
        ids = np.asarray(ids, np.int64)
        k = len(ids)
        if not k:
            return np.zeros(0, np.int64)
        if self.n + k > len(self._ids):
            size = max(2 * len(self._ids), self.n + k, 1024)
            for name in ("_ids", "_cur", "_base", "_new", "_dirty"):
                old = getattr(self, name)
                grown = np.zeros(size, old.dtype)
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        at = slice(self.n, self.n + k)
        self._ids[at] = ids
        self._base[at] = rows
        self._cur[at] = rows
        self._new[at] = False if new is None else new
        self._dirty[at] = False
        self._index.add(ids, np.arange(self.n, self.n + k))
        self.n += k
        return np.arange(self.n - k, self.n)

    def update_at(self, slots: np.ndarray, *, vec=None, bias=None, accum=None, count=None) -> None:
        """Assign the given fields of the rows at ``slots`` (distinct); ``count`` is added.  Marks them dirty."""
        for name, value in (("vec", vec), ("bias", bias), ("accum", accum)):
            if value is not None:
                self._cur[name][slots] = value
        if count is not None:
            self._cur["count"][slots] += np.asarray(count, np.int64)
        self._dirty[slots] = True

    def take_dirty(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, cur, base, new)`` copies of the dirty rows, which become clean: their base is their current
        value and they count as stored (the caller writes them to the PS)."""
        at = np.flatnonzero(self._dirty[: self.n])
        out = self._ids[at], self._cur[at], self._base[at], self._new[at]
        self._base[at] = out[1]
        self._new[at] = False
        self._dirty[at] = False
        return out
