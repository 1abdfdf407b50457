"""The replay's Prometheus /metrics during a real run against Tansu (scraped over HTTP while it sends)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lfm_local.stack import free_port
from producer.replay import build_parser, config_from_args, run
from tests._prom_util import metric
from tests._replay_util import prepare_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("replay-metrics") / "data", n=3000, shard_size=1000)


def test_metrics_count_records_sent_and_acked_while_the_replay_runs(data, bootstrap, topic):
    port = free_port()
    cfg = config_from_args(build_parser().parse_args([
        "--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--rate", "3000",
        "--metrics-port", str(port), "--state-file", str(data.parent / f"{topic}.json")]))
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[str] = []

    def on_send(index: int, n: int) -> None:
        if index >= 1500 and not scraped:  # mid-run: the server answers from its own thread
            scraped.append(httpx.get(url, timeout=10).text)

    summary = run(cfg, progress_tty=False, on_send=on_send)
    total = summary.total  # train records (prepare keeps the last 2 ratings per user for the test split)
    assert summary.events == total > 1500
    text = scraped[0]
    sent = metric(text, "lfm_replay_records_sent_total")
    assert 1500 <= sent < total  # records up to the current send were handed over, not yet all of them
    assert 0 <= metric(text, "lfm_replay_records_acked_total") <= sent
    assert metric(text, "lfm_replay_target_events_per_second") == 3000.0
    assert metric(text, "lfm_replay_records_to_send") == total
    assert metric(text, "lfm_replay_recoveries_total") == 0.0
    assert metric(text, "lfm_replay_events_per_second") >= 0.0
    with pytest.raises(httpx.ConnectError):  # the server stops with the run
        httpx.get(url, timeout=2)
