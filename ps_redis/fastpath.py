"""Assign-push fast path: one native MSET of whole packed rows instead of a Lua read-modify-write.

Lua spends ~3 µs per row rebuilding strings; a client-packed MSET costs what a raw MSET costs.
The PS can pack whole rows itself when it knows each row's ``count`` and ``raw``, which it does
right after pulling them (the learner's pull → compute → push cycle): :class:`TailCache` remembers
(count, raw) of the last few pulls and pushes per table.  A push qualifies when

- mode is ``assign`` and ``vec``, ``bias`` and ``accum`` are all given (nothing to keep from the old row),
- every id was seen by this process's recent pulls/pushes (else the Lua path runs),
- the server is standalone (a cluster always uses the per-slot-group Lua path).

Then ``count ← cached count + Δcount`` is computed here; with one writer per row this equals the
server-side addition.  Two processes assigning the same row are last-writer-wins for the whole row
(vectors as well as count): use ``mode="gradient"`` for concurrent learners.

A fenced fast push is ``WATCH fence; HMGET fence; MULTI; MSET rows; HSET fence; EXEC``: skipped
when covered, and retried from the coverage check if another process changed the offsets meanwhile.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import redis

from ps_redis.codec import row_dtype
from ps_redis.types import ACCUM, BIAS, COUNT, VEC, Fence

FULL = VEC | BIAS | ACCUM


class TailCache:
    """(count, raw) of recently pulled / pushed rows, per table; newest entries win."""

    def __init__(self, depth: int = 4):
        self.depth = depth
        self._entries: dict[str, deque] = {}

    def remember(self, table: str, ids: np.ndarray, count: np.ndarray, raw: np.ndarray,
                 keys: list[bytes] | None = None) -> None:
        """Record rows that exist now with these counts / raw ids (arrays are not copied)."""
        self._entries.setdefault(table, deque(maxlen=self.depth)).appendleft([ids, count, raw, None, keys])

    def forget(self, table: str | None = None) -> None:
        """Drop cached tails (of one table or all): after delete / flush / load."""
        if table is None:
            self._entries.clear()
        else:
            self._entries.pop(table, None)

    def lookup(self, table: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list | None] | None:
        """(count, raw, keys or None) for every id in ``ids``, or None if any id is not cached.

        ``keys`` are the row keys remembered with an entry holding exactly ``ids`` in this order.
        """
        entries = self._entries.get(table)
        if not entries or not len(ids):
            return None
        first = entries[0]
        if len(first[0]) == len(ids) and np.array_equal(first[0], ids):
            return first[1], first[2], first[4]
        count = np.empty(len(ids), dtype=np.int64)
        raw = np.empty(len(ids), dtype=np.int64)
        todo = np.ones(len(ids), dtype=bool)
        for entry in entries:
            cids, ccount, craw, order, _ = entry
            if order is None:
                order = entry[3] = np.argsort(cids, kind="stable")
            sorted_ids = cids[order]
            pos = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
            hit = todo & (sorted_ids[pos] == ids)
            src = order[pos[hit]]
            count[hit], raw[hit] = ccount[src], craw[src]
            todo &= ~hit
            if not todo.any():
                return count, raw, None
        return None


def full_rows(packed: np.ndarray, count: np.ndarray, raw: np.ndarray, now: float, dim: int) -> np.ndarray:
    """Whole rows from a packed full update and cached tails (``count`` already incremented)."""
    rows = np.empty(len(packed), dtype=row_dtype(dim))
    rows["vec"], rows["bias"], rows["accum"] = packed["vec"], packed["bias"], packed["accum"]
    rows["count"], rows["updated"], rows["raw"] = count, now, raw
    return rows


def new_counts(packed: np.ndarray, mask: int, cached: np.ndarray) -> np.ndarray:
    """``cached + Δcount`` (Δ = 0 when the update has no count)."""
    return cached + packed["count"] if mask & COUNT else cached.copy()


def mset_args(keys: list[bytes], rows: np.ndarray) -> list[bytes]:
    """Interleaved ``k1 v1 k2 v2 ...`` for MSET."""
    blob = rows.tobytes()
    size = rows.dtype.itemsize
    flat: list = [None] * (2 * len(keys))
    flat[0::2] = keys
    flat[1::2] = [blob[i:i + size] for i in range(0, len(blob), size)]
    return flat


def fenced_mset(client: redis.Redis, flat: list[bytes], fence_key: str, fence: Fence, max_tries: int = 16) -> bool:
    """MSET ``flat`` and raise the offsets in ``fence_key`` in one MULTI/EXEC, unless already covered."""
    parts = sorted(int(p) for p in fence.offsets)
    for _ in range(max_tries):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(fence_key)
                stored = pipe.hmget(fence_key, parts)
                stored_i = [int(s) if s is not None else None for s in stored]
                if all(s is not None and s >= int(fence.offsets[p]) for p, s in zip(parts, stored_i)):
                    pipe.unwatch()
                    return False
                raise_to = {p: int(fence.offsets[p]) for p, s in zip(parts, stored_i)
                            if s is None or s < int(fence.offsets[p])}
                pipe.multi()
                pipe.execute_command("MSET", *flat)
                pipe.hset(fence_key, mapping=raise_to)
                pipe.execute()
                return True
            except redis.WatchError:
                continue  # another learner moved the offsets: check coverage again
    raise redis.WatchError(f"offsets {fence_key!r} kept changing during {max_tries} attempts")
