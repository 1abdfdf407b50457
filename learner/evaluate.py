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

from dataclasses import dataclass, field

import numpy as np

from learner.config import ModelConfig
from learner.idindex import IdIndex
from learner.metrics import auc_exact, per_user_hits, top_k
from learner.scores import predict
from lfm_stream.scoring import ItemChannels, ScoreContract, contract_key, lfm_channel
from ps_redis.covisit import Covisit


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


def served_channels(ps, cfg: ModelConfig, table: "ItemTable"):
    """(the score contract in ``ps``'s namespace — or the defaults —, the item channel over ``table``'s columns):
    what the recall service ranks with (:mod:`recall_api.channels` builds the same from the same keys)."""
    raw = ps.redis.get(contract_key(ps.namespace))
    contract = ScoreContract.from_json(raw) if raw is not None else ScoreContract(dim=cfg.dim)
    store = Covisit(ps)
    deg_movies, deg = store.degrees()
    buckets, pop_movies, pop_counts = store.popularity()
    owners, cols, counts = store.all_neighbours(limit=contract.neighbors)  # the served top of each list
    col = table.raw_column_array
    channels = ItemChannels.build(len(table.ids), col(deg_movies), deg, col(owners), col(cols), counts, buckets,
                                  col(pop_movies), pop_counts, store.latest_bucket())
    return contract, channels


def evaluate(ps, log, cfg: ModelConfig, test: dict[str, np.ndarray], *, ks: tuple[int, ...] = (10, 50),
             max_users: int = 0, popularity: bool = False, seed: int = 0) -> EvalResult:
    """Test metrics of the model currently in the PS.

    Args:
        ps: the ParameterServer.  log: its ActivityLog (seen filter and popularity), or None to skip ranking.
        cfg: model config (the prediction; the recall score is the namespace's contract).
        test: test columns (``InputFn.read_all`` of the test shards).
        ks: cut-offs of HR@k (Recall is reported at the largest k).
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
    preds = predict(cfg, ur.vec[uinv], ur.bias[uinv], ir.vec[iinv], ir.bias[iinv], mu)
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
    """The learner's local copy of item rows (vec, bias, count, raw id), for prequential HR@k without a PS scan.

    Rows are appended in first-seen order; two :class:`~learner.idindex.IdIndex` map hashed and raw ids to rows.
    """

    def __init__(self, dim: int):
        self._index = IdIndex()  # hashed id → row
        self._raw_index = IdIndex()  # raw movie id → row
        self.ids = np.zeros(1024, np.int64)
        self.raw = np.zeros(1024, np.int64)
        self.vec = np.zeros((1024, dim), np.float32)
        self.bias = np.zeros(1024, np.float32)
        self.count = np.zeros(1024, np.int64)
        self.n = 0

    def update(self, ids: np.ndarray, raw: np.ndarray, vec: np.ndarray, bias: np.ndarray, count: np.ndarray) -> None:
        """Insert or overwrite rows (``ids`` distinct; ``count``: the events each row was trained on)."""
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
        self.ids[rows], self.raw[rows], self.vec[rows], self.bias[rows], self.count[rows] = ids, raw, vec, bias, count

    def _grow(self) -> None:
        n = 2 * len(self.ids)
        for name in ("ids", "raw", "vec", "bias", "count"):
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
