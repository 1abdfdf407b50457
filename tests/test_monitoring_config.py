"""The compose monitoring (Prometheus + Grafana) agrees with the services and with the metrics the code exposes.

Docker is not available in CI: these checks read docker-compose.yml, deploy/prometheus/prometheus.yml and the
Grafana provisioning, and compare every metric a dashboard panel queries with the names the learner, the replay
and the recall service register.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/lfm-stream.json").read_text())
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _mounts(name: str) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    out = {}
    for vol in SERVICES[name].get("volumes", []):
        src, dst = vol.split(":")[:2]
        out[dst] = src
    return out


def test_prometheus_scrapes_each_service_on_its_metrics_port():
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in PROMETHEUS["scrape_configs"]}
    env = {name: SERVICES[name].get("environment", {}) for name in ("learner", "producer")}
    assert targets["learner"] == f"learner:{env['learner']['LFM_LEARNER_METRICS_PORT']}"
    assert targets["producer"] == f"producer:{env['producer']['LFM_REPLAY_METRICS_PORT']}"
    for name in ("learner", "producer"):
        assert env[name]["LFM_METRICS_HOST"] == "0.0.0.0", f"{name} must listen beyond its loopback"
    api = SERVICES["recall_api"]["command"]
    assert targets["recall_api"] == f"recall_api:{api[api.index('--port') + 1]}"
    assert _mounts("prometheus")["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_monitoring_ports_are_bound_to_loopback_and_images_pinned():
    for name in ("prometheus", "grafana"):
        for port in SERVICES[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        assert re.search(r":v?\d+\.\d+\.\d+$", SERVICES[name]["image"]), SERVICES[name]["image"]


def test_grafana_provisioning_points_at_the_dashboard_and_the_prometheus_datasource():
    mounts = _mounts("grafana")
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    (source,) = sources
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards/lfm-stream.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    assert (ROOT / mounts[path] / "lfm-stream.json").is_file()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/lfm-stream.json"
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_every_queried_metric_is_exposed_by_the_code():
    defined = set()
    for module in ("learner/prom.py", "producer/prom.py", "recall_api/prom.py"):
        defined |= set(re.findall(r'"(lfm_[a-z_]+)"', (ROOT / module).read_text()))
    queried = set()
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(lfm_[a-z_]+)", target["expr"]))
    assert queried
    base = {next((q.removesuffix(s) for s in SUFFIXES if q.endswith(s) and q.removesuffix(s) in defined), q)
            for q in queried}
    assert base <= defined, f"queried but never exposed: {sorted(base - defined)}"
    titles = {p["title"].split(" (")[0] for p in DASHBOARD["panels"]}
    # the panels of the recall service's /dashboard page
    assert {"AUC", "Hit rate", "Throughput", "Consumer lag", "Freshness", "PS rows", "Redis memory"} <= titles
