"""Evaluation metrics on arrays (pure numpy, no I/O): exact streaming AUC, hit rate / recall at k,
bootstrap confidence intervals over users.

``AUCUtils`` follows the seed's interface (reset / add / cal / calc_str); the learner keeps one for each log
window and one for the whole stream (the prequential AUC).  It keeps every (label, score) pair added since its
reset and computes the exact Mann-Whitney statistic with tied scores counted as half, which equals
``sklearn.metrics.roc_auc_score`` (checked in the tests; scikit-learn is a test dependency only).  A window
holding one class only has no ranking information: ``cal()`` then returns 0.5 (chance) and ``one_class`` is
True, so logs can say so instead of failing (``roc_auc_score`` has no value there).
"""

from __future__ import annotations

import math

import numpy as np


def auc_exact(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (ties count ½); 0.5 when only one class is present.

    AUC = (Σ_{positives} rank − P(P+1)/2) / (P·N) with average ranks for tied scores.
    """
    y = np.asarray(labels) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return 0.5
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    # average rank (1-based) of each run of tied scores
    edges = np.r_[0, np.nonzero(np.diff(ss))[0] + 1, ss.size]
    avg = (edges[:-1] + edges[1:] + 1) / 2.0
    ranks = np.empty(ss.size)
    ranks[order] = np.repeat(avg, np.diff(edges))
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


class AUCUtils:
    """Streaming exact AUC and mean loss over the events added since the last reset.

    Example::

        auc = AUCUtils()
        auc.add(labels, preds, loss_sum=batch_loss)   # per batch
        print(auc.calc_str()); auc.reset()            # per log window
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self.n = 0
        self.positives = 0
        self.loss_sum = 0.0

    def add(self, labels: np.ndarray, scores: np.ndarray, loss_sum: float = 0.0) -> None:
        """Add a batch of labels (0/1), scores and the batch's summed loss."""
        labels = np.asarray(labels, dtype=np.float32).ravel()
        scores = np.asarray(scores, dtype=np.float32).ravel()
        if labels.shape != scores.shape:
            raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
        self._labels.append(labels)
        self._scores.append(scores)
        self.n += labels.size
        self.positives += int((labels > 0.5).sum())
        self.loss_sum += float(loss_sum)

    @property
    def negatives(self) -> int:
        return self.n - self.positives

    @property
    def one_class(self) -> bool:
        """True when the window holds no positive or no negative (AUC undefined → 0.5)."""
        return self.positives == 0 or self.negatives == 0

    def cal(self) -> float:
        """Exact AUC of the window (0.5 for an empty or one-class window)."""
        if not self._labels:
            return 0.5
        if len(self._labels) > 1:  # keep the concatenation so repeated cal() calls stay cheap
            self._labels = [np.concatenate(self._labels)]
            self._scores = [np.concatenate(self._scores)]
        return auc_exact(self._labels[0], self._scores[0])

    def loss(self) -> float:
        """Mean loss per event of the window (0 when empty)."""
        return self.loss_sum / self.n if self.n else 0.0

    def calc_str(self) -> str:
        """``"auc=0.7123 loss=0.2011 n=51200 (pos 27100 / neg 24100)"``; one-class windows say so."""
        auc = "n/a (one class)" if self.one_class else f"{self.cal():.4f}"
        return f"auc={auc} loss={self.loss():.4f} n={self.n} (pos {self.positives} / neg {self.negatives})"


# ---------------------------------------------------------------------- ranking metrics
def top_k_hits(scores: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Per row: is column ``targets[r]`` among the ``k`` highest scores of row r?

    The target's rank is #(higher scores) + #(equal scores in earlier columns), so ties are broken by
    column order as ``np.argsort`` would; a target scored ``-inf`` (excluded candidate) is never a hit.
    """
    s = np.asarray(scores)
    t = np.asarray(targets, dtype=np.int64)
    rows = np.arange(s.shape[0])
    ts = s[rows, t]
    higher = (s > ts[:, None]).sum(1)
    ties_before = ((s == ts[:, None]) & (np.arange(s.shape[1])[None, :] < t[:, None])).sum(1)
    return (higher + ties_before < k) & np.isfinite(ts)


def per_user_hits(top_items: np.ndarray, user_rows: np.ndarray, pos_items: np.ndarray, n_users: int):
    """Hit / recall per user from each user's top-k item indexes.

    Args:
        top_items: int [n_users, k] item indexes of each user's top k.
        user_rows: int [m] user row of each positive test item.
        pos_items: int [m] item index of each positive test item (-1 = not a candidate: never a hit).
        n_users: number of users.

    Returns:
        (hit [n_users] 0/1 — any positive in the top k, recall [n_users] — share of positives in it).
    """
    k = top_items.shape[1]
    member = (top_items[user_rows] == pos_items[:, None]).any(1) & (pos_items >= 0) if k else np.zeros(len(user_rows), bool)
    hits = np.bincount(user_rows, weights=member.astype(float), minlength=n_users)
    npos = np.bincount(user_rows, minlength=n_users).astype(float)
    return (hits > 0).astype(float), np.divide(hits, npos, out=np.zeros(n_users), where=npos > 0)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k highest scores of each row, best first (k clipped to the number of columns)."""
    s = np.asarray(scores)
    k = min(k, s.shape[1])
    if k == 0:
        return np.zeros((s.shape[0], 0), np.int64)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


# ---------------------------------------------------------------------- bootstrap over users
def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int | None = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-user values and its percentile bootstrap interval (users resampled)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_auc_ci(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_boot: int = 300,
                     seed: int | None = 0, level: float = 0.95) -> tuple[float, float, float]:
    """AUC over rows and its bootstrap interval, resampling users (all rows of a drawn user)."""
    users = np.asarray(users)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    auc = auc_exact(labels, scores)
    if labels.size == 0:
        return math.nan, math.nan, math.nan
    uniq, inv = np.unique(users, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inv, minlength=uniq.size))]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, uniq.size, uniq.size)
        idx = np.concatenate([order[starts[u]:starts[u + 1]] for u in pick])
        stats[b] = auc_exact(labels[idx], scores[idx])
    a = (1 - level) / 2
    return auc, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))
