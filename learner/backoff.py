"""Retry with capped exponential backoff: what the learner does on a Redis or broker outage.

The policy itself is :mod:`lfm_stream.backoff` (shared with the producer); this is the learner's call form.
"""

from __future__ import annotations

from typing import Callable

from lfm_stream.backoff import ExponentialBackoff, Outage, RetryBudgetExceeded
from lfm_stream.backoff import retry as _retry

__all__ = ["ExponentialBackoff", "Outage", "RetryBudgetExceeded", "retry"]


def retry(what: str, fn: Callable, *args, errors: tuple[type[BaseException], ...] = (Exception,),
          say: Callable[[str], None] = print, max_s: float = 10.0, first_s: float = 0.1,
          budget_s: float | None = None, **kwargs):
    """Call ``fn(*args, **kwargs)`` until it returns; on one of ``errors``, log a line naming ``what`` and sleep
    ``first_s``, doubling up to ``max_s``; give up with :class:`RetryBudgetExceeded` after ``budget_s`` seconds of
    failures (None: never).  Returns ``(result, failed attempts)``: a caller whose call may have landed before its
    reply was lost (a write) can tell a retried call from a first one."""
    return _retry(what, fn, *args, errors=errors, say=say, backoff=ExponentialBackoff(first_s, max(max_s, first_s)),
                  budget_s=budget_s, **kwargs)
