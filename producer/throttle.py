"""Pacing of the replay: a fixed event rate or the original inter-arrival times sped up.

Pure logic with an injectable clock and sleep, so the rate guarantees are unit-tested with a fake
clock (``tests/test_throttle.py``) and measured for real in ``bench/producer.py``.

Rate mode (``rate > 0``): event ``i`` (0-based, counted from the first :meth:`Throttle.take`) is due at
``t0 + i / rate``.  Releases follow that schedule; when the caller fell behind (a stall, a slow
broker) the backlog is repaid at no more than ``catchup * rate`` through a token bucket of
``catchup * rate * burst_s`` tokens, and a backlog older than ``max_lag_s`` is forgiven (the
schedule is shifted) rather than sent as a burst.  Hence any window of ``w`` seconds carries at most
``catchup * rate * (w + burst_s) + 1`` events, and, while the caller keeps up, the count after ``T``
seconds is ``floor(rate * T) + 1``.

Speedup mode (``speedup = X``): the event with timestamp ``ts`` is due at ``t0 + (ts - ts0) / X``
where ``ts0`` is the first event's timestamp; events with the same timestamp leave together.

``rate == 0`` and no speedup: everything is released at once (as fast as the publisher goes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ThrottleConfig:
    """Pacing parameters.

    Attributes:
        rate: target events per second; 0 = unthrottled (unless ``speedup`` is set).
        speedup: replay the original inter-arrival times divided by this factor (excludes ``rate``).
        burst_s: release granularity in rate mode: at most ``max(1, catchup * rate * burst_s)``
            events leave in one go.
        catchup: when behind schedule, send at most this multiple of ``rate``.
        max_lag_s: a backlog older than this is forgiven instead of being caught up.
        max_sleep_s: longest single sleep, so the caller can react to signals in between.
    """

    rate: float = 0.0
    speedup: float | None = None
    burst_s: float = 0.01
    catchup: float = 1.5
    max_lag_s: float = 1.0
    max_sleep_s: float = 0.1

    def __post_init__(self) -> None:
        if not math.isfinite(self.rate) or self.rate < 0:
            raise ValueError(f"rate must be >= 0 events/s (got {self.rate!r})")
        if self.speedup is not None:
            if not math.isfinite(self.speedup) or self.speedup <= 0:
                raise ValueError(f"speedup must be > 0 (got {self.speedup!r})")
            if self.rate > 0:
                raise ValueError(f"use either rate ({self.rate}) or speedup ({self.speedup}), not both")
        if self.catchup < 1:
            raise ValueError(f"catchup must be >= 1 (got {self.catchup!r})")
        if self.burst_s <= 0 or self.max_lag_s <= 0 or self.max_sleep_s <= 0:
            raise ValueError("burst_s, max_lag_s and max_sleep_s must be > 0")

    @property
    def mode(self) -> str:
        """``"rate"``, ``"speedup"`` or ``"unthrottled"``."""
        if self.speedup is not None:
            return "speedup"
        return "rate" if self.rate > 0 else "unthrottled"


class Throttle:
    """Decides how many of the next events may leave now; sleeps (briefly) when none may.

    Args:
        config: pacing parameters.
        clock: monotonic time in seconds (injectable for tests).
        sleep: sleep function (injectable; a fake clock's ``sleep`` advances it).
    """

    def __init__(self, config: ThrottleConfig, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.sent = 0
        self._t0: float | None = None
        self._ts0: int | None = None
        self._cap = max(1.0, config.catchup * config.rate * config.burst_s)
        self._tokens = self._cap
        self._last = 0.0
        self.forgiven = 0  # events of backlog dropped from the schedule (rate mode)

    def take(self, timestamps: Sequence[int] | np.ndarray, start: int = 0) -> int:
        """Number of events from ``timestamps[start:]`` that may be sent now.

        Returns 0 after sleeping at most ``max_sleep_s`` when none is due yet; the caller loops (and
        can check for a stop request in between).  The caller must send exactly the returned number.

        Args:
            timestamps: event times (seconds) of the pending batch, non-decreasing.
            start: index of the first unsent event in ``timestamps``.
        """
        avail = len(timestamps) - start
        if avail <= 0:
            return 0
        mode = self.config.mode
        if mode == "unthrottled":
            self.sent += avail
            return avail
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
            self._last = now
            self._ts0 = int(timestamps[start])
        if mode == "speedup":
            return self._take_speedup(timestamps, start, now)
        return self._take_rate(avail, now)

    def _take_rate(self, avail: int, now: float) -> int:
        cfg = self.config
        assert self._t0 is not None
        # token bucket limiting the release speed to catchup * rate
        self._tokens = min(self._cap, self._tokens + (now - self._last) * cfg.catchup * cfg.rate)
        self._last = now
        due = (now - self._t0) * cfg.rate + 1.0  # events due by now (the first at t0)
        backlog = due - self.sent
        limit = cfg.rate * cfg.max_lag_s + 1.0
        if backlog > limit:  # forgive the part of the backlog older than max_lag_s
            shift = (backlog - limit) / cfg.rate
            self._t0 += shift
            self.forgiven += int(backlog - limit)
            due = (now - self._t0) * cfg.rate + 1.0
        n = min(avail, int(due - self.sent + 1e-9), int(self._tokens + 1e-9))
        if n >= 1:
            self.sent += n
            self._tokens -= n
            return n
        wait_due = (self.sent + 1.0 - due) / cfg.rate
        wait_tok = (1.0 - self._tokens) / (cfg.catchup * cfg.rate)
        self.sleep(min(max(wait_due, wait_tok, 1e-6), cfg.max_sleep_s))
        return 0

    def _take_speedup(self, timestamps: Sequence[int] | np.ndarray, start: int, now: float) -> int:
        assert self._t0 is not None and self._ts0 is not None and self.config.speedup is not None
        horizon = self._ts0 + (now - self._t0) * self.config.speedup  # event time reached by now
        ts = np.asarray(timestamps[start:])
        n = int(np.searchsorted(ts, horizon, side="right"))
        if n >= 1:
            self.sent += n
            return n
        wait = (float(ts[0]) - horizon) / self.config.speedup
        self.sleep(min(max(wait, 1e-6), self.config.max_sleep_s))
        return 0

    def lag(self, next_ts: int | None = None) -> float:
        """Seconds behind schedule (negative: ahead; 0 when unthrottled or not started).

        Args:
            next_ts: timestamp of the next unsent event (speedup mode).
        """
        if self._t0 is None or self.config.mode == "unthrottled":
            return 0.0
        now = self.clock()
        if self.config.mode == "rate":
            return ((now - self._t0) * self.config.rate + 1.0 - self.sent) / self.config.rate
        if next_ts is None or self._ts0 is None or self.config.speedup is None:
            return 0.0
        return now - (self._t0 + (next_ts - self._ts0) / self.config.speedup)

    def target(self) -> float:
        """Events due by now according to the schedule (rate mode; ``sent`` otherwise)."""
        if self._t0 is None or self.config.mode != "rate":
            return float(self.sent)
        return (self.clock() - self._t0) * self.config.rate + 1.0


class FakeClock:
    """A manual clock for tests: ``sleep(s)`` advances time by ``s``; ``advance`` simulates work."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` (must be >= 0)."""
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds})")
        self.now += seconds

    def advance(self, seconds: float) -> None:
        """Simulate ``seconds`` of work or a stall."""
        self.now += seconds
