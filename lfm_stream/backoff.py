"""The one retry policy of the producer and the learner: capped exponential backoff within a time budget.

Modelled on redis-py's ``Retry`` + ``ExponentialBackoff`` (which ``ps_redis`` uses for its own reconnects), with
a budget in seconds instead of a count, because what matters at an I/O edge is how long the other side may stay
away before the process gives up with a clear error:

* :class:`ExponentialBackoff` — the delay before retry ``n`` is ``min(max_s, first_s · 2**(n-1))``.
* :class:`Outage` — the failures of one I/O edge since its last success: when it started, how many, the next
  delay, and :class:`RetryBudgetExceeded` once it has lasted longer than the budget.  A success ends it.
* :func:`retry` — call a function until it returns, sleeping the backoff between failures.

Example::

    outage = Outage("Kafka broker 127.0.0.1:9092", ExponentialBackoff(0.1, 10.0), budget_s=60)
    try:
        poll()
        outage.ok()
    except OSError as exc:
        time.sleep(outage.failed(exc))   # raises RetryBudgetExceeded after 60 s of failures
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class RetryBudgetExceeded(RuntimeError):
    """An outage lasted longer than its retry budget; the message names what failed, how long and why."""


@dataclass(frozen=True)
class ExponentialBackoff:
    """Delays that double from ``first_s`` up to ``max_s``.

    Attributes:
        first_s: delay after the first failure (seconds, > 0).
        max_s: the cap (seconds, >= first_s).
    """

    first_s: float = 0.1
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.first_s > 0:
            raise ValueError(f"backoff: first delay must be > 0 s (got {self.first_s!r})")
        if self.max_s < self.first_s:
            raise ValueError(f"backoff: cap must be >= the first delay {self.first_s} s (got {self.max_s!r})")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (``failures >= 1``)."""
        return min(self.max_s, self.first_s * 2.0 ** min(max(failures - 1, 0), 60))


class Outage:
    """The consecutive failures of one I/O edge (e.g. "Kafka broker host:9092") since its last success.

    Args:
        what: what is failing, as the messages name it.
        backoff: delays between attempts.
        budget_s: how long an outage may last (None or 0: forever).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, what: str, backoff: ExponentialBackoff = ExponentialBackoff(),
                 budget_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        if budget_s is not None and budget_s < 0:
            raise ValueError(f"retry budget must be >= 0 s (got {budget_s!r})")
        self.what = what
        self.backoff = backoff
        self.budget_s = budget_s or None
        self.clock = clock
        self.failures = 0
        self.since: float | None = None  # clock() at the first failure of the current outage
        self.last_error = ""

    @property
    def active(self) -> bool:
        """Whether the edge is failing now."""
        return self.failures > 0

    @property
    def seconds(self) -> float:
        """How long the current outage has lasted (0 when there is none)."""
        return 0.0 if self.since is None else self.clock() - self.since

    @property
    def left(self) -> float | None:
        """Seconds of budget left in the current outage (None without a budget)."""
        return None if self.budget_s is None else max(0.0, self.budget_s - self.seconds)

    def failed(self, error: BaseException | str) -> float:
        """Count a failure; returns the delay before the next attempt.

        Raises:
            RetryBudgetExceeded: the outage has lasted longer than ``budget_s`` (chained to ``error`` when it is
                an exception).
        """
        now = self.clock()
        if self.since is None:
            self.since = now
        self.failures += 1
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.budget_s is not None and now - self.since >= self.budget_s:
            exc = RetryBudgetExceeded(
                f"{self.what}: still failing after {now - self.since:.0f} s (retry budget {self.budget_s:g} s, "
                f"{self.failures} attempts): {self.last_error}")
            if isinstance(error, BaseException):
                raise exc from error
            raise exc
        delay = self.backoff.delay(self.failures)
        return delay if self.budget_s is None else min(delay, max(0.0, self.budget_s - (now - self.since)))

    def ok(self) -> float | None:
        """The edge answered: ends the outage.  Returns how long it lasted (None when there was none)."""
        if self.since is None:
            return None
        lasted = self.clock() - self.since
        self.failures, self.since, self.last_error = 0, None, ""
        return lasted


def retry(what: str, fn: Callable, *args, errors: tuple[type[BaseException], ...] = (Exception,),
          say: Callable[[str], None] = print, backoff: ExponentialBackoff = ExponentialBackoff(),
          budget_s: float | None = None, sleep: Callable[[float], None] = time.sleep, **kwargs):
    """Call ``fn(*args, **kwargs)`` until it returns; after each of ``errors``, log a line naming ``what`` and
    sleep the backoff.

    Returns:
        ``(result, failed attempts)``: a caller whose call may have landed before its reply was lost (a write)
        can tell a retried call from a first one.

    Raises:
        RetryBudgetExceeded: the failures lasted longer than ``budget_s`` (None: retry forever).
    """
    outage = Outage(what, backoff, budget_s)
    while True:
        try:
            return fn(*args, **kwargs), outage.failures
        except errors as exc:
            delay = outage.failed(exc)
            say(f"{what} failed ({type(exc).__name__}: {exc}); retry {outage.failures} in {delay:.1f}s")
            sleep(delay)
