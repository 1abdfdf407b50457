"""Assign-push fast path: one native MSET of whole packed rows instead of a Lua read-modify-write.

Lua spends ~3 µs per row rebuilding strings; a client-packed MSET costs what a raw MSET costs.
The PS can pack whole rows itself when it knows the rows' current values, which it does right
after pulling them (the learner's pull → compute → push cycle): :class:`RowCache` keeps the rows of
the last few pulls and pushes per table (references to arrays the PS built anyway, no copies).
A push qualifies when

- mode is ``assign`` and the server is standalone (a cluster uses the per-slot-group Lua path),
- every id was seen by this process's recent pulls / pushes (else the Lua path runs).

Then the new row is the cached row with the given fields replaced, ``count ← cached count + Δcount``
and ``updated ← now``; with one writer per row this is exactly what the server-side path computes.
Two processes assigning the same row are last-writer-wins for the whole row (vectors as well as
count): use ``mode="gradient"`` for concurrent learners.  A row deleted by another process between
this process's pull and its assign push is written back (and the table's row counter, which only
the server-side paths maintain, then undercounts it by one until the next flush / load).

A fenced fast push is ``WATCH fence; HMGET fence; MULTI; MSET rows; HSET fence; EXEC``: skipped
when covered, and retried from the coverage check if another process changed the offsets meanwhile.
Rows pulled with ``defer_create=True`` are cached as *new*: the write that first stores them also adds
them to the table's row counter (``INCRBY`` in the same transaction).  :func:`write_rows` is the same
transaction for a caller that holds whole rows itself (the learner's sync window), with extra commands
(its activity-log record) inside.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import redis

from ps_redis.codec import encode, row_dtype
from ps_redis.connection import call, pack
from ps_redis.keys import check_table
from ps_redis.types import Fence, as_ids


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


def mset_args(keys: list[bytes], rows: np.ndarray) -> list[bytes]:
    """Interleaved ``k1 v1 k2 v2 ...`` for MSET."""
    flat: list = [None] * (2 * len(keys))
    flat[0::2] = keys
    flat[1::2] = encode(rows)
    return flat


def fenced_mset(client: redis.Redis, flat: list[bytes], fence_key: str, fence: Fence, max_tries: int = 16,
                extra: list[tuple] = ()) -> bool:
    """MSET ``flat`` (and the ``extra`` commands) and raise the offsets in ``fence_key`` in one MULTI/EXEC,
    unless already covered.

    Two round trips on one pooled connection: ``WATCH + HMGET``, then ``MULTI, MSET, HSET, EXEC``
    (or ``UNWATCH`` when covered).  A lost connection retries the whole exchange (the retry policy
    of the client): safe, because a push that did land is then found covered.
    """
    parts = sorted(int(p) for p in fence.offsets)
    pool = client.connection_pool
    conn = pool.get_connection()

    def attempt() -> bool | None:
        conn.send_packed_command(conn.pack_commands([("WATCH", fence_key), ("HMGET", fence_key, *parts)]))
        conn.read_response()
        stored = [int(v) if v is not None else None for v in conn.read_response()]
        want = [int(fence.offsets[p]) for p in parts]
        if all(s is not None and s >= w for s, w in zip(stored, want)):
            conn.send_packed_command(conn.pack_command("UNWATCH"))
            conn.read_response()
            return False
        raise_to = [x for p, s, w in zip(parts, stored, want) if s is None or s < w for x in (p, w)]
        writes = [("MSET", *flat)] if flat else []
        commands = [("MULTI",), *writes, *extra, ("HSET", fence_key, *raise_to), ("EXEC",)]
        conn.send_packed_command([pack(c) for c in commands])
        for _ in commands[:-1]:
            conn.read_response()  # OK, QUEUED...
        return None if conn.read_response() is None else True  # EXEC is nil when the WATCH fired

    try:
        for _ in range(max_tries):
            applied = conn.retry.call_with_retry(attempt, lambda _err: conn.disconnect())
            if applied is not None:
                return applied
            # another learner moved the offsets meanwhile: check coverage again
    except BaseException:
        conn.disconnect()  # the protocol state of this connection is unknown now
        raise
    finally:
        pool.release(conn)
    raise redis.WatchError(f"offsets {fence_key!r} kept changing during {max_tries} attempts")


# ------------------------------------------------------------------------------ the writes
def transact(ps, flat: list, commands: list[tuple], fence: Fence | None) -> bool:
    """``MSET flat`` (if any) and ``commands`` in one MULTI/EXEC, fenced when ``fence`` has offsets (then
    False when already covered); a lone unfenced MSET is sent as it is."""
    with ps._io():
        if fence is not None and fence.offsets:
            return fenced_mset(ps.redis, flat or None, ps.keys.fence(fence.group, fence.topic), fence, extra=commands)
        if flat and not commands:
            call(ps.redis, "MSET", *flat)
            return True
        pipe = ps.redis.pipeline(transaction=True)
        for cmd in ([("MSET", *flat)] if flat else []) + list(commands):
            pipe.execute_command(*cmd)
        pipe.execute()
        return True


def assign(ps, packed: list, fence: Fence | None, now: float) -> bool | None:
    """``ps.push`` in assign mode as one MSET when every row is in the row cache, else None (Lua path)."""
    flat: list = []
    fresh = []
    counts: list[tuple] = []  # INCRBY of the row counters for rows created by this push
    for table, ids, mask, arr in packed:
        hit = ps._rows.lookup(table, ids)
        if hit is None:
            return None
        rows = apply_assign(hit[0], arr, mask, now)
        keys = hit[1] if hit[1] is not None else ps.keys.row_keys(table, ids)
        flat += mset_args(keys, rows)
        fresh.append((table, ids, rows, keys))
        if hit[2] is not None:
            counts.append(("INCRBY", ps.keys.counter(table), int(hit[2].sum())))
    applied = transact(ps, flat, counts, fence)
    if applied:
        for table, ids, rows, keys in fresh:
            ps._rows.remember(table, ids.copy(), rows, keys)
    return applied


def write_rows(ps, tables: dict[str, tuple], fence: Fence | None, extra: list[tuple]) -> bool:
    """:meth:`ParameterServer.write_rows` on a standalone server."""
    now = time.time()
    flat: list = []
    commands: list[tuple] = []
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
        flat += mset_args(keys, rows)
        created = int(np.count_nonzero(new))
        if created:
            commands.append(("INCRBY", ps.keys.counter(table), created))
        written.append((table, ids, rows, keys))
    commands += list(extra)
    if not flat and not commands and not (fence is not None and fence.offsets):
        return False
    applied = transact(ps, flat, commands, fence)
    for table, ids, rows, keys in written:
        ps._rows.forget(table)
        if applied:
            ps._rows.remember(table, ids.copy(), rows, keys)
    return applied
