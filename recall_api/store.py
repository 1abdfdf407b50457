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

from ps_redis import ParameterServer, PSError, mask_url
from ps_redis.activity import ActivityLog, CursorExpired
from recall_api import refresh
from recall_api.catalog import Catalog
from recall_api.context import ContextReader
from recall_api.matrix import ItemMatrix, Snapshot
from lfm_stream.scoring import blend, lfm_channel
from recall_api.channels import ChannelSource
from recall_api.topk import NEG_INF, cosine_scores, lookup_ids, popularity_top_k, top_k
from recall_api.types import (I2I_DEFAULT, I2I_SOURCES, SOURCE_COVISIT, SOURCE_LFM, SOURCE_MODEL, SOURCE_POPULARITY,
                              Answer, NotFound, RefreshStats, StoreConfig, Unavailable, cursor_ms)
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
        self.user_cache = UserCache(config.user_cache) if config.user_cache else None
        self.channels = ChannelSource()  # the score contract, item channel and popularity (recall_api.channels)
        self._channels_at = 0.0  # monotonic time of the last channel rebuild
        self.context = ContextReader(config, self.user_cache)  # request-path reads

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
                if (time.monotonic() - self._channels_at >= self.config.channel_interval
                        or self.channels.n_built == 0):
                    snap = self.matrix.snapshot()
                    try:
                        self.channels.build(self.ps, snap.raw_pos, snap.n)
                    except (PSError, redis.RedisError, OSError):
                        raise
                    except Exception:  # a bug or content no reader foresaw: keep serving the previous channels
                        log.exception("rebuilding the item channel failed; serving the previous one")
                        self.stats.errors += 1
                    self._channels_at = time.monotonic()
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
            raise Unavailable(f"Redis unavailable at {mask_url(self.config.redis_url)}: {exc}") from exc

    def _ready(self) -> ItemMatrix:
        if not self.healthy or self.ps is None:
            raise Unavailable(f"service unavailable: {self.stats.last_error or 'not connected to Redis yet'}; retrying")
        if self.matrix is None:
            raise Unavailable("item vectors are not loaded yet")
        return self.matrix

    def user_context(self, user_id: int) -> tuple[np.ndarray | None, set[int], tuple | None]:
        """The user's vector (None without a row), rated raw movie ids and recent movies ((bucket of the last
        event, raw ids oldest first) or None) — in one Redis round trip (:mod:`recall_api.context`)."""
        query, rated, recent = self.context.read(self.ps, user_id)
        return query, set(rated.tolist()), recent

    def u2i(self, user_id: int, k: int) -> Answer:
        """Top-k movies for a raw user id by the served score, movies the user rated excluded.

        The score is the learner's contract (:mod:`recall_api.channels`): LFM ``log σ(ŷ_ui) + log(1 + n_i)`` (users with a
        row), the item channel of the user's recent movies and the popularity around the user's last event,
        blended with the contract's weights (source ``model``).  A user known only as having rated something,
        or from the prepared data, gets the popularity of the latest stream bucket (source ``popularity``).

        Raises:
            NotFound: the user has no vector, no recent movies, no activity and is not in the prepared data.
            Unavailable: Redis is down or nothing is loaded yet.
        """
        matrix = self._ready()
        with self._redis():
            query, rated, recent = self.context.read(self.ps, user_id)
        return self._rank_user(matrix, user_id, k, query, rated, recent)

    def u2i_cached(self, user_id: int, k: int) -> Answer | None:
        """:meth:`u2i` from the user cache (:mod:`recall_api.usercache`) without touching Redis, or None when
        the user is not cached — then await :meth:`u2i_async`.  Same answer as a live read: entries are dropped
        as Redis reports changes."""
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
            query, rated, recent = await self.context.read_async(self.ps, user_id)
        return self._rank_user(matrix, user_id, k, query, rated, recent)

    async def user_context_async(self, user_id: int) -> tuple[np.ndarray | None, set[int], tuple | None]:
        """:meth:`user_context` over an asyncio connection (standalone Redis)."""
        query, rated, recent = await self.context.read_async(self.ps, user_id)
        return query, set(rated.tolist()), recent

    def _rank_user(self, matrix: ItemMatrix, user_id: int, k: int, query: np.ndarray | None, rated: np.ndarray,
                   recent: tuple | None = None) -> Answer:
        """Rank for a user; ``rated``: the raw movie ids they rated (int64); ``recent``: (bucket, raw ids)."""
        if query is None and recent is None and not len(rated) and not self.catalog.knows_user(user_id):
            raise NotFound(f"unknown user {user_id}: no vector, no rated movies, and not in the prepared data")
        snap = matrix.snapshot()
        exclude = lookup_ids(snap.row_of_raw, snap.raw_pos, rated) if len(rated) else None
        if self.channels.contract is None:  # nothing built yet (first refresh failed): the LFM score alone
            if query is None:
                return self.popularity(k, set(rated.tolist()))
            pos, scores = top_k(self._lfm(snap, query), k, exclude)
            return Answer(SOURCE_MODEL, snap.raw[pos].tolist(), scores.tolist())
        bucket, movies = recent if recent is not None else (None, np.zeros(0, np.int64))
        recent_rows = lookup_ids(snap.row_of_raw, snap.raw_pos, movies) if len(movies) else np.zeros(0, np.int64)
        if self.index is not None and self.index.ready:
            pos, scores = self._rank_candidates(snap, query, recent_rows, bucket, k, exclude)
        else:
            pos, scores = self._rank_exact(snap, query, recent_rows, bucket, k, exclude)
        source = SOURCE_MODEL if query is not None or recent is not None else SOURCE_POPULARITY
        return Answer(source, snap.raw[pos].tolist(), scores.tolist())

    def _rank_exact(self, snap: Snapshot, query, recent_rows: np.ndarray, bucket: int | None, k: int,
                    exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute force, exact.  The LFM term ``w·log σ(ŷ)`` lies within ``w·log 2`` below ``w·min(ŷ, 0)``, so
        ``upper = bound + w·min(ŷ, 0)`` bounds the served score from above: log σ is computed only for the rows
        whose upper bound reaches the k-th best served score of the upper bound's own top k (a handful of rows,
        instead of an exp and a log over the whole catalogue)."""
        ch = self.channels
        bound = ch.bound(snap, query, recent_rows, bucket)
        if snap.invalid is not None:
            bound[snap.invalid] = NEG_INF
        if query is None or not ch.contract.lfm_weight:
            return top_k(bound, k, exclude)
        logits = ch.logits(snap, query)
        upper = bound + ch.contract.lfm_weight * np.minimum(logits, 0.0)
        first, _ = top_k(upper, k, exclude)  # also sets the excluded rows to -inf
        if not len(first):
            return first, np.zeros(0, np.float32)
        kth = float((bound[first] + ch.lfm_term(logits[first])).min())
        cand = np.flatnonzero(upper >= kth)
        pos, scores = top_k(bound[cand] + ch.lfm_term(logits[cand]), k)
        return cand[pos], scores

    def _rank_candidates(self, snap: Snapshot, query: np.ndarray | None, recent_rows: np.ndarray,
                         bucket: int | None, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """ANN path: candidates from each channel (the index's top LFM rows, the item channel's neighbours, the
        bucket's most popular rows), then the exact served score (:func:`lfm_stream.scoring.blend`) on them."""
        c, ch = self.channels.contract, self.channels.channels
        n_skip = 0 if exclude is None else len(exclude)
        popular = self.channels.top_popular(bucket, max(4 * k, 200) + n_skip)
        parts = [popular]
        x_last = None  # the index returned every row whose q·v + b_i is above this (None: every row)
        if query is not None and c.lfm_weight:
            pos, x = self.index.search_u2i(query.vec, max(4 * k, 200), exclude)
            parts.append(np.asarray(pos, np.int64))
            x_last = float(x.min()) if len(pos) == max(4 * k, 200) else None
        cov_cols, cov_sums = ch.covisit(c, recent_rows)
        parts.append(cov_cols)
        drop = [a for a in (exclude, snap.invalid) if a is not None]
        drop = np.concatenate(drop) if drop else np.zeros(0, np.int64)
        pop = self.channels.popularity(bucket)

        def served(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            cand = cand[(cand < snap.n) & ~np.isin(cand, drop)]
            cov = np.zeros(len(cand), np.float64)
            at = np.searchsorted(cand, cov_cols)
            hit = at < len(cand)
            hit[hit] = cand[at[hit]] == cov_cols[hit]
            cov[at[hit]] = cov_sums[hit]
            pop_c = np.full(len(cand), np.log(c.popularity_smooth))
            inside = cand < len(pop)
            pop_c[inside] = pop[cand[inside]]
            lfm = None if query is None or not c.lfm_weight else self._lfm(snap, query, cand)
            return cand, blend(c, lfm, cov, pop_c)

        cand, s = served(np.unique(np.concatenate(parts)))
        if x_last is not None and len(s) >= k:
            # the LFM channel adds log(1 + n_i), which the index does not rank by: a row outside the candidates
            # scores at most w_lfm·(log σ(x_last + b_u + μ) + log(1 + n_i)) + w_co·log eps + w_pop·(the least
            # popularity among the popular rows), so the rows rated often enough to reach the k-th score join
            kth = np.partition(s, len(s) - k)[len(s) - k]
            p_max = pop[popular].min() if len(popular) else np.log(c.popularity_smooth)
            need = float((kth - c.covisit_weight * np.log(c.covisit_eps) - c.popularity_weight * p_max) / c.lfm_weight
                         - lfm_channel(x_last + query.bias + self.channels.mu, 0.0) - 1e-6)
            more = np.flatnonzero(snap.count >= np.expm1(min(need, 700.0)))
            if len(more):
                cand, s = served(np.union1d(cand, more))
        top, scores = top_k(s, k)
        return cand[top], scores

    def _lfm(self, snap: Snapshot, query, rows: np.ndarray | None = None) -> np.ndarray:
        """The LFM channel (:func:`lfm_stream.scoring.lfm_channel`) of a user row over ``rows`` (default: all)."""
        vec, bias, count = (snap.vec, snap.bias, snap.count) if rows is None else \
            (snap.vec[rows], snap.bias[rows], snap.count[rows])
        return lfm_channel(vec @ query.vec + bias + (query.bias + self.channels.mu), count)

    def popularity(self, k: int, seen: set[int] = frozenset()) -> Answer:
        """The k movies with most positive events that are not in ``seen`` (source ``popularity``)."""
        self._ready()
        with self._redis():
            popular = self.log.popular(k + len(seen))
        top = popularity_top_k(popular, k, seen)
        return Answer(SOURCE_POPULARITY, [m for m, _ in top], [c for _, c in top])

    def i2i(self, movie_id: int, k: int, source: str = I2I_DEFAULT) -> Answer:
        """Top-k movies similar to a raw movie id, the movie itself excluded.

        ``source="covisit"`` (default): the item channel, ``C[j, i] / √((D_j + 1)(D_i + 1))`` over the movies
        rated within the pair window of it (a movie without co-occurrences yet falls back to ``lfm``);
        ``source="lfm"``: cosine similarity of the learner's item vectors.  The answer's ``source`` says which.

        Raises:
            NotFound: the movie has no vector (not in the catalog, or not trained yet).
            Unavailable: Redis is down or nothing is loaded yet.
            ValueError: an unknown ``source``.
        """
        if source not in I2I_SOURCES:
            raise ValueError(f"source must be one of {I2I_SOURCES} (got {source!r})")
        matrix = self._ready()
        snap = matrix.snapshot()
        row = matrix.row_of_raw(movie_id)
        if row is None or row >= snap.n:
            if movie_id in self.catalog.movies:
                raise NotFound(f"movie {movie_id} ({self.catalog.movies[movie_id].title}) has no vector yet")
            raise NotFound(f"unknown movie {movie_id}: not in the catalog and no vector")
        exclude = np.array([row], np.int64)
        if source == "covisit" and self.channels.contract is not None:
            cols, sums = self.channels.channels.covisit(self.channels.contract, exclude)
            keep = (cols < snap.n) & (cols != row)
            if snap.invalid is not None:
                keep &= ~np.isin(cols, snap.invalid)
            cols, sums = cols[keep], sums[keep]
            if len(cols):
                top, scores = top_k(sums, min(k, len(cols)))
                return Answer(SOURCE_COVISIT, snap.raw[cols[top]].tolist(), scores.tolist())
        if self.index is not None and self.index.ready:
            pos, scores = self.index.search_i2i(snap.unit[row], k, exclude)
        else:
            s = cosine_scores(snap.unit, snap.unit[row])
            if snap.invalid is not None:
                s[snap.invalid] = NEG_INF
            pos, scores = top_k(s, k, exclude)
        return Answer(SOURCE_LFM, snap.raw[pos].tolist(), scores.tolist())

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
            "redis_url": mask_url(self.config.redis_url),  # never the password
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
            "score": "contract: w_lfm·(log σ(q·v + b_u + b_i + μ) + log(1 + n_i)) + w_co·log(eps + item channel) "
                     "+ w_pop·popularity prior (lfm_stream.scoring)",
            "channels": self.channels.stats(),
            "user_cache": None if self.user_cache is None else {
                **self.user_cache.stats(), "tracking": self.context.tracking},
        }
