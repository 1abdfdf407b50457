"""The served u2i score: the learner's score contract, the item channel and stream popularity over the item matrix.

The learner writes its :class:`~lfm_stream.scoring.ScoreContract` to ``<ns>:@contract``; the item-channel worker
(``python -m learner.items``) keeps co-occurrence neighbours, degrees and stream-bucket popularity under
``{<ns>:@co}`` (:class:`ps_redis.covisit.Covisit`).  This module reads both and ranks with the contract's own
math (:class:`lfm_stream.scoring.ItemChannels`), so the service serves what the learner's evaluation measured —
it imports nothing from the learner.

The channel arrays are rebuilt from Redis by the refresh thread, at most every ``channel_interval`` seconds and only
when the contract, the item channel's meta (applied events, latest bucket) or the catalogue's size changed
(neighbour lists, degrees and popularity are read whole: ~0.1 s for ml-latest-small); a request only reads the
user's row, rated movies and recent movies (one round trip, :mod:`recall_api.context`).  Any malformed entry in Redis is
skipped by the readers of :mod:`ps_redis.covisit`, never trusted for an allocation.
"""

from __future__ import annotations

import logging

import numpy as np

from lfm_stream.scoring import ItemChannels, ScoreContract, contract_key
from ps_redis.covisit import Covisit
from recall_api.topk import lookup_rows

log = logging.getLogger("recall_api")

POPULARITY_CACHE = 256  # popularity vectors kept per bucket


class ChannelSource:
    """The contract and the channel arrays of one namespace, rebuilt by :meth:`build`."""

    def __init__(self):
        self.contract: ScoreContract | None = None
        self.contract_source = "none"
        self.channels: ItemChannels | None = None
        self.n_built = 0
        self.version = 0
        self.mu = 0.0  # the learner's global offset μ (its ``global`` row)
        self._popularity: dict = {}
        self._top: dict = {}
        self._base_snap, self._bases = None, {}  # user-independent score parts of one snapshot
        self._built_from: tuple | None = None  # (contract JSON, item-channel meta, rows) of the last build
        self.checks = 0  # calls of build (a rebuild or not): a test waits for two to know one started after it

    def use_contract(self, contract: ScoreContract) -> None:
        """Rank with ``contract`` until the next :meth:`build` (benchmarks re-rank one state with ablations)."""
        self.contract = contract
        self._popularity, self._top, self._base_snap = {}, {}, None

    def read_contract(self, ps, raw: bytes | None) -> tuple[ScoreContract, str]:
        """The learner's contract, ``raw`` as read from ``<ns>:@contract``, and where it came from (``redis``);
        without one (no learner has started yet), the defaults (``default``).  Nothing is published here:
        :meth:`build` publishes both."""
        if raw is None:
            if self.contract_source != "default":
                log.info("no score contract at %s yet: serving the default contract", contract_key(ps.namespace))
            return ScoreContract(dim=ps.dim), "default"
        try:
            return ScoreContract.from_json(raw), "redis"
        except ValueError as exc:
            log.warning("score contract at %s is unusable (%s): keeping %s", contract_key(ps.namespace), exc,
                        "the previous one" if self.contract is not None else "the defaults")
            if self.contract is not None:
                return self.contract, self.contract_source
            return ScoreContract(dim=ps.dim), "default"

    def build(self, ps, raw_pos: dict[int, int], n_items: int) -> bool:
        """Re-read the contract and the item channel from Redis, mapped to the matrix's first ``n_items`` rows;
        returns whether it rebuilt.  Nothing is rebuilt (μ is re-read) while the contract, the item channel's
        ``meta`` (applied events, latest bucket) and ``n_items`` are what the last build saw: a rebuild holds the
        GIL for a while on a large catalogue, and requests wait.

        Everything is read and built first, then published: the channels before the contract (``/stats`` shows the
        new contract only once the channels it names are served), the caches cleared again after it."""
        store = Covisit(ps)
        raw_contract = ps.redis.get(contract_key(ps.namespace))
        seen = (raw_contract, tuple(sorted(ps.redis.hgetall(store.meta_key).items())), n_items)
        g = ps.pull("global", np.zeros(1, np.int64), create=False)
        mu = float(g.bias[0]) if g.found[0] and np.isfinite(g.bias[0]) else 0.0
        self.checks += 1
        if self.channels is not None and seen == self._built_from:
            self.mu = mu
            return False
        contract, source = self.read_contract(ps, raw_contract)
        deg_movies, deg = store.degrees()
        buckets, pop_movies, pop_counts = store.popularity()
        # a stored list holds up to neighbor_hold neighbours, most counted first: the first `neighbors` are served
        owners, cols, counts = store.all_neighbours(limit=contract.neighbors)
        channels = ItemChannels.build(
            n_items, lookup_rows(raw_pos, deg_movies.tolist()), deg, lookup_rows(raw_pos, owners.tolist()),
            lookup_rows(raw_pos, cols.tolist()), counts, buckets, lookup_rows(raw_pos, pop_movies.tolist()),
            pop_counts, store.latest_bucket())
        self.channels, self.mu, self.n_built = channels, mu, n_items
        self._popularity, self._top, self._base_snap = {}, {}, None
        self.contract, self.contract_source = contract, source
        self.version += 1
        self._popularity, self._top, self._base_snap = {}, {}, None
        self._built_from = seen
        return True

    def top_popular(self, bucket: int | None, n: int) -> np.ndarray:
        """Rows of the ``n`` highest popularity priors for ``bucket`` (candidates of the ANN path; cached per
        bucket, so a request does not scan the catalogue)."""
        cached = self._top.get(bucket)
        if cached is None or len(cached) < n:
            pop = self.popularity(bucket)
            m = min(max(n, 1000), len(pop))
            cached = np.argpartition(-pop, m - 1)[:m].astype(np.int64) if m > 0 else np.zeros(0, np.int64)
            cached = cached[np.argsort(-pop[cached], kind="stable")]  # best first: a prefix is a top-n
            if len(self._top) >= POPULARITY_CACHE:
                self._top = {}
            self._top[bucket] = cached
        return cached[:n] if n < len(cached) else cached

    def popularity(self, bucket: int | None) -> np.ndarray:
        """float64[n_built]: the popularity prior of a user whose last event is in ``bucket`` (cached per bucket)."""
        got = self._popularity.get(bucket)
        if got is None:
            if len(self._popularity) >= POPULARITY_CACHE:
                self._popularity = {}
            got = self._popularity[bucket] = self.channels.popularity(self.contract, bucket)
            got.flags.writeable = False
        return got

    def scores(self, snap, query, recent_rows: np.ndarray, bucket: int | None) -> np.ndarray:
        """The served score over the snapshot's rows for a user with LFM row ``query`` (``vec``, ``bias``; None:
        none), recent movies ``recent_rows`` and last bucket ``bucket``: :meth:`bound` plus the LFM term."""
        out = self.bound(snap, query, recent_rows, bucket)
        if query is not None and self.contract.lfm_weight:
            out += self.lfm_term(self.logits(snap, query))
        return out

    def bound(self, snap, query, recent_rows: np.ndarray, bucket: int | None) -> np.ndarray:
        """The served score without the LFM channel's ``w_lfm·log σ(ŷ)`` term (exactly the score for a user
        without an LFM row).  The user-independent part is cached per (snapshot, bucket, LFM row or not); rows
        added after the last build rank as movies with no co-occurrence and no popularity yet."""
        c, ch = self.contract, self.channels
        base = self._base(snap, bucket, query is not None and bool(c.lfm_weight))
        return ch.user_scores(c, base, None, recent_rows)

    def logits(self, snap, query) -> np.ndarray:
        """``ŷ = q_u·v_i + b_u + b_i + μ`` of every row (float64)."""
        return (snap.vec @ query.vec + snap.bias).astype(np.float64) + (query.bias + self.mu)

    def lfm_term(self, logits: np.ndarray) -> np.ndarray:
        """``w_lfm·log σ(ŷ)``, the LFM channel's user-dependent part; it lies in ``[w·(min(ŷ, 0) − log 2),
        w·min(ŷ, 0)]``."""
        return self.contract.lfm_weight * (np.minimum(logits, 0.0) - np.log1p(np.exp(-np.abs(logits))))

    def _base(self, snap, bucket: int | None, lfm: bool) -> np.ndarray:
        key = (bucket, lfm)
        if self._base_snap is not snap:
            self._base_snap, self._bases = snap, {}
        got = self._bases.get(key)
        if got is None:
            c, n, built = self.contract, snap.n, self.n_built
            pop = np.full(n, np.log(c.popularity_smooth))
            pop[:min(n, built)] = self.popularity(bucket)[:min(n, built)]
            got = self.channels.base(c, pop, snap.count if lfm else None)
            got.flags.writeable = False
            if len(self._bases) >= POPULARITY_CACHE:
                self._bases = {}
            self._bases[key] = got
        return got

    def stats(self) -> dict:
        """Facts for /stats."""
        ch = self.channels
        return {"contract": None if self.contract is None else self.contract.__dict__,
                "contract_source": self.contract_source, "version": self.version, "checks": self.checks,
                "items_with_neighbours": 0 if ch is None else int(np.count_nonzero(np.diff(ch.indptr))),
                "popularity_buckets": 0 if ch is None else len(ch.bucket_ids),
                "latest_bucket": None if ch is None else ch.latest_bucket}

