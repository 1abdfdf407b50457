"""Test metrics against the parameter server: AUC (all rows, warm rows, coverage), HR@k and Recall@k.

The PS and the activity log are passed in; this module only reads them (``pull(create=False)``,
``scan``, ``seen``, ``popular``) and does the ranking math with :mod:`learner.metrics`.

* AUC over all test rows: unseen users/movies get zero vectors and biases (prediction μ), so cold rows
  count as uninformed guesses; ``warm_auc`` keeps rows whose user *and* movie were trained
  (update count > 0); ``coverage`` is the share of warm rows.
* HR@k: share of test users with a positive test item whose positive is in the top k of all trained
  movies they have not rated, ranked by the served score: the namespace's score contract over the LFM rows,
  the item channel and stream popularity (:mod:`lfm_stream.scoring`; what the recall service serves);
  Recall@k: share of the user's positive test items in that top k.  ``popularity_hr`` ranks by the
  activity log's positive counts with the same candidates and seen filter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from learner.config import ModelConfig
from learner.idindex import IdIndex
from learner.metrics import auc_exact, per_user_hits, top_k
from learner.scores import predict
from lfm_stream.scoring import ItemChannels, ScoreContract, contract_key, lfm_channel
from ps_redis.covisit import Covisit

log = logging.getLogger(__name__)


@dataclass
class ItemTable:
    """All trained item rows as arrays (sorted by hashed id)."""

    ids: np.ndarray
    raw: np.ndarray
    vec: np.ndarray
    bias: np.ndarray
    count: np.ndarray

    @classmethod
    def from_ps(cls, ps, trained_only: bool = True) -> "ItemTable":
        chunks = list(ps.scan("item"))
        if not chunks:
            z = np.zeros(0, np.int64)
            return cls(z, z, np.zeros((0, ps.dim), np.float32), np.zeros(0, np.float32), z)
        cat = {f: np.concatenate([getattr(c, f) for c in chunks]) for f in ("ids", "raw", "vec", "bias", "count")}
        keep = cat["count"] > 0 if trained_only else np.ones(len(cat["ids"]), bool)
        order = np.argsort(cat["ids"][keep])
        return cls(**{f: v[keep][order] for f, v in cat.items()})

    def column(self, ids: np.ndarray) -> np.ndarray:
        """Column of each hashed id, -1 when absent."""
        ids = np.asarray(ids, np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        ok = (len(self.ids) > 0) & (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return np.where(ok, pos, -1)

    def raw_column_array(self, raw: np.ndarray) -> np.ndarray:
        """Column of each raw movie id, -1 when absent."""
        raw = np.asarray(raw, np.int64)
        if not len(self.raw):
            return np.full(raw.shape, -1, np.int64)
        order = np.argsort(self.raw)
        pos = np.minimum(np.searchsorted(self.raw[order], raw), len(order) - 1)
        return np.where(self.raw[order][pos] == raw, order[pos], -1)

    def raw_columns(self, raw_ids) -> np.ndarray:
        """Columns of raw movie ids (absent ones dropped)."""
        if not len(self.raw):
            return np.zeros(0, np.int64)
        order = np.argsort(self.raw)
        raw = np.asarray(sorted(raw_ids), np.int64)
        pos = np.minimum(np.searchsorted(self.raw[order], raw), len(order) - 1)
        ok = self.raw[order][pos] == raw
        return order[pos[ok]]


@dataclass
class EvalResult:
    """Scalar metrics plus per-row / per-user arrays for bootstrap intervals."""

    metrics: dict
    users: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per test row
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    preds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    warm: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    per_user: dict = field(default_factory=dict)  # name -> per-ranked-user array (hit@10, hit@50, recall@50, pop@50)


PPOP = "ppop"  # counter set (ps_redis.counters) of positive events: bucket = period, member = raw movie id
PPOP_SHIFT = 32  # one int64 per (period, raw movie) pair while counting: period << 32 | raw movie id


def ppop_ids(periods: np.ndarray, raw_movies: np.ndarray) -> np.ndarray:
    """One int64 per (period, raw movie) pair: ``period << 32 | raw movie id``."""
    return (np.asarray(periods, np.int64) << PPOP_SHIFT) | (np.asarray(raw_movies, np.int64) & 0xFFFFFFFF)


def prior_log(cfg: ModelConfig, window: np.ndarray, total: np.ndarray) -> np.ndarray:
    """τ = log(pop_smooth + window + pop_total_w · total): positives of the ±pop_window periods and of all time."""
    return np.log(cfg.pop_smooth + window + cfg.pop_total_w * total)


MAX_PERIODS = 1024  # periods a PeriodPrior spans at most (252 years of 90-day periods): its table is bounded


def densest_span(periods: np.ndarray, max_periods: int) -> np.ndarray:
    """Mask of the entries inside the ``max_periods`` consecutive periods holding the most entries (all of
    them when they span fewer): a stray period far from the data (an event time of 2**62) is left out."""
    periods = np.asarray(periods, np.int64)
    if periods.size == 0 or int(periods.max()) - int(periods.min()) < max_periods:
        return np.ones(periods.size, bool)
    uniq, per = np.unique(periods, return_counts=True)
    top = np.iinfo(np.int64).max
    ends = np.minimum(uniq, top - max_periods) + max_periods  # (no int64 overflow for a stray huge period)
    end = np.searchsorted(uniq, ends, side="left")  # first period past each start's span
    csum = np.concatenate([[0], np.cumsum(per)])
    lo = int(uniq[np.argmax(csum[end] - csum[:-1])])
    return (periods >= lo) & (periods < min(lo + max_periods, top))


class PeriodPrior:
    """Time-aware popularity prior τ_u(i) over the columns of an item table (pure numpy).

    τ(k, i) = log(smooth + Σ_{|k' − k| ≤ window} n[k', i] + total_w · n_i) with n[k, i] the positive
    events of movie i in period k and n_i all of them.  The counts span at most ``max_periods`` periods (the
    densest such span, :func:`densest_span`); counts outside are skipped, logged and counted in ``skipped``.
    """

    def __init__(self, cfg: ModelConfig, periods: np.ndarray, cols: np.ndarray, counts: np.ndarray, n_items: int,
                 max_periods: int = MAX_PERIODS):
        self.cfg = cfg
        periods = np.asarray(periods, np.int64)
        keep = densest_span(periods, max_periods)
        self.skipped = int(keep.size - keep.sum())
        if self.skipped:
            out = periods[~keep]
            log.warning("popularity prior: skipped %d count(s) of %d period(s) outside the %d periods around the "
                        "data [%d, %d] (e.g. period %d)", self.skipped, np.unique(out).size, max_periods,
                        int(periods[keep].min()), int(periods[keep].max()), int(out[0]))
            periods, cols, counts = periods[keep], np.asarray(cols)[keep], np.asarray(counts)[keep]
        self.k0 = int(periods.min()) if periods.size else 0
        nk = int(periods.max()) - self.k0 + 1 if periods.size else 1
        dense = np.zeros((nk + 1, n_items), np.float64)  # row 0 = zeros for the cumulative sums
        np.add.at(dense, (periods - self.k0 + 1, cols), counts)
        self.cum = np.cumsum(dense, axis=0)
        self.total = self.cum[-1]
        self.latest = self.k0 + nk - 1

    @classmethod
    def from_ps(cls, ps, cfg: ModelConfig, table: "ItemTable") -> "PeriodPrior":
        """The prior of the counts in ``ps``'s ``ppop`` counter set, over the columns of ``table``."""
        from ps_redis.counters import Counters

        periods, movies, counts = Counters(ps, PPOP).read()
        cols = table.raw_column_array(movies)
        ok = cols >= 0
        return cls(cfg, periods[ok], cols[ok], counts[ok], len(table.ids))

    def tau(self, k: np.ndarray) -> np.ndarray:
        """τ rows for periods ``k`` (one row per entry)."""
        c = self.cfg
        span = self.cum.shape[0] + c.pop_window + 1  # beyond this, every k gives the first / last row: clip first
        i64 = np.iinfo(np.int64)
        k = np.clip(np.asarray(k, np.int64), max(self.k0 - span, i64.min), min(self.k0 + span, i64.max)) - self.k0
        hi = np.clip(k + c.pop_window + 1, 0, self.cum.shape[0] - 1)
        lo = np.clip(k - c.pop_window, 0, self.cum.shape[0] - 1)
        return prior_log(c, self.cum[hi] - self.cum[lo], self.total[None, :])


def user_periods(ps, user_ids: np.ndarray, default: int) -> np.ndarray:
    """Period of each user's last event (``user_ctx`` bias), ``default`` for unknown users."""
    rows = ps.pull("user_ctx", np.asarray(user_ids, np.int64), create=False)
    return np.where(rows.found, np.rint(rows.bias).astype(np.int64), default)


def served_channels(ps, cfg: ModelConfig, table: "ItemTable"):
    """(the score contract in ``ps``'s namespace — or the defaults —, the item channel over ``table``'s columns):
    what the recall service ranks with (:mod:`recall_api.channels` builds the same from the same keys)."""
    raw = ps.redis.get(contract_key(ps.namespace))
    contract = ScoreContract.from_json(raw) if raw is not None else ScoreContract(dim=cfg.dim)
    store = Covisit(ps)
    deg_movies, deg = store.degrees()
    buckets, pop_movies, pop_counts = store.popularity()
    owners, cols, counts = store.all_neighbours()
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else np.zeros(0, np.int64)
    rank = np.arange(len(owners)) - np.repeat(starts, np.diff(np.r_[starts, len(owners)]))
    top = rank < contract.neighbors
    col = table.raw_column_array
    channels = ItemChannels.build(len(table.ids), col(deg_movies), deg, col(owners[top]), col(cols[top]),
                                  counts[top], buckets, col(pop_movies), pop_counts, store.latest_bucket())
    return contract, channels


def evaluate(ps, log, cfg: ModelConfig, test: dict[str, np.ndarray], *, ks: tuple[int, ...] = (10, 50),
             user_period: dict[int, int] | None = None, max_users: int = 0, popularity: bool = False,
             seed: int = 0) -> EvalResult:
    """Test metrics of the model currently in the PS.

    Args:
        ps: the ParameterServer.  log: its ActivityLog (seen filter and popularity), or None to skip ranking.
        cfg: model config (prediction and recall score).
        test: test columns (``InputFn.read_all`` of the test shards).
        ks: cut-offs of HR@k (Recall is reported at the largest k).
        user_period: hashed user id → period of the user's last event (period models only).
        max_users: rank at most this many users (a seeded sample; 0 = all).
        popularity: also compute the popularity baseline's HR@k.
    """
    labels = np.asarray(test["label"], np.float64)
    users, items = test["user_id"], test["movie_id"]
    out: dict = {"test_rows": int(labels.size)}
    if labels.size == 0:
        return EvalResult(out)
    uu, uinv = np.unique(users, return_inverse=True)
    ii, iinv = np.unique(items, return_inverse=True)
    ur = ps.pull("user", uu, create=False)
    ir = ps.pull("item", ii, create=False)
    mu = 0.0
    if cfg.learn_mu:
        g = ps.pull("global", np.zeros(1, np.int64), create=False)
        mu = float(g.bias[0])
    uwarm = ur.found & (ur.count > 0)
    iwarm = ir.found & (ir.count > 0)
    ivec = ir.vec.copy()
    if cfg.item_scale != 1.0:
        ivec[~iwarm] *= cfg.item_scale
    periods = None
    if cfg.period_days > 0 and cfg.period_in_pred and user_period is not None:
        k = np.array([user_period.get(int(u), -1) for u in uu], np.int64)
        periods = ps.pull("period", np.maximum(k, 0), create=False).vec * (k >= 0)[:, None]
    preds = predict(cfg, ur.vec[uinv], ur.bias[uinv], ivec[iinv], ir.bias[iinv], mu,
                    None if periods is None else periods[uinv])
    warm = uwarm[uinv] & iwarm[iinv]
    out["test_auc"] = auc_exact(labels, preds)
    out["warm_auc"] = auc_exact(labels[warm], preds[warm]) if warm.any() else 0.5
    out["coverage"] = float(warm.mean())
    out["warm_rows"] = int(warm.sum())
    res = EvalResult(out, users=users, labels=labels, preds=preds, warm=warm)
    if log is None:
        return res
    table = ItemTable.from_ps(ps)
    out["items_ranked"] = int(len(table.ids))
    pos = labels > 0.5
    rank_users = np.unique(users[pos])
    if max_users and rank_users.size > max_users:
        rank_users = np.sort(np.random.default_rng(seed).choice(rank_users, max_users, replace=False))
    out["ranked_users"] = int(rank_users.size)
    if rank_users.size == 0 or len(table.ids) == 0:
        return res
    sel = pos & np.isin(users, rank_users)
    urow = np.searchsorted(rank_users, users[sel])
    target = table.column(items[sel])
    raw_user = {int(u): int(r) for u, r in zip(users[sel], test["raw_user_id"][sel])}
    qrows = ps.pull("user", rank_users, create=False)
    contract, channels = served_channels(ps, cfg, table)
    recent = Covisit(ps).recent([raw_user[int(u)] for u in rank_users.tolist()])
    kmax = max(ks)
    pop_score = None
    if popularity:
        pop = dict(log.popular(max(len(table.ids), 1)))
        pop_score = np.array([pop.get(int(r), 0.0) for r in table.raw], np.float64)
    tops = np.zeros((rank_users.size, kmax), np.int64)
    pop_tops = np.zeros((rank_users.size, kmax), np.int64)
    for r, user in enumerate(rank_users.tolist()):
        bucket, movies = recent.get(raw_user[user], (None, np.zeros(0, np.int64)))
        lfm = None
        if qrows.found[r] and contract.lfm_weight:
            logits = table.vec @ qrows.vec[r].astype(np.float64) + table.bias + qrows.bias[r] + mu
            lfm = lfm_channel(logits, table.count)
        scores = channels.scores(contract, lfm, table.raw_column_array(movies), bucket)
        seen = table.raw_columns(log.seen(raw_user[user]))
        scores[seen] = -np.inf
        tops[r] = _pad_top(top_k(scores[None, :], kmax), kmax)[0]
        if pop_score is not None:
            p = pop_score.copy()
            p[seen] = -np.inf
            pop_tops[r] = _pad_top(top_k(p[None, :], kmax), kmax)[0]
    for k in ks:
        hit, rec = per_user_hits(tops[:, :k], urow, target, rank_users.size)
        out[f"hr_at_{k}"] = float(hit.mean())
        res.per_user[f"hr_at_{k}"] = hit
        if k == kmax:
            out[f"recall_at_{k}"] = float(rec.mean())
            res.per_user[f"recall_at_{k}"] = rec
    if pop_score is not None:
        hit, _ = per_user_hits(pop_tops, urow, target, rank_users.size)
        out[f"popularity_hr_at_{kmax}"] = float(hit.mean())
        res.per_user[f"popularity_hr_at_{kmax}"] = hit
    return res


def _pad_top(top: np.ndarray, k: int) -> np.ndarray:
    if top.shape[1] == k:
        return top
    out = np.full((top.shape[0], k), -2, np.int64)
    out[:, : top.shape[1]] = top
    return out


class ItemMirror:
    """The learner's local copy of item rows (vec, bias, raw id), for prequential HR@k without a PS scan.

    Rows are appended in first-seen order; two :class:`~learner.idindex.IdIndex` map hashed and raw ids to rows.
    """

    def __init__(self, dim: int):
        self._index = IdIndex()  # hashed id → row
        self._raw_index = IdIndex()  # raw movie id → row
        self.ids = np.zeros(1024, np.int64)
        self.raw = np.zeros(1024, np.int64)
        self.vec = np.zeros((1024, dim), np.float32)
        self.bias = np.zeros(1024, np.float32)
        self.n = 0

    def update(self, ids: np.ndarray, raw: np.ndarray, vec: np.ndarray, bias: np.ndarray) -> None:
        """Insert or overwrite rows (``ids`` distinct)."""
        ids = np.asarray(ids, np.int64)
        rows = self.columns(ids)
        fresh = rows < 0
        k = int(fresh.sum())
        if k:
            while self.n + k > len(self.ids):
                self._grow()
            rows[fresh] = np.arange(self.n, self.n + k)
            self.n += k
            self._index.add(ids[fresh], rows[fresh])
            self._raw_index.add(np.asarray(raw)[fresh], rows[fresh])
        self.ids[rows], self.raw[rows], self.vec[rows], self.bias[rows] = ids, raw, vec, bias

    def _grow(self) -> None:
        n = 2 * len(self.ids)
        for name in ("ids", "raw", "vec", "bias"):
            old = getattr(self, name)
            new = np.zeros((n,) + old.shape[1:], old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def columns(self, ids) -> np.ndarray:
        """Row of each hashed id (-1 absent)."""
        return self._index.find(ids)

    def raw_columns(self, raw_ids) -> np.ndarray:
        """Rows of raw movie ids (a set or an int array; absent ones dropped)."""
        if not isinstance(raw_ids, np.ndarray):
            raw_ids = np.fromiter(raw_ids, np.int64, len(raw_ids))
        rows = self._raw_index.find(raw_ids)
        return rows[rows >= 0]
