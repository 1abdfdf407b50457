"""The recall scoring contract: one description of the served u2i score, and its math (numpy only).

The learner writes a :class:`ScoreContract` into the parameter server (``<ns>:@contract``, a JSON string:
``redis-cli GET lfm:@contract``) when it starts; the recall service reads it from Redis and ranks with
:func:`blend`, so what is served is what the learner's evaluation measured.  The score of movie i for user u:

    s(u, i) = w_lfm · (log σ(ŷ_ui) + log(1 + n_i))                        LFM channel (learner rows)
            + w_co  · log(eps + Σ_j r_j · C[j, i] / √((D_j + 1)(D_i + 1)))   item channel (co-occurrence)
            + w_pop · log(smooth + n_k(i) + total_w · n(i))               time-aware popularity

* LFM channel: ``ŷ_ui = q_u·v_i + b_u + b_i + μ`` is the learner's logit that u likes i given u rates it, and
  ``n_i`` the events its row was trained on: ``log P(u rates i and likes it) ≈ log σ(ŷ) + log(1 + n_i)`` up to
  a constant (a user without a row has no LFM channel);
* item channel: ``C[j, i]`` counts how often j and i were rated within ``pair_window`` consecutive ratings of a
  user, each pair weighted by how close the two ratings were (:func:`pair_weights`; top ``neighbors`` kept per
  item), ``D_j`` all of j's pair counts; the sum runs over the user's last
  ``recent_items`` rated movies j, weighted ``r_j`` linearly from ``recent_min_weight`` (oldest) to 1 (newest);
* popularity: ``n_k(i)`` counts positive events of i in the stream buckets within ``popularity_window`` buckets
  of the user's last event (a bucket is ``bucket_events`` consecutive stream events, so the time context scales
  with the data's density, not the calendar), ``n(i)`` all positive events of i.

Every module that computes this score imports it from here; nothing else defines it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

FORMULA = "lfm+covisit+popularity"
VERSION = 1
CONTRACT_SUFFIX = "@contract"


def contract_key(namespace: str) -> str:
    """Redis key of a namespace's contract (``<ns>:@contract``)."""
    return f"{namespace}:{CONTRACT_SUFFIX}"


@dataclass(frozen=True)
class ScoreContract:
    """Every parameter of the served u2i score (see the module docstring for the formula).

    The defaults were chosen on the validation folds of ``bench/folds.py`` (docs/decisions.md).

    Attributes:
        dim: latent dimension of the learner's rows.
        lfm_weight, covisit_weight, popularity_weight: channel weights (0 switches a channel off).
        covisit_eps: floor inside the item channel's log (a movie with no co-occurrence scores log(eps)).
        popularity_smooth, popularity_total_weight: smoothing and all-time share of the popularity prior.
        recent_items: rated movies in the user's item-channel query; recent_min_weight: weight of the oldest.
        pair_window: two ratings of a user at most this many positions apart form a pair (10: 9 neighbours).
        pair_decay: how much less the farthest pair counts than the nearest, in [0, 1) (:func:`pair_weights`).
        neighbors: co-occurring movies served per movie (the most counted).
        neighbor_hold: co-occurring movies a list may hold before it is cut to the ``neighbors`` most counted.
        bucket_events: stream events per popularity bucket; popularity_window: buckets on each side.
    """

    dim: int = 32
    lfm_weight: float = 0.03
    covisit_weight: float = 1.0
    covisit_eps: float = 0.03
    popularity_weight: float = 0.1
    popularity_smooth: float = 0.1
    popularity_total_weight: float = 0.001
    recent_items: int = 10
    recent_min_weight: float = 0.5
    pair_window: int = 10
    pair_decay: float = 0.5
    neighbors: int = 100
    neighbor_hold: int = 800
    bucket_events: int = 1250
    popularity_window: int = 4
    formula: str = FORMULA
    version: int = VERSION

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"score contract: {name} {why} (got {getattr(self, name)!r})")

        if self.formula != FORMULA:
            bad("formula", f"must be {FORMULA!r}")
        if self.version != VERSION:
            bad("version", f"must be {VERSION} (this code reads version {VERSION} only)")
        for name in ("dim", "recent_items", "neighbors", "bucket_events"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.pair_window < 2:
            bad("pair_window", "must be >= 2")
        if self.neighbor_hold < self.neighbors:
            bad("neighbor_hold", f"must be >= neighbors ({self.neighbors})")
        for name in ("lfm_weight", "covisit_weight", "popularity_weight", "popularity_total_weight",
                     "popularity_window"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("covisit_eps", "popularity_smooth"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        if not 0 <= self.pair_decay < 1:
            bad("pair_decay", "must be in [0, 1)")
        if not 0 <= self.recent_min_weight <= 1:
            bad("recent_min_weight", "must be in [0, 1]")

    def to_json(self) -> str:
        """The contract as one JSON object (keys sorted)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ScoreContract":
        """Parse :meth:`to_json` output; unknown keys, another formula or version raise ``ValueError``."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"score contract: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"score contract: expected a JSON object (got {type(data).__name__})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"score contract: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"score contract: {exc}") from exc

    def replace(self, **changes) -> "ScoreContract":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


PAIR_UNIT = 100  # a pair's weight in hundredths when pair_decay > 0


def pair_weights(pair_window: int, pair_decay: float) -> np.ndarray:
    """Integer weight of a pair of ratings ``d`` positions apart, at index ``d − 1`` (d = 1 … pair_window − 1).

    ``pair_decay`` 0: every pair counts 1.  Otherwise the nearest pair counts ``PAIR_UNIT`` (100) and the weight
    falls linearly to ``PAIR_UNIT · (1 − pair_decay)`` for the farthest, rounded (counts stay integers, so chunks add
    up exactly).  The score divides counts by √(D + 1), so the unit matters only through that + 1.
    """
    d = np.arange(1, pair_window, dtype=np.float64)
    if pair_decay == 0:
        return np.ones(len(d), np.int64)
    far = max(pair_window - 2, 1)
    return np.rint(PAIR_UNIT * (1.0 - pair_decay * (d - 1) / far)).astype(np.int64)


def recent_weights(n: int, min_weight: float) -> np.ndarray:
    """Weights of a user's last ``n`` rated movies, oldest first: linear from ``min_weight`` to 1 (one movie: 1)."""
    if n <= 0:
        return np.zeros(0, np.float64)
    if n == 1:
        return np.ones(1, np.float64)
    return min_weight + (1.0 - min_weight) * np.arange(n, dtype=np.float64) / (n - 1)


def covisit_scores(neighbors: list[tuple[np.ndarray, np.ndarray]], query_degree: np.ndarray, weights: np.ndarray,
                   degree: np.ndarray) -> np.ndarray:
    """Item-channel sums ``Σ_j r_j · C[j, i] / √((D_j + 1)(D_i + 1))`` over the columns of ``degree``.

    Args:
        neighbors: per query movie j, (columns i, counts C[j, i]) of its kept neighbours (columns < len(degree)).
        query_degree: D_j of each query movie.
        weights: r_j of each query movie.
        degree: D_i of every column.

    Returns:
        float64[len(degree)], zero where no query movie has the column as a neighbour.
    """
    out = np.zeros(len(degree), np.float64)
    for (cols, counts), dj, rj in zip(neighbors, query_degree, weights):
        if len(cols):
            np.add.at(out, cols, rj * np.asarray(counts, np.float64) / np.sqrt(float(dj) + 1.0))
    return out / np.sqrt(np.asarray(degree, np.float64) + 1.0)


def lfm_channel(logits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``log σ(ŷ) + log(1 + n)``: the LFM's like-probability of each item times how often it is rated."""
    logits = np.asarray(logits, np.float64)
    return -np.logaddexp(0.0, -logits) + np.log1p(np.maximum(np.asarray(counts, np.float64), 0.0))


def popularity_prior(window_counts: np.ndarray, total_counts: np.ndarray, smooth: float,
                     total_weight: float) -> np.ndarray:
    """``log(smooth + n_k(i) + total_weight · n(i))``: positives near the user's time plus a share of all time."""
    return np.log(smooth + np.asarray(window_counts, np.float64) + total_weight * np.asarray(total_counts, np.float64))


def blend(contract: ScoreContract, lfm: np.ndarray | None, covisit: np.ndarray | None,
          popularity: np.ndarray | None) -> np.ndarray:
    """The served score from the channels' raw parts (each float[n] or None when the channel is off or absent).

    ``lfm`` is :func:`lfm_channel`, ``covisit`` the sums of :func:`covisit_scores`, ``popularity`` the prior of
    :func:`popularity_prior`.  A channel with weight 0 or None contributes nothing.
    """
    parts = [a for a in (lfm, covisit, popularity) if a is not None]
    if not parts:
        raise ValueError("blend needs at least one channel")
    out = np.zeros(len(parts[0]), np.float64)
    if lfm is not None and contract.lfm_weight:
        out += contract.lfm_weight * np.asarray(lfm, np.float64)
    if covisit is not None and contract.covisit_weight:
        out += contract.covisit_weight * np.log(contract.covisit_eps + np.asarray(covisit, np.float64))
    if popularity is not None and contract.popularity_weight:
        out += contract.popularity_weight * np.asarray(popularity, np.float64)
    return out


@dataclass
class ItemChannels:
    """The item channel and popularity over ``n`` item columns, as arrays a ranker keeps in memory.

    Attributes:
        degree: D of each column (float64[n]).
        indptr, neighbour_cols, neighbour_counts: CSR rows of kept neighbours per column (counts C[j, i]).
        bucket_ids: the stream buckets with positives, sorted; bucket_ptr, bucket_cols, bucket_counts: their
            positives per column (CSR over ``bucket_ids``); total: positives of all time per column.
        latest_bucket: the newest bucket (the time context of users without one).
    """

    degree: np.ndarray
    indptr: np.ndarray
    neighbour_cols: np.ndarray
    neighbour_counts: np.ndarray
    bucket_ids: np.ndarray
    bucket_ptr: np.ndarray
    bucket_cols: np.ndarray
    bucket_counts: np.ndarray
    total: np.ndarray
    latest_bucket: int

    @property
    def n(self) -> int:
        return len(self.degree)

    @classmethod
    def build(cls, n: int, degree_cols: np.ndarray, degree: np.ndarray, neighbour_rows: np.ndarray,
              neighbour_cols: np.ndarray, neighbour_counts: np.ndarray, pop_buckets: np.ndarray,
              pop_cols: np.ndarray, pop_counts: np.ndarray, latest_bucket: int | None) -> "ItemChannels":
        """From column-mapped triples (entries with a column outside [0, n) are dropped).  Memory is linear in
        the entries: nothing is allocated per bucket or per (bucket, column) beyond them."""
        def inside(cols):
            cols = np.asarray(cols, np.int64)
            return (cols >= 0) & (cols < n)

        deg = np.zeros(n, np.float64)
        ok = inside(degree_cols)
        deg[np.asarray(degree_cols, np.int64)[ok]] = np.asarray(degree, np.float64)[ok]
        rows, cols = np.asarray(neighbour_rows, np.int64), np.asarray(neighbour_cols, np.int64)
        ok = inside(rows) & inside(cols)
        rows, cols, cnt = rows[ok], cols[ok], np.asarray(neighbour_counts, np.float64)[ok]
        order = np.argsort(rows, kind="stable")
        indptr = np.zeros(n + 1, np.int64)
        np.add.at(indptr, rows + 1, 1)
        indptr = np.cumsum(indptr)
        pb, pc = np.asarray(pop_buckets, np.int64), np.asarray(pop_cols, np.int64)
        ok = inside(pc)
        pb, pc, pn = pb[ok], pc[ok], np.asarray(pop_counts, np.float64)[ok]
        total = np.zeros(n, np.float64)
        np.add.at(total, pc, pn)
        order_b = np.argsort(pb, kind="stable")
        bucket_ids, starts = np.unique(pb[order_b], return_index=True)
        bucket_ptr = np.r_[starts, len(pb)].astype(np.int64)
        latest = int(latest_bucket) if latest_bucket is not None else (int(bucket_ids[-1]) if len(bucket_ids) else 0)
        return cls(deg, indptr, cols[order], cnt[order], bucket_ids, bucket_ptr, pc[order_b], pn[order_b], total,
                   latest)

    def popularity(self, contract: ScoreContract, bucket: int | None) -> np.ndarray:
        """The popularity prior of a user whose last event is in ``bucket`` (None: the latest bucket)."""
        k = self.latest_bucket if bucket is None else int(bucket)
        w = contract.popularity_window
        lo = self.bucket_ptr[np.searchsorted(self.bucket_ids, k - w, side="left")]
        hi = self.bucket_ptr[np.searchsorted(self.bucket_ids, k + w, side="right")]
        window = np.zeros(self.n, np.float64)
        np.add.at(window, self.bucket_cols[lo:hi], self.bucket_counts[lo:hi])
        return popularity_prior(window, self.total, contract.popularity_smooth, contract.popularity_total_weight)

    def covisit(self, contract: ScoreContract, recent_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(columns, item-channel sums) touched by a user's recent movies (columns, oldest first; the last
        ``recent_items`` count and are weighted by position; a movie outside the table (-1: no row yet)
        contributes nothing)."""
        recent_cols = np.asarray(recent_cols, np.int64)[-contract.recent_items:]
        weights = recent_weights(len(recent_cols), contract.recent_min_weight)
        inside = (recent_cols >= 0) & (recent_cols < self.n)  # a movie outside the table keeps its weight slot
        recent_cols, weights = recent_cols[inside], weights[inside]
        if not len(recent_cols):
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        parts_c, parts_v = [], []
        for j, r in zip(recent_cols.tolist(), weights.tolist()):
            lo, hi = self.indptr[j], self.indptr[j + 1]
            parts_c.append(self.neighbour_cols[lo:hi])
            parts_v.append(r * self.neighbour_counts[lo:hi] / np.sqrt(self.degree[j] + 1.0))
        cols = np.concatenate(parts_c)
        if not len(cols):
            return cols, np.zeros(0, np.float64)
        uniq, inv = np.unique(cols, return_inverse=True)
        sums = np.zeros(len(uniq), np.float64)
        np.add.at(sums, inv, np.concatenate(parts_v))
        return uniq, sums / np.sqrt(self.degree[uniq] + 1.0)

    def base(self, contract: ScoreContract, popularity: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """The part of the served score that does not depend on the user's row or recent movies:
        ``w_co·log(eps) + w_pop·popularity`` (a user's bucket), plus ``w_lfm·log(1 + n_i)`` with ``counts`` (users
        with an LFM row).  A ranker keeps it per bucket and adds :meth:`user_scores`' terms per request."""
        out = contract.covisit_weight * np.log(contract.covisit_eps) + \
            contract.popularity_weight * np.asarray(popularity, np.float64)
        if counts is not None and contract.lfm_weight:
            out = out + contract.lfm_weight * np.log1p(np.maximum(np.asarray(counts, np.float64), 0.0))
        return out

    def user_scores(self, contract: ScoreContract, base: np.ndarray, logits: np.ndarray | None,
                    recent_cols: np.ndarray) -> np.ndarray:
        """The served score (:func:`blend`) of every column: ``base`` from :meth:`base` (with the counts when the
        user has an LFM row), the LFM logits ``q_u·v_i + b_u + b_i + μ`` (None: no row) and the user's recent movies
        as columns (oldest first).  The item channel touches only the recent movies' neighbours."""
        out = np.array(base, np.float64)
        if logits is not None and contract.lfm_weight:
            out += contract.lfm_weight * -np.logaddexp(0.0, -np.asarray(logits, np.float64))
        floor = np.log(contract.covisit_eps)
        cols, sums = self.covisit(contract, recent_cols)
        keep = cols < len(out)  # a ranker over fewer columns than the channel was built on
        out[cols[keep]] += contract.covisit_weight * (np.log(contract.covisit_eps + sums[keep]) - floor)
        return out

    def scores(self, contract: ScoreContract, lfm: np.ndarray | None, recent_cols: np.ndarray,
               bucket: int | None, popularity: np.ndarray | None = None) -> np.ndarray:
        """The served score (:func:`blend`) of every column for one user: ``lfm`` = :func:`lfm_channel` (None:
        the user has no LFM row), the user's recent movies as columns (oldest first), the bucket of their last event
        (``popularity``: :meth:`popularity` of that bucket, if the caller keeps it)."""
        if popularity is None:
            popularity = self.popularity(contract, bucket)
        out = self.user_scores(contract, self.base(contract, popularity), None, recent_cols)
        if lfm is not None and contract.lfm_weight:
            out += contract.lfm_weight * np.asarray(lfm, np.float64)
        return out
