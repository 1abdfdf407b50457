"""WindowSync: the learner's rows between two syncs with the PS, and the fenced writes that sync them.

Each micro-batch pulls (one MGET over every table) only the rows it touches that are not held yet,
trains them in place in a :class:`~learner.window.RowWindow` per table, and records the Kafka offsets
and events it covers.  A sync writes the window back:

- standalone Redis, assign mode (one writer per row): one MULTI/EXEC with every held row, the new-row
  counters, the activity log of the window's events and the fence offsets (:meth:`ParameterServer.write_rows`),
  on a background thread while the next window trains.  Rows of the window in flight are copied from it
  rather than pulled until it landed; writes land in window order.
- gradient mode (several workers share item rows) or Redis Cluster: ``ps.push`` of the window (gradient
  steps ``pulled − trained``, or assigned values), then the activity log.

After each write the offsets are committed to Kafka (the PS offsets stay the source of truth).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from learner.window import RowWindow


class WindowSync:
    """Held rows, the offsets and events they cover, and the write that syncs them to the PS.

    Args:
        ps: the :class:`~ps_redis.ParameterServer`.
        activity: the :class:`~ps_redis.activity.ActivityLog`.
        dim: vector dimension.
        item_scale: never-trained item vectors (count 0) are scaled by this when first held.
        mode: ``assign`` or ``gradient`` pushes.
        fence: ``offsets -> Fence`` of this learner's group and topic.
        commit: commits ``{partition: next offset}`` to Kafka after a write.
        retry: ``retry(what, fn, *args, **kwargs) -> (result, attempts)`` with backoff on Redis errors.
        say: human-readable log line.
        tick: ``tick(stage, t0)`` adds the time since ``t0`` to a stage's seconds.
    """

    def __init__(self, ps, activity, dim: int, item_scale: float, mode: str, fence: Callable,
                 commit: Callable[[dict[int, int]], None], retry: Callable, say: Callable[[str], None],
                 tick: Callable[[str, float], float]):
        self.ps, self.activity, self.dim, self.item_scale, self.mode = ps, activity, dim, item_scale, mode
        self._fence, self._commit, self._retry, self._say, self._tick = fence, commit, retry, say, tick
        self.held: dict[str, RowWindow] = {}
        self.offsets: dict[int, int] = {}
        self.events: list[tuple] = []
        self.batches = 0
        self.since = 0.0
        self.skipped = 0  # writes found already applied (replays after a lost reply or a restart)
        self.background = mode == "assign" and not ps.keys.shards
        self._inflight: dict[str, RowWindow] = {}  # the window being written on the background thread
        self._inflight_offsets: dict[int, int] = {}
        self._job = None
        self._activity_job = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lfm-sync")

    # ---------------------------------------------------------------------------- one batch
    def add_batch(self, parts: np.ndarray, offsets: np.ndarray) -> None:
        """Cover a consumed batch's records (the offsets move with the next sync)."""
        for p in np.unique(parts).tolist():
            self.offsets[p] = max(self.offsets.get(p, 0), int(offsets[parts == p].max()) + 1)
        if not self.batches:
            self.since = time.monotonic()
        self.batches += 1

    def hold(self, wanted: dict[str, tuple]) -> None:
        """Pull, in one round trip, the rows of ``wanted`` (table → (ids, raw ids or None)) not held yet."""
        req = {}
        for table, (ids, raw) in wanted.items():
            window = self.held.get(table)
            if window is None:
                window = self.held[table] = RowWindow(self.dim)
            miss = window.missing(ids)
            flying = self._inflight.get(table)
            if flying is not None and miss.any():  # rows being written: their values are the trained ones
                there = miss.copy()
                there[miss] = ~flying.missing(ids[miss])
                if there.any():
                    window.add(ids[there], flying.rows(ids[there]))
                    miss &= ~there
            if miss.any():
                req[table] = (ids[miss], None if raw is None else raw[miss])
        if not req:
            return
        # assign mode: one writer per row, so new rows are first written by the sync (no create round trip)
        defer = self.mode == "assign"
        pulled, _ = self._retry("pull", self.ps.pull_many, req, defer_create=defer)
        for table, rows in pulled.items():
            stored = rows.struct
            cur = None
            if table == "item" and self.item_scale != 1.0:  # never-trained items start at a smaller scale
                fresh = stored["count"] == 0
                if fresh.any():
                    cur = stored.copy()
                    cur["vec"][fresh] *= self.item_scale
            self.held[table].add(rows.ids, stored, ~rows.found if defer else None, cur=cur)

    def rows(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Current (held) rows of ``ids``."""
        return self.held[table].rows(ids)

    def update(self, table: str, ids: np.ndarray, **fields) -> None:
        """Assign fields of held rows (``count`` is added): see :meth:`RowWindow.update`."""
        self.held[table].update(ids, **fields)

    def learn(self, out, bi, m) -> None:
        """Write one TF step's results (:class:`~learner.model.StepOutput`) for the batch ``bi``
        (:class:`~learner.batch.BatchIndex`) into the held rows; counts are added.  ``m``: the ModelConfig."""
        nu, ni, nk, n = len(bi.uu), len(bi.ii), len(bi.kk), bi.n
        keep_acc = m.optimizer == "sgd"
        self.update("user", bi.uu, vec=out.user_vec[:nu], bias=out.user_bias[:nu] if m.use_bias else None,
                    accum=None if keep_acc else out.user_acc[:nu], count=bi.ucnt)
        self.update("item", bi.ii, vec=out.item_vec[:ni], bias=out.item_bias[:ni] if m.use_bias else None,
                    accum=None if keep_acc else out.item_acc[:ni], count=bi.icnt)
        if m.period_days > 0:
            self.update("period", bi.kk, vec=out.period_vec[:nk], accum=None if keep_acc else out.period_acc[:nk],
                        count=bi.kcnt)
        if m.learn_mu:
            g = np.zeros(1, np.int64)
            acc = self.rows("global", g)["accum"].copy()
            acc[0, -1] = out.mu_acc[0]
            self.update("global", g, bias=out.mu[:1], accum=None if keep_acc else acc, count=[n])
        if bi.kpop is not None:  # positives per (period, movie) into ppop; each user's last period into user_ctx
            if bi.pid is not None:
                self.update("ppop", bi.pid, count=bi.pcnt)
            last = np.full(nu, np.iinfo(np.int64).min, np.int64)
            np.maximum.at(last, bi.uinv[:n], bi.kpop)
            self.update("user_ctx", bi.uu, bias=last.astype(np.float32), count=bi.ucnt)

    def add_events(self, raw_user_ids, raw_movie_ids, movie_ids, labels, timestamps) -> None:
        """Events for the activity log, written with the window."""
        self.events.append((raw_user_ids, raw_movie_ids, movie_ids, labels, timestamps))

    # ---------------------------------------------------------------------------- sync
    def due(self, caught_up: bool, sync_ms: int) -> bool:
        """Whether to sync now: something is held and the learner caught up, pushes gradients, or the window
        is ``sync_ms`` old."""
        return bool(self.batches) and (caught_up or self.mode == "gradient"
                                       or time.monotonic() - self.since >= sync_ms / 1000.0)

    def sync(self, wait: bool = True) -> None:
        """Write the held rows (see the module docstring) and start a new window; ``wait`` returns after
        every write landed."""
        if self.batches:
            offsets = dict(self.offsets)
            events = tuple(np.concatenate(col) for col in zip(*self.events)) if self.events else None
            held = {table: w for table, w in self.held.items() if len(w)}
            self.held, self.offsets, self.events, self.batches = {}, {}, [], 0
            if self.background:
                self.wait()  # the previous window's fence must land first
                self._inflight, self._inflight_offsets = held, offsets
                self._job = self._pool.submit(self._write, held, offsets, events)
            else:
                self._push(held, offsets, events)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the write in flight (and the activity record) landed."""
        t = time.perf_counter()
        if self._job is not None:
            applied = self._job.result()
            self._job, self._inflight = None, {}
            if not applied:
                self.skipped += 1
                self._say(f"fenced push for {self._inflight_offsets} skipped: the PS already holds it")
        if self._activity_job is not None:
            self._activity_job.result()
            self._activity_job = None
        self._tick("push", t)

    def close(self) -> None:
        """Write what is held, wait for it, stop the background thread."""
        self.sync(wait=True)
        self._pool.shutdown()

    def _write(self, held: dict[str, RowWindow], offsets: dict[int, int], events) -> bool:
        """Background thread: one MULTI/EXEC (rows, counters, activity log, offsets), then the Kafka commit."""
        cmd = self.activity.record_command(*events) if events else None
        applied, attempts = self._retry("fenced push", self.ps.write_rows,
                                        {table: (w.ids, w.cur, w.new) for table, w in held.items()},
                                        fence=self._fence(offsets), extra=[cmd] if cmd else [])
        self._commit(offsets)
        return applied or attempts > 0  # an earlier attempt may have landed before its reply was lost

    def _push(self, held: dict[str, RowWindow], offsets: dict[int, int], events) -> None:
        """Gradient mode or a cluster: ``ps.push`` (server-side Lua), then the activity log in the background."""
        from ps_redis import Update

        t = time.perf_counter()
        ups = {}
        for table, w in held.items():
            cur, base = w.cur, w.base
            count = cur["count"] - base["count"]
            if self.mode == "gradient":  # the server subtracts steps: concurrent writers add up
                ups[table] = Update(w.ids, vec=base["vec"] - cur["vec"], bias=base["bias"] - cur["bias"],
                                    accum=cur["accum"] - base["accum"], count=count)
            else:
                ups[table] = Update(w.ids, vec=np.ascontiguousarray(cur["vec"]), bias=cur["bias"].copy(),
                                    accum=np.ascontiguousarray(cur["accum"]), count=count)
        applied, attempts = self._retry("fenced push", self.ps.push, ups, mode=self.mode, fence=self._fence(offsets))
        if applied or attempts > 0:
            if events:  # one record in flight at a time, overlapping the next batch
                if self._activity_job is not None:
                    self._activity_job.result()
                self._activity_job = self._pool.submit(self._retry, "activity log", self.activity.record,
                                                       None, *events)
        else:
            self.skipped += 1
            self._say(f"fenced push for {offsets} skipped: the PS already holds it")
        self._commit(offsets)
        self._tick("push", t)
