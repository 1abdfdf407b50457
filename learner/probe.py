"""HRProbe: prequential HR@k inside the learner's loop — which events to score, their users' rated movies, and
the item mirror kept up to the steps trained so far (the math is :class:`learner.prequential.PrequentialHR`: the
LFM channel of the score contract).

Per chunk (:meth:`plan`): the positives of one micro-batch in every ``every`` (about HR_EVENTS events, fewer if
the sampling rate needs it) are sampled at ``every`` times the sampling rate (the same expected sample, less
overhead: a scored micro-batch starts a new TF call), and their users' rated movies are read from the
activity log on a helper thread while the chunk trains; the events trained since the last landed sync (the log
does not hold them yet) are added, so a user's earlier movies are always excluded.  Per scored micro-batch
(:meth:`score`), before its update: is each sample's movie in its user's current top k?

The loop's thread only copies what a score needs (the sampled users' vectors as they stand, the trained item
rows); the mirror updates and the scoring run on one helper thread, in the order they were asked for, so each
sample is scored against exactly the items trained before it.  :meth:`rate` waits for them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from learner.config import ModelConfig
from learner.prequential import PrequentialHR

HR_EVENTS = 5120  # prequential HR@k is sampled on one micro-batch per this many events (at most)


class HRProbe:
    """Sampling plan, rated-movie reads and item-mirror refreshes of prequential HR@k.

    Args:
        m: the model config.
        k: the k of HR@k.
        sample: share of positive events scored.
        activity: the :class:`~ps_redis.activity.ActivityLog` (``seen_arrays``).
        sync: the learner's :class:`~learner.sync.WindowSync` (held item rows, unsynced events).
        retry: ``retry(what, fn, *args) -> (result, attempts)`` with backoff on Redis errors.
    """

    def __init__(self, m: ModelConfig, k: int, sample: float, activity, sync, retry: Callable):
        self.m, self.sample, self.activity, self.sync, self._retry = m, sample, activity, sync, retry
        self.hr = PrequentialHR(m, k)
        self._rng = np.random.default_rng(m.seed)
        # one micro-batch in `every` is scored, at `every` times the rate (capped at 1: then more often)
        self.every = max(1, min(HR_EVENTS // m.batch_size, int(1 / sample + 1e-9) if sample > 0 else 1))
        self._items: list[np.ndarray] = []  # item slots and event ranges trained since the mirror's refresh
        self._events: list[slice] = []
        self._chunk = None
        self._item_slots = np.zeros(0, np.int64)  # each chunk event's held item slot
        self._plan: dict[int, np.ndarray] = {}  # first event of a scored micro-batch → its sampled events
        self._seen = None
        self._unsynced = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lfm-seen")
        self._work = ThreadPoolExecutor(1, thread_name_prefix="lfm-hr")  # mirror updates and scores, in order
        self._queued: list[Future] = []

    def plan(self, c: dict, ci, step: int, item_slots: np.ndarray) -> None:
        """Sample the chunk (columns ``c``, :class:`~learner.batch.ChunkIndex` ``ci``, first step ``step``, each
        event's held item slot ``item_slots``) and start reading the sampled users' rated movies."""
        B = self.m.batch_size
        rate = min(1.0, self.sample * self.every)
        self._chunk, self._item_slots, self._plan = (c, ci), item_slots, {}
        for j, s in enumerate(range(0, ci.n, B)):
            if (step + j) % self.every == 0:
                y = ci.labels[s: s + B]
                self._plan[s] = s + np.flatnonzero((y > 0.5) & (self._rng.random(len(y)) < rate))
        events = np.concatenate(list(self._plan.values())) if self._plan else np.zeros(0, np.int64)
        users = c["raw_user_id"][events]
        self._seen = self._pool.submit(self._retry, "activity seen", self.activity.seen_arrays,
                                       users.tolist()) if len(events) else None
        wu, wm = self.sync.unsynced()  # trained events the log may not hold yet, of the sampled users
        mine = np.isin(wu, users)
        self._unsynced = wu[mine], wm[mine]

    def due(self, sl: slice) -> bool:
        """Whether the micro-batch of chunk events ``sl`` is scored."""
        return sl.start in self._plan

    def score(self, sl: slice, user_rows: np.ndarray, mu: float, index: np.ndarray) -> None:
        """Score the samples of micro-batch ``sl`` before its update; ``user_rows``: its packed user rows as
        gathered for the step, ``mu`` the global offset μ, ``index`` its event → row indexes ``[user, item]``."""
        self.refresh()
        c, _ = self._chunk
        ev = self._plan.get(sl.start)
        if ev is None or not len(ev):
            return
        at = sum(len(e) for s, e in self._plan.items() if s < sl.start)
        pos = ev - sl.start
        d = self.m.dim
        rows = user_rows[index[0][pos]]
        q, offsets = rows[:, :d], rows[:, d] + np.float32(mu)  # p_u and b_u + μ
        earlier = c["raw_user_id"][: sl.start], c["raw_movie_id"][: sl.start]
        self._submit(self._score, q, offsets, c["movie_id"][ev], c["raw_user_id"][ev], self._seen, at,
                     self._unsynced, earlier)

    def _score(self, q, offsets, movies, users, seen_read, at: int, unsynced, earlier) -> None:
        """(helper thread) The user's rated movies: the log's, the unsynced ones, and those earlier in the chunk
        (all excluded); then the hit test."""
        if self.hr.mirror.n == 0:
            return
        seen = seen_read.result()[0][at: at + len(users)]
        (wu, wm), (cu, cm) = unsynced, earlier
        mine = np.isin(cu, users)
        wu, wm = np.r_[wu, cu[mine]], np.r_[wm, cm[mine]]
        if len(wu):
            seen = [np.r_[s, wm[wu == u]] for s, u in zip(seen, users.tolist())]
        self.hr.score(q, offsets, movies, seen)

    def trained(self, item_slots: np.ndarray, sl: slice) -> None:
        """Note trained chunk events ``sl`` (a run of micro-batches) and the held item rows they changed, for the
        next :meth:`refresh`."""
        self._items.append(item_slots)
        self._events.append(sl)

    def refresh(self) -> None:
        """Bring the item mirror up to the steps trained so far (before the held rows may be dropped, i.e. at the
        end of every chunk, and before scoring): the rows are copied now, the mirror takes them on the helper
        thread.  A held row's count already holds the whole chunk's events (:meth:`WindowSync.count`), so the
        chunk's events not trained yet are taken off."""
        if not self._items:
            return
        at = np.unique(np.concatenate(self._items))
        w = self.sync.held["item"]
        vec = w.packed()[at]
        count = w.cur["count"][at].copy()
        ahead, n_ahead = np.unique(self._item_slots[max(sl.stop for sl in self._events):], return_counts=True)
        pos = np.searchsorted(at, ahead)
        inside = pos < len(at)
        inside[inside] = at[pos[inside]] == ahead[inside]
        count[pos[inside]] -= n_ahead[inside]
        d = self.m.dim
        self._submit(self.hr.learn, w.ids[at], w.cur["raw"][at], vec[:, :d], vec[:, d], count)
        self._items, self._events = [], []

    def _submit(self, fn, *args) -> None:
        self._reap()
        self._queued.append(self._work.submit(fn, *args))

    def _reap(self) -> None:
        """Forget the helper thread's finished jobs (a failure on the helper thread surfaces here)."""
        done = [f for f in self._queued if f.done()]
        for f in done:
            f.result()
        self._queued = [f for f in self._queued if f not in done]

    def rate(self, wait: bool = True) -> tuple[float | None, int]:
        """(hits / samples, samples) once every score asked for so far is done; ``wait=False``: as of the scores
        finished so far, without waiting for the helper thread (the train log lines)."""
        if not wait:
            self._reap()
            return self.hr.snapshot()
        for f in self._queued:
            f.result()
        self._queued = []
        return self.hr.snapshot()

    def close(self) -> None:
        self.rate()
        self._work.shutdown()
        self._pool.shutdown()
