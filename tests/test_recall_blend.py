"""The served multi-channel u2i score and the item channel's i2i over real HTTP and a real redis-server.

The namespace holds LFM rows (random vectors, biases, counts, μ), ratings in the activity log, and an item channel
written by the code ``python -m learner.items`` writes with (:class:`learner.items.ChannelCounter`:
:func:`learner.covisit.chunk_update` on chunks of the rating stream, neighbour lists kept by
:class:`learner.covisit.NeighbourLists`, applied with :meth:`ps_redis.covisit.Covisit.apply`, fenced).  Every
answer is checked against a float64 brute force of the contract's formula computed from what Redis holds
(tests/_recall_util.brute_served, brute_covisit_i2i) — the neighbour strings, the degree hash, the bucket and
all-time popularity hashes, the users' recent strings and the
contract — never from the service's own arrays or :mod:`lfm_stream.scoring`.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from learner.items import ChannelCounter
from lfm_stream.scoring import ScoreContract, contract_key
from ps_redis import Fence, ParameterServer
from ps_redis.activity import ActivityLog
from ps_redis.covisit import Covisit
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from recall_api.catalog import Movie
from recall_api.protocol import fast_protocol
from tests._recall_util import (ChannelState, ServerThread, brute_covisit_i2i, brute_i2i, brute_served,
                                check_tied_ranking, co_tag, ps_items, push_items, push_users, record, set_mu, user_row,
                                wait_for, write_contract)

DIM = 8
RATED = np.arange(60) * 3 + 1  # raw movies in the stream
COLD = np.arange(5) * 3 + 500  # movies with an LFM row, never rated: no co-occurrences
RATERS = np.arange(1, 25)  # users in the stream
WITH_ROW = np.r_[np.arange(1, 19), [31, 32]]  # users with an LFM row (31, 32: no event in the stream)
CATALOG_USERS = set(range(1, 31))  # 25..30: known only from the catalog
# the channel parameters the item channel counts with (as learner.items reads them from the contract)
WRITER = ScoreContract(dim=DIM, pair_window=4, recent_items=5, neighbors=3, bucket_events=40, popularity_window=1)


class ChannelWriter:
    """The item-channel worker's writes (learner.items.ChannelCounter, the worker's own) without Kafka."""

    def __init__(self, ps: ParameterServer, contract: ScoreContract):
        self.ps = ps
        self.counter = ChannelCounter(Covisit(ps), contract)

    def apply(self, users, movies, labels) -> None:
        fence = Fence(f"items-{self.ps.namespace}", "ratings", {0: self.counter.events + len(users)})
        assert self.counter.write(users, movies, labels, fence)


def rating_stream(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, movies, labels) in stream order: 12-20 distinct movies per user, drawn with a long-tailed popularity,
    the users' ratings interleaved by random times."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(len(RATED)) + 3.0)
    p /= p.sum()
    users, movies, times = [], [], []
    for u in RATERS.tolist():
        n = int(rng.integers(12, 21))
        users += [u] * n
        movies += rng.choice(RATED, size=n, replace=False, p=p).tolist()
        times += np.sort(rng.random(n)).tolist()
    order = np.argsort(times, kind="stable")
    users, movies = np.array(users)[order], np.array(movies)[order]
    return users, movies, (rng.random(len(users)) < 0.6).astype(np.float32)


@pytest.fixture(scope="module")
def world(redis_url):
    ns = f"rb{uuid.uuid4().hex[:8]}"
    ps = ParameterServer.get(redis_url, ns, dim=DIM)
    rng = np.random.default_rng(11)
    movies = np.r_[RATED, COLD]
    push_items(ps, movies, rng.normal(size=(len(movies), DIM)), rng.normal(scale=0.5, size=len(movies)),
               count=rng.integers(0, 200, len(movies)))
    push_users(ps, WITH_ROW, rng.normal(size=(len(WITH_ROW), DIM)), rng.normal(scale=0.5, size=len(WITH_ROW)))
    set_mu(ps, -0.3)
    users, rated, labels = rating_stream(5)
    record(ActivityLog(ps), users, rated, labels)  # the learner's seen sets
    writer = ChannelWriter(ps, WRITER)
    for lo in range(0, len(users), 97):  # chunks, as the worker's polls
        writer.apply(users[lo:lo + 97], rated[lo:lo + 97], labels[lo:lo + 97])
    write_contract(ps, WRITER)  # the default weights with the writer's parameters
    catalog = Catalog.from_movies({int(m): Movie(int(m), f"movie {m}", ()) for m in movies}, users=CATALOG_USERS)
    store = RecallStore(StoreConfig(redis_url, ns, dim=DIM, refresh_interval=0.05, channel_interval=0.2), catalog)
    with ServerThread(create_app(store), http=fast_protocol(store)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout=30)
        yield dict(ps=ps, client=client, store=store, writer=writer, url=redis_url, ns=ns, catalog=catalog,
                   stream=(users, rated, labels))


def served_contract(client) -> dict:
    return client.get("/stats").json()["channels"]["contract"]


def check_user(ps, client, user: int, items, state, k: int = 1000) -> str:
    """/u2i/{user}?k=k against the brute force; returns the answer's source."""
    reference, source = brute_served(ps, user, items, state)
    r = client.get(f"/u2i/{user}?k={k}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == source, (user, body["source"], source)
    check_tied_ranking(body["items"], reference, k)
    return source


def test_the_item_channel_state_is_there(world):
    """The state the other tests rank with is not trivial: trimmed neighbour lists, several buckets, recent lists."""
    ps = world["ps"]
    state = ChannelState.read(ps)
    lists = [state.neighbours(ps, m) for m in RATED.tolist()]
    stored = [ps.redis.get(f"{co_tag(ps.namespace)}:nb:{m}") for m in RATED.tolist()]
    assert max(len(v.split()) // 2 for v in stored if v) > WRITER.neighbors  # up to neighbor_hold kept, neighbors served
    assert sum(len(nb) == WRITER.neighbors for nb in lists) > 20
    assert state.latest_bucket == (len(world["stream"][0]) - 1) // WRITER.bucket_events >= 8
    assert sum(state.total.values()) == int(world["stream"][2].sum())
    recent = Covisit(ps).recent(RATERS)
    assert set(recent) == set(RATERS.tolist()) and all(len(m) == 5 for _, m in recent.values())
    assert not ps.redis.exists(f"{co_tag(ps.namespace)}:nb:{int(COLD[0])}")


def test_default_contract_u2i_matches_the_brute_force(world):
    """Every kind of user: LFM row and recent movies, recent movies only (source model), LFM row only, and known only
    from the catalog (the popularity of the latest bucket, source popularity)."""
    ps, client = world["ps"], world["client"]
    assert served_contract(client) == WRITER.__dict__
    assert client.get("/stats").json()["channels"]["contract_source"] == "redis"
    items, state = ps_items(ps), ChannelState.read(ps)
    sources = {}
    for u in sorted(set(RATERS.tolist()) | set(WITH_ROW.tolist()) | CATALOG_USERS):
        sources[u] = check_user(ps, client, u, items, state)
    assert {u for u, s in sources.items() if s == "popularity"} == set(range(25, 31))
    for u in (1, 19, 31, 27):  # the top 10 too (the fast path with a small k)
        check_user(ps, client, u, items, state, k=10)
    # the blend does rank: a user's answer is not one score for all, and users with other recent movies differ
    top = {u: [it["movie_id"] for it in client.get(f"/u2i/{u}?k=10").json()["items"]] for u in (1, 2, 3, 19, 20)}
    assert len({tuple(t) for t in top.values()}) == 5
    assert len({it["score"] for it in client.get("/u2i/19?k=30").json()["items"]}) > 10
    assert client.get("/u2i/999").status_code == 404  # no row, nothing rated or recent, not in the catalog


def test_every_channel_weighted(world):
    """A contract that weights the LFM channel too, with other channel parameters: read from Redis at the next
    channel rebuild, and the answers follow it (also the Faiss path: candidates of each channel, exact re-rank)."""
    ps, client = world["ps"], world["client"]
    mixed = WRITER.replace(lfm_weight=0.7, popularity_weight=0.3, covisit_eps=0.05, recent_min_weight=0.2,
                           popularity_total_weight=0.01, recent_items=3, neighbors=2, popularity_window=2)
    write_contract(ps, mixed)
    try:
        wait_for(lambda: served_contract(client) == mixed.__dict__, timeout=10)
        items, state = ps_items(ps), ChannelState.read(ps)
        assert state.contract["neighbors"] == 2
        for u in sorted(set(RATERS.tolist()) | set(WITH_ROW.tolist()) | {25, 30}):
            check_user(ps, client, u, items, state)
        faiss = RecallStore(StoreConfig(world["url"], world["ns"], dim=DIM, faiss=True, faiss_nprobe=64),
                            world["catalog"])
        assert faiss.refresh_once() and faiss.index is not None
        for u in (1, 7, 19, 31, 26):
            reference, source = brute_served(ps, u, items, state)
            got = faiss.u2i(u, 10)
            assert got.source == source
            check_tied_ranking([{"movie_id": m, "score": s} for m, s in zip(got.movies, got.scores)], reference, 10)
    finally:
        write_contract(ps, WRITER)
        wait_for(lambda: served_contract(client) == WRITER.__dict__, timeout=10)


def test_without_a_contract_the_defaults_are_served(world):
    ps, client = world["ps"], world["client"]
    ps.redis.delete(contract_key(ps.namespace))
    try:
        wait_for(lambda: client.get("/stats").json()["channels"]["contract_source"] == "default", timeout=10)
        assert served_contract(client) == ScoreContract(dim=DIM).__dict__
        items, state = ps_items(ps), ChannelState.read(ps)
        assert state.contract == ScoreContract(dim=DIM).__dict__
        for u in (1, 5, 19, 24, 31, 28):
            check_user(ps, client, u, items, state)
    finally:
        write_contract(ps, WRITER)
        wait_for(lambda: served_contract(client) == WRITER.__dict__, timeout=10)


def test_i2i_covisit_matches_the_brute_force_and_falls_back_to_lfm(world):
    ps, client = world["ps"], world["client"]
    items, state = ps_items(ps), ChannelState.read(ps)
    with_pairs = 0
    for m in RATED.tolist():
        reference = brute_covisit_i2i(ps, m, items, state)
        if not reference:  # a tail movie nobody rated: the fallback, checked below
            assert client.get(f"/i2i/{m}").json()["source"] == "lfm"
            continue
        with_pairs += 1
        for k in (50, 2):
            body = client.get(f"/i2i/{m}?k={k}").json()
            assert body["source"] == "covisit" and m not in {it["movie_id"] for it in body["items"]}
            check_tied_ranking(body["items"], reference, k)
        assert client.get(f"/i2i/{m}?k=50&source=covisit").json() == client.get(f"/i2i/{m}?k=50").json()
    assert with_pairs > 40
    for m in (int(COLD[0]), int(COLD[3]), int(RATED[0])):
        lfm = client.get(f"/i2i/{m}?k=20&source=lfm").json()
        assert lfm["source"] == "lfm"
        expected, scores = brute_i2i(m, items.raw, items.vec, 20)
        check_tied_ranking(lfm["items"], {mv: s for mv, s in zip(items.raw.tolist(), scores.tolist()) if mv != m}, 20)
        assert [it["movie_id"] for it in lfm["items"]][:3] == expected[:3]
        if m in COLD:  # no co-occurrences: the default source falls back to the item vectors
            assert client.get(f"/i2i/{m}?k=20").json() == lfm
    assert client.get(f"/i2i/{int(RATED[0])}?source=als").status_code == 422


def test_user_context_reads_row_rated_and_recent(world):
    import asyncio

    ps, store = world["ps"], world["store"]
    other = RecallStore(store.config, store.catalog)  # its asyncio client binds to this test's event loop
    other.refresh_once()
    users = [1, 19, 31, 27]

    async def reads():
        return [await other.user_context_async(u) for u in users]

    for u, ctx in zip(users, asyncio.run(reads())):
        value = ps.redis.get(f"{co_tag(ps.namespace)}:recent:{u}")
        want = [int(x) for x in value.split()] if value is not None else None
        row = user_row(ps, u)
        for got_row, rated, recent in (store.user_context(u), ctx):
            assert (got_row is None) == (row is None)
            if row is not None:
                np.testing.assert_array_equal(got_row.vec, row[0])
                assert got_row.bias == row[1]
            assert rated == {int(m) for m in ps.redis.smembers(f"{ps.keys.act_seen_prefix}{u}")}
            if want is None:
                assert recent is None
            else:
                assert recent[0] == want[0] and recent[1].tolist() == want[1:]


def test_new_events_reach_cached_users(world):
    """The worker writes more of the stream: a user's recent string changes (a tracked key: the cached context is
    dropped) and the channel arrays are rebuilt; the answers converge on the brute force of the new state."""
    ps, client, writer = world["ps"], world["client"], world["writer"]
    items = ps_items(ps)
    first = client.get("/u2i/19?k=1000").json()
    assert client.get("/u2i/19?k=1000").json() == first  # cached now
    rng = np.random.default_rng(1)
    seen = {int(m) for m in ps.redis.smembers(f"{ps.keys.act_seen_prefix}19")}
    fresh = [m for m in RATED.tolist() if m not in seen][:4]
    users = np.array([19, 20, 19, 21, 19, 19])
    movies = np.array([fresh[0], int(RATED[5]), fresh[1], int(RATED[9]), fresh[2], fresh[3]])
    labels = (rng.random(6) < 0.6).astype(np.float32)
    writer.apply(users, movies, labels)
    record(ActivityLog(ps), users, movies, labels)

    def converged() -> bool:
        state = ChannelState.read(ps)
        try:
            for u in (19, 20, 21, 22, 26):
                check_user(ps, client, u, items, state)
        except AssertionError:
            return False
        return True

    wait_for(converged, timeout=15, interval=0.1)
    assert client.get("/u2i/19?k=1000").json() != first
