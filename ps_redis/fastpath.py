"""Assign-push fast path: one native MSET of whole packed rows instead of a Lua read-modify-write.

Lua spends ~3 µs per row rebuilding strings; a client-packed MSET costs what a raw MSET costs.
The PS can pack whole rows itself when it knows the rows' current values, which it does right
after pulling them (the learner's pull → compute → push cycle): its row cache (:mod:`ps_redis.rowcache`) keeps
the rows of the last few pulls and pushes per table (references to arrays the PS built anyway, no copies).
A push qualifies when

- mode is ``assign`` and the server is standalone (a cluster uses the per-slot-group Lua path),
- every id was seen by this process's recent pulls / pushes (else the Lua path runs).

Then the new row is the cached row with the given fields replaced, ``count ← cached count + Δcount``
and ``updated ← now``; with one writer per row this is exactly what the server-side path computes.
Two processes assigning the same row are last-writer-wins for the whole row (vectors as well as
count): use ``mode="gradient"`` for concurrent learners.  A row deleted by another process between
this process's pull and its assign push is written back (and the table's row counter, which only
the server-side paths maintain, then undercounts it by one until the next flush / load).

A fenced fast push is one ``FCALL lfm_write`` (:func:`transact`): the fence check, the rows (MSET in
Lua) and the offsets in one Function call, skipped when covered.  Rows pulled with ``defer_create=True``
are cached as *new*: the write that first stores them also adds them to the table's row counter (an
``INCRBY`` in the same call).  :func:`write_rows` is the same call for a caller that holds whole rows
itself (the learner's sync window), with extra commands (its activity-log record)
inside.  It replaced ``WATCH; MULTI; MSET; ...; HSET fence; EXEC``, whose EXEC commits the rows and the
offsets even when a command inside fails (see :func:`transact`).
"""

from __future__ import annotations

import time

import numpy as np

from ps_redis.codec import encode, row_dtype
from ps_redis.connection import call
from ps_redis.interface import ParameterServerAPI
from ps_redis.keys import check_table
from ps_redis.types import NO_FENCE, Fence, as_ids


def mset_args(keys: list[bytes], rows: np.ndarray) -> list[bytes]:
    """Interleaved ``k1 v1 k2 v2 ...`` for MSET."""
    flat: list = [None] * (2 * len(keys))
    flat[0::2] = keys
    flat[1::2] = encode(rows)
    return flat


def apply_assign(cached: np.ndarray, packed: np.ndarray, mask: int, now: float) -> np.ndarray:
    """New whole rows: given fields replaced, ``count += Δcount``, ``updated = now``."""
    rows = cached.copy()
    for name in packed.dtype.names:
        if name == "count":
            rows["count"] += packed["count"]
        elif name != "none":
            rows[name] = packed[name]
    rows["updated"] = now
    return rows


def subcall(command: tuple) -> list:
    """``name, nkeys, nargs, keys..., args...`` of one command inside ``lfm_write``: an ``FCALL`` of the library
    (``FCALL name numkeys keys... args...``) or a single-key Redis command (``INCRBY key n``, key first)."""
    if str(command[0]).upper() == "FCALL":
        name, nkeys = command[1], int(command[2])
        keys, args = command[3:3 + nkeys], command[3 + nkeys:]
    else:
        name, keys, args = command[0], command[1:2], command[2:]
    return [name, len(keys), len(args), *keys, *args]


def transact(ps: ParameterServerAPI, keys: list[bytes], rows: list[np.ndarray], commands: list[tuple], fence: Fence | None) -> bool:
    """Store whole ``rows`` at ``keys``, run ``commands`` and raise the offsets of ``fence`` (if it has any) in one
    ``FCALL lfm_write``: False (nothing written) when the fence is already covered.

    One Function call is all or nothing where a MULTI/EXEC is not: EXEC runs every queued command even when one
    fails (a Redis restarted without persistence answers ``FCALL lfm_activity`` with "Function not found" and
    still commits the rows and the offsets).  Without the library nothing runs; the PS reloads it and resends
    (:meth:`ParameterServer.run`).  Offsets below ``fence.stored`` raise :class:`PSStateLost` (nothing written).
    """
    fenced = fence is not None and bool(fence.offsets)
    fkeys = [ps.keys.fence(fence.group, fence.topic)] if fenced else []
    calls = [subcall(c) for c in commands]
    sub_keys = [k for c in calls for k in c[3:3 + c[1]]]
    sub_parts = [x for c in calls for x in (*c[:3], *c[3 + c[1]:])]
    values = [v for r in rows for v in encode(r)]
    all_keys = [*fkeys, *keys, *sub_keys]
    args = ("FCALL", "lfm_write", len(all_keys), *all_keys, *(fence.block() if fenced else NO_FENCE),
            len(values), *values, len(calls), *sub_parts)
    return bool(ps.run([(all_keys[0] if all_keys else ps.keys.meta, args)])[0])


def assign(ps: ParameterServerAPI, packed: list, fence: Fence | None, now: float) -> bool | None:
    """``ps.push`` in assign mode as one MSET when every row is in the row cache, else None (Lua path)."""
    all_keys: list = []
    all_rows = []
    fresh = []
    counts: list[tuple] = []  # INCRBY of the row counters for rows created by this push
    for table, ids, mask, arr in packed:
        hit = ps.row_cache.lookup(table, ids)
        if hit is None:
            return None
        rows = apply_assign(hit[0], arr, mask, now)
        keys = hit[1] if hit[1] is not None else ps.keys.row_keys(table, ids)
        all_keys += keys
        all_rows.append(rows)
        fresh.append((table, ids, rows, keys))
        if hit[2] is not None:
            counts.append(("INCRBY", ps.keys.counter(table), int(hit[2].sum())))
    if fence is None and not counts:
        with ps.io():  # a lone unfenced MSET needs no Function
            call(ps.redis, "MSET", *mset_args(all_keys, np.concatenate(all_rows)))
        applied = True
    else:
        applied = transact(ps, all_keys, all_rows, counts, fence)
    if applied:
        for table, ids, rows, keys in fresh:
            ps.row_cache.remember(table, ids.copy(), rows, keys)
    return applied


def write_rows(ps: ParameterServerAPI, tables: dict[str, tuple], fence: Fence | None,
               extra: list[tuple]) -> bool:
    """:meth:`ParameterServer.write_rows` on a standalone server."""
    now = time.time()
    all_keys: list = []
    all_rows = []
    commands: list[tuple] = list(extra)  # first: a failing side write stops the call before any row
    written = []
    for table, (ids, rows, new) in tables.items():
        check_table(table)
        ids = as_ids(ids)
        if rows.dtype != row_dtype(ps.dim) or len(rows) != len(ids):
            raise ValueError(f"write_rows {table}: expected {len(ids)} rows of dim {ps.dim}, "
                             f"got {len(rows)} of dtype {rows.dtype}")
        if not len(ids):
            continue
        rows = rows.copy()
        rows["updated"] = now
        keys = ps.keys.row_keys(table, ids)
        all_keys += keys
        all_rows.append(rows)
        created = int(np.count_nonzero(new))
        if created:
            commands.append(("INCRBY", ps.keys.counter(table), created))
        written.append((table, ids, rows, keys))
    if not all_keys and not commands and not (fence is not None and fence.offsets):
        return False
    applied = transact(ps, all_keys, all_rows, commands, fence)
    for table, ids, rows, keys in written:
        ps.row_cache.forget(table)
        if applied:
            ps.row_cache.remember(table, ids.copy(), rows, keys)
    return applied
