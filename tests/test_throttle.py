"""Unit tests of the replay throttle with a fake clock (no real time involved)."""

from __future__ import annotations

import numpy as np
import pytest

from producer.throttle import FakeClock, Throttle, ThrottleConfig


def drive(throttle: Throttle, clock: FakeClock, duration: float, *, work_s: float = 0.0,
          stalls: dict[float, float] | None = None, chunk: int = 64) -> list[float]:
    """Run a sender against ``throttle`` for ``duration`` fake seconds; return the send time of every event.

    ``work_s`` is the fake cost of sending one chunk; ``stalls`` maps a time to a stall length.
    """
    times: list[float] = []
    t_end = clock() + duration
    pending = np.zeros(chunk, dtype=np.int64)
    stalls = dict(stalls or {})
    while clock() < t_end:
        for at in [a for a in stalls if clock() >= clock.start_ + a]:
            clock.advance(stalls.pop(at))
        n = throttle.take(pending, 0)
        if n and clock() < t_end:
            times.extend([clock()] * n)
            clock.advance(work_s)
    return times


def windows(times: list[float], start: float, duration: float, width: float = 0.1) -> np.ndarray:
    """Event counts in consecutive windows of ``width`` seconds plus every window shifted by half."""
    t = np.asarray(times) - start
    edges = np.arange(0.0, duration + width, width)
    a = np.histogram(t, bins=edges)[0]
    b = np.histogram(t, bins=edges + width / 2)[0]
    return np.concatenate([a, b])


@pytest.fixture
def clock() -> FakeClock:
    c = FakeClock(5000.0)
    c.start_ = c.now
    return c


@pytest.mark.parametrize("work_s", [0.0, 0.0004, 0.003])
def test_rate_1000_for_30s_count_and_windows(clock, work_s):
    throttle = Throttle(ThrottleConfig(rate=1000), clock=clock, sleep=clock.sleep)
    times = drive(throttle, clock, 30.0, work_s=work_s)
    assert abs(len(times) - 30_000) <= 300  # within 1 %
    assert windows(times, clock.start_, 30.0).max() <= 200  # no 100 ms window above 2x its share
    assert throttle.forgiven == 0


def test_rate_catches_up_after_short_stall_without_bursting(clock):
    throttle = Throttle(ThrottleConfig(rate=1000), clock=clock, sleep=clock.sleep)
    times = drive(throttle, clock, 30.0, stalls={10.0: 0.25, 20.0: 0.5})
    assert abs(len(times) - 30_000) <= 300
    w = windows(times, clock.start_, 30.0)
    assert w.max() <= 200
    assert w.max() > 110  # the backlog was really caught up (faster than the plain rate)


def test_long_stall_backlog_is_forgiven_not_burst(clock):
    throttle = Throttle(ThrottleConfig(rate=1000, max_lag_s=1.0), clock=clock, sleep=clock.sleep)
    times = drive(throttle, clock, 20.0, stalls={5.0: 4.0})
    assert windows(times, clock.start_, 20.0).max() <= 200
    assert 2_900 <= throttle.forgiven <= 3_100  # 4 s stall, 1 s of it caught up
    assert abs(len(times) - (20_000 - throttle.forgiven)) <= 200


def test_schedule_is_exact_when_keeping_up(clock):
    throttle = Throttle(ThrottleConfig(rate=200), clock=clock, sleep=clock.sleep)
    times = drive(throttle, clock, 2.0, chunk=1)
    assert len(times) == 400  # event i leaves at t0 + i / rate: 400 of them in [t0, t0 + 2)
    gaps = np.diff(times)
    assert np.allclose(gaps, 0.005, atol=1e-9)


def test_rate_releases_small_groups(clock):
    throttle = Throttle(ThrottleConfig(rate=100_000, burst_s=0.01), clock=clock, sleep=clock.sleep)
    clock.advance(0.0)
    assert throttle.take(np.zeros(10_000, dtype=np.int64)) == 1  # the first event at t0
    clock.advance(1.0)  # far behind: limited by the bucket, not the backlog
    assert throttle.take(np.zeros(10_000, dtype=np.int64)) == int(1.5 * 100_000 * 0.01)


def test_take_sleeps_at_most_max_sleep_and_returns_zero(clock):
    throttle = Throttle(ThrottleConfig(speedup=1.0, max_sleep_s=0.1), clock=clock, sleep=clock.sleep)
    ts = np.array([100, 105], dtype=np.int64)
    assert throttle.take(ts, 0) == 1
    before = clock()
    assert throttle.take(ts, 1) == 0
    assert clock() - before == pytest.approx(0.1)


def test_speedup_keeps_scaled_inter_arrival_times(clock):
    throttle = Throttle(ThrottleConfig(speedup=10.0), clock=clock, sleep=clock.sleep)
    ts = np.array([1000, 1000, 1010, 1030, 1030, 1031], dtype=np.int64)
    sent_at: list[tuple[int, float]] = []
    i = 0
    while i < len(ts):
        n = throttle.take(ts, i)
        sent_at.extend((int(t), clock() - clock.start_) for t in ts[i:i + n])
        i += n
    expected = [(int(t), (t - 1000) / 10.0) for t in ts]
    assert [s for s, _ in sent_at] == [s for s, _ in expected]
    assert np.allclose([w for _, w in sent_at], [w for _, w in expected], atol=1e-6)
    assert throttle.lag(None) == 0.0  # speedup lag needs the next timestamp; without it: 0


def test_unthrottled_releases_everything(clock):
    throttle = Throttle(ThrottleConfig(rate=0), clock=clock, sleep=clock.sleep)
    assert throttle.take(np.arange(5000), 1000) == 4000
    assert clock() == clock.start_  # never sleeps
    assert throttle.lag() == 0.0


def test_lag_reports_behind_and_ahead(clock):
    throttle = Throttle(ThrottleConfig(rate=100), clock=clock, sleep=clock.sleep)
    ts = np.zeros(1000, dtype=np.int64)
    throttle.take(ts)
    clock.advance(0.5)
    assert throttle.lag() == pytest.approx(0.5)  # 50 events due, none sent since
    throttle.take(ts)  # catches up part of it
    assert 0 < throttle.lag() < 0.5
    sp = Throttle(ThrottleConfig(speedup=2.0), clock=clock, sleep=clock.sleep)
    sp.take(np.array([10, 30]), 0)
    assert sp.lag(30) == pytest.approx(-10.0)  # next event due in 10 s


@pytest.mark.parametrize("kwargs, message", [
    (dict(rate=-5), "rate must be >= 0"),
    (dict(rate=float("nan")), "rate must be >= 0"),
    (dict(speedup=0), "speedup must be > 0"),
    (dict(rate=10, speedup=2), "either rate"),
    (dict(rate=10, catchup=0.5), "catchup"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThrottleConfig(**kwargs)
