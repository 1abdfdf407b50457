"""Progress reporting of a replay: a tqdm bar on a TTY, else a plain log line every few seconds.

Both show how far the run is (events handed to the producer and acknowledged by the broker) and where
it stands against the throttle's schedule (:meth:`producer.throttle.Throttle.lag`): ``on target``, or
``behind`` / ``ahead`` by so many seconds.  Status messages of the run (broker recoveries, a state file
that could not be written) go through :meth:`Progress.message` so they do not break the bar.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone

from producer.throttle import Throttle


def iso(ts: int | None) -> str:
    """UTC ISO-8601 of a unix timestamp (``-`` for None)."""
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    """A tqdm bar on a TTY, else a log line every ``interval`` seconds."""

    def __init__(self, total: int, throttle: Throttle, interval: float, tty: bool | None = None):
        self.total, self.throttle, self.interval = total, throttle, interval
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self._next = self.t0 + (0.2 if self.tty else interval)
        self._shown = 0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="ev", unit_scale=True, dynamic_ncols=True, smoothing=0.1,
                            file=sys.stderr, desc="replay")

    def message(self, text: str) -> None:
        """Print a status line without breaking the bar."""
        line = f"replay: {text}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def due(self) -> bool:
        """Cheap check whether :meth:`show` should run now."""
        return time.monotonic() >= self._next

    def show(self, sent: int, acked: int, next_ts: int | None, last_ts: int | None) -> None:
        """Update the bar, or print a line: counts, rate, position against the schedule, event time, ETA."""
        now = time.monotonic()
        self._next = now + (0.2 if self.tty else self.interval)
        lag = self.throttle.lag(next_ts)
        where = "on target" if abs(lag) < 0.05 else f"{'behind' if lag > 0 else 'ahead'} {abs(lag):.2f}s"
        if self.bar is not None:
            self.bar.update(sent - self._shown)
            self._shown = sent
            self.bar.set_postfix_str(f"{where}, acked {acked}", refresh=False)
            return
        el = now - self.t0
        rate = sent / el if el > 0 else 0.0
        eta = (self.total - sent) / rate if rate > 0 else float("inf")
        pct = 100.0 * sent / self.total if self.total else 100.0
        self.message(f"{sent}/{self.total} events ({pct:.1f}%), {rate:.0f} ev/s, {where}, acked {acked}, "
                     f"event time {iso(last_ts)}, ETA {eta:.0f} s")

    def close(self) -> None:
        """Close the bar (no-op without one)."""
        if self.bar is not None:
            self.bar.close()
