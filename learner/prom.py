"""Prometheus metrics of the learner (``prometheus_client``), served on ``--metrics-port`` at ``/metrics``.

Each :class:`LearnerMetrics` has its own registry (several learners may live in one test process).  What sets
them: the log records the learner emits (``train`` → prequential AUC / HR / loss, ``test`` → test AUC / HR,
``poison`` → poison records), the progress tracker (events, events/s over active time, consumer lag, state)
and the loop's timings (one TF call per run of micro-batches; the PS pull of a chunk's rows not held; the PS
write of a sync, as :meth:`learner.loop.Learner._retry` times them, backoff included).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from learner.progress import STATES, Snapshot

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALLS = {"pull": "pull", "fenced push": "sync"}  # PS calls (``Learner._retry``'s names) with a latency histogram
LAG_HELP = ("Records between the learner's next offsets and the partitions' end offsets (high watermarks); "
            "on Tansu the high watermark is the start of the last batch + 1, so this undercounts by up to one "
            "producer batch per partition")


class LearnerMetrics:
    """The learner's metrics in a registry of their own."""

    def __init__(self, namespace: str, group: str) -> None:
        self.registry = r = CollectorRegistry()
        self._server = None
        self.events = Counter("lfm_learner_events", "Stream records handled (trained or dead-lettered)", registry=r)
        self.rate = Gauge("lfm_learner_events_per_second",
                          "Events per second over the last 5 s of active time (waits for records excluded)", registry=r)
        self.lag = Gauge("lfm_learner_consumer_lag", LAG_HELP, registry=r)
        self.state = Gauge("lfm_learner_state", "1 for the learner's current state, 0 for the others",
                           ["state"], registry=r)
        self.step = Histogram("lfm_learner_step_seconds",
                              "One TF call training a run of micro-batches (up to 8,192 events)",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.pull = Histogram("lfm_learner_pull_seconds", "One PS pull (MGET) of a chunk's rows not held yet",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.sync = Histogram("lfm_learner_sync_seconds",
                              "One PS write of a sync window (rows, counters, activity log, offsets in one "
                              "transaction), retries included", buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("lfm_learner_redis_retries", "Redis calls retried after an error", ["call"], registry=r)
        self.poison = Counter("lfm_learner_poison_records", "Records dead-lettered (malformed or out of range)",
                              registry=r)
        self.preq_auc = Gauge("lfm_learner_prequential_auc",
                              "AUC of the last train-log window, each event scored before its update", registry=r)
        self.preq_hr = Gauge("lfm_learner_prequential_hr", "Prequential hit rate at k of the sampled positives so far",
                             ["k"], registry=r)
        self.loss = Gauge("lfm_learner_train_loss", "Mean loss of the last train-log window", registry=r)
        self.test_auc = Gauge("lfm_learner_test_auc", "AUC on the test split at the last evaluation", ["rows"],
                              registry=r)
        self.test_hr = Gauge("lfm_learner_test_hr", "Hit rate at k on the test split at the last evaluation", ["k"],
                             registry=r)
        info = Gauge("lfm_learner_info", "The learner's namespace and consumer group", ["namespace", "group"],
                     registry=r)
        info.labels(namespace, group).set(1)
        self._events_seen = 0

    # ------------------------------------------------------------------------ updates
    def record(self, rec: dict) -> None:
        """Take the figures of one log record (``train``, ``test``, ``poison``; others are ignored)."""
        kind = rec.get("event")
        if kind == "train":
            _set(self.preq_auc, rec.get("auc"))
            _set(self.loss, rec.get("loss"))
            for key, value in rec.items():
                if key.startswith("preq_hr_at_"):
                    _set(self.preq_hr.labels(key.removeprefix("preq_hr_at_")), value)
        elif kind == "test":
            _set(self.test_auc.labels("all"), rec.get("test_auc"))
            _set(self.test_auc.labels("warm"), rec.get("warm_auc"))
            for key, value in rec.items():
                if key.startswith("hr_at_"):
                    _set(self.test_hr.labels(key.removeprefix("hr_at_")), value)
        elif kind == "poison":
            self.poison.inc()

    def progress(self, snap: Snapshot) -> None:
        """Take the progress figures."""
        if snap.events > self._events_seen:
            self.events.inc(snap.events - self._events_seen)
            self._events_seen = snap.events
        self.rate.set(0.0 if snap.rate is None or snap.idle else snap.rate)
        _set(self.lag, snap.lag)
        for state in STATES:
            self.state.labels(state).set(1.0 if state == snap.state else 0.0)

    def stage(self, name: str, seconds: float) -> None:
        """A loop stage's time (only ``step`` is kept: one TF call)."""
        if name == "step":
            self.step.observe(seconds)

    def call(self, what: str, seconds: float, attempts: int) -> None:
        """A PS call's latency (pull and sync writes) and its failed attempts."""
        kind = CALLS.get(what)
        if kind == "pull":
            self.pull.observe(seconds)
        elif kind == "sync":
            self.sync.observe(seconds)
        if attempts:
            self.retries.labels(what).inc(attempts)

    # ------------------------------------------------------------------------ exposition
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = a free port) from a daemon thread; returns the port (ValueError
        names the flag when the port is taken)."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ValueError(f"--metrics-port {port}: cannot serve /metrics on {host}:{port} ({exc})") from exc
        return self._server.server_address[1]

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _set(gauge, value) -> None:
    if value is not None:
        gauge.set(float(value))
