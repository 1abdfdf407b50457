"""Prometheus metrics of the recall service (``GET /metrics``).

- ``lfm_recall_request_seconds{route, status}``: request latency per route template (``/u2i/{user_id}``,
  ``/i2i/{movie_id}``, ``/stats`` …; ``other`` for paths no route matched), timed by :class:`Timing` around the
  ASGI app and by :mod:`recall_api.protocol` for the requests it answers itself;
- read from the store at scrape time (:class:`StoreCollector`): vectors loaded, refreshes, the freshness (how far
  the applied changes trail the learner's newest, in seconds of stream time, and the age of the last refresh),
  user-cache hits / misses / invalidations, errors, the PS's rows per table and Redis memory.

One :class:`RecallMetrics` per app (its own registry: tests run several apps in one process).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
U2I_ROUTE, I2I_ROUTE = "/u2i/{user_id}", "/i2i/{movie_id}"


class RecallMetrics:
    """The service's registry: request latencies and the store's figures."""

    def __init__(self, store) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("lfm_recall_request_seconds", "Request latency per route and status",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], object] = {}
        self.registry.register(StoreCollector(store))

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One request's latency."""
        child = self._children.get((route, status))
        if child is None:
            child = self._children[(route, status)] = self.latency.labels(route, str(status))
        child.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Timing:
    """ASGI middleware timing every HTTP request by route template (see the module docstring)."""

    def __init__(self, app, metrics: RecallMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(route_of(scope), status, time.perf_counter() - t)


def route_of(scope) -> str:
    """The route template a request went to (the fast path's u2i / i2i, a FastAPI route, or ``other``)."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    path = scope.get("path", "")
    if path.startswith("/u2i/"):
        return U2I_ROUTE
    if path.startswith("/i2i/"):
        return I2I_ROUTE
    return "other"


class StoreCollector:
    """Figures of a :class:`recall_api.store.RecallStore`, read when Prometheus scrapes."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        d = self.store.describe()
        yield _gauge("lfm_recall_healthy", "1 when Redis answered the last refresh", 1.0 if d.get("healthy") else 0.0)
        yield _gauge("lfm_recall_vectors_loaded", "Movie vectors in memory", d.get("vectors_loaded"))
        yield _gauge("lfm_recall_freshness_lag_seconds",
                     "Stream time between the learner's newest change and the newest one applied here", d.get("lag_s"))
        yield _gauge("lfm_recall_refresh_age_seconds", "Seconds since the last refresh", d.get("refresh_age_s"))
        yield _counter("lfm_recall_refreshes", "Incremental refreshes of the movie matrix", d.get("refreshes"))
        yield _counter("lfm_recall_full_reloads", "Full reloads of the movie matrix", d.get("full_reloads"))
        yield _counter("lfm_recall_rows_applied", "Changed rows applied by refreshes", d.get("rows_applied"))
        yield _counter("lfm_recall_errors", "Refresh errors", d.get("errors"))
        cache = d.get("user_cache") or {}
        yield _counter("lfm_recall_user_cache_hits", "u2i requests answered from the user cache", cache.get("hits"))
        yield _counter("lfm_recall_user_cache_misses", "u2i requests that read the user from Redis",
                       cache.get("misses"))
        yield _counter("lfm_recall_user_cache_invalidations", "Users dropped from the cache by Redis invalidations",
                       cache.get("invalidated"))
        yield _gauge("lfm_recall_user_cache_users", "Users in the cache", cache.get("users"))
        yield from self._ps()

    def _ps(self):
        """Rows per PS table and Redis memory (skipped while Redis does not answer)."""
        import redis

        from ps_redis import PSError
        from recall_api.dashboard import TABLES, redis_memory

        ps = self.store.ps
        if ps is None:
            return
        try:
            rows = {t: ps.count(t) for t in TABLES}
            memory = redis_memory(ps.redis)
        except (redis.RedisError, PSError, OSError):
            return
        family = GaugeMetricFamily("lfm_ps_rows", "Rows of a PS table in the served namespace", labels=["table"])
        for table, n in rows.items():
            family.add_metric([table], float(n))
        yield family
        yield _gauge("lfm_redis_used_memory_bytes", "used_memory of the Redis server (all namespaces)", memory)


def _gauge(name: str, doc: str, value):
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], float(value))
    return g


def _counter(name: str, doc: str, value):
    c = CounterMetricFamily(name, doc)
    if value is not None:
        c.add_metric([], float(value))
    return c
