"""FastAPI routes of the recall service (thin: validation, status codes, JSON; the work is in the store).

=====================================  =========================================================
route                                  answer
=====================================  =========================================================
``GET /u2i/{user_id}?k=50``            movies for a raw MovieLens user id, rated movies excluded
``GET /i2i/{movie_id}?k=50``           movies most similar (cosine) to a raw movie id, itself excluded
``GET /healthz``                       200 when Redis answers and vectors are loaded, else 503
``GET /stats``                         vectors loaded, last refresh, lag behind the learner, errors
``GET /docs``, ``GET /openapi.json``   OpenAPI documentation
=====================================  =========================================================

Status codes: 404 unknown user (no vector, no rated movies, not in the prepared data) or movie without
a vector; 422 a non-integer or negative id, or ``k`` outside 1..1000 or not an integer; 503 Redis
unreachable (recovers by itself) or nothing loaded yet.  A known user without a vector gets the
popularity fallback with ``"source": "popularity"``.

The endpoints are ``async`` and call the store directly: the work is ~0.1-1 ms of numpy plus one or two
loopback Redis round trips, cheaper than a thread-pool hop; a Redis outage is detected once and then
answered with an immediate 503 (see :mod:`recall_api.store`), so the event loop is never held for long.
Answers are serialized with orjson when installed (skipping response-model validation; the models
below document the schema).
"""

from __future__ import annotations

import contextlib
import json

from fastapi import FastAPI, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from recall_api.catalog import Catalog
from recall_api.store import Answer, NotFound, RecallStore, Unavailable

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover - orjson is optional
    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

MAX_K = 1000
DEFAULT_K = 50


class RecallItem(BaseModel):
    """One recommended movie."""

    movie_id: int = Field(description="raw MovieLens movie id")
    title: str | None = Field(description="title from movies.csv (null when the catalog lacks it)")
    genres: list[str] = Field(description="genres from movies.csv")
    score: float = Field(description="model: q_u·v_i + b_i (u2i) or cosine (i2i); popularity: positive events")


class RecallAnswer(BaseModel):
    """A ranked answer."""

    query: str = Field(description="'u2i' or 'i2i'")
    id: int = Field(description="the raw user id (u2i) or movie id (i2i) asked about")
    k: int
    source: str = Field(description="'model' or 'popularity' (fallback for a user without a vector)")
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
    """JSON bytes of an answer with titles and genres."""
    movies = catalog.movies
    items = []
    for m, s in zip(answer.movies, answer.scores):
        entry = movies.get(m)
        items.append({"movie_id": m, "title": entry.title if entry else None,
                      "genres": entry.genres if entry else (), "score": s})
    return _dumps({"query": query, "id": id_, "k": k, "source": answer.source, "items": items})


def create_app(store: RecallStore, manage_store: bool = True) -> FastAPI:
    """The FastAPI application over ``store``.

    Args:
        store: the recall store (its catalog names the movies).
        manage_store: start the store's refresh thread when the app starts and stop it at shutdown.
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
                              "refreshed incrementally from the learner's activity log.")
    errors = {404: {"model": Problem}, 422: {"description": "bad id or k"}, 503: {"model": Problem}}
    catalog = store.catalog

    def answer(query: str, fn, id_: int, k: int) -> Response:
        try:
            ans = fn(id_, k)
        except NotFound as exc:
            return _error(404, str(exc))
        except Unavailable as exc:
            return _error(503, str(exc))
        return JSONBytes(render(query, id_, k, ans, catalog))

    @app.get("/u2i/{user_id}", response_model=RecallAnswer, responses=errors, summary="movies for a user")
    async def u2i(user_id: int = Path(ge=0, description="raw MovieLens user id"),
                  k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="how many movies (1..1000)")):
        """Top-k movies by ``q_u·v_i + b_i``, excluding movies the user rated; popularity for a user
        without a vector."""
        return answer("u2i", store.u2i, user_id, k)

    @app.get("/i2i/{movie_id}", response_model=RecallAnswer, responses=errors, summary="similar movies")
    async def i2i(movie_id: int = Path(ge=0, description="raw MovieLens movie id"),
                  k: int = Query(DEFAULT_K, ge=1, le=MAX_K, description="how many movies (1..1000)")):
        """Top-k movies by cosine similarity of the item vectors, excluding the movie itself."""
        return answer("i2i", store.i2i, movie_id, k)

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

    return app
