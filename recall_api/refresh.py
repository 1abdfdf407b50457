"""Loading the in-memory item matrix from the PS, and keeping it fresh from the learner's change stream.

A full load takes ``log.cursor()`` first, then scans every item row, so changes made during the scan are re-pulled
by the next incremental step.  An incremental step asks the activity log for the hashed item ids changed since the
cursor and re-pulls only those (``ps.pull("item", ids, create=False)``); rows gone from the PS leave the matrix.
:class:`~ps_redis.activity.CursorExpired` from ``changes_since`` (the cursor fell off the capped stream, or the log
restarted) tells the caller to reload.

Whatever Redis holds, a load neither crashes nor allocates without bound: a stored value of the wrong length, a
vector or bias that is not finite or beyond ±:data:`MAX_ABS`, a raw id outside [0, 2**32) that the catalog cannot
name, a key whose id is no int64 are skipped with a log line (and counted in ``stats.extra["rows_skipped"]``); a
row that turns bad leaves the matrix; a malformed change-stream entry triggers a full reload (whose cursor is past
it); the initial capacity does not trust the row counter beyond :data:`MAX_INITIAL_CAPACITY`, and a namespace
whose dimension exceeds :data:`MAX_DIM` is not loaded (a :class:`~ps_redis.PSError`: the store reports it and
retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from ps_redis import PSError
from ps_redis.activity import CursorExpired
from ps_redis.codec import CorruptRowError
from ps_redis.connection import node_clients
from ps_redis.keys import KeySpace
from ps_redis.types import Rows
from recall_api.catalog import Catalog
from recall_api.matrix import ItemMatrix
from recall_api.types import RefreshStats, StoreConfig, cursor_ms

logger = logging.getLogger("recall_api")

MAX_ABS = 1e6  # a trained vector entry or bias is far below this; beyond, scores could overflow float32
RAW_ID_LIMIT = 1 << 32  # raw movie ids the learner accepts: [0, 2**32)
MAX_INITIAL_CAPACITY = 1 << 18  # rows preallocated at most (the matrix grows by doubling past it)
MAX_DIM = 4096  # vector dimensions loaded at most
_I64 = np.iinfo(np.int64)
_FIELDS = ("ids", "vec", "bias", "accum", "count", "updated", "raw", "found")


def skipped(stats: RefreshStats, n: int = 1) -> None:
    """Count ``n`` rows left out of the matrix (``/stats``: ``rows_skipped``)."""
    stats.extra["rows_skipped"] = stats.extra.get("rows_skipped", 0) + n


def pull_items(ps, ids: np.ndarray, stats: RefreshStats) -> Rows:
    """``ps.pull("item", ids, create=False)``, with each stored value of the wrong length logged, counted and
    returned as absent (the batch is split until the bad values are isolated: one MGET when all are good)."""
    try:
        return ps.pull("item", ids, create=False)
    except CorruptRowError as exc:
        if len(ids) == 1:
            logger.warning("skipped item row: %s", exc)
            skipped(stats)
            d = ps.dim
            return Rows(ids=np.asarray(ids, np.int64), vec=np.zeros((1, d), np.float32), bias=np.zeros(1, np.float32),
                        accum=np.zeros((1, d + 1), np.float32), count=np.zeros(1, np.int64),
                        updated=np.zeros(1), raw=np.full(1, -1, np.int64), found=np.zeros(1, bool))
        mid = len(ids) // 2
        parts = [pull_items(ps, ids[:mid], stats), pull_items(ps, ids[mid:], stats)]
        return Rows(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS})


def scan_items(ps, chunk: int, stats: RefreshStats) -> Iterator[Rows]:
    """Every item row in chunks of up to ``chunk`` (SCAN of the row keys, each id once, then :func:`pull_items`;
    absent rows come back with ``found`` False); a key whose id is no int64 is logged and skipped."""
    pattern = ps.keys.scan_patterns("item")[0]
    seen: set[int] = set()
    for node in node_clients(ps.redis, ps.is_cluster):
        batch: list[int] = []
        cursor = None
        while cursor != 0:
            with ps.io():
                cursor, keys = node.scan(cursor or 0, match=pattern, count=chunk)
            for key in keys:
                hid = KeySpace.id_of(key)
                if hid is None or hid in seen:
                    continue
                if not _I64.min <= hid <= _I64.max:
                    logger.warning("skipped item key %r: its id is no int64", key)
                    skipped(stats)
                    continue
                seen.add(hid)
                batch.append(hid)
            while len(batch) >= chunk:
                yield pull_items(ps, np.array(batch[:chunk], np.int64), stats)
                batch = batch[chunk:]
        if batch:
            yield pull_items(ps, np.array(batch, np.int64), stats)


def full_load(ps, log, catalog: Catalog, config: StoreConfig, stats: RefreshStats):
    """Every item row into a new matrix (and a Faiss index with ``config.faiss``); returns (matrix, index, cursor)."""
    if not 1 <= ps.dim <= MAX_DIM:  # a dim from a garbage @meta would size the matrix
        raise PSError(f"namespace {ps.namespace!r} holds dim-{ps.dim} rows, more than the {MAX_DIM} this service "
                      "loads; not loading")
    cursor = log.cursor()  # first, so changes made during the scan are re-pulled afterwards
    try:
        expected = ps.count("item")
    except ValueError as exc:  # the row counter holds no integer
        logger.warning("item row counter unreadable (%s); starting from a small matrix", exc)
        expected = 0
    matrix = ItemMatrix(ps.dim, capacity=min(max(1024, expected), MAX_INITIAL_CAPACITY))
    stats.unmapped = 0
    stats.extra["rows_skipped"] = 0
    for rows in scan_items(ps, config.chunk, stats):
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
    try:
        cursor, ids = log.changes_since(cursor)
    except (KeyError, ValueError, TypeError, IndexError) as exc:  # an entry that is no list of item ids
        logger.warning("malformed entry in the change stream (%s: %s); reloading every item",
                       type(exc).__name__, exc)
        raise CursorExpired(f"malformed change-stream entry after {cursor!r}") from exc
    for start in range(0, len(ids), config.chunk):
        part = ids[start:start + config.chunk]
        rows = pull_items(ps, part, stats)
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
    """Upsert the found rows; a row without a usable raw id is named from the catalog (or skipped, counted in
    ``stats.unmapped``); a row whose vector or bias is not finite or beyond ±MAX_ABS is skipped (logged,
    counted) and leaves the matrix if it was in it."""
    found = rows.found
    if not found.all():
        rows_ids, raw, vec, bias, count = (rows.ids[found], rows.raw[found], rows.vec[found], rows.bias[found],
                                           rows.count[found])
    else:
        rows_ids, raw, vec, bias, count = rows.ids, rows.raw, rows.vec, rows.bias, rows.count
    if len(rows_ids) == 0:
        return
    with np.errstate(invalid="ignore"):
        sane = (np.abs(vec) <= MAX_ABS).all(axis=1) & (np.abs(bias) <= MAX_ABS)  # False for NaN too
    if not sane.all():
        bad = rows_ids[~sane]
        logger.warning("skipped %d item row(s) whose vector or bias is not finite or beyond ±%g, e.g. hashed id %d",
                    len(bad), MAX_ABS, int(bad[0]))
        skipped(stats, len(bad))
        removed = matrix.remove(bad)
        if index is not None and len(removed):
            index.remove(removed)
        rows_ids, raw, vec, bias, count = rows_ids[sane], raw[sane], vec[sane], bias[sane], count[sane]
    raw = raw.copy()
    unknown = (raw < 0) | (raw >= RAW_ID_LIMIT)
    if unknown.any():  # the learner did not store the raw id: name the row from the catalog
        names = catalog.raw_of_hash
        raw[unknown] = [names.get(h, -1) for h in rows_ids[unknown].tolist()]
        keep = raw >= 0
        stats.unmapped += int((~keep).sum())
        rows_ids, raw, vec, bias, count = rows_ids[keep], raw[keep], vec[keep], bias[keep], count[keep]
    updated, appended = matrix.upsert(rows_ids, raw, vec, bias, count)
    stats.rows_applied += len(rows_ids)
    if index is not None and index.ready:
        written = np.concatenate([updated, appended])
        index.upsert(written, matrix._vec[written], matrix._bias[written])
