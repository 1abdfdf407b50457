"""Helpers of the recall tests and benchmarks: fill a PS with known vectors, run the API on a free port.

Vectors are written through the PS API itself (``push`` in assign mode) and the activity log through
``ActivityLog.record`` — real Redis, nothing stubbed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import uvicorn

from lfm_stream.hashing import hash_movie_ids, hash_user_ids
from lfm_stream.stack import free_port
from ps_redis import ParameterServer, Update
from ps_redis.activity import ActivityLog


@dataclass
class Populated:
    """What :func:`populate` wrote (raw ids, vectors, biases, ratings)."""

    movies: np.ndarray  # raw movie ids
    movie_vec: np.ndarray
    movie_bias: np.ndarray
    users: np.ndarray  # raw user ids with a vector
    user_vec: np.ndarray
    seen: dict[int, set[int]]  # raw user -> raw movies rated


def push_items(ps: ParameterServer, raw_movies: np.ndarray, vec: np.ndarray, bias: np.ndarray,
               store_raw: bool = True) -> None:
    """Assign item rows (``raw`` stored via a create-pull first when ``store_raw``)."""
    ids = hash_movie_ids(np.asarray(raw_movies))
    if store_raw:
        ps.pull("item", ids, raw_ids=np.asarray(raw_movies), create=True)
    n = len(ids)
    ps.push({"item": Update(ids, vec=vec.astype(np.float32), bias=bias.astype(np.float32),
                            count=np.ones(n, np.int64))}, mode="assign")


def push_users(ps: ParameterServer, raw_users: np.ndarray, vec: np.ndarray) -> None:
    """Assign user rows."""
    ids = hash_user_ids(np.asarray(raw_users))
    ps.pull("user", ids, raw_ids=np.asarray(raw_users), create=True)
    ps.push({"user": Update(ids, vec=vec.astype(np.float32), bias=np.zeros(len(ids), np.float32),
                            count=np.ones(len(ids), np.int64))}, mode="assign")


def record(log: ActivityLog, raw_users, raw_movies, labels=None, ts: int = 1_000_000) -> str | None:
    """Record rating events (and their items as changed) in the activity log."""
    ru = np.asarray(raw_users, np.int64)
    rm = np.asarray(raw_movies, np.int64)
    lab = np.ones(len(ru), np.float32) if labels is None else np.asarray(labels, np.float32)
    return log.record(hash_user_ids(ru), ru, rm, hash_movie_ids(rm), lab, np.full(len(ru), ts, np.int64))


def populate(ps: ParameterServer, movies: np.ndarray, users: np.ndarray, seed: int = 0,
             ratings_per_user: int = 15) -> Populated:
    """Random vectors for raw ``movies`` and ``users`` and random ratings, written to the PS and the log."""
    rng = np.random.default_rng(seed)
    d = ps.dim
    movies = np.asarray(movies, np.int64)
    users = np.asarray(users, np.int64)
    mvec = rng.normal(size=(len(movies), d)).astype(np.float32)
    mbias = rng.normal(scale=0.5, size=len(movies)).astype(np.float32)
    push_items(ps, movies, mvec, mbias)
    uvec = rng.normal(size=(len(users), d)).astype(np.float32)
    push_users(ps, users, uvec)
    log = ActivityLog(ps)
    seen: dict[int, set[int]] = {}
    ru, rm = [], []
    for u in users.tolist():
        picked = rng.choice(movies, size=min(ratings_per_user, len(movies)), replace=False)
        seen[u] = set(picked.tolist())
        ru += [u] * len(picked)
        rm += picked.tolist()
    record(log, ru, rm, labels=(rng.random(len(ru)) < 0.6).astype(np.float32))
    return Populated(movies, mvec, mbias, users, uvec, seen)


class ServerThread:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread (a real HTTP server); ``http``: uvicorn's
    HTTP protocol (e.g. :func:`recall_api.protocol.fast_protocol`, as ``python -m recall_api`` serves)."""

    def __init__(self, app, port: int | None = None, http="auto"):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on", http=http))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate()`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def brute_u2i(user_vec: np.ndarray, movies: np.ndarray, vec: np.ndarray, bias: np.ndarray,
              exclude: set[int], k: int) -> tuple[list[int], np.ndarray]:
    """Reference u2i in float64: top-k raw movie ids by ``q·v + b`` outside ``exclude``, and all scores."""
    s = vec.astype(np.float64) @ user_vec.astype(np.float64) + bias.astype(np.float64)
    keep = np.array([m not in exclude for m in movies.tolist()])
    order = [i for i in np.argsort(-s, kind="stable") if keep[i]][:k]
    return movies[order].tolist(), s


def brute_i2i(movie: int, movies: np.ndarray, vec: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Reference i2i in float64: top-k raw movie ids by cosine, the movie itself excluded."""
    v = vec.astype(np.float64)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    j = int(np.flatnonzero(movies == movie)[0])
    s = unit @ unit[j]
    order = [i for i in np.argsort(-s, kind="stable") if i != j][:k]
    return movies[order].tolist(), s
