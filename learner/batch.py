"""ChunkIndex: the rows a chunk of micro-batches touches and its event → row indexes (pure numpy, no I/O).

The learner indexes what it takes from the stream a chunk (several micro-batches) at a time: the distinct
ids of every PS table, each event's position among them, and the counters the chunk adds (events per row,
positives per (period, movie), each user's last popularity period).  Micro-batches then only look up
positions: one at a time (:func:`micro_index`) or a run of consecutive micro-batches at once (:func:`run_index`,
the input of :meth:`learner.model.MFModel.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.config import ModelConfig
from learner.evaluate import ppop_ids


@dataclass
class ChunkIndex:
    """Distinct ids per table, event → row positions and per-row counts of one chunk of ``n`` events.

    ``wanted`` maps each PS table the chunk trains or sets to ``(distinct ids, raw ids or None)``: ``user``,
    ``item``, ``period`` (time-period vectors), ``global`` (μ) and ``user_ctx`` (each user's last popularity
    period, ``ulast``, over ``uu``).  The ``ppop`` counter set (positives per (period, movie); each event's pair
    id in ``ppop``) is only counted, never read, so it is not held: the sync adds the counts on the server.
    """

    n: int
    labels: np.ndarray
    target: np.ndarray  # what the model is trained toward (labels, or graded by the rating)
    uu: np.ndarray
    uinv: np.ndarray
    ucnt: np.ndarray
    ii: np.ndarray
    iinv: np.ndarray
    icnt: np.ndarray
    kk: np.ndarray
    kinv: np.ndarray
    kcnt: np.ndarray
    period: np.ndarray | None  # each event's time period (period_days > 0)
    kpop: np.ndarray | None  # each event's popularity period (pop_period_days > 0)
    ppop: np.ndarray | None  # each event's (period, raw movie) id (``ppop_ids``); the sync counts the pairs of positive events
    ulast: np.ndarray | None  # each user's last popularity period in the chunk
    wanted: dict[str, tuple] = field(default_factory=dict)


def _index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return uniq, inv.reshape(-1), counts


def index_chunk(c: dict[str, np.ndarray], m: ModelConfig) -> ChunkIndex:
    """Index a chunk of decoded records (columns of the record schema) for the model ``m``."""
    n = len(c["label"])
    y = c["label"].astype(np.float32)
    target = y
    if m.rating_weight:  # the rating as a graded second target (ModelConfig.rating_weight)
        graded = np.clip((c["rating"] - 0.5) / 4.5, 0.0, 1.0)
        target = ((1.0 - m.rating_weight) * y + m.rating_weight * graded).astype(np.float32)
    uu, uinv, ucnt = _index(c["user_id"])
    ii, iinv, icnt = _index(c["movie_id"])
    raw_u = np.empty(len(uu), np.int64)
    raw_u[uinv] = c["raw_user_id"]
    raw_i = np.empty(len(ii), np.int64)
    raw_i[iinv] = c["raw_movie_id"]
    kk, kinv, kcnt = np.zeros(1, np.int64), np.zeros(n, np.int64), np.array([n], np.int64)
    period = None
    kpop = c["timestamp"] // m.pop_seconds if m.pop_seconds else None
    wanted = {"user": (uu, raw_u), "item": (ii, raw_i)}
    if m.period_days > 0:
        period = (c["timestamp"] // int(m.period_seconds)).astype(np.int64)
        kk, kinv, kcnt = _index(period)
        wanted["period"] = (kk, None)
    if m.learn_mu:
        wanted["global"] = (np.zeros(1, np.int64), None)
    ppop = ulast = None
    if kpop is not None:
        ppop = ppop_ids(kpop, c["raw_movie_id"])
        ulast = np.full(len(uu), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(ulast, uinv, kpop)
        wanted["user_ctx"] = (uu, None)
    return ChunkIndex(n, y, target, uu, uinv, ucnt, ii, iinv, icnt, kk, kinv, kcnt, period, kpop, ppop, ulast, wanted)


def micro_index(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For one micro-batch: its distinct ``rows`` (slots of held rows, one per event) and each event's
    position among them, padded to ``size`` (int32)."""
    uniq, inv = np.unique(rows, return_inverse=True)
    out = np.zeros(size, np.int32)
    out[: len(rows)] = inv.reshape(-1)
    return uniq, out


TABLES = ("user", "item", "period")  # the step's row tables, in the order of its index arrays


@dataclass
class RunIndex:
    """K consecutive micro-batches of ``n`` events over shared rows (the arrays of ``MFModel.run``).

    Attributes:
        held: table → the distinct slots (of the held rows) the run touches; state row r of the table is slot
            ``held[table][r]`` and row ``len(held[table])`` is the padding row.  A table the events do not use
            (no ``period`` without time periods) has no slots: only its padding row.
        rows: ``[K, 3, n]`` int32, per micro-batch its distinct state rows per table (user, item, period) in
            slot order, padded with the padding row.
        index: ``[K, 3, n]`` int32, each event's position among its micro-batch's rows (0 for padding).
        target: ``[K, 2, n]`` float32, label and mask (1 for real events).
    """

    held: dict[str, np.ndarray]
    rows: np.ndarray
    index: np.ndarray
    target: np.ndarray


def run_index(slots: dict[str, np.ndarray], labels: np.ndarray, n: int) -> RunIndex:
    """Index a run of events cut into micro-batches of ``n``: ``slots`` maps each table to the held slot of every
    event's row, ``labels`` the events' labels.  Two ``np.unique`` per table cover every micro-batch."""
    e = len(labels)
    k = -(-e // n)
    at = np.arange(e)
    mb, col = at // n, at % n
    rows = np.zeros((k, 3, n), np.int32)
    index = np.zeros((k, 3, n), np.int32)
    held = {}
    for t, table in enumerate(TABLES):
        if table not in slots:
            held[table] = np.zeros(0, np.int64)
            continue
        uniq, pos = np.unique(slots[table], return_inverse=True)
        pad = len(uniq)
        keys, inv = np.unique(mb * (pad + 1) + pos.reshape(-1), return_inverse=True)
        kmb = keys // (pad + 1)
        start = np.searchsorted(kmb, np.arange(k))
        rows[:, t] = pad
        rows[kmb, t, np.arange(len(keys)) - start[kmb]] = keys % (pad + 1)
        index[mb, t, col] = inv.reshape(-1) - start[mb]
        held[table] = uniq
    target = np.zeros((k, 2, n), np.float32)
    target[mb, 0, col] = labels
    target[mb, 1, col] = 1.0
    return RunIndex(held, rows, index, target)


def gather_run(r: RunIndex, packed: dict[str, np.ndarray], g: int | None, d: int) -> tuple[dict, np.ndarray]:
    """The run's rows per table, copied from the held ``packed`` rows (``vec | bias | accum``) and followed by one
    zero padding row, and ``[μ, μ's accumulator]`` from global row ``g`` (zeros without μ)."""
    state = {}
    for table, held in r.held.items():
        state[table] = np.zeros((len(held) + 1, 2 * d + 2), np.float32)
        if len(held):
            state[table][:-1] = packed[table][held]
    mu = packed["global"][g, [d, 2 * d + 1]] if g is not None else np.zeros(2, np.float32)
    return state, mu


def scatter_run(r: RunIndex, packed: dict[str, np.ndarray], g: int | None, d: int, rows: list, mu) -> None:
    """Write a run's updated rows (per table in :data:`TABLES` order, padding row last) and μ back to ``packed``."""
    for table, out in zip(TABLES, rows):
        if len(r.held[table]):
            packed[table][r.held[table]] = out[:-1]
    if g is not None:
        packed["global"][g, d], packed["global"][g, 2 * d + 1] = mu[0], mu[1]
