"""learner.live / learner.prom / ps_redis.metricslog: Prometheus metrics over real HTTP, dashboard records in a
real Redis stream, an unreachable Redis reported once without blocking the caller."""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import pytest
import redis

from learner.config import LearnerConfig
from learner.live import Live
from learner.progress import Snapshot
from learner.prom import LearnerMetrics
from lfm_local.stack import free_port
from ps_redis.metricslog import MetricsLog, metrics_key
from tests._prom_util import metric


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_metrics_log_appends_reads_after_an_id_and_trims(client):
    ns = f"ml{uuid.uuid4().hex[:8]}"
    log = MetricsLog(client, ns, maxlen=100)
    ids = [log.append({"event": "progress", "events": i}) for i in range(300)]
    client.xadd(metrics_key(ns), {"json": "{not json"})
    assert 100 <= client.xlen(metrics_key(ns)) < 300  # trimmed to about maxlen
    tail, last = log.tail(5)
    assert [r["events"] for r in tail] == [296, 297, 298, 299] and last != ids[-1]  # the bad entry is skipped
    after, last2 = log.read(ids[297])
    assert [r["events"] for r in after] == [298, 299] and last2 == last
    assert log.read(last) == ([], last)
    with pytest.raises(ValueError, match="maxlen"):
        MetricsLog(client, ns, maxlen=0)
    client.delete(metrics_key(ns))


def test_learner_metrics_from_records_progress_and_timings_over_http():
    m = LearnerMetrics("ns1", "g1")
    port = m.serve(0)
    try:
        m.record({"event": "train", "auc": 0.71, "loss": 0.6, "preq_hr_at_50": 0.25})
        m.record({"event": "test", "test_auc": 0.75, "warm_auc": 0.74, "hr_at_10": 0.1, "hr_at_50": 0.3})
        m.record({"event": "poison", "partition": 0, "offset": 7})
        m.record({"event": "train", "auc": None, "loss": 0.5})  # one-class window: the AUC gauge keeps 0.71
        m.progress(Snapshot(1000, 2500.0, 40, "draining the backlog", 0.0, 0.4))
        m.progress(Snapshot(1500, 2000.0, 0, "caught up", 3.0, 0.6))  # idle: no rate
        m.stage("step", 0.004)
        m.stage("parse", 1.0)  # not a histogram
        m.call("pull", 0.002, 0)
        m.call("fenced push", 0.03, 2)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        m.close()
    assert metric(text, "lfm_learner_prequential_auc") == 0.71 and metric(text, "lfm_learner_train_loss") == 0.5
    assert metric(text, "lfm_learner_prequential_hr", k="50") == 0.25
    assert metric(text, "lfm_learner_test_auc", rows="all") == 0.75
    assert metric(text, "lfm_learner_test_auc", rows="warm") == 0.74
    assert metric(text, "lfm_learner_test_hr", k="10") == 0.1 and metric(text, "lfm_learner_test_hr", k="50") == 0.3
    assert metric(text, "lfm_learner_poison_records_total") == 1
    assert metric(text, "lfm_learner_events_total") == 1500
    assert metric(text, "lfm_learner_events_per_second") == 0.0 and metric(text, "lfm_learner_consumer_lag") == 0
    assert metric(text, "lfm_learner_state", state="caught up") == 1.0
    assert metric(text, "lfm_learner_state", state="draining the backlog") == 0.0
    assert metric(text, "lfm_learner_step_seconds_count") == 1 and metric(text, "lfm_learner_step_seconds_sum") == 0.004
    assert metric(text, "lfm_learner_pull_seconds_count") == 1 and metric(text, "lfm_learner_sync_seconds_count") == 1
    assert metric(text, "lfm_learner_redis_retries_total", call="fenced push") == 2
    assert metric(text, "lfm_learner_info", group="g1", namespace="ns1") == 1.0


def test_metrics_port_taken_is_a_clear_error():
    m = LearnerMetrics("ns", "g")
    port = m.serve(0)
    try:
        with pytest.raises(ValueError, match=f"--metrics-port {port}"):
            LearnerMetrics("ns", "g").serve(port)
    finally:
        m.close()


def test_live_appends_records_and_progress_to_the_namespace_stream(client):
    ns = f"lv{uuid.uuid4().hex[:8]}"
    clock = Clock()
    live = Live(LearnerConfig(namespace=ns, progress_s=0), lambda s: None, client, clock=clock, tty=False)
    live.assign([0])
    live.tick(0, waiting=True)
    live.record({"event": "train", "events": 640, "auc": 0.7})
    parts, offs = np.zeros(640, np.int32), np.arange(640, dtype=np.int64)
    live.tracker.arrived(parts, offs, {0: 1000})
    live.handled({0: 640})
    clock.t = 1.5
    live.tick(640, waiting=False)
    live.close()
    recs, _ = MetricsLog(client, ns).read()
    kinds = [r["event"] for r in recs]
    assert kinds[:3] == ["progress", "train", "progress"] and kinds[-1] == "progress"
    assert recs[-1]["state"] == "stopped"
    progress = recs[2]
    assert progress["events"] == 640 and progress["lag"] == 360 and progress["state"] == "draining the backlog"
    assert all(r["source"] == live.source for r in recs)
    client.delete(metrics_key(ns))


def test_unreachable_redis_is_reported_once_and_never_blocks_the_loop():
    lines: list[str] = []
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)  # nothing listens there
    live = Live(LearnerConfig(namespace="x", progress_s=0), lines.append, dead, tty=False)
    for i in range(50):
        live.record({"event": "train", "events": i})  # queued for the writer thread, not sent by the caller
    assert live._stream.q.qsize() >= 49  # the writer holds at most one while it retries
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    live.close()
    assert len([s for s in lines if "not written" in s]) == 1, lines
