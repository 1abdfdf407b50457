"""The in-memory item matrix: hashed and raw movie ids, vectors, biases, unit vectors (pure, no I/O).

Rows live in capacity arrays that grow by doubling.  A reader takes a :class:`Snapshot` (views of the
first ``n`` rows plus the id maps) and computes on it without locks:

* a changed row is overwritten in place — a reader racing with the write may see that single row half
  old, half new, which is harmless for ranking, and the next request sees it whole;
* new rows are written past ``n`` and become visible when the new snapshot is published (one reference
  assignment, atomic under the GIL), so a reader never sees a half-initialized row;
* removed rows stay in place with ``valid = False`` (their score is forced to -inf).

One writer (the refresh thread) at a time; :meth:`ItemMatrix.upsert` is not safe against a second writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall_api.topk import lookup_rows, normalize_rows

#: raw movie ids below this are also mapped to rows by a dense int32 array (4 bytes per id up to the largest
#: one: 1.2 MB for MovieLens' ~300k ids, 16 MB at most), which the u2i request path indexes with numpy;
#: larger ids are looked up in the dict.
DENSE_RAW_LIMIT = 1 << 22


@dataclass(frozen=True)
class Snapshot:
    """A consistent read view of the first ``n`` rows."""

    n: int
    ids: np.ndarray  # int64[n] hashed movie ids
    raw: np.ndarray  # int64[n] raw MovieLens movie ids
    vec: np.ndarray  # float32[n, d]
    bias: np.ndarray  # float32[n]
    count: np.ndarray  # float32[n] events the learner trained each row on
    unit: np.ndarray  # float32[n, d], vec / ‖vec‖
    invalid: np.ndarray | None  # int64 row positions removed since the last full load (None = none)
    raw_pos: dict[int, int]  # raw movie id -> row (shared, only grows while this snapshot is in use)
    row_of_raw: np.ndarray  # int32[<= DENSE_RAW_LIMIT]: raw id -> row, -1 = none (shared likewise; raw_pos as an array)


class ItemMatrix:
    """Item rows keyed by hashed id, addressable by raw MovieLens id.

    Args:
        dim: vector dimension d.
        capacity: initial row capacity (grows by doubling).
    """

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = int(dim)
        cap = max(1, int(capacity))
        self._ids = np.zeros(cap, np.int64)
        self._raw = np.zeros(cap, np.int64)
        self._vec = np.zeros((cap, self.dim), np.float32)
        self._bias = np.zeros(cap, np.float32)
        self._count = np.zeros(cap, np.float32)
        self._unit = np.zeros((cap, self.dim), np.float32)
        self._valid = np.ones(cap, bool)
        self.pos: dict[int, int] = {}  # hashed id -> row
        self.raw_pos: dict[int, int] = {}  # raw id -> row
        self._row_of_raw = np.full(1024, -1, np.int32)  # raw_pos for raw ids < DENSE_RAW_LIMIT, as an array
        self.n = 0
        self.n_invalid = 0
        self._snap = self._make_snapshot()

    def __len__(self) -> int:
        """Rows with a valid vector."""
        return self.n - self.n_invalid

    def snapshot(self) -> Snapshot:
        """The current read view (cheap: returns the published object)."""
        return self._snap

    def _make_snapshot(self) -> Snapshot:
        n = self.n
        invalid = np.flatnonzero(~self._valid[:n]) if self.n_invalid else None
        return Snapshot(n, self._ids[:n], self._raw[:n], self._vec[:n], self._bias[:n], self._count[:n],
                        self._unit[:n],
                        invalid, self.raw_pos, self._row_of_raw)

    def _grow(self, need: int) -> None:
        cap = len(self._ids)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        for name in ("_ids", "_raw", "_vec", "_bias", "_count", "_unit", "_valid"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype) if name != "_valid" else np.ones(cap, bool)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)

    def upsert(self, ids: np.ndarray, raw: np.ndarray, vec: np.ndarray, bias: np.ndarray,
               count: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Write rows (overwrite known hashed ids, append new ones) and publish a new snapshot.

        Args:
            ids: int64[m] hashed movie ids (distinct).
            raw: int64[m] raw movie ids (>= 0; the caller drops rows it cannot name).
            vec: float32[m, d]; bias: float32[m]; count: events trained per row (None: 0).

        Returns:
            ``(updated rows, appended rows)``: row positions written, as int64 arrays.
        """
        ids = np.asarray(ids, np.int64)
        m = len(ids)
        if m == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        vec = np.asarray(vec, np.float32)
        if vec.shape != (m, self.dim):
            raise ValueError(f"item vectors have shape {vec.shape}, expected {(m, self.dim)}")
        rows = np.fromiter(map(self.pos.get, ids.tolist(), [-1] * m), np.int64, count=m)
        new = rows < 0
        n_new = int(new.sum())
        if n_new:
            self._grow(self.n + n_new)
            rows[new] = np.arange(self.n, self.n + n_new)
        unit = normalize_rows(vec)
        self._ids[rows] = ids
        self._raw[rows] = raw
        self._vec[rows] = vec
        self._bias[rows] = bias
        self._count[rows] = 0 if count is None else np.asarray(count, np.float32)
        self._unit[rows] = unit
        revived = ~new & ~self._valid[rows]
        if revived.any():
            self._valid[rows[revived]] = True
            self.n_invalid -= int(revived.sum())
        for h, r, row in zip(ids[new].tolist(), np.asarray(raw)[new].tolist(), rows[new].tolist()):
            self.pos[h] = row
            self.raw_pos[r] = row
        # a raw id can move to another hashed id only if rows were mislabeled; keep the newest mapping
        for r, row in zip(np.asarray(raw)[~new].tolist(), rows[~new].tolist()):
            if self.raw_pos.get(r) != row:
                self.raw_pos[r] = row
        self._mirror_raw_pos(np.asarray(raw, np.int64))
        self.n += n_new
        self._snap = self._make_snapshot()
        return rows[~new], rows[new]

    def _mirror_raw_pos(self, raw: np.ndarray) -> None:
        """Copy ``raw_pos`` entries of ``raw`` (those below DENSE_RAW_LIMIT) into the dense array."""
        raw = np.unique(raw[(raw >= 0) & (raw < DENSE_RAW_LIMIT)])
        if not len(raw):
            return
        table = self._row_of_raw
        top = int(raw[-1])
        if top >= len(table):  # grow: a new array, published with the next snapshot
            size = len(table)
            while size <= top:
                size *= 2
            grown = np.full(min(size, DENSE_RAW_LIMIT), -1, np.int32)
            grown[:len(table)] = table
            table = self._row_of_raw = grown
        table[raw] = lookup_rows(self.raw_pos, raw.tolist())

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Mark rows of hashed ``ids`` invalid (unknown ids are ignored); returns the rows marked."""
        rows = np.array([self.pos[h] for h in np.asarray(ids, np.int64).tolist() if h in self.pos], np.int64)
        if len(rows):
            rows = rows[self._valid[rows]]
            self._valid[rows] = False
            self.n_invalid += len(rows)
            self._snap = self._make_snapshot()
        return rows

    def row_of_raw(self, raw_id: int) -> int | None:
        """Row of a raw movie id whose vector is valid, else None."""
        row = self.raw_pos.get(raw_id)
        return row if row is not None and self._valid[row] else None
