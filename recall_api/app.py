"""FastAPI routes of the recall service (thin: validation, status codes, JSON; the work is in the store).

=====================================  =========================================================
route                                  answer
=====================================  =========================================================
``GET /u2i/{user_id}?k=50``            movies for a raw MovieLens user id, rated movies excluded
``GET /i2i/{movie_id}?k=50``           movies most similar (cosine) to a raw movie id, itself excluded
``GET /healthz``                       200 when Redis answers and vectors are loaded, else 503
``GET /stats``                         vectors loaded, last refresh, lag behind the learner, errors
``GET /docs``, ``GET /openapi.json``   OpenAPI documentation (Swagger UI served from the package: works offline)
``GET /dashboard``                     live page: AUC / HR against events, throughput, lag, freshness, PS rows
``GET /metrics``                       Prometheus metrics (request latency per route, cache hits, freshness)
=====================================  =========================================================

Status codes: 404 unknown user (no vector, no rated movies, not in the prepared data) or movie without
a vector; 422 a non-integer or negative id, or ``k`` outside 1..1000 or not an integer; 503 Redis
unreachable (recovers by itself) or nothing loaded yet.  A known user without a vector gets the
popularity fallback with ``"source": "popularity"``.

Hot path: well-formed ``GET /u2i/<id>[?k=N]`` and ``/i2i/<id>[?k=N]`` are answered in uvicorn's HTTP protocol
by ``python -m recall_api`` (:mod:`recall_api.protocol`), or by :class:`FastPath`, a pure-ASGI shortcut in front
of FastAPI, under any other server (same bytes either way, without FastAPI's routing and validation cost).  i2i
and u2i of a cached user (:mod:`recall_api.usercache`) need no I/O; any other u2i awaits its one Redis round
trip (:mod:`recall_api.resp`) so the event loop ranks other requests meanwhile.  Everything else goes through
the FastAPI routes, which define the API and its OpenAPI docs.
A Redis outage is detected once and then answered with an immediate 503 (see :mod:`recall_api.store`).
Answers are serialized with orjson from cached per-movie pieces (:func:`render`; the pydantic models below
document the schema; they are not used to validate each response).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Annotated, Literal

from fastapi import FastAPI, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from recall_api.catalog import Catalog
from recall_api.dashboard import install_dashboard
from recall_api.docs import install_docs
from recall_api.ids import STRICT_ID, STRICT_K
from recall_api.prom import RecallMetrics, Timing
from recall_api.store import Answer, NotFound, RecallStore, Unavailable
from recall_api.types import I2I_DEFAULT

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is a dependency; plain json keeps the service working without it
    orjson = None

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

MAX_K = 1000
DEFAULT_K = 50


class RecallItem(BaseModel):
    """One recommended movie."""

    movie_id: int = Field(description="raw MovieLens movie id")
    title: str | None = Field(description="title from movies.csv (null when the catalog lacks it)")
    genres: list[str] = Field(description="genres from movies.csv")
    score: float = Field(description="u2i: the served multi-channel score (see /stats for the contract); "
                                     "i2i: cosine; popularity fallback: positive events")


class RecallAnswer(BaseModel):
    """A ranked answer."""

    query: str = Field(description="'u2i' or 'i2i'")
    id: int = Field(description="the raw user id (u2i) or movie id (i2i) asked about")
    k: int
    source: str = Field(description="u2i: 'model' (the served score) or 'popularity' (a user known to no channel); "
                                    "i2i: 'covisit' (item channel) or 'lfm' (cosine of the item vectors)")
    items: list[RecallItem]


class Problem(BaseModel):
    """An error."""

    detail: str


class JSONBytes(Response):
    """A JSON response whose body is already encoded."""

    media_type = "application/json"


def _error(status: int, detail: str) -> Response:
    return JSONBytes(_dumps({"detail": detail}), status_code=status)


def render(query: str, id_: int, k: int, answer: Answer, catalog: Catalog) -> bytes:
    """JSON bytes of an answer with titles and genres.

    With orjson the bytes are assembled from pieces orjson encoded — a cached ``{"movie_id":..,"title":..,
    "genres":..,"score":`` prefix per catalog movie and every score from one ``orjson.dumps(scores)`` —
    which is exactly ``orjson.dumps`` of the whole answer (:func:`render_plain`) at a third of the cost.
    """
    if orjson is None:
        return render_plain(query, id_, k, answer, catalog)
    cache, movies = catalog.render_cache, catalog.movies
    scores = orjson.dumps(answer.scores)[1:-1].split(b",")
    if movies:
        items = b",".join([(cache.get(m) or _item_prefix(cache, movies, m)) + s + b"}"
                           for m, s in zip(answer.movies, scores)])
    else:  # no catalog: every title null
        items = b",".join([_UNNAMED % (m, s) for m, s in zip(answer.movies, scores)])
    head = orjson.dumps({"query": query, "id": id_, "k": k, "source": answer.source, "items": None})
    return b"".join((head[:-5], b"[", items, b"]}"))  # head ends with b'null}'


def render_plain(query: str, id_: int, k: int, answer: Answer, catalog: Catalog) -> bytes:
    """JSON bytes of an answer, built as one dict and serialized at once (the definition of the format)."""
    movies = catalog.movies
    items = []
    for m, s in zip(answer.movies, answer.scores):
        entry = movies.get(m)
        items.append({"movie_id": m, "title": entry.title if entry else None,
                      "genres": entry.genres if entry else (), "score": s})
    return _dumps({"query": query, "id": id_, "k": k, "source": answer.source, "items": items})


_UNNAMED = b'{"movie_id":%d,"title":null,"genres":[],"score":%s}'


def _item_prefix(cache: dict[int, bytes], movies: dict, m: int) -> bytes:
    """The encoded item of movie ``m`` up to its score; cached for catalog movies (so bounded by the catalog)."""
    movie = movies.get(m)
    if movie is None:
        return b'{"movie_id":%d,"title":null,"genres":[],"score":' % m
    p = cache[m] = orjson.dumps({"movie_id": m, "title": movie.title, "genres": movie.genres, "score": 0})[:-2]
    return p  # orjson's bytes up to the b'0}' of the placeholder score


_FAST_PATH = re.compile(rb"/(u2i|i2i)/([0-9]{1,18})")
_FAST_QUERY = re.compile(rb"(?:k=([0-9]{1,4}))?")
_JSON_TYPE = (b"content-type", b"application/json")


class FastPath:
    """Pure-ASGI shortcut for well-formed ``GET /u2i/<digits>[?k=<1..1000>]`` and ``/i2i/...``.

    Those requests are answered straight from the store, skipping FastAPI's routing and parameter
    validation (about a fifth of a request's CPU); the bytes are exactly what the FastAPI routes return.
    Anything else — other paths, other parameters, out-of-range or malformed values — goes to FastAPI,
    which stays the definition of the API (validation messages, OpenAPI docs).
    """

    def __init__(self, app, store: RecallStore):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _FAST_PATH.fullmatch(scope["raw_path"] if scope.get("raw_path") else scope["path"].encode())
            q = _FAST_QUERY.fullmatch(scope["query_string"]) if m else None
            if q is not None:
                k = int(q.group(1)) if q.group(1) is not None else DEFAULT_K
                if 1 <= k <= MAX_K:
                    kind, id_ = m.group(1).decode(), int(m.group(2))
                    status, body = await respond_async(self.store, kind, id_, k)
                    await send({"type": "http.response.start", "status": status,  # Starlette's header order
                                "headers": [(b"content-length", b"%d" % len(body)), _JSON_TYPE]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


def respond(store: RecallStore, kind: str, id_: int, k: int, source: str = I2I_DEFAULT) -> tuple[int, bytes]:
    """(status, JSON body) of a u2i / i2i query (i2i from ``source``): 200 answer, 404 not found, 503 unavailable."""
    try:
        ans = store.u2i(id_, k) if kind == "u2i" else store.i2i(id_, k, source)
    except NotFound as exc:
        return 404, _dumps({"detail": str(exc)})
    except Unavailable as exc:
        return 503, _dumps({"detail": str(exc)})
    return 200, render(kind, id_, k, ans, store.catalog)


def respond_now(store: RecallStore, kind: str, id_: int, k: int) -> tuple[int, bytes] | None:
    """:func:`respond` when the answer needs no I/O — i2i, and u2i of a user in the user cache — else None."""
    try:
        ans = store.i2i(id_, k) if kind == "i2i" else store.u2i_cached(id_, k)
    except NotFound as exc:
        return 404, _dumps({"detail": str(exc)})
    except Unavailable as exc:
        return 503, _dumps({"detail": str(exc)})
    return None if ans is None else (200, render(kind, id_, k, ans, store.catalog))


async def respond_async(store: RecallStore, kind: str, id_: int, k: int) -> tuple[int, bytes]:
    """:func:`respond` with u2i's Redis read awaited (none for a cached user)."""
    done = respond_now(store, kind, id_, k)
    return done if done is not None else await respond_read(store, id_, k)


async def respond_read(store: RecallStore, id_: int, k: int) -> tuple[int, bytes]:
    """(status, JSON body) of u2i with the user's context read from Redis (awaited)."""
    try:
        ans = await store.u2i_async(id_, k)
    except NotFound as exc:
        return 404, _dumps({"detail": str(exc)})
    except Unavailable as exc:
        return 503, _dumps({"detail": str(exc)})
    return 200, render("u2i", id_, k, ans, store.catalog)


def create_app(store: RecallStore, manage_store: bool = True, fast_path: bool = True) -> FastAPI:
    """The FastAPI application over ``store``.

    Args:
        store: the recall store (its catalog names the movies).
        manage_store: start the store's refresh thread when the app starts and stop it at shutdown.
        fast_path: answer well-formed u2i / i2i requests through :class:`FastPath`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_store:
            store.start()
        try:
            yield
        finally:
            if manage_store:
                store.stop()

    app = FastAPI(title="LFM Stream recall", version="0.1.0", lifespan=lifespan,
                  description="u2i and i2i recall over the matrix-factorization vectors in the Redis PS, "
                              "refreshed incrementally from the learner's activity log. Live dashboard: "
                              "[/dashboard](/dashboard); Prometheus: /metrics.",
                  docs_url=None, redoc_url=None)  # /docs from local assets (recall_api.docs), no CDN
    install_docs(app)
    install_dashboard(app, store)
    app.state.metrics = metrics = RecallMetrics(store)
    errors = {404: {"model": Problem}, 422: {"description": "bad id or k"}, 503: {"model": Problem}}

    def answer(query: str, id_: int, k: int, source: str = I2I_DEFAULT) -> Response:
        status, body = respond(store, query, id_, k, source)
        return JSONBytes(body, status_code=status)

    @app.get("/u2i/{user_id}", response_model=RecallAnswer, responses=errors, summary="movies for a user")
    async def u2i(user_id: Annotated[int, STRICT_ID, Path(ge=0, description="raw MovieLens user id")],
                  k: Annotated[int, STRICT_K, Query(ge=1, le=MAX_K, description="how many movies (1..1000)")]
                  = DEFAULT_K):
        """Top-k movies by the served multi-channel score (see ``/stats`` for the contract), excluding movies
        the user rated; popularity for a user without a vector."""
        return answer("u2i", user_id, k)

    @app.get("/i2i/{movie_id}", response_model=RecallAnswer, responses=errors, summary="similar movies")
    async def i2i(movie_id: Annotated[int, STRICT_ID, Path(ge=0, description="raw MovieLens movie id")],
                  k: Annotated[int, STRICT_K, Query(ge=1, le=MAX_K, description="how many movies (1..1000)")]
                  = DEFAULT_K,
                  source: Annotated[Literal["covisit", "lfm"], Query(
                      description="'covisit': movies rated within 10 ratings of it, normalized by both degrees "
                                  "(falls back to 'lfm' for a movie without co-occurrences); 'lfm': cosine of the "
                                  "learner's item vectors")] = I2I_DEFAULT):
        """Top-k movies most similar to a movie (item channel or item vectors), excluding the movie itself."""
        return answer("i2i", movie_id, k, source)

    @app.get("/healthz", responses={503: {"model": Problem}}, summary="liveness and readiness")
    async def healthz():
        """200 ``{"status": "ok"}`` when Redis answered the last refresh and vectors are loaded."""
        if not store.healthy:
            return _error(503, f"Redis unavailable: {store.stats.last_error or 'not connected yet'}")
        if store.matrix is None:
            return _error(503, "item vectors are not loaded yet")
        return JSONBytes(_dumps({"status": "ok", "vectors_loaded": len(store.matrix)}))

    @app.get("/stats", summary="vectors loaded, refresh state, lag behind the learner")
    async def stats():
        """Refresh counters, the time of the last refresh and the lag behind the learner's newest change."""
        return JSONBytes(_dumps(store.describe()))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    if fast_path:
        app.add_middleware(FastPath, store=store)
    app.add_middleware(Timing, metrics=metrics)  # outermost: times every request, the fast path's too
    return app
