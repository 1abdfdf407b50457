"""The recall service's dashboard data, Prometheus metrics and offline /docs over real HTTP and a real Redis."""

from __future__ import annotations

import re
import uuid

import httpx
import numpy as np
import pytest

from ps_redis import ParameterServer
from ps_redis.metricslog import MetricsLog, metrics_key
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from recall_api.protocol import fast_protocol
from tests._prom_util import metric
from tests._recall_util import ServerThread, populate, wait_for

DIM = 8
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def served(redis_url):
    """A populated namespace served with the protocol fast path, as ``python -m recall_api`` serves it."""
    ns = f"db{uuid.uuid4().hex[:8]}"
    ps = ParameterServer.get(redis_url, ns, dim=DIM)
    P = populate(ps, np.arange(1, 201), np.arange(1, 31), seed=2)
    store = RecallStore(StoreConfig(redis_url, ns, dim=DIM, refresh_interval=0.05), Catalog.load(None))
    app = create_app(store)
    with ServerThread(app, http=fast_protocol(store, app.state.metrics)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout=30)
        yield dict(ps=ps, P=P, ns=ns, client=client, store=store)


def test_docs_load_swagger_ui_from_the_service_itself(served):
    client = served["client"]
    page = client.get("/docs")
    assert page.status_code == 200
    assert not EXTERNAL.search(page.text), "the docs page links to another host"
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")  # Swagger UI 5 renders 3.1
    u2i = client.get("/openapi.json").json()["paths"]["/u2i/{user_id}"]["get"]["description"]
    assert "multi-channel score" in u2i and "q_u·v_i" not in u2i


def test_dashboard_page_and_assets_are_local(served):
    client = served["client"]
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not EXTERNAL.search(page.text)
    for asset in re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", page.text):
        r = client.get(asset)
        assert r.status_code == 200 and not re.search(r"https?://", r.text), asset


def test_dashboard_data_returns_the_learner_records_after_an_id(served, redis_url):
    client, ps, ns = served["client"], served["ps"], served["ns"]
    log = MetricsLog(ps.redis, ns)
    log.append({"event": "train", "events": 640, "auc": 0.61, "source": "h:1"})
    log.append({"event": "progress", "events": 640, "rate": 1000.0, "lag": 12, "state": "draining the backlog"})
    first = client.get("/dashboard/data").json()
    assert [r["event"] for r in first["records"]] == ["train", "progress"]
    assert first["records"][0]["auc"] == 0.61 and first["namespace"] == ns
    assert first["ps"]["rows"] == {"user": ps.count("user"), "item": ps.count("item")} == {"user": 30, "item": 200}
    assert first["ps"]["memory_bytes"] > 0
    assert first["recall"]["healthy"] and first["recall"]["vectors_loaded"] == 200
    again = client.get("/dashboard/data", params={"after": first["last_id"]}).json()
    assert again["records"] == [] and again["last_id"] == first["last_id"]
    log.append({"event": "test", "events": 1280, "test_auc": float("nan"), "hr_at_50": 0.2})  # NaN → null
    more = client.get("/dashboard/data", params={"after": first["last_id"]}).json()
    assert more["records"] == [{"event": "test", "events": 1280, "test_auc": None, "hr_at_50": 0.2}]
    assert client.get("/dashboard/data", params={"after": "bad"}).status_code == 422
    ps.redis.delete(metrics_key(ns))


def test_metrics_time_requests_per_route_and_read_the_store(served):
    client, P = served["client"], served["P"]
    user, movie = int(P.users[0]), int(P.movies[0])
    before = client.get("/metrics").text
    n0 = metric(before, "lfm_recall_request_seconds_count", route="/u2i/{user_id}", status="200") or 0
    for _ in range(3):
        assert client.get(f"/u2i/{user}?k=5").status_code == 200  # the protocol's fast path
    assert client.get(f"/i2i/{movie}").status_code == 200
    assert client.get("/u2i/abc").status_code == 422  # FastAPI's route, through the timing middleware
    assert client.get("/no-such-page").status_code == 404
    text = client.get("/metrics").text
    assert metric(text, "lfm_recall_request_seconds_count", route="/u2i/{user_id}", status="200") == n0 + 3
    assert metric(text, "lfm_recall_request_seconds_count", route="/i2i/{movie_id}", status="200") >= 1
    assert metric(text, "lfm_recall_request_seconds_count", route="/u2i/{user_id}", status="422") >= 1
    assert metric(text, "lfm_recall_request_seconds_count", route="other", status="404") >= 1
    assert metric(text, "lfm_recall_user_cache_hits_total") >= 2  # the same user twice more after the first
    assert metric(text, "lfm_recall_vectors_loaded") == 200
    assert metric(text, "lfm_recall_healthy") == 1.0
    assert metric(text, "lfm_ps_rows", table="user") == 30 and metric(text, "lfm_ps_rows", table="item") == 200
    assert metric(text, "lfm_redis_used_memory_bytes") > 0
