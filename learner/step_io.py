"""One micro-batch as the arrays of :meth:`learner.model.MFModel.step`: rows packed ``vec | bias | accum``,
event → row indexes and targets, padded to the batch size (:func:`make_input`), and the step's unpacked result
(:class:`StepOutput`).  The one-batch API that the hand-computed gradient tests drive; the learner's loop packs
whole runs of micro-batches (:func:`learner.batch.run_index`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learner.config import ModelConfig


@dataclass
class StepInput:
    """One padded micro-batch, packed into six arrays (one TF call argument each; R = batch_size rows).

    ``users``, ``items`` and ``periods`` hold each row's ``vec | bias | accum`` (``[R, 2d + 2]``, the leading
    float32 fields of a PS row; accum is the PS accumulator, vector part then bias; a period's bias is
    unused and passed through), ``scalars``
    ``[μ, μ's accumulator]``, ``index`` the event→row indexes ``[user, item, period]`` (``[3, R]``
    int32) and ``target`` ``[label, mask]`` (``[2, R]``; mask 1 for real events, 0 for padding; padded
    rows get a zero gradient).
    """

    users: np.ndarray
    items: np.ndarray
    periods: np.ndarray
    scalars: np.ndarray
    index: np.ndarray
    target: np.ndarray


@dataclass
class StepOutput:
    """Predictions before the update, losses, and every updated row (views into the packed outputs)."""

    pred: np.ndarray
    loss_sum: float  # Σ of the per-event data loss (squared error or BCE) over real events
    ret_loss: float
    user_vec: np.ndarray
    user_bias: np.ndarray
    user_acc: np.ndarray
    item_vec: np.ndarray
    item_bias: np.ndarray
    item_acc: np.ndarray
    period_vec: np.ndarray
    period_acc: np.ndarray
    mu: np.ndarray
    mu_acc: np.ndarray


def _pack(r, n: int, d: int) -> np.ndarray:
    """``vec | bias | accum`` of rows, zero-padded to n rows: a ``[m, 2d + 2]`` float array already in that
    layout (the learner's held rows), structured PS rows, or an object with ``vec``, ``bias``, ``accum``."""
    out = np.zeros((n, 2 * d + 2), np.float32)
    if r is None:
        return out
    if isinstance(r, np.ndarray) and r.dtype.names is None:
        out[: len(r)] = r
        return out
    struct = isinstance(r, np.ndarray)
    vec, accum = (r["vec"], r["accum"]) if struct else (r.vec, r.accum)
    m = len(vec)
    out[:m, :d] = vec
    out[:m, d] = r["bias"] if struct else r.bias
    out[:m, d + 1:] = accum
    return out


def make_input(cfg: ModelConfig, *, user_rows, item_rows, period_rows, mu, mu_acc,
               uinv, iinv, kinv, label) -> StepInput:
    """Pack rows (see :func:`_pack`; None = zeros) and the event → row indexes, padded to the batch size."""
    n, d = cfg.batch_size, cfg.dim
    e = len(label)
    if e > n:
        raise ValueError(f"batch of {e} events exceeds batch_size {n}")
    index = np.zeros((3, n), np.int32)
    for row, inv in enumerate((uinv, iinv, kinv)):
        inv = np.asarray(inv)
        index[row, : len(inv)] = inv
    target = np.zeros((2, n), np.float32)
    target[0, :e] = label
    target[1, :e] = 1.0
    return StepInput(_pack(user_rows, n, d), _pack(item_rows, n, d), _pack(period_rows, n, d),
                     np.asarray([mu, mu_acc], np.float32), index, target)
