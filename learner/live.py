"""What a person or a monitor sees of a running learner: progress on stderr, Prometheus metrics, dashboard records.

:class:`Live` is the loop's one handle on it (:mod:`learner.loop` calls it at a few points):

- progress (:mod:`learner.progress`): a tqdm bar on a TTY, else a status line every ``progress_s`` seconds;
- Prometheus (:mod:`learner.prom`): ``/metrics`` on ``metrics_port`` when set;
- the dashboard: every log record the learner emits, and a ``progress`` record every ``PUBLISH_S`` seconds,
  appended to the namespace's metrics stream in Redis (:class:`ps_redis.metricslog.MetricsLog`), which the
  recall service's ``/dashboard`` reads.  The appends run on a daemon thread: the loop never waits for them;
  during a Redis outage they wait (up to ``QUEUE_RECORDS``, then the oldest are dropped and counted) and the
  outage is reported once.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import threading
import time
from typing import Callable

from learner import report
from learner.config import LearnerConfig
from learner.progress import ProgressView, Snapshot, Tracker
from learner.prom import LearnerMetrics

PUBLISH_S = 1.0  # seconds between progress records on the dashboard stream
QUEUE_RECORDS = 10_000  # dashboard records waiting for Redis at most


class Live:
    """Progress, metrics and dashboard records of one learner (see the module docstring).

    Args:
        cfg: the learner's config (namespace, group, ``progress_s``, ``metrics_port`` / ``metrics_host``).
        say: prints one line (the learner's log).
        redis: the PS's redis-py client for the dashboard stream (None: no dashboard records).
        clock: monotonic seconds (tests pass their own).
        tty: force the progress bar on / off (default: whether stderr is a TTY).
    """

    def __init__(self, cfg: LearnerConfig, say: Callable[[str], None], redis=None,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.clock = clock
        self.tracker = Tracker(clock)
        self.view = ProgressView(self.tracker, cfg.progress_s, say, tty=tty, clock=clock)
        report.set_line_writer(self.view.message if self.view.tty else None)
        self.prom = LearnerMetrics(cfg.namespace, cfg.group)
        self.metrics_port = self.prom.serve(cfg.metrics_port, cfg.metrics_host) if cfg.metrics_port else None
        if self.metrics_port is not None:
            say(f"Prometheus metrics at http://{cfg.metrics_host}:{self.metrics_port}/metrics")
        self.source = f"{socket.gethostname()}:{os.getpid()}"
        self._t0 = time.time()
        self._next_publish = clock()
        self._stream = _StreamWriter(redis, cfg.namespace, say) if redis is not None else None

    # ------------------------------------------------------------------------ the loop's hooks
    def assign(self, partitions: list[int]) -> None:
        """Partitions assigned (an empty list after a revocation)."""
        self.tracker.assign(partitions)

    def arrived(self, chunk) -> None:
        """A chunk of consumed records reached the loop (its end offsets, if the consumer sent them)."""
        self.tracker.arrived(chunk.parts, chunk.offsets, getattr(chunk, "ends", None))

    def handled(self, next_offsets: dict[int, int]) -> None:
        """Records were trained or dead-lettered up to ``next_offsets`` (partition -> next offset; the loop passes
        the offsets its next sync covers, kept per chunk by :class:`learner.sync.WindowSync`)."""
        self.tracker.advance(next_offsets)

    def tick(self, records: int, waiting: bool) -> None:
        """End of a loop iteration: ``records`` handled so far; ``waiting``: the iteration only waited."""
        self.tracker.observe(records, waiting)
        now = self.clock()
        publish, due = now >= self._next_publish, self.view.due()
        if not (publish or due):
            return
        snap = self.view.show() if due else self.tracker.snapshot()
        self.prom.progress(snap)
        if publish:
            self._next_publish = now + PUBLISH_S
            self.publish(progress_record(snap))

    def record(self, rec: dict) -> None:
        """A log record the learner emitted (metrics file): to Prometheus and the dashboard stream."""
        self.prom.record(rec)
        self.publish(rec)

    def stage(self, name: str, seconds: float) -> None:
        """A loop stage's time (see :meth:`learner.prom.LearnerMetrics.stage`)."""
        self.prom.stage(name, seconds)

    def call(self, what: str, seconds: float, attempts: int) -> None:
        """A PS call's time and failed attempts (see :meth:`learner.prom.LearnerMetrics.call`)."""
        self.prom.call(what, seconds, attempts)

    def publish(self, rec: dict) -> None:
        """Append a record to the dashboard stream (no wait; stamped with this learner's ``source``)."""
        if self._stream is not None:
            rec = dict(rec)
            rec.setdefault("time", round(time.time(), 3))
            rec["source"] = self.source
            self._stream.put(rec)

    def rate(self) -> float | None:
        """Events/s over the recent active time (see :class:`learner.progress.Tracker`)."""
        return self.tracker.rate()

    def mean_rate(self) -> float | None:
        """Events/s over all active time."""
        return self.tracker.mean_rate()

    def close(self) -> None:
        """Last progress record, bar closed, dashboard records flushed (a few seconds at most), server stopped."""
        snap = dataclasses.replace(self.tracker.snapshot(), state="stopped")
        self.prom.progress(snap)
        self.publish(progress_record(snap))
        self.view.close()
        report.set_line_writer(None)
        if self._stream is not None:
            self._stream.close()
        self.prom.close()


def progress_record(snap: Snapshot) -> dict:
    """The dashboard's ``progress`` record of a snapshot."""
    return {"event": "progress", "events": snap.events, "rate": None if snap.rate is None or snap.idle
            else round(snap.rate, 1), "lag": snap.lag, "state": snap.state, "idle_s": round(snap.idle_s, 1),
            "active_s": round(snap.active_s, 3)}


class _StreamWriter:
    """Appends records to the metrics stream from a daemon thread (see the module docstring)."""

    def __init__(self, redis, namespace: str, say: Callable[[str], None]) -> None:
        from ps_redis.metricslog import MetricsLog

        self.log, self.say = MetricsLog(redis, namespace), say
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE_RECORDS)
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lfm-dashboard", daemon=True)
        self._thread.start()

    def put(self, rec: dict) -> None:
        while True:
            try:
                self.q.put_nowait(rec)
                return
            except queue.Full:
                try:
                    self.q.get_nowait()  # the oldest goes
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _run(self) -> None:
        failing, delay = None, 0.5
        while not (self._stop.is_set() and self.q.empty()):
            try:
                rec = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            while True:
                try:
                    self.log.append(rec)
                    break
                except Exception as exc:  # Redis down: keep the record, report once, back off
                    if failing is None:
                        failing = f"{type(exc).__name__}: {exc}"
                        self.say(f"dashboard records not written to {self.log.key!r} ({failing}); retrying")
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, 10.0)
            if failing is not None:
                self.say(f"dashboard records written to {self.log.key!r} again"
                         + (f" ({self.dropped} dropped meanwhile)" if self.dropped else ""))
                failing, delay = None, 0.5

    def close(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
