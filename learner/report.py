"""What the learner reports: human-readable lines on stderr and one JSON object per log event in the metrics file
(``--metrics``; read back by :mod:`learner.plot`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable


_line_writer: Callable[[str], bool] | None = None


def set_line_writer(writer: Callable[[str], bool] | None) -> None:
    """Route :func:`say`'s lines through ``writer`` (e.g. a progress bar's ``message``, which prints a line above
    the bar; it returns False when it printed nothing), or back to plain stderr with None."""
    global _line_writer
    _line_writer = writer


def say(text: str) -> None:
    """One timestamped line on stderr (above the progress bar when there is one)."""
    line = f"[learner {time.strftime('%H:%M:%S')}] {text}"
    writer = _line_writer
    if writer is None or not writer(line):
        print(line, file=sys.stderr, flush=True)


def open_metrics(path):
    """Open the metrics file for appending; a last record torn by a killed learner ends its own line first."""
    path = Path(path)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    f = open(path, "a")
    if torn:
        f.write("\n")
    return f


class MetricsFile:
    """The JSON-lines metrics file (or nothing when ``path`` is None): one flushed line per record."""

    def __init__(self, path) -> None:
        self._f = open_metrics(path) if path else None

    def write(self, rec: dict) -> None:
        """Append one record (a JSON object on its own line) and flush it."""
        if self._f:
            self._f.write(json.dumps(rec) + "\n")
            self._f.flush()

    def close(self) -> None:
        """Close the file."""
        if self._f:
            self._f.close()
            self._f = None
