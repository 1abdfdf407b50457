"""BatchIndex: the rows one micro-batch touches and its event → row indexes (pure numpy, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.config import ModelConfig
from learner.evaluate import ppop_ids
from learner.model import index_batch


@dataclass
class BatchIndex:
    """Unique ids per table, padded event → row indexes and per-row event counts of one micro-batch.

    ``wanted`` maps each PS table the batch reads or writes to ``(ids, raw ids or None)``: ``user``,
    ``item``, ``period`` (time-period vectors), ``global`` (μ), ``ppop`` (positives per (period, movie))
    and ``user_ctx`` (each user's last popularity period).
    """

    n: int
    labels: np.ndarray
    uu: np.ndarray
    uinv: np.ndarray
    ucnt: np.ndarray
    ii: np.ndarray
    iinv: np.ndarray
    icnt: np.ndarray
    raw_i: np.ndarray
    kk: np.ndarray
    kinv: np.ndarray
    kcnt: np.ndarray
    period: np.ndarray | None  # each event's time period (period_days > 0)
    kpop: np.ndarray | None  # each event's popularity period (pop_period_days > 0)
    pid: np.ndarray | None  # ppop row ids of the batch's positives, and their counts
    pcnt: np.ndarray | None
    wanted: dict[str, tuple] = field(default_factory=dict)


def index_columns(c: dict[str, np.ndarray], m: ModelConfig) -> BatchIndex:
    """Index a batch of decoded records (columns of the record schema) for the model ``m``."""
    n = len(c["label"])
    y = c["label"].astype(np.float32)
    uu, uinv, ucnt = index_batch(c["user_id"], m.batch_size)
    ii, iinv, icnt = index_batch(c["movie_id"], m.batch_size)
    raw_u = np.empty(len(uu), np.int64)
    raw_u[uinv[:n]] = c["raw_user_id"]
    raw_i = np.empty(len(ii), np.int64)
    raw_i[iinv[:n]] = c["raw_movie_id"]
    kk, kinv, kcnt = np.zeros(1, np.int64), np.zeros(m.batch_size, np.int32), np.zeros(1, np.int64)
    period = None
    kpop = c["timestamp"] // m.pop_seconds if m.pop_seconds else None
    wanted = {"user": (uu, raw_u), "item": (ii, raw_i)}
    if m.period_days > 0:
        period = (c["timestamp"] // int(m.period_seconds)).astype(np.int64)
        kk, kinv, kcnt = index_batch(period, m.batch_size)
        wanted["period"] = (kk, None)
    if m.learn_mu:
        wanted["global"] = (np.zeros(1, np.int64), None)
    pid = pcnt = None
    if kpop is not None:
        pos = y > 0.5
        if pos.any():
            pid, pcnt = np.unique(ppop_ids(kpop[pos], c["raw_movie_id"][pos]), return_counts=True)
            wanted["ppop"] = (pid, None)
        wanted["user_ctx"] = (uu, None)
    return BatchIndex(n, y, uu, uinv, ucnt, ii, iinv, icnt, raw_i, kk, kinv, kcnt, period, kpop, pid, pcnt, wanted)
