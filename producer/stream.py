"""The time-ordered record stream of a prepared data directory (train shards only).

The stream is the train records sorted by ``(timestamp, shard number, position in shard)``: a k-way
merge of the shards listed in ``manifest.json`` (``train_shards``, in that order; read by
:mod:`producer.manifest`).  A record's **global index** is its position in that order, 0-based; the
replay's resume position is the global index of the next record to send, and every record is published with
its global index as its event sequence number (header ``lfm-seq``, :mod:`lfm_stream.event_seq`): a resumed
replay, or a record sent again, carries the same number.

The merge works on batches (numpy, no per-record Python): every open shard holds a buffered batch; the
records up to ``B``, the smallest last timestamp among the open shards' buffers, are taken from every
shard, stable-sorted and emitted.  Shards are opened lazily when their first timestamp (from the
manifest, checked on opening) falls within ``B``, so shards that are already in global time order (what
``producer.prepare`` writes) are read one after the other and never sorted.

Validation: the manifest must list existing shard files whose record counts (and CRC-checked TFRecord
framing) match (:func:`producer.manifest.verify_shards`); while streaming, each shard's first/last
timestamps and record count are checked against the manifest and its records must be in non-decreasing
time order.  Every problem raises :class:`producer.manifest.DataError` naming the file.  The test shards
are never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lfm_stream.schema import SCHEMA_VERSION
from producer.manifest import DataError, Manifest, ShardInfo, data_loss_error

PARSED = ("timestamp", "user_id")


@dataclass
class Batch:
    """Consecutive records of the stream: ``index`` is the global index of the first one."""

    index: int
    values: list[bytes]
    timestamps: np.ndarray  # int64 seconds
    user_ids: np.ndarray  # int64 hashed user ids

    def __len__(self) -> int:
        return len(self.values)


def _tf():
    import tensorflow as tf  # lazy: `--help` and the pure parts do not need TensorFlow

    return tf


def _first_line(exc: Exception) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return (msg.strip().splitlines() or [""])[0][:200]


_PARSE = None


def _parser():
    """A ``tf.function`` decoding timestamps and user ids of a string batch (traced once per process)."""
    global _PARSE
    if _PARSE is None:
        tf = _tf()
        from lfm_stream.schema import feature_spec

        spec = {k: v for k, v in feature_spec().items() if k in PARSED}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def parse(serialized):
            cols = tf.io.parse_example(serialized, spec)
            return cols["timestamp"], cols["user_id"]

        _PARSE = parse
    return _PARSE


class _ShardReader:
    """Batches of one shard (values, timestamps, user ids) with the per-shard checks."""

    def __init__(self, shard: ShardInfo, skip: int, batch_size: int):
        tf = _tf()
        self.shard = shard
        self.pos = skip
        self.last_ts: int | None = None
        self.batch_size = batch_size
        self._loss, self._invalid = tf.errors.DataLossError, tf.errors.InvalidArgumentError
        self._parse = _parser()
        ds = tf.data.TFRecordDataset(str(shard.path), buffer_size=1 << 20)
        if skip:
            ds = ds.skip(skip)
        self._it = iter(ds.batch(batch_size).prefetch(2))

    def next(self) -> tuple[list[bytes], np.ndarray, np.ndarray] | None:
        """The next batch, or None at the end of the shard (after checking count and last timestamp)."""
        try:
            serialized = next(self._it)
        except StopIteration:
            self._finish()
            return None
        except self._loss as exc:
            raise data_loss_error(self.shard, exc) from exc
        try:
            ts_t, users_t = self._parse(serialized)
        except self._invalid as exc:
            raise DataError(f"shard {self.shard.path}: a record in #{self.pos}..#{self.pos + self.batch_size - 1} is "
                            f"not a rating Example of schema {SCHEMA_VERSION}: {_first_line(exc)}") from exc
        ts = ts_t.numpy()
        n = len(ts)
        if self.pos == 0 and n and ts[0] != self.shard.first_ts:
            raise DataError(f"shard {self.shard.path}: first timestamp {ts[0]} but the manifest says "
                            f"first_ts {self.shard.first_ts}")
        prev = self.last_ts if self.last_ts is not None else ts[0]
        if n and (ts[0] < prev or (n > 1 and bool((np.diff(ts) < 0).any()))):
            bad = int(np.argmax(np.diff(np.concatenate([[prev], ts])) < 0))
            raise DataError(f"shard {self.shard.path}: records out of time order at record #{self.pos + bad}")
        self.pos += n
        if self.pos > self.shard.records:
            raise DataError(f"shard {self.shard.path} holds more than the {self.shard.records} records "
                            "the manifest says")
        self.last_ts = int(ts[-1]) if n else self.last_ts
        return serialized.numpy().tolist(), ts, users_t.numpy()

    def _finish(self) -> None:
        if self.pos != self.shard.records:
            raise DataError(f"shard {self.shard.path} holds {self.pos} records but the manifest says "
                            f"{self.shard.records}")
        if self.last_ts is not None and self.last_ts != self.shard.last_ts:
            raise DataError(f"shard {self.shard.path}: last timestamp {self.last_ts} but the manifest says "
                            f"last_ts {self.shard.last_ts}")


@dataclass
class _Open:
    reader: _ShardReader
    values: list[bytes]
    ts: np.ndarray
    users: np.ndarray
    done: bool = False

    def fill(self) -> None:
        """Append batches while the buffer is empty (or ``extend`` is requested by the caller)."""
        while not self.done and not self.values:
            self._append()

    def _append(self) -> None:
        got = self.reader.next()
        if got is None:
            self.done = True
            return
        v, t, u = got
        self.values = self.values + v
        self.ts = np.concatenate([self.ts, t])
        self.users = np.concatenate([self.users, u])

    def bound(self) -> float:
        """Largest timestamp certainly complete in the buffer (inf when the shard is exhausted)."""
        return float("inf") if self.done else float(self.ts[-1])

    def extend_past(self, bound: float) -> None:
        """Read on until the buffer holds every record with timestamp <= ``bound``."""
        while not self.done and self.ts[-1] <= bound:
            self._append()

    def take(self, bound: float) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        n = int(np.searchsorted(self.ts, bound, side="right"))
        out = (self.values[:n], self.ts[:n], self.users[:n])
        self.values, self.ts, self.users = self.values[n:], self.ts[n:], self.users[n:]
        return out


def _start_plan(manifest: Manifest, start_index: int) -> tuple[list[tuple[ShardInfo, int]], int]:
    """Shards to read with a per-shard skip, and how many leading merged records still to drop."""
    if not manifest.ordered:
        return [(s, 0) for s in manifest.shards], start_index
    plan, left = [], start_index
    for s in manifest.shards:
        if left >= s.records:
            left -= s.records
            continue
        plan.append((s, left))
        left = 0
    return plan, 0


def iter_batches(manifest: Manifest, start_index: int = 0, start_ts: int | None = None,
                 batch_size: int = 4096) -> Iterator[Batch]:
    """Yield the train records in global time order, starting at global index ``start_index``.

    Args:
        manifest: from :func:`load_manifest`.
        start_index: global index of the first record to yield (the resume position).
        start_ts: also skip records with ``timestamp < start_ts`` (their indices still count).
        batch_size: records read per shard per step (yielded batches may be larger or smaller).

    Raises:
        DataError: a shard does not match the manifest or is corrupt (raised when reached).
    """
    if start_index < 0 or start_index > manifest.train_records:
        raise DataError(f"resume position {start_index} is outside the stream of {manifest.train_records} "
                        f"records ({manifest.path})")
    if start_ts is not None and manifest.ordered:  # whole shards before start_ts need not be read
        before = 0
        for s in manifest.shards:
            if s.last_ts >= start_ts:
                break
            before += s.records
        start_index = max(start_index, before)
    plan, drop = _start_plan(manifest, start_index)
    index = start_index - drop
    pending = list(plan)  # shards not opened yet, in manifest order
    opened: list[tuple[int, _Open]] = []
    while pending or opened:
        # open every shard that may hold records up to what can be emitted now; shards starting
        # later stay closed (for ordered shards: one open at a time)
        while True:
            bound = min((o.bound() for _, o in opened), default=float("inf"))
            buffered = [o.ts[-1] for _, o in opened if len(o.ts)]
            limit = bound if bound != float("inf") else (max(buffered) if buffered else None)
            if limit is None:
                ready = [min(pending, key=lambda p: (p[0].first_ts, p[0].number))] if pending else []
            else:
                ready = [p for p in pending if p[0].first_ts <= limit]
            if not ready:
                break
            for p in ready:
                pending.remove(p)
                o = _Open(_ShardReader(p[0], p[1], batch_size), [], np.empty(0, np.int64), np.empty(0, np.int64))
                o.fill()
                opened.append((p[0].number, o))
            opened.sort(key=lambda x: x[0])
        for _, o in opened:
            o.extend_past(bound)
        parts = [o.take(bound) for _, o in opened]
        parts = [p for p in parts if p[0]]
        opened = [(k, o) for k, o in opened if not (o.done and not o.values)]
        for _, o in opened:
            o.fill()
        if not parts:
            continue
        if len(parts) == 1:
            values, ts, users = parts[0]
        else:  # concatenated in shard order, so a stable sort by time gives (ts, shard, position)
            ts = np.concatenate([p[1] for p in parts])
            order = np.argsort(ts, kind="stable")
            flat = [v for p in parts for v in p[0]]
            values = [flat[i] for i in order.tolist()]
            ts = ts[order]
            users = np.concatenate([p[2] for p in parts])[order]
        lo = 0
        if drop:
            lo = min(drop, len(values))
            drop -= lo
        if start_ts is not None and lo < len(values) and ts[lo] < start_ts:
            lo = max(lo, int(np.searchsorted(ts, start_ts, side="left")))
        if lo < len(values):
            yield Batch(index + lo, values[lo:], ts[lo:], users[lo:])
        index += len(values)


def start_index_for_ts(manifest: Manifest, start_ts: int) -> int:
    """Global index of the first record with ``timestamp >= start_ts`` (reads up to it)."""
    for b in iter_batches(manifest, 0, start_ts):
        return b.index
    return manifest.train_records


def prefetch(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """Run ``batches`` in a background thread, ``depth`` batches ahead (reading overlaps sending).

    Exceptions of the producer side (e.g. :class:`DataError`) are re-raised in the consumer. The
    thread stops when the consumer stops iterating (generator closed) or the stream ends.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()
    end = object()

    def work() -> None:
        try:
            for b in batches:
                while not done.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            q.put(end)
        except BaseException as exc:  # handed to the consumer thread
            q.put(exc)

    t = threading.Thread(target=work, name="lfm-replay-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()
