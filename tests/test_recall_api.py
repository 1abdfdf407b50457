"""The recall service over real HTTP (uvicorn on a free port) and a real Redis PS.

Vectors and ratings are written through the PS API (assign pushes, ``ActivityLog.record``); the namespace holds an
LFM-only score contract (``lfm_weight`` 1, the other channels off) and no item channel, so u2i answers are checked
against a float64 brute force of ``log σ(q·v + b_u + b_i + μ) + log(1 + n_i)`` over the rows read back from the PS,
and i2i (``?source=lfm``, and the default ``covisit`` falling back to it) against cosine.  The blended score with
the item channel is tested in tests/test_recall_blend.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from lfm_stream.hashing import hash_movie_ids, user_hash
from lfm_stream.scoring import ScoreContract
from lfm_local.stack import RedisServer
from producer.prepare import main as prepare_main
from ps_redis import ParameterServer
from ps_redis.activity import ActivityLog
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from tests._recall_util import (ServerThread, brute_i2i, brute_served, brute_u2i, check_ranking, check_tied_ranking,
                                lfm_only, populate, ps_items, push_items, push_users, read_mu, record, user_row,
                                wait_for, write_contract)

DIM = 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recall-prepared") / "data"
    assert prepare_main(["--synthetic", "20000", "--out", str(out), "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def world(redis_url, prepared):
    """A populated namespace and the API serving it."""
    catalog = Catalog.load(prepared)
    movies = np.array(sorted(catalog.movies))
    users = np.array(sorted(catalog.users))
    ns = f"rc{uuid.uuid4().hex[:8]}"
    ps = ParameterServer.get(redis_url, ns, dim=DIM)
    with_vec = users[:-10]
    P = populate(ps, movies[:-5], with_vec, seed=1, ratings_per_user=40)  # last 5 movies: no vector
    write_contract(ps, lfm_only(DIM))
    log = ActivityLog(ps)
    record(log, [int(users[-1])] * 3, movies[:3], labels=[1, 1, 0])  # rated, but no vector yet
    store = RecallStore(StoreConfig(redis_url, ns, dim=DIM, refresh_interval=0.05), catalog)
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield dict(ps=ps, log=log, P=P, catalog=catalog, movies=movies, users=users, client=client,
                   store=store, ns=ns, url=redis_url)


def test_u2i_matches_brute_force_and_excludes_seen(world):
    ps, P, client = world["ps"], world["P"], world["client"]
    items = ps_items(ps)
    raw = items.raw
    assert raw.tolist() == sorted(P.movies.tolist())
    mu = read_mu(ps)
    assert mu == P.mu != 0 and len(set(items.count.tolist())) > 50  # μ and n_i are part of the score
    assert client.get("/stats").json()["channels"]["contract"]["lfm_weight"] == 1.0  # the contract in Redis
    for u in P.users[:12].tolist():
        q, b_u = user_row(ps, u)
        assert b_u != 0
        expected, scores = brute_u2i(q, b_u, mu, items, P.seen[u], 25)
        r = client.get(f"/u2i/{u}", params={"k": 25})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["source"] == "model" and body["query"] == "u2i" and body["id"] == u and body["k"] == 25
        assert len(body["items"]) == 25
        check_ranking(body["items"], expected, scores, raw)
        first = body["items"][0]
        movie = world["catalog"].movie(first["movie_id"])
        assert first["title"] == movie.title and first["genres"] == list(movie.genres)


def test_seen_movies_never_come_back(world):
    P, client = world["P"], world["client"]
    for u in P.users[:25].tolist():
        body = client.get(f"/u2i/{u}", params={"k": 1000}).json()
        got = {it["movie_id"] for it in body["items"]}
        assert not got & P.seen[u]
        assert len(got) == min(1000, len(P.movies) - len(P.seen[u]))


def test_i2i_cosine_matches_brute_force(world):
    ps, client = world["ps"], world["client"]
    raw, vec, _, _ = ps_items(ps)
    for m in raw[::97][:10].tolist():
        expected, scores = brute_i2i(m, raw, vec, 30)
        body = client.get(f"/i2i/{m}?k=30&source=lfm").json()
        assert body["source"] == "lfm" and len(body["items"]) == 30
        assert m not in [it["movie_id"] for it in body["items"]]
        check_ranking(body["items"], expected, scores, raw)
        assert all(-1.0001 <= it["score"] <= 1.0001 for it in body["items"])
        # the default source is the item channel; a movie without co-occurrences falls back to the vectors
        assert client.get(f"/i2i/{m}?k=30").json() == body


def test_popularity_fallback_for_known_users_without_vector(world):
    """Users with no row and no recent movies get the contract's score without the LFM term (source popularity):
    under this namespace's LFM-only contract, the same score for every movie they did not rate (the popularity
    ranking itself is checked with the item channel in tests/test_recall_blend.py)."""
    ps, client, users, movies = world["ps"], world["client"], world["users"], world["movies"]
    items = ps_items(ps)
    plain = int(users[-5])  # in the prepared data, no vector, nothing rated
    rated = int(users[-1])  # rated movies[:3] (recorded), no vector: fallback without its rated movies
    for u in (plain, rated):
        body = client.get(f"/u2i/{u}?k=1000").json()
        reference, source = brute_served(ps, u, items)
        assert body["source"] == source == "popularity"
        check_tied_ranking(body["items"], reference, 1000)
        assert {it["score"] for it in body["items"]} == {0.0}
    assert not {it["movie_id"] for it in body["items"]} & set(movies[:3].tolist())  # the rated ones are left out


@pytest.mark.parametrize("path, status, needle", [
    ("/u2i/99999999", 404, "unknown user 99999999"),
    ("/i2i/99999999", 404, "unknown movie 99999999"),
    ("/u2i/abc", 422, "user_id"),
    ("/u2i/-3", 422, "user_id"),
    ("/u2i/1.5", 422, "user_id"),
    ("/i2i/xyz", 422, "movie_id"),
    ("/u2i/1?k=0", 422, "k"),
    ("/u2i/1?k=-1", 422, "k"),
    ("/u2i/1?k=1001", 422, "k"),
    ("/u2i/1?k=ten", 422, "k"),
    ("/u2i/1?k=2.5", 422, "k"),
    ("/i2i/1?k=0", 422, "k"),
    ("/i2i/1?k=5000", 422, "k"),
    # strict ids and k: plain ASCII digits only (int() would read "1_0" as 10, "+5" and " 5" as 5)
    ("/u2i/1_0", 422, "user_id"),
    ("/u2i/+5", 422, "user_id"),
    ("/u2i/%205", 422, "user_id"),
    ("/u2i/5.0", 422, "user_id"),
    ("/u2i/1234567890123456789", 422, "user_id"),
    ("/i2i/1_0", 422, "movie_id"),
    ("/i2i/%2B1", 422, "movie_id"),
    ("/u2i/1?k=1_0", 422, "k"),
    ("/i2i/1?k=+5", 422, "k"),
    ("/i2i/1?k=5.0", 422, "k"),
])
def test_bad_input(world, path, status, needle):
    r = world["client"].get(path)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_movie_in_catalog_without_vector_is_404(world):
    m = int(world["movies"][-1])
    r = world["client"].get(f"/i2i/{m}")
    assert r.status_code == 404 and "has no vector yet" in r.json()["detail"]
    assert world["client"].get("/u2i/1?k=1000").status_code == 200  # k = 1000 is allowed
    assert m not in {it["movie_id"] for it in world["client"].get("/u2i/1?k=1000").json()["items"]}


def test_health_stats_and_openapi(world):
    client = world["client"]
    assert client.get("/healthz").json() == {"status": "ok", "vectors_loaded": len(world["P"].movies)}
    st = client.get("/stats").json()
    assert st["healthy"] and st["vectors_loaded"] == len(world["P"].movies) and st["dim"] == DIM
    assert st["lag_s"] == 0.0 and st["last_refresh"] > 0 and st["index"] == "brute-force"
    assert st["catalog"]["users"] == len(world["users"])
    spec = client.get("/openapi.json").json()
    assert {"/u2i/{user_id}", "/i2i/{movie_id}", "/healthz", "/stats"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_incremental_refresh_picks_up_changed_and_new_vectors(world):
    ps, log, client, store = world["ps"], world["log"], world["client"], world["store"]
    before = client.get("/stats").json()
    raw, vec, bias, _ = ps_items(ps)
    target, anchor = int(raw[10]), int(raw[20])
    # move `target` onto `anchor`: it must become anchor's nearest neighbour once the change is seen
    push_items(ps, np.array([target]), vec[20:21] * 2.0, np.zeros(1, np.float32), store_raw=False)
    record(log, [int(world["P"].users[0])], [target])
    wait_for(lambda: client.get(f"/i2i/{anchor}?k=1&source=lfm").json()["items"][0]["movie_id"] == target,
             timeout=10)
    # a movie never seen before appears (named through the catalog: the row's raw id is unknown)
    new_movie = int(world["movies"][-2])
    push_items(ps, np.array([new_movie]), vec[20:21] * 3.0, np.ones(1, np.float32), store_raw=False)
    record(log, [int(world["P"].users[0])], [new_movie])
    body = wait_for(lambda: (r := client.get(f"/i2i/{new_movie}?k=2&source=lfm")).status_code == 200 and r.json(),
                    timeout=10)
    assert {it["movie_id"] for it in body["items"]} == {target, anchor}
    after = client.get("/stats").json()
    assert after["full_reloads"] == before["full_reloads"]  # incremental, not a reload
    assert after["vectors_loaded"] == before["vectors_loaded"] + 1
    assert after["rows_applied"] >= before["rows_applied"] + 2
    # leave the world as the other tests expect it
    ps.delete("item", hash_movie_ids(np.array([new_movie])))
    push_items(ps, np.array([target]), vec[10:11], bias[10:11], store_raw=False)
    record(log, [int(world["P"].users[0])] * 2, [target, new_movie])
    wait_for(lambda: client.get(f"/i2i/{new_movie}").status_code == 404, timeout=10)
    assert store.matrix.n_invalid == 1


def test_faiss_store_agrees_with_brute_force(world):
    store = RecallStore(StoreConfig(world["url"], world["ns"], dim=DIM, faiss=True, faiss_nprobe=1000),
                        world["catalog"])
    store.refresh_once()
    assert store.index is not None and store.index.stats()["ntotal"] == len(store.matrix.snapshot().raw)
    P, brute = world["P"], world["store"]
    for u in P.users[:5].tolist():
        a, b = store.u2i(u, 20), brute.u2i(u, 20)
        assert a.movies == b.movies and np.allclose(a.scores, b.scores, atol=1e-4)
    for m in P.movies[:5].tolist():
        a, b = store.i2i(m, 20), brute.i2i(m, 20)
        assert a.movies == b.movies and np.allclose(a.scores, b.scores, atol=1e-4)
    # the candidates hold every row whose log(1 + n_i) can lift it into the top k, also with other channels on
    plain = RecallStore(StoreConfig(world["url"], world["ns"], dim=DIM), world["catalog"])
    plain.refresh_once()
    blended = ScoreContract(dim=DIM, lfm_weight=0.5, covisit_weight=1.0, popularity_weight=0.2)
    for s in (store, plain):
        s.channels.use_contract(blended)
    for u in P.users[5:15].tolist():
        a, b = store.u2i(u, 20), plain.u2i(u, 20)
        assert a.movies == b.movies and np.allclose(a.scores, b.scores, atol=1e-4)


def test_redis_outage_503_then_recovery(tmp_path, prepared):
    """Stop our own redis-server: 503; start it again on the same port: answers come back by themselves."""
    srv = RedisServer(tmp_path, extra=["--appendonly", "yes", "--appendfsync", "always"])
    srv.start()
    port = srv.port
    try:
        catalog = Catalog.load(prepared)
        ps = ParameterServer.get(srv.url, "outage", dim=DIM, retries=1, backoff_cap=0.05)
        movies = np.array(sorted(catalog.movies))[:200]
        P = populate(ps, movies, np.array([1, 2, 3]), seed=2)
        store = RecallStore(StoreConfig(srv.url, "outage", dim=DIM, refresh_interval=0.05, max_backoff=0.2), catalog)
        with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            good = client.get("/u2i/1?k=10")
            assert good.status_code == 200
            srv.stop()
            wait_for(lambda: client.get("/u2i/1?k=10").status_code == 503, timeout=15)
            r = client.get("/u2i/1?k=10")
            assert r.status_code == 503 and "unavailable" in r.json()["detail"]
            assert client.get(f"/i2i/{int(P.movies[0])}").status_code == 503
            assert client.get("/healthz").status_code == 503
            st = client.get("/stats").json()
            assert st["healthy"] is False and st["last_error"]
            srv = RedisServer(tmp_path, port=port, extra=["--appendonly", "yes", "--appendfsync", "always"])
            srv.start()
            wait_for(lambda: client.get("/healthz").status_code == 200, timeout=15)
            again = client.get("/u2i/1?k=10")
            assert again.status_code == 200 and again.json() == good.json()
    finally:
        srv.stop()


def test_query_cli_reads_ps_or_asks_the_service(world, prepared, capsys):
    from recall_api.query import main as query_main

    u = int(world["P"].users[0])
    base = ["--redis-url", world["url"], "--namespace", world["ns"], "--data-dir", str(prepared)]
    assert query_main(["u2i", str(u), "-k", "5", *base]) == 0
    direct = capsys.readouterr().out
    assert "source=model" in direct and len(direct.strip().splitlines()) == 7
    server_url = str(world["client"].base_url)
    assert query_main(["u2i", str(u), "-k", "5", "--url", server_url]) == 0
    assert capsys.readouterr().out == direct  # same answer either way
    assert query_main(["i2i", str(int(world["movies"][0])), "-k", "3", "--json", *base]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
    assert query_main(["i2i", "99999999", *base]) == 1
    assert "unknown movie" in capsys.readouterr().err
    assert query_main(["u2i", "1", "-k", "0", *base]) == 2


def test_user_context_equals_pull_and_seen(world):
    """The one-round-trip read of the request path agrees with the contract API (pull + ActivityLog.seen)."""
    import asyncio

    ps, log, store = world["ps"], world["log"], world["store"]
    other = RecallStore(store.config, store.catalog)  # its asyncio client binds to this test's event loop
    other.refresh_once()

    users = [int(world["P"].users[3]), int(world["users"][-1]), 99999999]

    async def async_reads():  # one event loop for all calls
        return [(await other.user_context_async(u), await other.u2i_async(u, 20) if u == users[0] else None)
                for u in users]

    for u, (ctx, answer) in zip(users, asyncio.run(async_reads())):
        rows = ps.pull("user", np.array([user_hash(u)]), create=False)
        for row, seen, recent in (store.user_context(u), ctx):
            assert recent is None  # no item channel in this namespace (read with one: tests/test_recall_blend.py)
            assert (row is not None) == bool(rows.found[0])
            if row is not None:
                np.testing.assert_array_equal(row.vec, rows.vec[0])
                assert row.bias == rows.bias[0] != 0
            assert seen == log.seen(u)
        if answer is not None:
            expected = store.u2i(u, 20)
            assert answer.movies == expected.movies and answer.scores == expected.scores


def test_cli_runs_the_service_with_env_fallbacks(world, prepared):
    """``python -m recall_api`` wired from env vars (REDIS_URL, LFM_NAMESPACE, LFM_DATA_DIR) and flags."""
    import os
    import subprocess
    import sys

    from lfm_local.stack import free_port

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), REDIS_URL=world["url"], LFM_NAMESPACE=world["ns"],
               LFM_DATA_DIR=str(prepared))
    bad = subprocess.run([sys.executable, "-m", "recall_api", "--refresh-interval", "0"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "refresh_interval must be > 0" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "recall_api", "--channel-interval", "0"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "channel_interval must be > 0" in bad.stderr
    port = free_port()
    # both serve the namespace's contract (LFM only) from Redis
    proc = subprocess.Popen([sys.executable, "-m", "recall_api", "--port", str(port), "--channel-interval", "0.5"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: fail below with its output
        wait_for(ready, timeout=30, interval=0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        u, m = int(world["P"].users[1]), int(world["P"].movies[3])
        assert httpx.get(f"{url}/u2i/{u}?k=7").json() == world["client"].get(f"/u2i/{u}?k=7").json()
        assert httpx.get(f"{url}/i2i/{m}?source=lfm").json() == world["client"].get(f"/i2i/{m}?source=lfm").json()
    finally:
        proc.terminate()
        proc.wait(15)


def test_full_reload_when_the_cursor_fell_off_the_change_stream(redis_url, prepared):
    """Changes trimmed away before the store read them: CursorExpired -> full reload with the newest rows."""
    ns = f"rt{uuid.uuid4().hex[:8]}"
    ps = ParameterServer.get(redis_url, ns, dim=DIM)
    catalog = Catalog.load(prepared)
    movies = np.array(sorted(catalog.movies))[:50]
    P = populate(ps, movies, np.array([1, 2]), seed=4)
    store = RecallStore(StoreConfig(redis_url, ns, dim=DIM), catalog)
    assert store.refresh_once() and store.stats.full_reloads == 1
    changed = P.movie_vec[7:8] * -3.0
    push_items(ps, movies[7:8], changed, P.movie_bias[7:8])
    tiny = ActivityLog(ps, maxlen=1)  # approximate trimming drops whole stream nodes (~100 entries)
    for _ in range(300):
        record(tiny, [1], [int(movies[0])])
    assert store.refresh_once()
    assert store.stats.full_reloads == 2
    row = store.matrix.row_of_raw(int(movies[7]))
    np.testing.assert_array_equal(store.matrix.snapshot().vec[row], changed[0])
    assert store.refresh_once() and store.stats.full_reloads == 2  # incremental again from the new cursor


def test_service_started_before_redis_comes_up(tmp_path, prepared):
    """Redis absent at start: 503 (not a crash); once it is up and holds vectors, answers come by themselves."""
    from lfm_local.stack import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = RecallStore(StoreConfig(url, "late", dim=DIM, refresh_interval=0.05, max_backoff=0.2), Catalog.load(prepared))
    srv = None
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        try:
            assert client.get("/healthz").status_code == 503
            r = client.get("/u2i/1")
            assert r.status_code == 503 and "unavailable" in r.json()["detail"]
            assert client.get("/stats").json()["vectors_loaded"] == 0
            srv = RedisServer(tmp_path, port=port)
            srv.start()
            ps = ParameterServer.get(url, "late", dim=DIM)
            populate(ps, np.array(sorted(store.catalog.movies))[:30], np.array([1]), seed=5)
            wait_for(lambda: client.get("/u2i/1?k=3").status_code == 200, timeout=15)
            assert client.get("/u2i/1?k=3").json()["source"] == "model"
        finally:
            if srv is not None:
                srv.stop()


def _ids(response) -> list[int]:
    return [it["movie_id"] for it in response.json()["items"]]


def test_user_cache_serves_repeat_users_and_sees_every_change(world):
    """A repeat user is answered from the in-process cache (no Redis read), and every change of their row or
    rated set reaches the answers within the freshness bound (< 1 s; Redis pushes the invalidation)."""
    import time

    ps, log, client, P = world["ps"], world["log"], world["client"], world["P"]
    u = int(P.users[40])
    url = f"/u2i/{u}?k=10"
    first = client.get(url)
    hits = client.get("/stats").json()["user_cache"]["hits"]
    assert client.get(url).content == first.content
    cache = client.get("/stats").json()["user_cache"]
    assert cache["tracking"] and cache["hits"] == hits + 1 and cache["users"] >= 1

    items = ps_items(ps)
    raw, mu = items.raw, read_mu(ps)
    h = np.array([user_hash(u)])
    old_vec, b_u = user_row(ps, u)
    old_vec = old_vec.copy()
    # a newly rated movie (lfm_activity's SADD): the former top movie leaves the answer
    top = _ids(first)[0]
    t0 = time.monotonic()
    record(log, [u], [top])
    wait_for(lambda: top not in _ids(client.get(url)), timeout=1.0, interval=0.002)
    seen = P.seen[u] | {top}
    expected, scores = brute_u2i(old_vec, b_u, mu, items, seen, 10)
    check_ranking(client.get(url).json()["items"], expected, scores, raw)
    # a changed user vector (the learner's push): the answer is the brute force of the new vector
    new_vec = -old_vec
    push_users(ps, np.array([u]), new_vec[None, :], [b_u])
    expected, scores = brute_u2i(new_vec, b_u, mu, items, seen, 10)
    wait_for(lambda: _ids(client.get(url))[:3] == expected[:3], timeout=1.0, interval=0.002)
    check_ranking(client.get(url).json()["items"], expected, scores, raw)
    # the row deleted: the popularity fallback (the user is known: they rated movies)
    ps.delete("user", h)
    wait_for(lambda: client.get(url).json()["source"] == "popularity", timeout=1.0, interval=0.002)
    assert time.monotonic() - t0 < 10
    push_users(ps, np.array([u]), old_vec[None, :], [b_u])  # leave the world as it was (plus one rated movie)
    wait_for(lambda: client.get(url).json()["source"] == "model", timeout=1.0, interval=0.002)
    cache = client.get("/stats").json()["user_cache"]
    assert cache["invalidated"] >= 3


def test_u2i_of_a_cached_user_follows_item_changes(world):
    """Item rows are refreshed from the change stream; the cached user's answers rank the new rows (the
    cached score base is per matrix snapshot)."""
    ps, log, client, P = world["ps"], world["log"], world["client"], world["P"]
    u = int(P.users[41])
    url = f"/u2i/{u}?k=5"
    before = _ids(client.get(url))
    assert _ids(client.get(url)) == before  # cached
    raw, vec, bias, _ = ps_items(ps)
    last = [m for m in raw.tolist() if m not in P.seen[u] and m not in before][-1]
    i = int(np.flatnonzero(raw == last)[0])
    # log σ(·) → 0 and log(1 + n) ≈ 13.8: above every other movie (n_i < 300, log σ < 0)
    push_items(ps, np.array([last]), vec[i:i + 1], np.array([1000.0], np.float32), store_raw=False,
               count=[10**6])
    record(log, [int(P.users[0])], [last])  # the change stream names the item
    wait_for(lambda: _ids(client.get(url))[0] == last, timeout=10)
    push_items(ps, np.array([last]), vec[i:i + 1], bias[i:i + 1], store_raw=False, count=[-10**6])
    record(log, [int(P.users[0])], [last])
    wait_for(lambda: _ids(client.get(url)) == before, timeout=10)


def _read_responses(sock, n: int) -> list[tuple[int, bytes, bytes]]:
    """``n`` HTTP/1.1 responses (status, head, body) read off a socket, in order."""
    buf, out = b"", []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end]
            length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0][15:])
            if len(buf) >= end + 4 + length:
                out.append((int(head[9:12]), head, buf[end + 4:end + 4 + length]))
                buf = buf[end + 4 + length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
    return out


def test_protocol_fast_path_answers_like_the_fastapi_routes(world):
    """``python -m recall_api`` answers well-formed u2i / i2i in uvicorn's protocol (one write): same status,
    headers and bytes as the FastAPI routes, in order with pipelined requests of either kind."""
    import socket

    from recall_api.protocol import fast_protocol

    store = RecallStore(StoreConfig(world["url"], world["ns"], dim=DIM, refresh_interval=0.05), world["catalog"])
    u, m = int(world["P"].users[2]), int(world["P"].movies[4])
    known = int(world["users"][-5])
    with ServerThread(create_app(store), http=fast_protocol(store)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for fast, routed in [(f"/u2i/{u}?k=7", f"/u2i/{u}?k=7&via=fastapi"), (f"/i2i/{m}", f"/i2i/{m}?via=1"),
                                 (f"/u2i/{u}?k=7", f"/u2i/{u}?via=1&k=7"),  # now a cached user
                                 ("/u2i/99999999?k=3", "/u2i/99999999?k=3&via=1"), ("/i2i/99999999", "/i2i/99999999?x"),
                                 (f"/u2i/{known}?k=4", f"/u2i/{known}?via=1&k=4"), (f"/u2i/{u}?", f"/u2i/{u}?via=1")]:
                # pipelined: fast, routed, fast again — answered in order
                sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in (fast, routed, fast)))
                a, b, c = _read_responses(sock, 3)
                undated = [[ln for ln in r[1].split(b"\r\n") if not ln.lower().startswith(b"date:")] for r in (a, b, c)]
                assert (a[0], undated[0], a[2]) == (b[0], undated[1], b[2]) == (c[0], undated[2], c[2]), fast
        assert store.user_cache.hits >= 2
        # anything else still reaches FastAPI through the same protocol
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/u2i/abc").status_code == 422 and client.head(f"/i2i/{m}").status_code == 405
            for bad in ("/u2i/1_0", "/i2i/1_0", f"/u2i/{u}?k=1_0", "/u2i/+5"):
                r = client.get(bad)
                assert r.status_code == 422 and "decimal digits" in r.text, (bad, r.text)
            assert client.get(f"/u2i/{u}?k=7").json() == world["client"].get(f"/u2i/{u}?k=7").json()


def test_resp_client_replies_errors_invalidations_and_timeouts(redis_url):
    """The request path's Redis client over a real server: pipelined replies, an error reply fails only its
    caller, tracked keys are invalidated when written, a silent server times out."""
    import asyncio
    import socket

    import redis as redis_lib

    from ps_redis.connection import pack
    from recall_api.resp import RespClient

    key = f"rc:{uuid.uuid4().hex[:8]}"
    other = redis_lib.Redis.from_url(redis_url)
    invalidated: list = []

    async def main():
        client = RespClient(redis_url, timeout=2.0, on_invalidate=invalidated.append)
        assert await client.execute(pack(("SET", key, "v1")) + pack(("GET", key)) + pack(("SMEMBERS", key + "s")), 3) \
            == [b"OK", b"v1", []]
        assert client.tracking and invalidated == [None]  # a new connection starts with nothing tracked
        with pytest.raises(redis_lib.ResponseError):
            await client.execute(pack(("INCR", key)), 1)
        assert await client.execute(pack(("GET", key)), 1, parse=lambda r: r[0].decode()) == "v1"
        other.set(key, "v2")  # a key this connection read changed: Redis pushes its invalidation
        for _ in range(100):
            if [key.encode()] in invalidated:
                break
            await asyncio.sleep(0.01)
        assert [key.encode()] in invalidated
        assert await client.execute(pack(("GET", key)), 1) == [b"v2"]
        client.close()
        assert invalidated[-1] is None and not client.tracking

        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts connections (backlog) and never answers
        try:
            quiet = RespClient(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.3)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(redis_lib.TimeoutError):
                await quiet.execute(pack(("GET", key)), 1)
            assert loop.time() - t0 < 2.0
        finally:
            silent.close()

    try:
        asyncio.run(main())
    finally:
        other.delete(key)
