"""Prometheus metrics of a replay (``--metrics-port``): records sent and acknowledged, the rate, broker recoveries.

The figures are read from the :class:`producer.publish.Publisher` when Prometheus scrapes (nothing on the send
path): ``lfm_replay_records_sent_total`` / ``_acked_total`` (this run), ``lfm_replay_events_per_second`` (records
acknowledged per second since the first send; ``rate(lfm_replay_records_acked_total[1m])`` gives the recent one),
``lfm_replay_target_events_per_second`` (``--rate``; 0 = as fast as possible), ``lfm_replay_recoveries_total``
(reconnect + re-send after a broker failure) and ``lfm_replay_resent_total`` (records re-sent by them).
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class ReplayCollector:
    """Reads a publisher's counters at scrape time.

    Args:
        publisher: the run's :class:`producer.publish.Publisher`.
        start: stream index the run started at (counts are of this run).
        quota: records this run is to send.
        target_rate: the throttle's events/s (0 = as fast as possible).
        started: monotonic time of the first send (read at each scrape; the run sets it when it sends).
    """

    def __init__(self, publisher, start: int, quota: int, target_rate: float, started: Callable[[], float]) -> None:
        self.pub, self.start, self.quota, self.target, self.started = publisher, start, quota, target_rate, started

    def collect(self):
        sent, acked = max(0, self.pub.sent_to - self.start), max(0, self.pub.acked - self.start)
        seconds = time.monotonic() - self.started()
        yield _one(CounterMetricFamily, "lfm_replay_records_sent", "Records handed to the Kafka producer", sent)
        yield _one(CounterMetricFamily, "lfm_replay_records_acked", "Records acknowledged by the broker", acked)
        yield _one(GaugeMetricFamily, "lfm_replay_events_per_second",
                   "Records acknowledged per second since the first send", acked / seconds if seconds > 0 else 0.0)
        yield _one(GaugeMetricFamily, "lfm_replay_target_events_per_second",
                   "The replay's target rate (0 = as fast as possible)", self.target)
        yield _one(GaugeMetricFamily, "lfm_replay_records_to_send", "Records this run is to send", self.quota)
        yield _one(CounterMetricFamily, "lfm_replay_recoveries", "Reconnects + re-sends after a broker failure",
                   self.pub.recoveries)
        yield _one(CounterMetricFamily, "lfm_replay_resent", "Records re-sent by recoveries (at-least-once)",
                   self.pub.resent)


def _one(kind, name: str, doc: str, value: float):
    family = kind(name, doc)
    family.add_metric([], float(value))
    return family


def serve(collector: ReplayCollector, port: int, host: str = "127.0.0.1"):
    """Serve ``/metrics`` with ``collector`` on ``host:port`` from a daemon thread; returns the HTTP server
    (``shutdown()`` + ``server_close()`` stop it).  ValueError names the flag when the port is taken."""
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ValueError(f"--metrics-port {port}: cannot serve /metrics on {host}:{port} ({exc})") from exc
    return server
