"""The live dashboard: ``GET /dashboard`` (a page) and ``GET /dashboard/data`` (the JSON it polls every second).

The learner runs in another process; what it reports reaches the page through Redis: every log record it writes
(``train``: prequential AUC / HR@k, ``test``: test AUC / HR@10 / HR@50, …) and a ``progress`` record every
second (events, events/s while active, consumer lag, state) are appended to the namespace's metrics stream
(:mod:`ps_redis.metricslog`).  ``/dashboard/data`` returns the records after the last stream id the page has,
plus what this service knows now: its freshness (how far the applied changes trail the learner's newest),
vectors loaded, and the PS's rows per table and Redis memory.  The page (``static/dashboard.*``, hand-written
JavaScript drawing SVG; no CDN, no library) draws AUC and HR against events, and throughput, lag, freshness,
PS rows and memory against time.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
FIRST_RECORDS = 5000  # records sent on a page's first poll (the newest ones)
MORE_RECORDS = 5000  # records sent per later poll at most
TABLES = ("user", "item")


def dashboard_data(store, after: str | None) -> dict:
    """The JSON of ``/dashboard/data`` (see the module docstring); raises the Redis client's errors."""
    from ps_redis.metricslog import MetricsLog

    d = store.describe()
    out = {"namespace": store.config.namespace, "time": round(time.time(), 3), "records": [], "last_id": after,
           "recall": {k: d.get(k) for k in ("healthy", "vectors_loaded", "lag_s", "refresh_age_s", "refreshes")},
           "ps": None}
    ps = store.ps
    if ps is None:
        return out
    log = MetricsLog(ps.redis, store.config.namespace)
    out["records"], out["last_id"] = log.read(after, MORE_RECORDS) if after else log.tail(FIRST_RECORDS)
    out["last_id"] = out["last_id"] or after
    out["ps"] = {"rows": {t: ps.count(t) for t in TABLES}, "memory_bytes": redis_memory(ps.redis)}
    return out


def redis_memory(client) -> int | None:
    """``used_memory`` of the Redis server (summed over a cluster's nodes)."""
    info = client.info("memory")
    if "used_memory" in info:
        return int(info["used_memory"])
    nodes = [v for v in info.values() if isinstance(v, dict) and "used_memory" in v]
    return sum(int(v["used_memory"]) for v in nodes) if nodes else None


def install_dashboard(app: FastAPI, store) -> None:
    """Add ``/dashboard``, ``/dashboard/data`` and the page's assets under ``/static/dashboard``."""
    app.mount("/static/dashboard", StaticFiles(directory=STATIC_DIR), name="dashboard-assets")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard():
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")

    @app.get("/dashboard/data", summary="the live dashboard's data",
             responses={503: {"description": "Redis unreachable"}})
    def data(after: str | None = Query(None, pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                                       description="stream id of the last record the caller has")):
        """The learner's records after ``after`` (the newest ones when absent) from the namespace's metrics
        stream, with this service's freshness and the PS's rows and Redis memory now."""
        import redis

        from ps_redis import PSError

        try:
            body, status = dashboard_data(store, after), 200
        except (redis.RedisError, PSError, OSError) as exc:
            body, status = {"detail": f"Redis unavailable: {type(exc).__name__}: {exc}"}, 503
        # orjson: a NaN in a record (AUC of an empty window) becomes null instead of failing the response
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")
