"""The replay's resume position and the state file that keeps it between runs.

The resume position is the global index (0-based) of the next record of the time-ordered stream
(:mod:`producer.stream`) that the broker has not acknowledged.  :mod:`producer.replay` saves it per topic
in a small JSON state file (default ``<data-dir>/replay-state.json``), together with the digest of the
manifest it counts in, so a position is never applied to another data set::

    {"<topic>": {"next_index": 1200, "total": 3000, "last_ts": 978300760, "bootstrap": "...",
                 "manifest_sha256": "...", "updated": "2026-11-27T21:00:00+00:00"}}

Writes are atomic (temporary file + ``os.replace``) and never raise, so a full disk cannot stop a
replay; reads raise :class:`producer.manifest.DataError` naming the file and what was wrong with it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from producer.manifest import DataError, Manifest
from producer.stream import start_index_for_ts

STATE_NAME = "replay-state.json"


def load_position(path: Path, topic: str, manifest: Manifest) -> int:
    """The saved resume position for ``topic`` (checked against the data set)."""
    try:
        state = json.loads(path.read_text())
        entry = state[topic]
        pos = int(entry["next_index"])
    except FileNotFoundError as exc:
        raise DataError(f"--resume: no state file {path}; pass the position as a number (--resume N)") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"--resume: {path} holds no position for topic {topic!r}") from exc
    if entry.get("manifest_sha256") != manifest.digest:
        raise DataError(f"--resume: {path} was written for another data set (manifest {manifest.path} changed); "
                        "pass the position as a number (--resume N)")
    return pos


def save_position(path: Path, topic: str, manifest: Manifest, bootstrap: str, *, next_index: int, total: int,
                  last_ts: int | None) -> str | None:
    """Write the resume position atomically; returns an error text instead of raising.

    Args:
        path: the state file (other topics' entries in it are kept).
        topic: whose position this is.
        manifest: the data set the position counts in (its digest is stored with it).
        bootstrap: the brokers the records went to (stored for the reader).
        next_index: the resume position: the first record the broker has not acknowledged.
        total: records in the stream (the manifest's train records).
        last_ts: the event time (unix seconds) of the last acknowledged record, None before any.
    """
    try:
        state = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(state, dict):
            state = {}
    except (OSError, ValueError):
        state = {}
    state[topic] = {"next_index": next_index, "total": total, "last_ts": last_ts,
                    "bootstrap": bootstrap, "manifest_sha256": manifest.digest,
                    "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        return f"could not save the resume position to {path}: {exc}"
    return None


def start_position(manifest: Manifest, resume: str | None, state_path: Path, topic: str,
                   start_ts: int | None = None) -> int:
    """The index the replay starts at.

    Args:
        manifest: the data set being replayed.
        resume: None (from the start), ``"state"`` (the position saved for ``topic`` in ``state_path``)
            or a record index as text.
        state_path: the state file read when ``resume == "state"``.
        topic: whose saved position is read.
        start_ts: when given, skip ahead to the first event at or after this unix time (never back).

    Raises:
        DataError: no usable saved position, or a position outside ``0..train_records``.
    """
    start = 0
    if resume == "state":
        start = load_position(state_path, topic, manifest)
    elif resume is not None:
        start = int(resume)
    if start < 0 or start > manifest.train_records:
        raise DataError(f"resume position {start} is outside 0..{manifest.train_records} ({manifest.path})")
    if start_ts is not None:
        start = max(start, start_index_for_ts(manifest, start_ts))
    return start
