"""WindowSync: the rows a learner holds and trains between syncs with the PS, and the fenced writes that sync them.

Each micro-batch pulls (one MGET over every table) only the rows it touches that are not held yet, trains
them in place in a :class:`~learner.window.RowWindow` per table, and records the Kafka offsets and events
it covers.  A sync writes the rows changed since the previous sync:

- assign mode (one writer per row): on a standalone Redis one Function call with the changed rows, the new-row
  counters, the activity log of the window's events and the fence offsets (:meth:`ParameterServer.write_rows`),
  on a background thread while the next window trains (writes land in
  window order); on a Redis Cluster ``ps.push`` of the assigned values.  The rows stay held: as their only
  writer the learner's copy is the PS's, so each row is pulled once.  They are dropped (and pulled again
  when next touched) on a partition revocation, when the PS epoch moved (a ``delete`` / ``load`` /
  ``flush`` by another process: rows it changed may be written back by the next two syncs), and above
  ``max_held`` rows.
- gradient mode (several workers share item rows): the activity log (fenced on its own), then ``ps.push`` of
  the steps ``pulled − trained``; the held rows are dropped after each sync (other
  workers change them).  A Redis Cluster in assign mode writes the same way, with assigned values.

After each write the offsets are committed to Kafka (the PS offsets stay the source of truth).  The window's
highest event seq per partition (:mod:`learner.dedup`) is raised in the same fenced write as its offsets
(``Fence.seqs``).

Lost PS state: every fenced write carries, per fence key, the offsets this learner knows the PS holds there
(:attr:`ps_redis.Fence.stored`: what it resumed from, :meth:`WindowSync.resume`, and what its own writes
stored).  A write that finds them gone or behind (a Redis restart without persistence, the last second of an
append-only file, a flush, an older snapshot loaded) fails before writing anything; the sync keeps the error in
:attr:`WindowSync.lost`, writes and commits nothing more, and the loop stops with that error or rebuilds
(:meth:`WindowSync.reset`, then a replay from the PS offsets).  Writing on would claim events the PS no longer
holds.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from learner.window import RowWindow


_UNSEEN = object()  # no write read the PS epoch yet (None is an epoch: never moved)


class WindowSync:
    """Held rows, the offsets and events they cover, and the write that syncs them to the PS.

    Args:
        ps: the :class:`~ps_redis.ParameterServer`.
        activity: the :class:`~ps_redis.activity.ActivityLog`.
        dim: vector dimension.
        mode: ``assign`` or ``gradient`` pushes.
        fence: ``offsets -> Fence`` of this learner's group and topic.
        commit: commits ``{partition: next offset}`` to Kafka after a write.
        retry: ``retry(what, fn, *args, **kwargs) -> (result, attempts)`` with backoff on Redis errors.
        say: human-readable log line.
        tick: ``tick(stage, t0)`` adds the time since ``t0`` to a stage's seconds.
        max_held: held rows (all tables) above which the rows are dropped after a sync (memory bound).
    """

    def __init__(self, ps, activity, dim: int, mode: str, fence: Callable,
                 commit: Callable[[dict[int, int]], None], retry: Callable, say: Callable[[str], None],
                 tick: Callable[[str, float], float], max_held: int = 2_000_000):
        self.ps, self.activity, self.dim, self.mode = ps, activity, dim, mode
        self._fence, self._commit, self._retry, self._say, self._tick = fence, commit, retry, say, tick
        self.held: dict[str, RowWindow] = {}
        self.offsets: dict[int, int] = {}
        self.marks: dict[int, int] = {}  # per partition: highest event seq taken in the window (written with offsets)
        self.events: list[tuple] = []
        self.batches = 0
        self.since = 0.0
        self.skipped = 0  # writes found already applied (replays after a lost reply or a restart)
        self.background = mode == "assign" and not ps.keys.shards
        self.max_held = max_held
        self._epoch = self._epoch_seen = _UNSEEN  # PS epoch after the last write (delete / load / flush move it)
        self._job = None
        self._inflight_events = None  # the activity-log events of the write in flight
        self.stored: dict[str, dict[int, int]] = {}  # per fence key: offsets this learner knows the PS holds
        self.lost = None  # the PSStateLost of a write that found the PS had lost what it stored
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lfm-sync")

    # ---------------------------------------------------------------------------- PS state
    def resume(self, stored: dict[int, int]) -> None:
        """The PS offsets the learner resumes from (read on a partition assignment): later writes must find the
        PS holding at least these."""
        fence = self._fence({})
        bounds = self.stored.setdefault(self.ps.keys.fence(fence.group, fence.topic), {})
        for p, o in stored.items():
            bounds[p] = max(bounds.get(p, -1), int(o))

    def reset(self) -> None:
        """Forget everything held, pending and known of the PS (after a lost PS state, before replaying from the
        PS offsets)."""
        self.wait()
        for w in self.held.values():
            w.clear()
        self.offsets, self.marks, self.events, self.batches = {}, {}, [], 0
        self.stored.clear()
        self.lost = None
        self._epoch = self._epoch_seen = _UNSEEN

    def _bounded(self, fence, key: str, marks: dict[int, int] | None = None):
        """``fence`` carrying the offsets this learner knows the PS holds at fence ``key`` (and the window's event
        seq marks, raised with the offsets)."""
        from ps_redis import Fence

        return Fence(fence.group, fence.topic, fence.offsets, stored=dict(self.stored.get(key, {})),
                     seqs=dict(marks or {}))

    def _landed(self, key: str, offsets: dict[int, int]) -> None:
        """A write raised the offsets at fence ``key`` to at least ``offsets``."""
        bounds = self.stored.setdefault(key, {})
        for p, o in offsets.items():
            bounds[p] = max(bounds.get(p, -1), int(o))

    # ---------------------------------------------------------------------------- one batch
    def add_batch(self, parts: np.ndarray, offsets: np.ndarray, seqs: np.ndarray | None = None) -> None:
        """Cover a consumed batch's records (the offsets, and the highest event seq of each partition's records
        taken, move with the next sync)."""
        for p in np.unique(parts).tolist():
            self.offsets[p] = max(self.offsets.get(p, 0), int(offsets[parts == p].max()) + 1)
        if seqs is not None and len(seqs) and seqs.max() >= 0:
            for p in np.unique(parts[seqs >= 0]).tolist():
                self.marks[p] = max(self.marks.get(p, -1), int(seqs[parts == p].max()))
        if not self.batches:
            self.since = time.monotonic()
        self.batches += 1

    def hold(self, wanted: dict[str, tuple]) -> dict[str, np.ndarray]:
        """Pull, in one round trip, the rows of ``wanted`` (table → (distinct ids, raw ids or None)) not held
        yet; returns each table's slots of ``ids`` (for :meth:`packed` and :meth:`count`)."""
        req, slots = {}, {}
        for table, (ids, raw) in wanted.items():
            window = self.held.get(table)
            if window is None:
                window = self.held[table] = RowWindow(self.dim)
            s = slots[table] = window.slots(ids)
            miss = s < 0
            if miss.any():
                req[table] = (ids[miss], None if raw is None else raw[miss])
        if not req:
            return slots
        # assign mode: one writer per row, so new rows are first written by the sync (no create round trip)
        defer = self.mode == "assign"
        pulled, _ = self._retry("pull", self.ps.pull_many, req, defer_create=defer)
        for table, rows in pulled.items():
            s = slots[table]
            s[s < 0] = self.held[table].add(rows.ids, rows.struct, ~rows.found if defer else None)
        return slots

    def packed(self, table: str) -> np.ndarray:
        """The ``vec | bias | accum`` float view of ``table``'s held rows (see :meth:`RowWindow.packed`)."""
        return self.held[table].packed()

    def count(self, ci, slots: dict[str, np.ndarray]) -> None:
        """Add a chunk's events per user / item / μ (:class:`~learner.batch.ChunkIndex`, its rows at ``slots``
        from :meth:`hold`) to the held rows' counts."""
        counts = {"user": ci.ucnt, "item": ci.icnt, "global": [ci.n]}
        for table, at in slots.items():  # every held table of the chunk counts events (and becomes changed)
            self.held[table].update_at(at, count=counts[table])

    def add_events(self, raw_user_ids, raw_movie_ids, movie_ids, labels, timestamps, parts, offsets) -> None:
        """Events written with the window: the activity log's columns, each event's Kafka partition and
        offset."""
        self.events.append((raw_user_ids, raw_movie_ids, movie_ids, labels, timestamps, parts, offsets))

    def unsynced(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw user ids, raw movie ids) of the events trained but maybe not in the activity log yet: the
        window's and the write's in flight."""
        parts = [e[:2] for e in self.events] + ([self._inflight_events[:2]] if self._inflight_events else [])
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate([u for u, _ in parts]), np.concatenate([m for _, m in parts])

    # ---------------------------------------------------------------------------- sync
    def due(self, caught_up: bool, sync_ms: int) -> bool:
        """Whether to sync now: something is held and the learner caught up, pushes gradients, or the window
        is ``sync_ms`` old."""
        return bool(self.batches) and (caught_up or self.mode == "gradient"
                                       or time.monotonic() - self.since >= sync_ms / 1000.0)

    def sync(self, wait: bool = True) -> bool:
        """Write the rows changed since the last sync (see the module docstring); ``wait`` returns after every
        write landed.  Returns whether the held rows were dropped (see :meth:`forget`)."""
        dropped = False
        if self.lost is None and self.background:
            self.wait()  # the previous window's fence must land first (and may find the PS state lost)
        if self.lost is not None:  # nothing more is written or committed: the loop stops or rebuilds
            self.offsets, self.marks, self.events, self.batches = {}, {}, [], 0
            return False
        if self.batches:
            offsets, marks = dict(self.offsets), dict(self.marks)
            events = tuple(np.concatenate(col) for col in zip(*self.events)) if self.events else None
            dirty = {table: w.take_dirty() for table, w in self.held.items() if len(w)}
            dirty = {table: d for table, d in dirty.items() if len(d[0])}
            self.offsets, self.marks, self.events, self.batches = {}, {}, [], 0
            if self.background:
                self._job = self._pool.submit(self._write, dirty, offsets, marks, events)
                self._inflight_events = events
            else:
                self._push(dirty, offsets, marks, events)
                if self.lost is not None:
                    return False
            if self.mode == "gradient" or self._stale() or sum(map(len, self.held.values())) > self.max_held:
                self.forget()
                dropped = True
        if wait:
            self.wait()
        return dropped

    @staticmethod
    def _unrecorded(stored: dict[int, int], events) -> np.ndarray:
        """Which of the window's events a side write (its stored ``{partition: next offset}``) has not recorded
        yet: an event is recorded when its offset is below the stored next offset of its partition.  A learner
        restarted after a crash between the side write and the rows replays a window whose bounds differ from the
        crashed one's, so the side write filters by event instead of skipping or applying a whole window."""
        parts, offs = events[5], events[6]
        below = np.full(len(parts), -1, np.int64)
        for p, o in stored.items():
            below[parts == p] = o
        return offs >= below

    def _stale(self) -> bool:
        """Whether the PS epoch (moved by delete / load / flush) changed since the previous write."""
        seen, before = self._epoch_seen, self._epoch
        self._epoch = seen
        return before is not _UNSEEN and seen != before

    def forget(self) -> None:
        """Drop every held row after the write in flight landed (the next batches pull from the PS again):
        after each gradient-mode sync, a partition revocation, a PS epoch change, or ``max_held`` rows."""
        self.wait()
        for w in self.held.values():
            w.clear()

    def wait(self) -> None:
        """Block until the write in flight landed (or failed on a lost PS state: see :attr:`lost`)."""
        from ps_redis import PSStateLost

        t = time.perf_counter()
        if self._job is not None:
            try:
                applied, offsets = self._job.result()
            except PSStateLost as exc:
                self._job, self._inflight_events, self.lost = None, None, exc
                self._tick("push", t)
                return
            self._job, self._inflight_events = None, None
            if not applied:
                self.skipped += 1
                self._say(f"fenced push for {offsets} skipped: the PS already holds it")
        self._tick("push", t)

    def close(self) -> None:
        """Write what is held, wait for it, stop the background thread."""
        self.sync(wait=True)
        self._pool.shutdown()

    def _write(self, dirty: dict[str, tuple], offsets: dict[int, int], marks: dict[int, int],
               events) -> tuple[bool, dict]:
        """Background thread: one Function call (rows, row counters, activity log, offsets, checked against what the
        PS is known to hold), then the Kafka commit."""
        extra = [self.activity.record_command(*events[:5])] if events else []
        fence = self._fence(offsets)
        key = self.ps.keys.fence(fence.group, fence.topic)
        applied, attempts = self._retry("fenced push", self.ps.write_rows,
                                        {table: (ids, cur, new) for table, (ids, cur, _, new) in dirty.items()},
                                        fence=self._bounded(fence, key, marks), extra=extra)
        self._landed(key, offsets)
        self._epoch_seen, _ = self._retry("PS epoch", self.ps.epoch)
        self._commit(offsets)
        return applied or attempts > 0, offsets  # an earlier attempt may have landed before its reply was lost

    def _push(self, dirty: dict[str, tuple], offsets: dict[int, int], marks: dict[int, int], events) -> None:
        """Gradient mode or a cluster: the activity log, fenced on its own, then ``ps.push`` of the rows (server-side
        Lua, fenced)."""
        from ps_redis import Update

        t = time.perf_counter()
        ups = {}
        for table, (ids, cur, base, _) in dirty.items():
            count = cur["count"] - base["count"]
            if self.mode == "gradient":  # the server subtracts steps: concurrent writers add up
                ups[table] = Update(ids, vec=base["vec"] - cur["vec"], bias=base["bias"] - cur["bias"],
                                    accum=cur["accum"] - base["accum"], count=count)
            else:
                ups[table] = Update(ids, vec=np.ascontiguousarray(cur["vec"]), bias=cur["bias"].copy(),
                                    accum=np.ascontiguousarray(cur["accum"]), count=count)
        # before the rows raise the namespace's offsets (which ActivityLog.record also checks), fenced on its own and
        # sent for the events it has not recorded: a replay after a crash adds exactly what the crashed sync did
        # not.  Both fences are read first, in one round trip: if the namespace's offsets lost what this learner
        # stored, nothing is written.
        from ps_redis import Fence, PSStateLost

        fence = self._fence(offsets)
        keys = [self.ps.keys.fence(fence.group, fence.topic), self.activity.fence_key(fence.group, fence.topic)]
        try:
            stored, _ = self._retry("fence offsets", self.ps.fence_offsets, keys)
            self.ps.check_stored(keys[0], stored[0], self.stored.get(keys[0], {}))
            if events is not None:
                keep = self._unrecorded(stored[1], events)
                # the side fence must still hold what was just read (checked in the same Function call)
                if keep.any():
                    self._retry("fenced activity log", self.activity.record, None, *(col[keep] for col in events[:5]),
                                fence=Fence(fence.group, fence.topic, fence.offsets, stored=stored[1]))
            applied, attempts = self._retry("fenced push", self.ps.push, ups, mode=self.mode,
                                            fence=self._bounded(fence, keys[0], marks))
        except PSStateLost as exc:
            self.lost = exc
            self._tick("push", t)
            return
        self._landed(keys[0], offsets)
        if not (applied or attempts > 0):
            self.skipped += 1
            self._say(f"fenced push for {offsets} skipped: the PS already holds it")
        if self.mode == "assign":
            self._epoch_seen, _ = self._retry("PS epoch", self.ps.epoch)
        self._commit(offsets)
        self._tick("push", t)
