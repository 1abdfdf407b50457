"""The model's scores in numpy, outside TF: the rating prediction (test evaluation) and the recall score
(evaluation, the prequential HR probe; the recall service scores the same way)."""

from __future__ import annotations

import numpy as np

from learner.config import ModelConfig


def predict(cfg: ModelConfig, user_vec, user_bias, item_vec, item_bias, mu: float,
            period_vec: np.ndarray | None = None) -> np.ndarray:
    """ŷ = q·v_i + b_u + b_i + μ row by row (q = p_u [+ w_k]); the seed preset: p_u·v_i."""
    q = np.asarray(user_vec, np.float64)
    if period_vec is not None and cfg.period_days > 0 and cfg.period_in_pred:
        q = q + period_vec
    out = (q * np.asarray(item_vec, np.float64)).sum(1)
    if cfg.use_bias:
        out = out + user_bias + item_bias + mu
    return out


def recall_scores(cfg: ModelConfig, query: np.ndarray, item_vec: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    """Recall score matrix ``s(u, i) = q_u·v_i + gamma·b_i`` (rows: queries, columns: items)."""
    s = np.asarray(query, np.float32) @ np.asarray(item_vec, np.float32).T
    if cfg.gamma and cfg.use_bias:
        s = s + cfg.gamma * np.asarray(item_bias, np.float32)[None, :]
    return s
