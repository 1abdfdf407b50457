"""Prequential HR@k: the online view of recall, measured before each update (pure numpy, no I/O).

On a sample of positive events, before the micro-batch trains: is the event's movie in its user's
current top k?  Scored exactly as the recall service scores (``learner.scores.recall_scores`` plus the
time-aware popularity prior), over a local mirror of the item rows the learner has trained, with the
user's already-rated movies (read by the caller from the activity log) excluded.
"""

from __future__ import annotations

import threading

import numpy as np

from learner.config import ModelConfig
from learner.evaluate import ItemMirror, prior_log
from learner.metrics import top_k_hits
from learner.scores import recall_scores


class PrequentialHR:
    """Item mirror, local positive counts per popularity period, and the running hit rate."""

    def __init__(self, cfg: ModelConfig, k: int):
        self.cfg = cfg
        self.k = k
        self.mirror = ItemMirror(cfg.dim)
        self._pop: dict[int, np.ndarray] = {}  # positive counts per period over mirror columns
        self._pop_total = np.zeros(0)
        self.hits = 0
        self.n = 0
        self._lock = threading.Lock()  # hits and n move together (read from another thread by snapshot)

    @property
    def rate(self) -> float | None:
        """Hits / samples so far (None before the first sample)."""
        return self.hits / self.n if self.n else None

    def snapshot(self) -> tuple[float | None, int]:
        """(hits / samples, samples) as of the scores finished so far, safe to call while one runs."""
        with self._lock:
            return self.rate, self.n

    def learn(self, ids, raw, vec, bias, movie_ids, labels, kpop) -> None:
        """After a micro-batch: mirror its trained item rows, count its positives per period."""
        self.mirror.update(ids, raw, vec, bias)
        if kpop is None:
            return
        pos = labels > 0.5
        cols = self.mirror.columns(movie_ids[pos])
        size = len(self.mirror.ids)
        if len(self._pop_total) < size:
            self._pop_total = np.r_[self._pop_total, np.zeros(size - len(self._pop_total))]
        np.add.at(self._pop_total, cols, 1.0)
        kp = kpop[pos]
        for k in np.unique(kp).tolist():
            row = self._pop.get(k)
            if row is None or len(row) < size:
                grown = np.zeros(size)
                if row is not None:
                    grown[: len(row)] = row
                row = self._pop[k] = grown
            np.add.at(row, cols[kp == k], 1.0)

    def tau(self, k: int, n: int) -> np.ndarray:
        """The local time-aware popularity prior of period ``k`` over the first ``n`` mirror items."""
        m = self.cfg
        window = np.zeros(n)
        for kk in range(k - m.pop_window, k + m.pop_window + 1):
            row = self._pop.get(kk)
            if row is not None:
                r = row[:n]
                window[: len(r)] += r
        total = np.zeros(n)
        t = self._pop_total[:n]
        total[: len(t)] = t
        return prior_log(m, window, total)

    def score(self, queries: np.ndarray, movie_ids: np.ndarray, kpop: np.ndarray | None,
              seen: list) -> None:
        """Add one sample per row: ``queries`` (user vectors before the update), the events' hashed movie
        ids, their popularity periods, and each user's rated raw movie ids (sets or int arrays; excluded)."""
        n = self.mirror.n
        if not len(queries) or n == 0:
            return
        m = self.cfg
        scores = recall_scores(m, queries, self.mirror.vec[:n], self.mirror.bias[:n])
        if kpop is not None and m.pop_weight > 0:
            taus: dict[int, np.ndarray] = {}
            for r, k in enumerate(np.asarray(kpop).tolist()):
                if k not in taus:
                    taus[k] = (m.pop_weight * self.tau(k, n)).astype(np.float32)
                scores[r] += taus[k]
        if seen:
            cols = [self.mirror.raw_columns(s) for s in seen]
            scores[np.repeat(np.arange(len(cols)), [len(c) for c in cols]), np.concatenate(cols)] = -np.inf
        target = self.mirror.columns(movie_ids)
        hit = top_k_hits(scores, np.maximum(target, 0), self.k) & (target >= 0)
        with self._lock:
            self.hits += int(hit.sum())
            self.n += len(queries)
