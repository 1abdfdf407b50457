"""Reading a user's request context from Redis: vector, rated movies and recent movies.

u2i needs the user row (GET), the user's rated movies (SMEMBERS of the activity log's seen set) and the item
channel's recent movies of the user (GET, :class:`ps_redis.covisit.Covisit`: the bucket of the user's last event
and their last rated movies) — sent as one pipeline, so one round trip: synchronously over
the PS's own connection (``ps_redis.connection.run``), or on the event loop over
:class:`recall_api.resp.RespClient` (whose tracked reads also fill the user cache of
:mod:`recall_api.usercache`), or ``redis.asyncio`` for URLs that client does not serve (TLS).  Keys come from
the PS's :class:`~ps_redis.keys.KeySpace`, rows are decoded by :func:`ps_redis.codec.decode`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from lfm_stream.hashing import user_hash
from ps_redis.codec import CorruptRowError, decode
from ps_redis.connection import pack, run
from ps_redis.covisit import Covisit, parse_recent
from recall_api.refresh import MAX_ABS
from recall_api.resp import RespClient
from recall_api.resp import supported as resp_supported
from recall_api.topk import parse_ids
from recall_api.types import StoreConfig
from recall_api.usercache import UserCache

log = logging.getLogger("recall_api")


class UserRow(NamedTuple):
    """The LFM part of a user's context: vector q_u and bias b_u."""

    vec: np.ndarray
    bias: float


class ContextReader:
    """Reads (user row or None, rated raw movie ids int64, recent or None) for the request path; recent is
    (bucket of the user's last event, their last rated raw movie ids, oldest first).

    Args:
        config: the store configuration (Redis URL and socket timeout of the asyncio client).
        user_cache: filled from tracked asyncio reads (None: no cache).
    """

    def __init__(self, config: StoreConfig, user_cache: UserCache | None):
        self.config = config
        self.user_cache = user_cache
        self.client = None  # asyncio Redis client of read_async (RespClient, or redis.asyncio for TLS URLs)
        self._reported: set[str] = set()  # keys of unusable user rows already logged

    @property
    def tracking(self) -> bool:
        """True while the asyncio client holds a live ``CLIENT TRACKING`` connection."""
        return bool(self.client is not None and getattr(self.client, "tracking", False))

    def keys(self, ps, user_id: int) -> list[str]:
        """The user row, seen-set and recent-movies keys of ``user_id``."""
        h = user_hash(user_id)
        return [ps.keys.row_key("user", h), f"{ps.keys.act_seen_prefix}{int(user_id)}",
                Covisit(ps).recent_key(user_id)]

    def decode_replies(self, ps, keys: list[str], replies: list) -> tuple:
        """(:class:`UserRow` or None, rated raw movie ids int64, recent or None) of the replies to GET user row,
        SMEMBERS seen, GET recent movies."""
        value, members = replies[0], replies[1]
        recent = parse_recent(replies[2])
        rated = parse_ids(members)
        return self.user_vector(value, keys[0], ps.dim), rated, recent

    def user_vector(self, value: bytes | None, key: str, dim: int) -> UserRow | None:
        """The vector and bias of a stored user row, or None when there is none or it is unusable — the wrong
        length, not finite or beyond ±MAX_ABS (logged once per key; the user is then answered like one without a
        vector)."""
        if value is None:
            return None
        try:
            rows, _ = decode([value], [key.encode()], dim)
        except CorruptRowError as exc:
            self._report(key, str(exc))
            return None
        vec, bias = rows["vec"][0], float(rows["bias"][0])
        if not ((np.abs(vec) <= MAX_ABS).all() and abs(bias) <= MAX_ABS):  # (False for NaN too)
            self._report(key, f"user row {key!r} has a vector or bias that is not finite or beyond ±{MAX_ABS:g}")
            return None
        return UserRow(vec, bias)

    def _report(self, key: str, problem: str) -> None:
        if key not in self._reported:
            if len(self._reported) >= 10_000:  # bounded: a flood of bad rows is logged again after a while
                self._reported.clear()
            self._reported.add(key)
            log.warning("%s; answered as a user without a vector", problem)

    def replies(self, ps, user_id: int) -> tuple[list[str], list]:
        """(keys, raw replies) of one pipelined read over the PS's connection (one round trip per node)."""
        keys = self.keys(ps, user_id)
        cmds = [(keys[0], ("GET", keys[0])), (keys[1], ("SMEMBERS", keys[1])), (keys[2], ("GET", keys[2]))]
        with ps.io():
            return keys, run(ps.redis, ps.is_cluster, cmds)

    def read(self, ps, user_id: int) -> tuple:
        """The decoded context of ``user_id``, read synchronously in one round trip."""
        return self.decode_replies(ps, *self.replies(ps, user_id))

    async def read_async(self, ps, user_id: int) -> tuple:
        """:meth:`read` over the asyncio connection (standalone Redis); tracked reads fill the user cache."""
        keys = self.keys(ps, user_id)
        client = self.client
        if client is None:
            client = self.client = self._async_client()
        if isinstance(client, RespClient):
            payload = pack(("GET", keys[0])) + pack(("SMEMBERS", keys[1])) + pack(("GET", keys[2]))
            return await client.execute(payload, len(keys), lambda replies: self._read(ps, user_id, keys, replies))
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(keys[0])
            pipe.smembers(keys[1])
            pipe.get(keys[2])
            return self.decode_replies(ps, keys, await pipe.execute())

    def _read(self, ps, user_id: int, keys: list[str], replies: list) -> tuple:
        """Decode a context as its replies come off the RespClient connection, and cache it if that
        connection tracks the keys (so every later change of them arrives as an invalidation after this)."""
        ctx = self.decode_replies(ps, keys, replies)
        if self.user_cache is not None and self.client.tracking:
            self.user_cache.put(user_id, [k.encode() for k in keys], *ctx)
        return ctx

    def _async_client(self):
        if resp_supported(self.config.redis_url):
            return RespClient(self.config.redis_url, timeout=self.config.socket_timeout,
                              on_invalidate=None if self.user_cache is None else self.user_cache.invalidate)
        import redis.asyncio as aredis

        return aredis.Redis.from_url(self.config.redis_url, socket_timeout=self.config.socket_timeout,
                                     socket_connect_timeout=self.config.socket_timeout)
