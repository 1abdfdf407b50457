"""The chunk/train stage: a chunk's micro-batches predicted and stepped, in order, on the rows the learner holds.

Consecutive micro-batches train in one TF call (a *run*, ``MFModel.run``); a run ends before a micro-batch the
prequential HR probe scores.  Each micro-batch is predicted before it is stepped, so the predictions add up to the
prequential AUC and loss of the train log lines (one per ``train_log_steps`` micro-batches) and of the whole
stream.  The rows live in the learner's window (:class:`learner.sync.WindowSync`), which writes them to the PS.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from learner.batch import ChunkIndex, gather_run, run_index, scatter_run
from learner.metrics import AUCUtils
from learner.model import MFModel


class ChunkTrainer:
    """The model, its step count and the prequential AUC accumulators of one learner.

    Args:
        model: the model (built, and compiled with XLA, before the stream starts).
        sync: the learner's :class:`~learner.sync.WindowSync` (the held rows, packed per table).
        probe: the prequential HR probe (:class:`learner.probe.HRProbe`), or None.
        train_log_steps: micro-batches per train log line.
        on_train_log: called when a train log line is due (after the micro-batch that completes it).
        tick: adds the seconds since its argument to a named stage and returns the time now.
    """

    def __init__(self, model: MFModel, sync, probe, train_log_steps: int, on_train_log: Callable[[], None],
                 tick: Callable[[str, float], float]):
        self.cfg = model.cfg
        self.model = model
        self.sync, self.probe = sync, probe
        self.train_log_steps = train_log_steps
        self.on_train_log = on_train_log
        self._tick = tick
        self.window = AUCUtils()  # prequential AUC and loss of the current train log window
        self.stream_auc = AUCUtils()  # prequential AUC over the whole stream
        self.step = 0  # micro-batches trained
        self.events = 0  # valid events trained

    @property
    def max_batches(self) -> int:
        return self.model.max_batches

    def train(self, columns: dict[str, np.ndarray], index: ChunkIndex, slots: dict[str, np.ndarray],
              parts: np.ndarray, offsets: np.ndarray, started: float) -> float:
        """Train the chunk's events (``columns``, indexed as ``index``; ``slots``: each table's held slots of the
        chunk's distinct ids; ``parts``/``offsets``: the events' Kafka positions) and record them in the window;
        returns the time the stage clock reached."""
        cfg = self.cfg
        event_slots = {"user": slots["user"][index.uinv], "item": slots["item"][index.iinv]}
        packed = {"user": self.sync.packed("user"), "item": self.sync.packed("item")}
        global_slot = None
        if cfg.learn_mu:
            global_slot, packed["global"] = int(slots["global"][0]), self.sync.packed("global")
        now = self._tick("pull", started)
        if self.probe is not None:
            self.probe.plan(columns, index, self.step, event_slots["item"])
        # one TF call per run of micro-batches; a run ends before a micro-batch the probe scores
        batch = cfg.batch_size
        cuts = [s for s in range(batch, index.n, batch)
                if self.probe is not None and self.probe.due(slice(s, s + batch))]
        for lo, hi in zip([0, *cuts], [*cuts, index.n]):
            now = self._train_run(index, lo, hi, event_slots, packed, global_slot, now)
        self.sync.add_events(columns["raw_user_id"], columns["raw_movie_id"], columns["movie_id"], index.labels,
                             columns["timestamp"], parts, offsets)
        if self.probe is not None:
            self.probe.refresh()
        return self._tick("prequential_hr", now)

    def _train_run(self, index: ChunkIndex, lo: int, hi: int, event_slots: dict, packed: dict,
                   global_slot: int | None, started: float) -> float:
        """Chunk events ``lo:hi`` (whole micro-batches but the last): gather their rows, predict and step each
        micro-batch in one TF call, write the rows back, then add each micro-batch to the AUC accumulators."""
        cfg = self.cfg
        batch, dim = cfg.batch_size, cfg.dim
        run = run_index({table: at[lo:hi] for table, at in event_slots.items()}, index.target[lo:hi], batch)
        state, mu = gather_run(run, packed, global_slot, dim)
        now = self._tick("pull", started)
        if self.probe is not None and self.probe.due(slice(lo, hi)):
            self.probe.score(slice(lo, min(lo + batch, hi)), state["user"][run.rows[0, 0]], mu[0], run.index[0])
        now = self._tick("prequential_hr", now)
        pred, losses, *rows, mu = self.model.run(state["user"], state["item"], mu, run.rows, run.index, run.target)
        now = self._tick("step", now)
        scatter_run(run, packed, global_slot, dim, rows, mu)
        if self.probe is not None:
            self.probe.trained(run.held["item"], slice(lo, hi))
        # the run's micro-batches in stretches that end where a train log is due (one add per stretch)
        labels, predictions, n_batches = index.labels[lo:hi], pred.reshape(-1)[: hi - lo], len(pred)
        every = self.train_log_steps
        first = 0
        while first < n_batches:
            end = min(n_batches, first + every - self.step % every)
            a, b = first * batch, min(end * batch, hi - lo)
            self.window.add(labels[a:b], predictions[a:b], float(losses[first:end].sum()))
            self.stream_auc.add(labels[a:b], predictions[a:b])
            self.events += b - a
            self.step += end - first
            if self.step % every == 0:
                self.on_train_log()
            first = end
        return self._tick("metrics", now)

