"""FastAPI routes of the recall service (thin: validation, status codes, JSON; the work is in the store).

=====================================  =========================================================
route                                  answer
=====================================  =========================================================
``GET /u2i/{user_id}?k=50``            movies for a raw MovieLens user id, rated movies excluded
``GET /i2i/{movie_id}?k=50``           movies most similar to a raw movie id (``source=covisit|lfm``), itself excluded
``GET /healthz``                       200 when Redis answers and vectors are loaded, else 503
``GET /stats``                         vectors loaded, last refresh, lag behind the learner, errors
``GET /docs``, ``GET /openapi.json``   OpenAPI documentation (Swagger UI served from the package: works offline)
``GET /dashboard``                     live page: AUC / HR against events, throughput, lag, freshness, PS rows
``GET /metrics``                       Prometheus metrics (request latency per route, cache hits, freshness)
=====================================  =========================================================

With ``RECALL_API_TOKEN`` set, every route but ``/healthz`` answers 401 unless the request carries
``Authorization: Bearer <token>`` (:mod:`recall_api.auth`).

Status codes: 404 unknown user (no vector, no rated movies, not in the prepared data) or movie without
a vector; 422 a non-integer or negative id, or ``k`` outside 1..1000 or not an integer; 503 Redis
unreachable (recovers by itself) or nothing loaded yet.  A known user without a vector gets the
popularity fallback with ``"source": "popularity"``.

Hot path: ``python -m recall_api`` answers well-formed ``GET /u2i/<id>[?k=N]`` and ``/i2i/<id>[?k=N]`` inside
uvicorn's HTTP protocol (:mod:`recall_api.protocol`, ``--no-fast-protocol`` turns it off); every other request,
and every request under another server, goes through the FastAPI routes below, which define the API and its
OpenAPI docs.  Both answer through :func:`respond` (same bytes either way): i2i and u2i of a cached user
(:mod:`recall_api.usercache`) need no I/O; any other u2i awaits its one Redis round trip (:mod:`recall_api.resp`)
so the event loop ranks other requests meanwhile.
A Redis outage is detected once and then answered with an immediate 503 (see :mod:`recall_api.store`).
Answers are serialized with orjson from cached per-movie pieces (:func:`render`; the pydantic models below
document the schema; they are not used to validate each response).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Annotated, Literal

import orjson
from fastapi import FastAPI, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from recall_api.auth import BearerAuth
from recall_api.catalog import Catalog
from recall_api.dashboard import install_dashboard
from recall_api.docs import install_docs
from recall_api.ids import STRICT_ID, STRICT_K
from recall_api.prom import RecallMetrics, Timing
from recall_api.store import Answer, NotFound, RecallStore, Unavailable
from recall_api.types import I2I_DEFAULT

MAX_K = 1000
DEFAULT_K = 50


class RecallItem(BaseModel):
    """One recommended movie."""

    movie_id: int = Field(description="raw MovieLens movie id")
    title: str | None = Field(description="title from movies.csv (null when the catalog lacks it)")
    genres: list[str] = Field(description="genres from movies.csv")
    score: float = Field(description="u2i: the served multi-channel score (see /stats for the contract); "
                                     "i2i: item channel (covisit) or cosine (lfm); popularity fallback: the prior")


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
    return JSONBytes(orjson.dumps({"detail": detail}), status_code=status)


def render(query: str, id_: int, k: int, answer: Answer, catalog: Catalog) -> bytes:
    """JSON bytes of an answer with titles and genres: exactly ``orjson.dumps`` of
    ``{"query", "id", "k", "source", "items": [{"movie_id", "title", "genres", "score"}, ...]}`` (title null and
    genres ``[]`` for a movie the catalog lacks), at a third of its cost.

    The bytes are assembled from pieces orjson encoded: a cached ``{"movie_id":..,"title":..,"genres":..,"score":``
    prefix per catalog movie and every score from one ``orjson.dumps(scores)``.
    """
    cache, movies = catalog.render_cache, catalog.movies
    scores = orjson.dumps(answer.scores)[1:-1].split(b",")
    if movies:
        items = b",".join([(cache.get(m) or _item_prefix(cache, movies, m)) + s + b"}"
                           for m, s in zip(answer.movies, scores)])
    else:  # no catalog: every title null
        items = b",".join([_UNNAMED % (m, s) for m, s in zip(answer.movies, scores)])
    head = orjson.dumps({"query": query, "id": id_, "k": k, "source": answer.source, "items": None})
    return b"".join((head[:-5], b"[", items, b"]}"))  # head ends with b'null}'


_UNNAMED = b'{"movie_id":%d,"title":null,"genres":[],"score":%s}'


def _item_prefix(cache: dict[int, bytes], movies: dict, m: int) -> bytes:
    """The encoded item of movie ``m`` up to its score; cached for catalog movies (so bounded by the catalog)."""
    movie = movies.get(m)
    if movie is None:
        return b'{"movie_id":%d,"title":null,"genres":[],"score":' % m
    p = cache[m] = orjson.dumps({"movie_id": m, "title": movie.title, "genres": movie.genres, "score": 0})[:-2]
    return p  # orjson's bytes up to the b'0}' of the placeholder score


def respond(store: RecallStore, kind: str, id_: int, k: int,
            source: str = I2I_DEFAULT) -> tuple[int, bytes] | Awaitable[tuple[int, bytes]]:
    """(status, JSON body) of a u2i / i2i query (i2i from ``source``): 200 answer, 404 not found, 503 unavailable.

    Returned at once when the answer needs no I/O — i2i, and u2i of a user in the user cache; a u2i that must
    read Redis returns an awaitable of it instead, so the caller's event loop serves others during the read.
    """
    try:
        if kind == "i2i":
            answer = store.i2i(id_, k, source)
        else:
            answer = store.u2i_cached(id_, k)
            if answer is None:
                return _respond_after_read(store, id_, k)
    except (NotFound, Unavailable) as exc:
        return _problem(exc)
    return 200, render(kind, id_, k, answer, store.catalog)


async def _respond_after_read(store: RecallStore, id_: int, k: int) -> tuple[int, bytes]:
    """:func:`respond` of a u2i whose user context is read from Redis (awaited)."""
    try:
        answer = await store.u2i_async(id_, k)
    except (NotFound, Unavailable) as exc:
        return _problem(exc)
    return 200, render("u2i", id_, k, answer, store.catalog)


def _problem(exc: NotFound | Unavailable) -> tuple[int, bytes]:
    return 404 if isinstance(exc, NotFound) else 503, orjson.dumps({"detail": str(exc)})


def create_app(store: RecallStore, manage_store: bool = True, token: str | None = None) -> FastAPI:
    """The FastAPI application over ``store``.

    Args:
        store: the recall store (its catalog names the movies).
        manage_store: start the store's refresh thread when the app starts and stop it at shutdown.
        token: when given, every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (401 otherwise;
            :mod:`recall_api.auth`).
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

    async def answer(query: str, id_: int, k: int, source: str = I2I_DEFAULT) -> Response:
        done = respond(store, query, id_, k, source)
        status, body = done if isinstance(done, tuple) else await done
        return JSONBytes(body, status_code=status)

    @app.get("/u2i/{user_id}", response_model=RecallAnswer, responses=errors, summary="movies for a user")
    async def u2i(user_id: Annotated[int, STRICT_ID, Path(ge=0, description="raw MovieLens user id")],
                  k: Annotated[int, STRICT_K, Query(ge=1, le=MAX_K, description="how many movies (1..1000)")]
                  = DEFAULT_K):
        """Top-k movies by the served multi-channel score (see ``/stats`` for the contract), excluding movies
        the user rated; popularity for a user without a vector."""
        return await answer("u2i", user_id, k)

    @app.get("/i2i/{movie_id}", response_model=RecallAnswer, responses=errors, summary="similar movies")
    async def i2i(movie_id: Annotated[int, STRICT_ID, Path(ge=0, description="raw MovieLens movie id")],
                  k: Annotated[int, STRICT_K, Query(ge=1, le=MAX_K, description="how many movies (1..1000)")]
                  = DEFAULT_K,
                  source: Annotated[Literal["covisit", "lfm"], Query(
                      description="'covisit': movies rated within 10 ratings of it, normalized by both degrees "
                                  "(falls back to 'lfm' for a movie without co-occurrences); 'lfm': cosine of the "
                                  "learner's item vectors")] = I2I_DEFAULT):
        """Top-k movies most similar to a movie (item channel or item vectors), excluding the movie itself."""
        return await answer("i2i", movie_id, k, source)

    @app.get("/healthz", responses={503: {"model": Problem}}, summary="liveness and readiness")
    async def healthz():
        """200 ``{"status": "ok"}`` when Redis answered the last refresh and vectors are loaded."""
        if not store.healthy:
            return _error(503, f"Redis unavailable: {store.stats.last_error or 'not connected yet'}")
        if store.matrix is None:
            return _error(503, "item vectors are not loaded yet")
        return JSONBytes(orjson.dumps({"status": "ok", "vectors_loaded": len(store.matrix)}))

    @app.get("/stats", summary="vectors loaded, refresh state, lag behind the learner")
    async def stats():
        """Refresh counters, the time of the last refresh and the lag behind the learner's newest change."""
        return JSONBytes(orjson.dumps(store.describe()))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    if token:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(Timing, metrics=metrics)  # times every request (the protocol times the ones it answers)
    return app
