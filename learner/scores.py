"""The model's rating prediction in numpy, outside TF (the test evaluation; the prequential HR probe and the
recall service rank with :func:`lfm_stream.scoring.lfm_channel` of the same logit)."""

from __future__ import annotations

import numpy as np

from learner.config import ModelConfig


def predict(cfg: ModelConfig, user_vec, user_bias, item_vec, item_bias, mu: float) -> np.ndarray:
    """ŷ = p_u·v_i + b_u + b_i + μ row by row; the seed preset (no biases): p_u·v_i."""
    out = (np.asarray(user_vec, np.float64) * np.asarray(item_vec, np.float64)).sum(1)
    if cfg.use_bias:
        out = out + user_bias + item_bias + mu
    return out
