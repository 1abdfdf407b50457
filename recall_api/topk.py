"""Brute-force top-k over an in-memory item matrix (pure numpy, no I/O).

The served u2i score is the learner's contract (:mod:`lfm_stream.scoring`, :mod:`recall_api.channels`); this module
selects from score vectors and holds the LFM-only i2i score (``source=lfm``):

    i2i:  s(j, i) = v_j · v_i / (‖v_j‖ ‖v_i‖)      cosine, minus the query movie itself

Selection is ``np.argpartition`` (O(n)) followed by a sort of the k survivors, so a query over n
items costs one mat-vec, one partition and an O(k log k) sort; there is no Python loop over items.
Excluded positions are set to ``-inf`` and never returned, even when k exceeds what is left.
"""

from __future__ import annotations

import math
from itertools import repeat

import numpy as np

NEG_INF = np.float32(-np.inf)


def normalize_rows(vec: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, ``v / max(‖v‖, eps)`` (zero rows stay zero: cosine 0 to everything)."""
    vec = np.asarray(vec, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", vec, vec, dtype=np.float64)).astype(np.float32)
    return vec / np.maximum(norms, np.float32(eps))[:, None]


def cosine_scores(unit: np.ndarray, query_unit: np.ndarray) -> np.ndarray:
    """Cosine similarity of every unit-normalized row to a unit query: ``unit @ query_unit`` (float32[n])."""
    return unit @ np.asarray(query_unit, dtype=np.float32)


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions and scores of the ``k`` largest scores, best first.

    Ties are broken by position (lower first), so the result is deterministic.

    Args:
        scores: float32[n]; modified in place where ``exclude`` points (set to -inf).
        k: how many to return (>= 1). Fewer come back when fewer than k positions are left.
        exclude: int positions never to return (out-of-range and negative entries are ignored).

    Returns:
        ``(positions int64[m], scores float32[m])`` with ``m <= k``, scores descending.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    n = scores.shape[0]
    if exclude is not None and len(exclude):
        ex = np.asarray(exclude, dtype=np.int64)
        if ex.min() < 0 or ex.max() >= n:
            ex = ex[(ex >= 0) & (ex < n)]
        scores[ex] = NEG_INF
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    cand = _candidates(scores, k)  # ascending positions
    cand_scores = scores[cand]
    # a stable sort of ascending positions by descending score breaks ties by position; NaN sorts last
    order = np.argsort(-cand_scores, kind="stable")[:k]
    cand, cand_scores = cand[order], cand_scores[order]
    keep = cand_scores > NEG_INF
    # NaN scores (a corrupt vector) compare False and are dropped with the excluded ones
    if keep.all():
        return cand.astype(np.int64, copy=False), cand_scores
    return cand[keep].astype(np.int64, copy=False), cand_scores[keep]


def _candidates(scores: np.ndarray, k: int) -> np.ndarray:
    """Ascending positions that include the k largest scores and all ties of the k-th (every position when
    k >= n).

    Pre-filter: the k-th largest score of a strided subsample is a lower bound of the k-th largest of
    all scores, so ``scores >= bound`` keeps every member of the top k while dropping most positions;
    the exact partition then runs over about ``k * n / m`` survivors instead of ``n`` (m = sample size,
    ≈ sqrt(k n)).  Falls back to a full partition when the bound is not finite (excluded -inf or NaN).
    (ndarray methods rather than ``np.`` functions: this runs per request, and the dispatch adds up.)
    """
    n = scores.shape[0]
    if k >= n:
        return np.arange(n)
    stride = int(n // max(k, math.sqrt(k * n)))
    if stride >= 2:
        sample = scores[::stride].copy()
        m = sample.shape[0]
        if m > k:
            sample.partition(m - k)
            bound = float(sample[m - k])
            if math.isfinite(bound):
                cand = (scores >= bound).nonzero()[0]
                if cand.shape[0] <= k:
                    return cand
                sub = scores[cand]
                part = sub.copy()
                part.partition(sub.shape[0] - k)
                return cand[sub >= part[sub.shape[0] - k]]
    kth = np.partition(scores, n - k)[n - k]
    if np.isnan(kth):
        return np.sort(np.argpartition(scores, n - k)[n - k:])
    return (scores >= kth).nonzero()[0]  # every tie of the k-th score, so ties break by position


def lookup_rows(positions: dict[int, int], keys) -> np.ndarray:
    """Row positions of ``keys`` in a ``{key: row}`` dict, -1 where absent (one C-level pass, no bytecode loop)."""
    if not isinstance(keys, (list, tuple, set, frozenset)):
        keys = list(keys)
    return np.fromiter(map(positions.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))


def parse_ids(members) -> np.ndarray:
    """int64 ids of Redis set members (``bytes`` such as ``b"318"``, or ints), in one C call for the usual
    decimal members; a member that is not an int64 is skipped (it names no movie)."""
    if not isinstance(members, (list, tuple)):
        members = list(members)
    try:
        ids = np.fromstring(b" ".join(members), dtype=np.int64, sep=" ")
        if len(ids) == len(members):
            return ids
    except (TypeError, ValueError):  # ints, or not decimal
        pass
    out = []
    for m in members:
        try:
            v = int(m)
        except ValueError:
            continue
        if -(1 << 63) <= v < 1 << 63:
            out.append(v)
    return np.array(out, dtype=np.int64)


def lookup_ids(row_of_raw: np.ndarray, positions: dict[int, int], ids: np.ndarray) -> np.ndarray:
    """Row positions of raw ids, -1 where absent: ``row_of_raw`` (a dense raw id -> row array, -1 = none)
    indexed by numpy — no per-id Python objects or dict probes, which cost ~0.3 µs each on a busy cache —
    and ``positions`` (the same map as a dict) for ids beyond the array."""
    inside = (ids >= 0) & (ids < len(row_of_raw))
    if inside.all():
        return row_of_raw[ids].astype(np.int64)
    rows = np.full(len(ids), -1, np.int64)
    rows[inside] = row_of_raw[ids[inside]]
    for i in np.flatnonzero(~inside).tolist():
        rows[i] = positions.get(int(ids[i]), -1)
    return rows


def popularity_top_k(popular: list[tuple[int, float]], k: int, exclude: set[int] | frozenset[int] = frozenset()
                     ) -> list[tuple[int, float]]:
    """The first ``k`` of a most-popular-first list whose movie is not in ``exclude``."""
    out: list[tuple[int, float]] = []
    for movie, count in popular:
        if movie in exclude:
            continue
        out.append((int(movie), float(count)))
        if len(out) == k:
            break
    return out
