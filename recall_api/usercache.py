"""Per-user request context (LFM row, rated movies, recent movies) cached in process and kept exact by Redis.

A u2i request needs the user's row, rated-movie set and recent movies (the item channel).  Reading
them costs a Redis round trip per request — on a 2-core machine shared with Redis, the learner and the
clients, that round trip (two socket writes that each wake another process, a task switch) is the largest
single cost of a u2i answer.  This cache serves repeated users without it, and stays exactly as fresh as a
live read:

* the reads go over a connection with ``CLIENT TRACKING ON`` (:class:`recall_api.resp.RespClient`), so
  Redis pushes an invalidation on that same connection whenever one of the keys is modified (the learner's
  push of a user row, ``lfm_activity``'s ``SADD`` of a rated movie, the item channel's write of the user's recent movies, a flush, an
  eviction);
* an entry is stored as its reply comes off that connection, and pushes are read in order after it, so an
  invalidation for a later change can never be missed or overtaken: an entry lives from its read until the
  first change of any of its keys — the staleness bound is the time Redis takes to deliver a push (well
  under a millisecond on a socket the service is reading);
* no connection, no tracking: a lost connection (or a server without RESP3) empties the cache and stops
  filling it, so answers fall back to a live read per request.

The store serves and fills entries only while its client reports a live tracking connection.  Only the
event-loop thread uses the cache (no locks).  Capacity-bound: when full, the oldest eighth of the entries
is dropped.
"""

from __future__ import annotations

import numpy as np


class UserCache:
    """user id -> (user row or None, rated raw movie ids, recent movies or None), invalidated by tracked keys.

    Args:
        capacity: most users kept (each entry ~1.5 KB at d = 32 and 150 rated movies).
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"user cache capacity must be >= 1 (got {capacity})")
        self.capacity = int(capacity)
        self._entries: dict[int, tuple] = {}  # user -> (query, rated ids, recent, keys)
        self._owner: dict[bytes, int] = {}  # tracked key -> user whose entry it backs
        self.hits = self.misses = self.invalidated = self.flushes = 0

    def __len__(self) -> int:
        """Users cached."""
        return len(self._entries)

    def get(self, user_id: int) -> tuple[np.ndarray | None, np.ndarray, int | None] | None:
        """The cached context of ``user_id``, or None."""
        entry = self._entries.get(user_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry[0], entry[1], entry[2]

    def put(self, user_id: int, keys: list[bytes], query: np.ndarray | None, rated: np.ndarray,
            recent) -> None:
        """Store what was just read from ``keys`` (call as the reply comes off the tracking connection)."""
        old = self._entries.pop(user_id, None)
        if old is not None:
            self._forget_keys(old[3])
        elif len(self._entries) >= self.capacity:
            for u in list(self._entries)[:max(1, self.capacity // 8)]:
                self._forget_keys(self._entries.pop(u)[3])
        self._entries[user_id] = (query, rated, recent, keys)
        for k in keys:
            self._owner[k] = user_id

    def invalidate(self, keys: list[bytes] | None) -> None:
        """Drop the entries that read any of ``keys``; ``None``: drop everything (the tracking connection is
        gone or new, or Redis was flushed)."""
        if keys is None:
            self._entries.clear()
            self._owner.clear()
            self.flushes += 1
            return
        for k in keys:
            user = self._owner.pop(k, None)
            if user is not None:
                entry = self._entries.pop(user, None)
                if entry is not None:
                    self._forget_keys(entry[3])
                    self.invalidated += 1

    def _forget_keys(self, keys: list[bytes]) -> None:
        for k in keys:
            self._owner.pop(k, None)

    def stats(self) -> dict:
        """Counters for /stats."""
        return {"users": len(self._entries), "capacity": self.capacity, "hits": self.hits,
                "misses": self.misses, "invalidated": self.invalidated, "flushes": self.flushes}
