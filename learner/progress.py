"""Live progress of the learner: how far it is, how fast it goes while it works, and how far behind the stream.

:class:`Tracker` is pure state (its clock is injected): the loop tells it, once per iteration, how many records
it has handled and whether the iteration only waited for records; chunks tell it the partitions' end offsets
(the high watermarks the consumer saw) and the offsets handled.  From that it knows

- the **rate** in events/s over the last ``window_s`` seconds of *active* time.  Time spent waiting for records
  is active while the wait is short (``idle_after``, 1 s: the gaps of a paced stream, whose pace is then the
  rate) and excluded as a whole once a wait grows longer (idle): a learner that drained its backlog in 0.3 s
  and then waited 100 s reports the 0.3 s rate, not a hundredth of it;
- the **consumer lag**: per partition, the end offset minus the next offset to handle, summed.  Tansu reports
  as high watermark the start of the partition's last batch + 1, so there the lag undercounts by up to one
  producer batch (it reads 0 a little before the learner is really at the end);
- the **state**: waiting for partitions, draining the backlog, following the stream, or caught up and waiting.

:class:`ProgressView` shows it: a tqdm bar on a TTY (events handled of handled + lag, rate, lag, ETA), else a
status line every ``interval`` seconds (once a minute while nothing changes).  :func:`status_line` is the text.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

IDLE_AFTER_S = 1.0  # a wait for records longer than this is idle time (not counted in rates)
WINDOW_S = 5.0  # rates are taken over this much active time
IDLE_REPEAT_S = 60.0  # status lines while nothing changes come this often


STATES = {
    "waiting for partitions": "no partition assigned yet (the group join takes about half the session timeout)",
    "starting": "partitions assigned, no record handled yet",
    "draining the backlog": "records flow and the consumer lag is > 0",
    "following the stream": "records flow and the consumer lag is 0",
    "running": "records flow; the lag is unknown",
    "caught up": "no record for over IDLE_AFTER_S and the lag is 0 (or unknown): waiting for records",
    "waiting for records": "no record for over IDLE_AFTER_S although the lag is > 0 (consumer or broker stalled)",
    "stopped": "the learner finished (its last progress record)",
}


@dataclass(frozen=True)
class Snapshot:
    """What the progress display shows at one moment."""

    events: int  # records handled (trained or dead-lettered) by this process
    rate: float | None  # events/s over the last WINDOW_S of active time (None before any)
    lag: int | None  # records behind the partitions' end offsets (None when unknown)
    state: str  # see STATES
    idle_s: float  # seconds of the current wait for records (0 while records flow)
    active_s: float  # seconds of active time so far

    @property
    def eta_s(self) -> float | None:
        """Seconds until the lag is worked off at the current rate (None when unknown or nothing is left)."""
        if not self.lag or not self.rate:
            return None
        return self.lag / self.rate

    @property
    def idle(self) -> bool:
        """Whether the learner is waiting for records (a wait longer than IDLE_AFTER_S)."""
        return self.idle_s >= IDLE_AFTER_S


class Tracker:
    """Counts, active time, rates and consumer lag of one learner (see the module docstring).

    Args:
        clock: seconds, monotonic (``time.monotonic``; tests pass their own).
        idle_after: a wait for records longer than this many seconds is idle time.
        window_s: seconds of active time the rate is measured over.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, idle_after: float = IDLE_AFTER_S,
                 window_s: float = WINDOW_S) -> None:
        self.clock, self.idle_after, self.window_s = clock, idle_after, window_s
        self.events = 0
        self.active_s = 0.0
        self._last_t: float | None = None
        self._wait_s = 0.0  # the current wait, not yet known to be short (active) or long (idle)
        self._started = False  # records were handled: waits before the first ones are never active
        self._samples: deque[tuple[float, int]] = deque()  # (active seconds, events)
        self.assigned: list[int] | None = None  # None: no assignment yet
        self.ends: dict[int, int] = {}  # partition -> end offset (high watermark) seen last
        self.next: dict[int, int] = {}  # partition -> next offset to handle

    # ------------------------------------------------------------------------ inputs
    def assign(self, partitions: list[int]) -> None:
        """A new assignment (empty on revocation): the lag covers these partitions from now on."""
        self.assigned = list(partitions)
        keep = set(partitions)
        self.ends = {p: o for p, o in self.ends.items() if p in keep}
        self.next = {p: o for p, o in self.next.items() if p in keep}

    def arrived(self, parts: np.ndarray, offsets: np.ndarray, ends: dict[int, int] | None) -> None:
        """A consumed chunk: its partitions' end offsets, and where a partition's records start if none of its
        records was handled yet."""
        if ends:
            self.ends.update(ends)
            if all(p in self.next for p in ends):
                return  # every partition of the consumer has a start already: nothing to scan
        for p, lo, _ in _spans(parts, offsets):
            if p not in self.next:
                self.next[p] = lo

    def handled(self, parts: np.ndarray, offsets: np.ndarray) -> None:
        """Records trained or dead-lettered: their partitions' next offsets move past them."""
        self.advance({p: hi + 1 for p, _, hi in _spans(parts, offsets)})

    def advance(self, next_offsets: dict[int, int]) -> None:
        """Records up to ``next_offsets`` (partition -> next offset) were trained or dead-lettered."""
        for p, o in next_offsets.items():
            self.next[p] = max(self.next.get(p, 0), o)

    def observe(self, events: int, waiting: bool) -> None:
        """One loop iteration ended with ``events`` records handled in total; ``waiting``: the iteration only
        waited for records (none arrived, none was handled)."""
        now = self.clock()
        dt = 0.0 if self._last_t is None else max(0.0, now - self._last_t)
        self._last_t = now
        if waiting:
            self._wait_s += dt
            return
        handled = events > self.events
        if self._started and self._wait_s < self.idle_after:
            self.active_s += self._wait_s  # a short wait is the stream's pace
        self._wait_s = 0.0
        s = self._samples
        if not s and handled:
            s.append((self.active_s, self.events))  # the rate's first baseline: before the first records
        if self._started or handled:
            self.active_s += dt
        self._started = self._started or handled
        self.events = events
        if not s or self.active_s - s[-1][0] >= self.window_s / 10:
            s.append((self.active_s, events))
        while len(s) > 2 and self.active_s - s[1][0] >= self.window_s:
            s.popleft()

    # ------------------------------------------------------------------------ outputs
    def rate(self) -> float | None:
        """Events/s over the last ``window_s`` of active time (None before any active time)."""
        s = self._samples
        if not s:
            return None
        a0, e0 = s[0]
        if self.active_s - a0 <= 0:
            return None
        return (self.events - e0) / (self.active_s - a0)

    def mean_rate(self) -> float | None:
        """Events/s over all active time (None before any)."""
        return self.events / self.active_s if self.active_s > 0 else None

    def lag(self) -> int | None:
        """Records between the next offsets to handle and the end offsets, summed over the assigned partitions
        (None while a partition's end or start is unknown)."""
        if not self.assigned:
            return None
        total = 0
        for p in self.assigned:
            if p not in self.ends or p not in self.next:
                return None
            total += max(0, self.ends[p] - self.next[p])
        return total

    def snapshot(self) -> Snapshot:
        """The current figures and state."""
        lag, wait = self.lag(), self._wait_s
        if not self.assigned:
            state = "waiting for partitions"
        elif wait >= self.idle_after:
            state = "waiting for records" if lag else "caught up"
        elif not self._started:
            state = "starting"
        else:
            state = "running" if lag is None else "draining the backlog" if lag else "following the stream"
        return Snapshot(self.events, self.rate(), lag, state, wait, self.active_s)


def _spans(parts: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """(partition, lowest offset, highest offset) of each partition in a chunk (one pass for the usual chunk of a
    single partition; a mask per partition otherwise: tens of µs for 8,192 records where np.unique's sort cost
    ~0.5 ms)."""
    if not len(parts):
        return []
    p0 = parts[0]
    if p0 == parts[-1] and (parts == p0).all():
        return [(int(p0), int(offsets.min()), int(offsets.max()))]
    out = []
    for p in np.flatnonzero(np.bincount(parts)).tolist():  # partitions are small ints: no sort
        at = offsets[parts == p]
        out.append((p, int(at.min()), int(at.max())))
    return out


def _num(n: float) -> str:
    return f"{n:,.0f}"


def _dur(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_line(snap: Snapshot, since: int | None = None) -> str:
    """One line of progress, e.g. ``92,338 events (+40,960), 51,200 ev/s, lag 0: caught up, waiting for records
    (idle 12 s)``; ``since``: the events count of the previous line (shows the increase)."""
    text = f"{_num(snap.events)} events"
    if since is not None and snap.events > since:
        text += f" (+{_num(snap.events - since)})"
    if snap.rate is not None and not snap.idle:
        text += f", {_num(snap.rate)} ev/s"
    text += ", lag ?" if snap.lag is None else f", lag {_num(snap.lag)}"
    if snap.state == "draining the backlog" and snap.eta_s is not None:
        text += f", ETA {_dur(snap.eta_s)}"
    text += f": {snap.state}"
    if snap.state == "caught up":
        text += ", waiting for records"
    if snap.idle:
        text += f" (idle {_dur(snap.idle_s)})"
    return text


class ProgressView:
    """Shows a :class:`Tracker`: a tqdm bar on a TTY, else :func:`status_line` every ``interval`` seconds.

    Args:
        tracker: the figures.
        interval: seconds between status lines off a TTY (while nothing changes: IDLE_REPEAT_S); <= 0: none.
        write: prints one line (the learner's ``say``).
        tty: force the bar on / off (default: whether stderr is a TTY).
        clock: as the tracker's.
    """

    def __init__(self, tracker: Tracker, interval: float, write: Callable[[str], None], tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, stream=None) -> None:
        self.tracker, self.interval, self.write, self.clock = tracker, interval, write, clock
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        self._next = clock() + (0.2 if self.tty else interval)
        self._last_line: tuple[int, str] | None = None  # (events, state) of the previous line
        self._last_line_t = clock()

    def due(self) -> bool:
        """Cheap check whether :meth:`show` should run now."""
        return self.interval > 0 and self.clock() >= self._next

    def show(self) -> Snapshot:
        """Update the bar or print a status line (when due; returns the snapshot either way)."""
        now = self.clock()
        snap = self.tracker.snapshot()
        if self.tty:
            self._next = now + 0.2
            self._show_bar(snap)
            return snap
        self._next = now + self.interval
        changed = self._last_line is None or self._last_line != (snap.events, snap.state)
        if changed or now - self._last_line_t >= IDLE_REPEAT_S:
            since = None if self._last_line is None else self._last_line[0]
            self.write("progress: " + status_line(snap, since))
            self._last_line, self._last_line_t = (snap.events, snap.state), now
        return snap

    def _show_bar(self, snap: Snapshot) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit="ev", unit_scale=True, dynamic_ncols=True, file=self.stream,
                            desc="learner", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                      "events{postfix}")
        total = snap.events + (snap.lag or 0)
        self.bar.total = total if total > 0 else None  # None: no bar until something is known
        self.bar.n = snap.events
        rest = [f"{_num(snap.rate)} ev/s"] if snap.rate is not None and not snap.idle else []
        rest.append("lag ?" if snap.lag is None else f"lag {_num(snap.lag)}")
        if snap.state == "draining the backlog" and snap.eta_s is not None:
            rest.append(f"ETA {_dur(snap.eta_s)}")
        else:
            rest.append(snap.state + (", waiting for records" if snap.state == "caught up" else ""))
        self.bar.set_postfix_str(", ".join(rest), refresh=False)
        self.bar.refresh()

    def message(self, line: str) -> bool:
        """Print ``line`` above the bar without breaking it (False without a bar: the caller prints it)."""
        if self.bar is None:
            return False
        self.bar.write(line, file=self.stream)
        return True

    def close(self) -> None:
        """Close the bar (no-op without one)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
