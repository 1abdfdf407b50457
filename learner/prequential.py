"""Prequential HR@k: the online view of recall, measured before each update (pure numpy, no I/O).

On a sample of positive events, before the micro-batch trains: is the event's movie in its user's
current top k?  Ranked by the LFM channel of the score contract (:func:`lfm_stream.scoring.lfm_channel`,
``log σ(q_u·v_i + b_u + b_i + μ) + log(1 + n_i)``) over a local mirror of the item rows the learner has trained
(their counts n_i as trained so far), with the user's already-rated movies (read by the caller from the activity
log) excluded.  The item channel and stream popularity are left out: they are not the learner's to move.
"""

from __future__ import annotations

import threading

import numpy as np

from learner.config import ModelConfig
from learner.evaluate import ItemMirror
from learner.metrics import top_k_hits
from lfm_stream.scoring import lfm_channel


class PrequentialHR:
    """Item mirror and the running hit rate."""

    def __init__(self, cfg: ModelConfig, k: int):
        self.cfg = cfg
        self.k = k
        self.mirror = ItemMirror(cfg.dim)
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

    def learn(self, ids, raw, vec, bias, count) -> None:
        """After a run of micro-batches: mirror its trained item rows (``count``: events each was trained on)."""
        self.mirror.update(ids, raw, vec, bias, count)

    def score(self, queries: np.ndarray, offsets: np.ndarray, movie_ids: np.ndarray, seen: list) -> None:
        """Add one sample per row: ``queries`` (user vectors before the update), ``offsets`` (each user's
        ``b_u + μ`` before the update), the events' hashed movie ids, and each user's rated raw movie ids (sets or
        int arrays; excluded)."""
        n = self.mirror.n
        if not len(queries) or n == 0:
            return
        m = self.mirror
        logits = np.asarray(queries, np.float64) @ m.vec[:n].T.astype(np.float64) + m.bias[:n] \
            + np.asarray(offsets, np.float64)[:, None]
        scores = lfm_channel(logits, m.count[:n][None, :])
        if seen:
            cols = [m.raw_columns(s) for s in seen]
            scores[np.repeat(np.arange(len(cols)), [len(c) for c in cols]), np.concatenate(cols)] = -np.inf
        target = m.columns(movie_ids)
        hit = top_k_hits(scores, np.maximum(target, 0), self.k) & (target >= 0)
        with self._lock:
            self.hits += int(hit.sum())
            self.n += len(queries)
