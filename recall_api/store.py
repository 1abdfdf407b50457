"""RecallStore: the item matrix kept fresh from the Redis PS, and the u2i / i2i queries over it.

Refresh protocol (docs/design.md "Activity log"; the code is :mod:`recall_api.refresh`): take ``log.cursor()``,
load every item row with ``ps.scan("item")``, then every ``refresh_interval`` seconds ask ``log.changes_since(cursor)`` for the
hashed item ids the learner changed and re-pull only those (``ps.pull("item", ids, create=False)``).
When the cursor fell off the capped change stream, or the log restarted (flush / load / an empty Redis
after a restart), :class:`~ps_redis.activity.CursorExpired` triggers a full reload into a fresh matrix.

Request path: u2i reads the user row (GET) and the user's rated movies (SMEMBERS) in one pipelined round
trip (:meth:`RecallStore.user_context`, code in :mod:`recall_api.context`; on the event loop over
:class:`recall_api.resp.RespClient`, whose tracked reads also fill the user cache of :mod:`recall_api.usercache`,
so a repeat user needs no round trip until Redis reports a change), then ranks the in-memory matrix
(:mod:`recall_api.topk` with a score base cached per snapshot, or Faiss with ``faiss=True``); i2i touches no Redis.

Availability: any Redis error marks the store unhealthy; while unhealthy, queries fail at once with
:class:`Unavailable` (HTTP 503) instead of waiting on Redis, and the refresh thread keeps probing every
``refresh_interval`` (capped backoff up to ``max_backoff``) and marks it healthy again when Redis answers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import numpy as np
import redis

from ps_redis import ParameterServer, PSError
from ps_redis.activity import ActivityLog, CursorExpired
from recall_api import refresh
from recall_api.catalog import Catalog
from recall_api.context import ContextReader
from recall_api.matrix import ItemMatrix, Snapshot
from recall_api.prior import ScorePrior
from recall_api.topk import NEG_INF, cosine_scores, lookup_ids, popularity_top_k, top_k, u2i_scores
from recall_api.types import (SOURCE_MODEL, SOURCE_POPULARITY, Answer, NotFound, RefreshStats, StoreConfig,
                              Unavailable, cursor_ms)
from recall_api.usercache import UserCache

__all__ = ["RecallStore", "StoreConfig", "Answer", "NotFound", "Unavailable", "SOURCE_MODEL", "SOURCE_POPULARITY"]

log = logging.getLogger("recall_api")


class RecallStore:
    """Holds the item matrix, refreshes it from Redis, answers u2i / i2i.

    Args:
        config: the store configuration.
        catalog: movie names and known users (may be empty).
    """

    def __init__(self, config: StoreConfig, catalog: Catalog | None = None):
        self.config = config
        self.catalog = catalog or Catalog()
        self.ps: ParameterServer | None = None
        self.log: ActivityLog | None = None
        self.matrix: ItemMatrix | None = None
        self.index = None
        self.cursor: str | None = None
        self.healthy = False
        self.stats = RefreshStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._base_cache: tuple = (None, None, {})  # (snapshot, prior version, {period: u2i base})
        self.user_cache = UserCache(config.user_cache) if config.user_cache else None
        self.prior = ScorePrior(config.prior_preset) if config.score_prior else None
        self._prior_at = 0.0  # monotonic time of the last prior rebuild
        self.context = ContextReader(config, self.prior is not None, self.user_cache)  # request-path reads

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> "RecallStore":
        """Try one load now (errors are kept for /stats), then refresh on a daemon thread."""
        self.refresh_once()
        self._thread = threading.Thread(target=self._loop, name="recall-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the refresh thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        delay = self.config.refresh_interval
        while not self._stop.wait(delay):
            try:
                ok = self.refresh_once()
            except Exception as exc:  # a bug must not kill the thread: keep it visible in /stats, retry
                log.exception("refresh failed")
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                ok = False
            delay = self.config.refresh_interval if ok else min(self.config.max_backoff, delay * 2)

    # -------------------------------------------------------------------------------- refresh
    def _connect(self) -> None:
        if self.ps is None:
            c = self.config
            self.ps = ParameterServer.get(c.redis_url, c.namespace, c.dim, retries=c.retries,
                                          socket_timeout=c.socket_timeout, backoff_cap=0.2)
        if self.log is None:
            self.log = ActivityLog(self.ps)

    def refresh_once(self) -> bool:
        """One refresh step (connect / full load / incremental); returns False when Redis failed."""
        with self._write_lock:
            try:
                self._connect()
                if self.matrix is None:
                    self._full_load()
                else:
                    try:
                        self._incremental()
                    except CursorExpired as exc:
                        log.info("full reload: %s", exc)
                        self._full_load()
                if self.prior is not None and (time.monotonic() - self._prior_at >= self.config.prior_interval
                                               or self.prior.n_built == 0):
                    snap = self.matrix.snapshot()
                    self.prior.build(self.ps, snap.raw_pos, snap.n)
                    self._prior_at = time.monotonic()
            except (PSError, redis.RedisError, OSError) as exc:
                self._failed(exc)
                return False
            self.healthy = True
            self.stats.refreshes += 1
            self.stats.last_refresh = time.time()
            return True

    def _failed(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.healthy or self.stats.last_error != error:  # once per outage or new error, not at every retry
            log.warning("redis unavailable: %s", exc)
        self.healthy = False
        self.stats.errors += 1
        self.stats.last_error = error

    def _full_load(self) -> None:
        self.matrix, self.index, self.cursor = refresh.full_load(self.ps, self.log, self.catalog, self.config,
                                                                 self.stats)

    def _incremental(self) -> None:
        self.cursor = refresh.incremental(self.ps, self.log, self.catalog, self.config, self.stats, self.matrix,
                                          self.index, self.cursor)

    # -------------------------------------------------------------------------------- queries
    @contextlib.contextmanager
    def _redis(self):
        """Run request-path Redis calls; a failure marks the store unhealthy and raises Unavailable."""
        try:
            yield
        except (PSError, redis.RedisError, OSError) as exc:
            self._failed(exc)
            raise Unavailable(f"Redis unavailable at {self.config.redis_url}: {exc}") from exc

    def _ready(self) -> ItemMatrix:
        if not self.healthy or self.ps is None:
            raise Unavailable(f"service unavailable: {self.stats.last_error or 'not connected to Redis yet'}; retrying")
        if self.matrix is None:
            raise Unavailable("item vectors are not loaded yet")
        return self.matrix

    def user_context(self, user_id: int) -> tuple[np.ndarray | None, set[int], int | None]:
        """The user's vector (None without a row), rated raw movie ids and, with the score prior, the period
        of their last event (``user_ctx``; None without) — in one Redis round trip.

        Equivalent to ``ps.pull("user", [h], create=False)`` plus ``ActivityLog.seen(user_id)`` (plus
        ``ps.pull("user_ctx", [h], create=False)``), sent as one pipeline (``ps_redis.connection.run``: one
        round trip per node; keys from the PS's own :class:`~ps_redis.keys.KeySpace`, rows decoded by
        :func:`ps_redis.codec.decode`).  Fewer round trips matter on a busy machine, where each one costs a
        scheduler wake-up.
        """
        query, rated, period = self.context.read(self.ps, user_id)
        return query, set(rated.tolist()), period

    def u2i(self, user_id: int, k: int) -> Answer:
        """Top-k movies for a raw user id, movies the user rated excluded.

        ``s(u, i) = q_u · v_i + b_i`` for a user with a vector (source ``model``); a user without a
        vector who is known (rated something, or is in the prepared data) gets the most popular movies
        they have not rated (source ``popularity``, score = positive events).

        Raises:
            NotFound: the user has no vector, no activity and is not in the prepared data.
            Unavailable: Redis is down or nothing is loaded yet.
        """
        matrix = self._ready()
        with self._redis():
            query, rated, period = self.context.read(self.ps, user_id)
        return self._rank_user(matrix, user_id, k, query, rated, period)

    def u2i_cached(self, user_id: int, k: int) -> Answer | None:
        """:meth:`u2i` from the user cache (:mod:`recall_api.usercache`) without touching Redis, or None when
        the user is not cached (or has no vector: the popularity fallback reads Redis) — then await
        :meth:`u2i_async`.  Same answer as a live read: entries are dropped as Redis reports changes."""
        cache = self.user_cache
        if cache is None or not self.context.tracking:
            return None
        matrix = self._ready()
        entry = cache.get(user_id)
        return None if entry is None else self._rank_user(matrix, user_id, k, *entry)

    async def u2i_async(self, user_id: int, k: int) -> Answer:
        """:meth:`u2i` for an event loop: the Redis read is awaited, so the loop ranks other requests while
        this one waits for Redis; the ranking is the same code.  With the user cache on, what is read is
        also cached (see :meth:`u2i_cached`)."""
        matrix = self._ready()
        if self.ps.is_cluster:  # the async pipeline below addresses one node
            return self.u2i(user_id, k)
        with self._redis():
            query, rated, period = await self.context.read_async(self.ps, user_id)
        return self._rank_user(matrix, user_id, k, query, rated, period)

    async def user_context_async(self, user_id: int) -> tuple[np.ndarray | None, set[int], int | None]:
        """:meth:`user_context` over an asyncio connection (standalone Redis): the commands go through
        :class:`recall_api.resp.RespClient` (pipelined with other requests' commands on one connection,
        replies parsed by hiredis), or ``redis.asyncio`` for URLs that client does not serve (TLS)."""
        query, rated, period = await self.context.read_async(self.ps, user_id)
        return query, set(rated.tolist()), period

    def _rank_user(self, matrix: ItemMatrix, user_id: int, k: int, query: np.ndarray | None, rated: np.ndarray,
                   period: int | None = None) -> Answer:
        """Rank for a user; ``rated``: the raw movie ids they rated (int64)."""
        if query is not None:
            snap = matrix.snapshot()
            exclude = lookup_ids(snap.row_of_raw, snap.raw_pos, rated) if len(rated) else None
            if self.index is not None and self.index.ready:
                pos, scores = self.index.search_u2i(query, k, exclude)
            else:
                s = u2i_scores(query, snap.vec, self.u2i_base(snap, period))
                pos, scores = top_k(s, k, exclude)
            return Answer(SOURCE_MODEL, snap.raw[pos].tolist(), scores.tolist())
        if not len(rated) and not self.catalog.knows_user(user_id):
            raise NotFound(f"unknown user {user_id}: no vector, no rated movies, and not in the prepared data")
        return self.popularity(k, set(rated.tolist()))

    def u2i_base(self, snap: Snapshot, period: int | None = None) -> np.ndarray:
        """The part of the u2i score that does not depend on the user vector, float32[snap.n] (read-only):
        ``b_i`` (contract score) or ``gamma·b_i + pop_weight·τ(period, i)`` (``--score-prior``), ``-inf`` on
        removed rows; u2i scores are ``vec @ q + base``.

        Cached per (snapshot, prior build, period): every refresh that writes rows publishes a new snapshot
        and every prior rebuild bumps its version, so a cached base is never older than the matrix a request
        ranks with (in-place row writes happen just before the new snapshot is published).
        """
        prior = self.prior
        version = None if prior is None else prior.version
        key = None if prior is None else period
        cached = self._base_cache
        if cached[0] is snap and cached[1] == version:
            base = cached[2].get(key)
            if base is not None:
                return base
            table = cached[2]
            if len(table) >= 256:  # many distinct periods: start over rather than grow without bound
                table = {}
                self._base_cache = (snap, version, table)
        else:
            table = {}
            self._base_cache = (snap, version, table)
        if prior is None:
            base = snap.bias.copy()
        else:  # learner recipe: q·v + gamma·b + pop_weight·τ_u (see recall_api.prior)
            base = snap.bias * np.float32(prior.gamma)
            base += np.float32(prior.weight) * prior.tau(period, snap.n)
        if snap.invalid is not None:
            base[snap.invalid] = NEG_INF
        base.flags.writeable = False
        table[key] = base
        return base

    def popularity(self, k: int, seen: set[int] = frozenset()) -> Answer:
        """The k movies with most positive events that are not in ``seen`` (source ``popularity``)."""
        self._ready()
        with self._redis():
            popular = self.log.popular(k + len(seen))
        top = popularity_top_k(popular, k, seen)
        return Answer(SOURCE_POPULARITY, [m for m, _ in top], [c for _, c in top])

    def i2i(self, movie_id: int, k: int) -> Answer:
        """Top-k movies by cosine similarity to a raw movie id, the movie itself excluded.

        Raises:
            NotFound: the movie has no vector (not in the catalog, or not trained yet).
            Unavailable: Redis is down or nothing is loaded yet.
        """
        matrix = self._ready()
        snap = matrix.snapshot()
        row = matrix.row_of_raw(movie_id)
        if row is None or row >= snap.n:
            if movie_id in self.catalog.movies:
                raise NotFound(f"movie {movie_id} ({self.catalog.movies[movie_id].title}) has no vector yet")
            raise NotFound(f"unknown movie {movie_id}: not in the catalog and no vector")
        exclude = np.array([row], np.int64)
        if self.index is not None and self.index.ready:
            pos, scores = self.index.search_i2i(snap.unit[row], k, exclude)
        else:
            s = cosine_scores(snap.unit, snap.unit[row])
            if snap.invalid is not None:
                s[snap.invalid] = NEG_INF
            pos, scores = top_k(s, k, exclude)
        return Answer(SOURCE_MODEL, snap.raw[pos].tolist(), scores.tolist())

    # ---------------------------------------------------------------------------------- stats
    def describe(self) -> dict:
        """Vectors loaded, refresh times, lag behind the learner, health (for /stats)."""
        now = time.time()
        st = self.stats
        learner_ms = None
        if self.healthy and self.log is not None:
            with contextlib.suppress(PSError, redis.RedisError, OSError):
                learner_ms = cursor_ms(self.log.cursor())
        applied = st.applied_change_ms
        lag = None
        if learner_ms is not None:
            lag = max(0.0, (learner_ms - (applied or 0)) / 1000.0) if applied else None
        m = self.matrix
        return {
            "healthy": self.healthy,
            "redis_url": self.config.redis_url,
            "namespace": self.config.namespace,
            "dim": None if self.ps is None else self.ps.dim,
            "vectors_loaded": 0 if m is None else len(m),
            "rows_removed": 0 if m is None else m.n_invalid,
            "rows_unmapped": st.unmapped,
            "index": "faiss-ivf" if self.index is not None else "brute-force",
            "faiss": None if self.index is None else self.index.stats(),
            "last_refresh": st.last_refresh,
            "refresh_age_s": None if st.last_refresh is None else round(now - st.last_refresh, 4),
            "refresh_interval_s": self.config.refresh_interval,
            "last_full_reload": st.last_full_reload,
            "refreshes": st.refreshes,
            "full_reloads": st.full_reloads,
            "rows_applied": st.rows_applied,
            "cursor": self.cursor,
            "learner_last_change": None if learner_ms is None else learner_ms / 1000.0,
            "applied_last_change": None if applied is None else applied / 1000.0,
            "lag_s": lag,
            "errors": st.errors,
            "last_error": st.last_error,
            "catalog": self.catalog.stats(),
            "score": "contract: q·v + b" if self.prior is None else "learner prior: q·v + gamma·b + w·tau",
            "score_prior": None if self.prior is None else self.prior.stats(),
            "user_cache": None if self.user_cache is None else {
                **self.user_cache.stats(), "tracking": self.context.tracking},
        }
