"""Helpers of the recall tests and benchmarks: fill a PS with known vectors, run the API on a free port, and the
float64 reference scores the answers are checked against.

Vectors are written through the PS API itself (``push`` in assign mode) and the activity log through
``ActivityLog.record`` — real Redis, nothing stubbed.  The references (:func:`brute_u2i`, :func:`brute_served`,
:func:`brute_covisit_i2i`) recompute the served scores from what is in Redis with their own float64 code: they
never call :mod:`lfm_stream.scoring`, the module the service ranks with.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import uvicorn

from lfm_stream.hashing import hash_movie_ids, hash_user_ids, user_hash
from lfm_stream.scoring import ScoreContract, contract_key
from lfm_local.stack import free_port
from ps_redis import ParameterServer, Update
from ps_redis.activity import ActivityLog


@dataclass
class Populated:
    """What :func:`populate` wrote (raw ids, vectors, biases, counts, ratings)."""

    movies: np.ndarray  # raw movie ids
    movie_vec: np.ndarray
    movie_bias: np.ndarray
    movie_count: np.ndarray  # the rows' event counts n_i
    users: np.ndarray  # raw user ids with a vector
    user_vec: np.ndarray
    user_bias: np.ndarray
    mu: float  # the global row's bias
    seen: dict[int, set[int]]  # raw user -> raw movies rated


class Items(NamedTuple):
    """Every item row of a PS namespace, sorted by raw id (what the recall service ranks)."""

    raw: np.ndarray
    vec: np.ndarray
    bias: np.ndarray
    count: np.ndarray


def push_items(ps: ParameterServer, raw_movies: np.ndarray, vec: np.ndarray, bias: np.ndarray,
               store_raw: bool = True, count=None) -> None:
    """Assign item rows (``raw`` stored via a create-pull first when ``store_raw``); ``count`` is added to the rows'
    event counts (default 1 each: an assign push adds its count)."""
    ids = hash_movie_ids(np.asarray(raw_movies))
    if store_raw:
        ps.pull("item", ids, raw_ids=np.asarray(raw_movies), create=True)
    n = len(ids)
    count = np.ones(n, np.int64) if count is None else np.asarray(count, np.int64)
    ps.push({"item": Update(ids, vec=vec.astype(np.float32), bias=bias.astype(np.float32), count=count)},
            mode="assign")


def push_users(ps: ParameterServer, raw_users: np.ndarray, vec: np.ndarray, bias=None) -> None:
    """Assign user rows (``bias`` default 0)."""
    ids = hash_user_ids(np.asarray(raw_users))
    bias = np.zeros(len(ids), np.float32) if bias is None else np.asarray(bias, np.float32)
    ps.pull("user", ids, raw_ids=np.asarray(raw_users), create=True)
    ps.push({"user": Update(ids, vec=vec.astype(np.float32), bias=bias, count=np.ones(len(ids), np.int64))},
            mode="assign")


def set_mu(ps: ParameterServer, mu: float) -> None:
    """Assign the global offset μ (the ``global`` table's row 0 bias), as the learner keeps it."""
    ps.push({"global": Update(np.zeros(1, np.int64), bias=np.float32([mu]))}, mode="assign")


def write_contract(ps: ParameterServer, contract: ScoreContract) -> None:
    """Put ``contract`` at the namespace's contract key, as the learner does when it starts."""
    ps.redis.set(contract_key(ps.namespace), contract.to_json())


def lfm_only(dim: int) -> ScoreContract:
    """The contract whose u2i score is the LFM channel alone."""
    return ScoreContract(dim=dim, lfm_weight=1.0, covisit_weight=0.0, popularity_weight=0.0)


def record(log: ActivityLog, raw_users, raw_movies, labels=None, ts: int = 1_000_000) -> str | None:
    """Record rating events (and their items as changed) in the activity log."""
    ru = np.asarray(raw_users, np.int64)
    rm = np.asarray(raw_movies, np.int64)
    lab = np.ones(len(ru), np.float32) if labels is None else np.asarray(labels, np.float32)
    return log.record(hash_user_ids(ru), ru, rm, hash_movie_ids(rm), lab, np.full(len(ru), ts, np.int64))


def populate(ps: ParameterServer, movies: np.ndarray, users: np.ndarray, seed: int = 0,
             ratings_per_user: int = 15) -> Populated:
    """Random vectors, biases and counts for raw ``movies`` and ``users``, a global offset μ and random ratings,
    written to the PS and the log."""
    rng = np.random.default_rng(seed)
    more = np.random.default_rng([seed, 1])  # counts and biases beyond the first version's draws
    d = ps.dim
    movies = np.asarray(movies, np.int64)
    users = np.asarray(users, np.int64)
    mvec = rng.normal(size=(len(movies), d)).astype(np.float32)
    mbias = rng.normal(scale=0.5, size=len(movies)).astype(np.float32)
    mcount = more.integers(0, 300, len(movies))
    push_items(ps, movies, mvec, mbias, count=mcount)
    uvec = rng.normal(size=(len(users), d)).astype(np.float32)
    ubias = more.normal(scale=0.5, size=len(users)).astype(np.float32)
    push_users(ps, users, uvec, ubias)
    mu = float(np.float32(more.normal(scale=0.5)))
    set_mu(ps, mu)
    log = ActivityLog(ps)
    seen: dict[int, set[int]] = {}
    ru, rm = [], []
    for u in users.tolist():
        picked = rng.choice(movies, size=min(ratings_per_user, len(movies)), replace=False)
        seen[u] = set(picked.tolist())
        ru += [u] * len(picked)
        rm += picked.tolist()
    record(log, ru, rm, labels=(rng.random(len(ru)) < 0.6).astype(np.float32))
    return Populated(movies, mvec, mbias, mcount, users, uvec, ubias, mu, seen)


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


# ------------------------------------------------------------------------------------------ references
def ps_items(ps: ParameterServer) -> Items:
    """Every item row in the PS (raw ids, vectors, biases, counts), sorted by raw id."""
    raw, vec, bias, count = [], [], [], []
    for rows in ps.scan("item"):
        raw.append(rows.raw), vec.append(rows.vec), bias.append(rows.bias), count.append(rows.count)
    raw, vec, bias, count = (np.concatenate(a) for a in (raw, vec, bias, count))
    order = np.argsort(raw)
    return Items(raw[order], vec[order], bias[order], count[order])


def read_mu(ps: ParameterServer) -> float:
    """μ: the bias of the ``global`` row (0 without one)."""
    g = ps.pull("global", np.zeros(1, np.int64), create=False)
    return float(g.bias[0]) if g.found[0] else 0.0


def user_row(ps: ParameterServer, user: int) -> tuple[np.ndarray, float] | None:
    """(q_u, b_u) of a raw user id, None without a row."""
    rows = ps.pull("user", np.array([user_hash(user)]), create=False)
    return (rows.vec[0], float(rows.bias[0])) if rows.found[0] else None


def lfm_reference(q: np.ndarray, b_u: float, mu: float, items: Items) -> np.ndarray:
    """float64 ``log σ(q·v_i + b_u + b_i + μ) + log(1 + n_i)`` of every item row."""
    x = items.vec.astype(np.float64) @ np.asarray(q, np.float64) + b_u + items.bias.astype(np.float64) + mu
    return -np.logaddexp(0.0, -x) + np.log1p(items.count.astype(np.float64))


def brute_u2i(q: np.ndarray, b_u: float, mu: float, items: Items, exclude: set[int],
              k: int) -> tuple[list[int], np.ndarray]:
    """Reference u2i of the LFM-only contract in float64: top-k raw movie ids outside ``exclude``, and all scores."""
    s = lfm_reference(q, b_u, mu, items)
    keep = np.array([m not in exclude for m in items.raw.tolist()])
    order = [i for i in np.argsort(-s, kind="stable") if keep[i]][:k]
    return items.raw[order].tolist(), s


def brute_i2i(movie: int, movies: np.ndarray, vec: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Reference i2i in float64: top-k raw movie ids by cosine, the movie itself excluded."""
    v = vec.astype(np.float64)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    j = int(np.flatnonzero(movies == movie)[0])
    s = unit @ unit[j]
    order = [i for i in np.argsort(-s, kind="stable") if i != j][:k]
    return movies[order].tolist(), s


def check_ranking(items: list[dict], expected_ids: list[int], all_scores: np.ndarray, movies: np.ndarray,
                  tol: float = 1e-4) -> None:
    """Returned scores equal the reference scores of the returned movies and the reference top-k scores.

    (Ids are compared through scores so a float32/float64 near-tie may swap places without failing.)
    """
    got_ids = [it["movie_id"] for it in items]
    got_scores = np.array([it["score"] for it in items])
    index = {m: i for i, m in enumerate(movies.tolist())}
    np.testing.assert_allclose(got_scores, all_scores[[index[m] for m in got_ids]], rtol=tol, atol=tol)
    np.testing.assert_allclose(got_scores, all_scores[[index[m] for m in expected_ids]], rtol=tol, atol=tol)
    assert len(set(got_ids)) == len(got_ids)
    assert sum(a != b for a, b in zip(got_ids, expected_ids)) <= 2  # at most one adjacent near-tie swap


def check_tied_ranking(items: list[dict], reference: dict[int, float], k: int, tol: float = 1e-4) -> None:
    """An answer equals the top ``k`` of ``reference`` (raw movie → score of every movie that may be returned)
    where scores tie: each returned score is its movie's reference score, the scores are the reference's top-k
    scores in order, and every movie scoring clearly above the last returned one is returned.  (Blended scores
    tie often — movies with no co-occurrence and the same popularity — and the service breaks ties by row.)"""
    got_ids = [it["movie_id"] for it in items]
    got = np.array([it["score"] for it in items], np.float64)
    assert len(set(got_ids)) == len(got_ids), got_ids
    assert set(got_ids) <= set(reference), sorted(set(got_ids) - set(reference))
    assert len(got_ids) == min(k, len(reference))
    np.testing.assert_allclose(got, [reference[m] for m in got_ids], rtol=tol, atol=tol)
    top = np.sort(np.fromiter(reference.values(), np.float64))[::-1][:len(got_ids)]
    np.testing.assert_allclose(got, top, rtol=tol, atol=tol)
    if len(got_ids):
        floor = got[-1] + tol * (1 + abs(got[-1]))
        assert {m for m, s in reference.items() if s > floor} <= set(got_ids)


@dataclass
class ChannelState:
    """The item channel of a namespace as stored in Redis (``{<ns>:@co}`` keys), parsed by the tests."""

    contract: dict  # the score contract's fields (the defaults when the namespace holds none)
    degree: dict[int, int]  # D of every movie with pairs
    latest_bucket: int | None
    total: dict[int, int]  # positives of all time (the pop:all hash)

    @classmethod
    def read(cls, ps: ParameterServer) -> "ChannelState":
        r, tag = ps.redis, co_tag(ps.namespace)
        raw = r.get(contract_key(ps.namespace))
        contract = json.loads(raw if raw is not None else ScoreContract(dim=ps.dim).to_json())
        latest = r.hget(f"{tag}:meta", "bucket")
        return cls(contract, _int_hash(r.hgetall(f"{tag}:deg")), None if latest is None else int(latest),
                   _int_hash(r.hgetall(f"{tag}:pop:all")))

    def neighbours(self, ps: ParameterServer, movie: int) -> list[tuple[int, int]]:
        """The first ``neighbors`` (movie, C[j, i]) pairs of the stored string ``"<id> <count> …"`` of ``movie``."""
        value = ps.redis.get(f"{co_tag(ps.namespace)}:nb:{int(movie)}")
        flat = [int(x) for x in value.split()] if value is not None else []
        return list(zip(flat[0::2], flat[1::2]))[:self.contract["neighbors"]]

    def window(self, ps: ParameterServer, bucket: int) -> dict[int, int]:
        """Positives per movie in the buckets ``bucket ± popularity_window`` (one HGETALL per bucket)."""
        out: dict[int, int] = {}
        w = self.contract["popularity_window"]
        for b in range(bucket - w, bucket + w + 1):
            for m, n in _int_hash(ps.redis.hgetall(f"{co_tag(ps.namespace)}:pop:{b}")).items():
                out[m] = out.get(m, 0) + n
        return out


def co_tag(namespace: str) -> str:
    """The hash tag of the item channel's keys."""
    return "{" + f"{namespace}:@co" + "}"


def _int_hash(h: dict) -> dict[int, int]:
    return {int(k): int(v) for k, v in h.items()}


def seen_of(ps: ParameterServer, user: int) -> set[int]:
    """The raw movies the activity log recorded for ``user`` (its seen set, read with SMEMBERS)."""
    return {int(m) for m in ps.redis.smembers(f"{ps.keys.act_seen_prefix}{int(user)}")}


def brute_served(ps: ParameterServer, user: int, items: Items, state: ChannelState | None = None
                 ) -> tuple[dict[int, float], str]:
    """The served u2i score of ``user`` over every item row they did not rate, in float64 from what Redis holds:

        s(u, i) = w_lfm · (log σ(q_u·v_i + b_u + b_i + μ) + log(1 + n_i))
                + w_co · log(eps + Σ_j r_j · C[j, i] / √((D_j + 1)(D_i + 1)))
                + w_pop · log(smooth + n_k(i) + total_weight · n(i))

    (j: the last ``recent_items`` movies of the user's recent string, weights linear from ``recent_min_weight`` to
    1; C[j, i] from the first ``neighbors`` pairs of j's list; n_k(i): positives in the buckets within
    ``popularity_window`` of the bucket of the user's last event, or of the latest bucket for a user without one;
    n(i): the all-time hash; the LFM term only for a user with a row.)

    Returns:
        (raw movie → score, the expected answer source: "model" with a row or recent movies, else "popularity").
    """
    state = state or ChannelState.read(ps)
    c = state.contract
    row = user_row(ps, user)
    value = ps.redis.get(f"{co_tag(ps.namespace)}:recent:{int(user)}")
    recent = [int(x) for x in value.split()] if value is not None else None
    bucket, movies = (recent[0], recent[1:]) if recent else (state.latest_bucket or 0, [])
    movies = movies[-c["recent_items"]:] if movies else []
    n = len(movies)
    weights = [1.0] if n == 1 else [c["recent_min_weight"] + (1 - c["recent_min_weight"]) * t / (n - 1)
                                    for t in range(n)]
    covisit: dict[int, float] = {}
    for j, r_j in zip(movies, weights):
        d_j = state.degree.get(j, 0)
        for i, c_ji in state.neighbours(ps, j):
            covisit[i] = covisit.get(i, 0.0) + r_j * c_ji / np.sqrt((d_j + 1.0) * (state.degree.get(i, 0) + 1.0))
    window = state.window(ps, bucket)
    lfm = lfm_reference(row[0], row[1], read_mu(ps), items) if row is not None else None
    seen = seen_of(ps, user)
    out = {}
    for pos, i in enumerate(items.raw.tolist()):
        if i in seen:
            continue
        s = c["covisit_weight"] * np.log(c["covisit_eps"] + covisit.get(i, 0.0))
        s += c["popularity_weight"] * np.log(c["popularity_smooth"] + window.get(i, 0)
                                             + c["popularity_total_weight"] * state.total.get(i, 0))
        if lfm is not None:
            s += c["lfm_weight"] * lfm[pos]
        out[i] = float(s)
    return out, "model" if row is not None or recent is not None else "popularity"


def brute_covisit_i2i(ps: ParameterServer, movie: int, items: Items, state: ChannelState | None = None
                      ) -> dict[int, float]:
    """i2i of the item channel in float64: ``C[j, i] / √((D_j + 1)(D_i + 1))`` over the first ``neighbors`` pairs of
    the movie's list, for neighbours with an item row (empty: no co-occurrences)."""
    state = state or ChannelState.read(ps)
    rows = set(items.raw.tolist())
    d_j = state.degree.get(int(movie), 0)
    return {i: c / np.sqrt((d_j + 1.0) * (state.degree.get(i, 0) + 1.0))
            for i, c in state.neighbours(ps, movie) if i in rows and i != movie}
