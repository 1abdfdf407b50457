"""learner.progress: active-time rates, consumer lag, states and the status lines, on an injected clock."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from learner.progress import ProgressView, Snapshot, Tracker, status_line


class Clock:
    """A settable monotonic clock."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def at(clock: Clock, tracker: Tracker, t: float, events: int, waiting: bool) -> None:
    clock.t = t
    tracker.observe(events, waiting)


def test_idle_time_is_not_counted_in_rates():
    clock = Clock()
    tr = Tracker(clock, idle_after=1.0, window_s=5.0)
    at(clock, tr, 0.0, 0, True)  # the group join: waits before the first records never count
    at(clock, tr, 3.0, 0, True)
    at(clock, tr, 3.1, 1000, False)  # the first chunk: 1000 records in 0.1 s
    at(clock, tr, 3.3, 3000, False)  # 2000 more in 0.2 s
    assert tr.active_s == pytest.approx(0.3)
    assert tr.rate() == pytest.approx(3000 / 0.3)
    for k in range(1, 1001):  # then 100 s of waiting for records
        at(clock, tr, 3.3 + 0.1 * k, 3000, True)
    snap = tr.snapshot()
    assert snap.idle and snap.idle_s == pytest.approx(100.0)
    assert tr.rate() == pytest.approx(10_000.0) and tr.mean_rate() == pytest.approx(10_000.0)
    at(clock, tr, 103.4, 4000, False)  # records again: the long wait stays out, the 0.1 s of work counts
    assert tr.active_s == pytest.approx(0.4)
    assert tr.mean_rate() == pytest.approx(10_000.0)


def test_short_waits_are_the_pace_of_the_stream():
    clock = Clock()
    tr = Tracker(clock, idle_after=1.0, window_s=5.0)
    at(clock, tr, 0.0, 0, True)
    t, events = 0.0, 0
    for _ in range(100):  # 100 records every 0.2 s: handled in 0.05 s, then 0.15 s of waiting
        t += 0.05
        events += 100
        at(clock, tr, t, events, False)
        t += 0.15
        at(clock, tr, t, events, True)
    at(clock, tr, t + 0.05, events + 100, False)
    # active: 0.05 (first chunk) + 100 × (0.15 wait + 0.05 work) = 20.05 s for 10,100 events
    assert tr.active_s == pytest.approx(20.05)
    assert tr.mean_rate() == pytest.approx(10_100 / 20.05)
    assert tr.rate() == pytest.approx(500.0, rel=0.02)  # the stream's pace, not the 2,000 ev/s of the work alone


def test_lag_sums_end_minus_next_offset_over_assigned_partitions():
    tr = Tracker(Clock())
    assert tr.lag() is None
    tr.assign([0, 1])
    tr.arrived(np.array([0, 0, 1]), np.array([10, 11, 5]), {0: 20, 1: 8})
    assert tr.lag() == (20 - 10) + (8 - 5)
    tr.handled(np.array([0, 0]), np.array([10, 11]))
    assert tr.lag() == (20 - 12) + (8 - 5)
    tr.arrived(np.array([1]), np.array([6]), {1: 6})  # an end below the next offset (Tansu's watermark) counts 0
    tr.handled(np.array([1, 1]), np.array([5, 6]))
    assert tr.lag() == 8
    tr.assign([0, 2])  # a partition without a known end: unknown lag
    assert tr.lag() is None
    tr.assign([0])
    assert tr.lag() == 8


def test_states():
    clock = Clock()
    tr = Tracker(clock, idle_after=1.0)
    assert tr.snapshot().state == "waiting for partitions"
    tr.assign([0])
    at(clock, tr, 0.0, 0, True)
    assert tr.snapshot().state == "starting"
    tr.arrived(np.array([0, 0]), np.array([0, 1]), {0: 100})
    tr.handled(np.array([0, 0]), np.array([0, 1]))
    at(clock, tr, 0.5, 2, False)
    assert tr.snapshot().state == "draining the backlog"
    tr.arrived(np.array([0]), np.array([2]), {0: 100})
    tr.handled(np.arange(98, dtype=np.int64) * 0, np.arange(2, 100))
    at(clock, tr, 0.6, 100, False)
    assert tr.snapshot().state == "following the stream"
    at(clock, tr, 2.0, 100, True)
    assert tr.snapshot().state == "caught up"
    tr.arrived(np.zeros(0, np.int32), np.zeros(0, np.int64), {0: 150})
    assert tr.snapshot().state == "waiting for records"


def test_status_lines():
    snap = Snapshot(events=45_120, rate=51_300.4, lag=47_218, state="draining the backlog", idle_s=0.0, active_s=1.0)
    assert status_line(snap, since=20_544) == ("45,120 events (+24,576), 51,300 ev/s, lag 47,218, ETA 1 s: "
                                               "draining the backlog")
    idle = Snapshot(events=92_338, rate=300_000.0, lag=0, state="caught up", idle_s=108.2, active_s=0.3)
    assert status_line(idle, since=92_338) == "92,338 events, lag 0: caught up, waiting for records (idle 1 min 48 s)"
    assert status_line(Snapshot(0, None, None, "waiting for partitions", 0.0, 0.0)) == (
        "0 events, lag ?: waiting for partitions")
    slow = Snapshot(events=10, rate=2.0, lag=7_200, state="draining the backlog", idle_s=0.0, active_s=5.0)
    assert status_line(slow).endswith("ETA 1 h 00 min: draining the backlog")


def test_view_prints_a_line_per_interval_and_rarely_while_nothing_changes():
    clock = Clock()
    tr = Tracker(clock, idle_after=1.0)
    lines: list[str] = []
    view = ProgressView(tr, 5.0, lines.append, tty=False, clock=clock)
    tr.assign([0])
    tr.arrived(np.array([0]), np.array([0]), {0: 10_000})
    at(clock, tr, 0.0, 0, True)

    def run_until(t_end: float, step: float = 0.1) -> None:
        while clock.t < t_end - 1e-9:
            t = round(clock.t + step, 6)
            if tr.events < 10_000 and round(t * 10) % 5 == 0:  # 500 records every 0.5 s
                tr.handled(np.zeros(500, np.int32), np.arange(tr.events, tr.events + 500))
                at(clock, tr, t, tr.events + 500, False)
            else:
                at(clock, tr, t, tr.events, tr.events >= 10_000)
            if view.due():
                view.show()

    run_until(10.0)
    # the rate: 5,000 events in the 4.6 s from the first chunk's iteration (t = 0.4) on; then over the last ~5 s
    # of active time (samples every 0.5 s: within a sample's worth of 1,000 ev/s)
    assert lines[0] == "progress: 5,000 events, 1,087 ev/s, lag 5,000, ETA 5 s: draining the backlog"
    m = re.fullmatch(r"progress: 10,000 events \(\+5,000\), ([0-9,]+) ev/s, lag 0: following the stream", lines[1])
    assert m and 900 <= int(m.group(1).replace(",", "")) <= 1100, lines[1]
    run_until(70.0)  # a minute of waiting: one line when it starts, the next a minute later
    assert lines[2] == "progress: 10,000 events, lag 0: caught up, waiting for records (idle 5 s)"
    assert len(lines) == 3
    run_until(76.0)
    assert len(lines) == 4 and lines[3].endswith("(idle 1 min 05 s)")


def test_bar_on_a_tty_counts_events_of_events_plus_lag():
    clock = Clock()
    tr = Tracker(clock)
    out = io.StringIO()
    view = ProgressView(tr, 5.0, lambda s: None, tty=True, clock=clock, stream=out)
    tr.assign([0])
    tr.arrived(np.array([0]), np.array([0]), {0: 4000})
    at(clock, tr, 0.0, 0, True)
    tr.handled(np.arange(1000) * 0, np.arange(1000))
    at(clock, tr, 0.5, 1000, False)
    clock.t = 1.0
    view.show()
    assert view.bar.n == 1000 and view.bar.total == 4000
    assert "lag 3,000" in out.getvalue() and "ETA" in out.getvalue()
    assert view.message("a log line") and "a log line" in out.getvalue()
    view.close()
