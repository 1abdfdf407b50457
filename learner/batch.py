"""ChunkIndex: the rows a chunk of micro-batches touches and its event → row indexes (pure numpy, no I/O).

The learner indexes what it takes from the stream a chunk (several micro-batches) at a time: the distinct
ids of every PS table, each event's position among them and the events per row.  A run of consecutive
micro-batches then only looks up positions (:func:`run_index`, the input of :meth:`learner.model.MFModel.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from learner.config import ModelConfig


@dataclass
class ChunkIndex:
    """Distinct ids per table, event → row positions and per-row counts of one chunk of ``n`` events.

    ``wanted`` maps each PS table the chunk trains to ``(distinct ids, raw ids or None)``: ``user``, ``item`` and
    ``global`` (μ).
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
    wanted = {"user": (uu, raw_u), "item": (ii, raw_i)}
    if m.learn_mu:
        wanted["global"] = (np.zeros(1, np.int64), None)
    return ChunkIndex(n, y, target, uu, uinv, ucnt, ii, iinv, icnt, wanted)


TABLES = ("user", "item")  # the step's row tables, in the order of its index arrays


@dataclass
class RunIndex:
    """K consecutive micro-batches of ``n`` events over shared rows (the arrays of ``MFModel.run``).

    Attributes:
        held: table → the distinct slots (of the held rows) the run touches; state row r of the table is slot
            ``held[table][r]`` and row ``len(held[table])`` is the padding row.
        rows: ``[K, 2, n]`` int32, per micro-batch its distinct state rows per table (user, item) in slot order,
            padded with the padding row.
        index: ``[K, 2, n]`` int32, each event's position among its micro-batch's rows (0 for padding).
        target: ``[K, 2, n]`` float32, training target and mask (1 for real events).
    """

    held: dict[str, np.ndarray]
    rows: np.ndarray
    index: np.ndarray
    target: np.ndarray


def run_index(slots: dict[str, np.ndarray], targets: np.ndarray, n: int) -> RunIndex:
    """Index a run of events cut into micro-batches of ``n``: ``slots`` maps each table of :data:`TABLES` to the
    held slot of every event's row, ``targets`` the events' training targets.  Two ``np.unique`` per table cover
    every micro-batch."""
    e = len(targets)
    k = -(-e // n)
    at = np.arange(e)
    mb, col = at // n, at % n
    rows = np.zeros((k, len(TABLES), n), np.int32)
    index = np.zeros((k, len(TABLES), n), np.int32)
    held = {}
    for t, table in enumerate(TABLES):
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
    target[mb, 0, col] = targets
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
