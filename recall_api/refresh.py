"""Loading the in-memory item matrix from the PS, and keeping it fresh from the learner's change stream.

A full load takes ``log.cursor()`` first, then scans every item row (``ps.scan("item")``), so changes made
during the scan are re-pulled by the next incremental step.  An incremental step asks the activity log for
the hashed item ids changed since the cursor and re-pulls only those (``ps.pull("item", ids,
create=False)``); rows gone from the PS leave the matrix.  :class:`~ps_redis.activity.CursorExpired` from
``changes_since`` (the cursor fell off the capped stream, or the log restarted) tells the caller to reload.
"""

from __future__ import annotations

import time

import numpy as np

from recall_api.catalog import Catalog
from recall_api.matrix import ItemMatrix
from recall_api.types import RefreshStats, StoreConfig, cursor_ms


def full_load(ps, log, catalog: Catalog, config: StoreConfig, stats: RefreshStats):
    """Every item row into a new matrix (and a Faiss index with ``config.faiss``); returns (matrix, index, cursor)."""
    cursor = log.cursor()  # first, so changes made during the scan are re-pulled afterwards
    matrix = ItemMatrix(ps.dim, capacity=max(1024, ps.count("item")))
    stats.unmapped = 0
    for rows in ps.scan("item", chunk=config.chunk):
        apply_rows(matrix, rows, None, catalog, stats)
    index = None
    if config.faiss:
        from recall_api.index import FaissIndex

        index = FaissIndex(matrix.dim, nprobe=config.faiss_nprobe)
        snap = matrix.snapshot()
        index.build(snap.vec, snap.bias)
    stats.full_reloads += 1
    stats.last_full_reload = time.time()
    stats.applied_change_ms = cursor_ms(cursor)
    return matrix, index, cursor


def incremental(ps, log, catalog: Catalog, config: StoreConfig, stats: RefreshStats, matrix: ItemMatrix, index,
                cursor: str) -> str:
    """Re-pull the items changed since ``cursor`` into ``matrix`` (and ``index``); returns the new cursor.

    Raises:
        CursorExpired: the caller must do a :func:`full_load`.
    """
    cursor, ids = log.changes_since(cursor)
    for start in range(0, len(ids), config.chunk):
        part = ids[start:start + config.chunk]
        rows = ps.pull("item", part, create=False)
        gone = part[~rows.found]
        if len(gone):
            removed = matrix.remove(gone)
            if index is not None:
                index.remove(removed)
        apply_rows(matrix, rows, index, catalog, stats)
    stats.applied_change_ms = cursor_ms(cursor) or stats.applied_change_ms
    if index is not None and index.needs_rebuild(matrix.n):
        snap = matrix.snapshot()
        index.build(snap.vec, snap.bias)
        if snap.invalid is not None:
            index.remove(snap.invalid)
    return cursor


def apply_rows(matrix: ItemMatrix, rows, index, catalog: Catalog, stats: RefreshStats) -> None:
    """Upsert the found rows; a row without a raw id is named from the catalog (or skipped, counted)."""
    found = rows.found
    if not found.all():
        rows_ids, raw, vec, bias = rows.ids[found], rows.raw[found], rows.vec[found], rows.bias[found]
    else:
        rows_ids, raw, vec, bias = rows.ids, rows.raw, rows.vec, rows.bias
    if len(rows_ids) == 0:
        return
    raw = raw.copy()
    unknown = raw < 0
    if unknown.any():  # the learner did not store the raw id: name the row from the catalog
        names = catalog.raw_of_hash
        raw[unknown] = [names.get(h, -1) for h in rows_ids[unknown].tolist()]
        keep = raw >= 0
        stats.unmapped += int((~keep).sum())
        rows_ids, raw, vec, bias = rows_ids[keep], raw[keep], vec[keep], bias[keep]
    updated, appended = matrix.upsert(rows_ids, raw, vec, bias)
    stats.rows_applied += len(rows_ids)
    if index is not None and index.ready:
        written = np.concatenate([updated, appended])
        index.upsert(written, matrix._vec[written], matrix._bias[written])
