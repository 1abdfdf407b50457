"""IdIndex: distinct int64 ids → row numbers, kept as sorted arrays (pure numpy, no I/O).

Lookups and inserts are vectorized (``searchsorted`` / ``insert``): a per-id dict lookup is a Python loop that
holds the GIL, which the learner's consumer thread then takes for long stretches.  Used by the held rows
(:class:`learner.window.RowWindow`) and the prequential HR item mirror (:class:`learner.evaluate.ItemMirror`).
"""

from __future__ import annotations

import numpy as np


class IdIndex:
    """Sorted ids and the row of each."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every id."""
        self._ids = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def find(self, ids) -> np.ndarray:
        """Row of each id, -1 where the id is absent."""
        ids = np.asarray(ids, np.int64)
        if not len(self._ids):
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        return np.where(self._ids[pos] == ids, self._rows[pos], -1)

    def add(self, ids, rows) -> None:
        """Insert distinct ids that are not in the index yet, with their rows."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids)
        at = np.searchsorted(self._ids, ids[order])
        self._ids = np.insert(self._ids, at, ids[order])
        self._rows = np.insert(self._rows, at, np.asarray(rows, np.int64)[order])
