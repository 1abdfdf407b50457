"""What the learner reports: human-readable lines on stderr and one JSON object per log event in the metrics file
(``--metrics``; read back by :mod:`learner.plot`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def say(text: str) -> None:
    """One timestamped line on stderr."""
    print(f"[learner {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


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
