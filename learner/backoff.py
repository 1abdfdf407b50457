"""Retry with capped exponential backoff: what the learner does on a Redis or broker outage."""

from __future__ import annotations

import time
from typing import Callable


def retry(what: str, fn: Callable, *args, errors: tuple[type[BaseException], ...] = (Exception,),
          say: Callable[[str], None] = print, max_s: float = 10.0, first_s: float = 0.1, **kwargs):
    """Call ``fn(*args, **kwargs)`` until it returns; on one of ``errors``, log a line naming ``what`` and sleep
    ``first_s``, doubling up to ``max_s``.  Returns ``(result, failed attempts)``: a caller whose call may have
    landed before its reply was lost (a write) can tell a retried call from a first one."""
    delay, attempt = first_s, 0
    while True:
        try:
            return fn(*args, **kwargs), attempt
        except errors as exc:
            attempt += 1
            say(f"{what} failed ({type(exc).__name__}: {exc}); retry {attempt} in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, max_s)
