"""The recall service survives any content of Redis: malformed rows are skipped with a log line, never a crash or an
unbounded allocation (a real redis-server holding the garbage, the service over real HTTP)."""

from __future__ import annotations

import logging
import uuid

import httpx
import numpy as np
import pytest
import redis

from lfm_stream.hashing import movie_hash, user_hash
from lfm_stream.scoring import contract_key
from ps_redis import ParameterServer
from ps_redis.activity import ActivityLog
from ps_redis.codec import row_dtype
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from recall_api.catalog import Movie
from recall_api.refresh import MAX_INITIAL_CAPACITY
from tests._recall_util import ServerThread, populate, record, wait_for

DIM = 8
GOOD = np.arange(1, 61) * 3  # raw movie ids with good rows
USERS = np.arange(1, 11)


def packed(raw: int, vec=0.5, bias=0.1) -> bytes:
    """One stored item row (``vec`` a scalar or a vector)."""
    row = np.zeros(1, row_dtype(DIM))
    row["vec"], row["bias"], row["count"], row["raw"] = vec, bias, 1, raw
    return row.tobytes()


@pytest.fixture
def garbage(redis_url):
    """A namespace with good rows and ratings, plus every kind of malformed item row and counter."""
    ns = f"gb{uuid.uuid4().hex[:8]}"
    ps = ParameterServer.get(redis_url, ns, dim=DIM)
    populate(ps, GOOD, USERS, seed=2, ratings_per_user=8)
    r = redis.Redis.from_url(redis_url)
    key = lambda raw: ps.keys.row_key("item", movie_hash(raw))  # noqa: E731
    bad = {
        700001: b"\x00" * 7,  # wrong length
        700002: packed(700002, vec=np.nan),
        700003: packed(700003, bias=np.inf),
        700004: packed(700004, vec=1e30),
        700005: packed(-5),  # no raw id, and the catalog does not know the movie
        700006: packed(2**40),  # a raw id outside [0, 2**32) the catalog does not know
        700007: packed(700007)[:-8] + b"\x00" * 4,  # 4 bytes short
    }
    for raw, value in bad.items():
        r.set(key(raw), value)
    r.set(f"{ns}:item:99999999999999999999999", packed(700008))  # the key's id is no int64
    r.set(f"{ns}:item:abc", b"no row at all")
    r.hset(f"{ns}:item:424242", "not", "a string")  # MGET reads a hash as absent
    r.set(ps.keys.counter("item"), 10**15)  # a row counter that would size a petabyte matrix
    catalog = Catalog.from_movies({int(m): Movie(int(m), f"movie {m}", ()) for m in GOOD})
    yield dict(ps=ps, r=r, ns=ns, key=key, catalog=catalog, url=redis_url)
    r.close()


def test_service_starts_and_answers_over_malformed_rows(garbage, caplog):
    store = RecallStore(StoreConfig(garbage["url"], garbage["ns"], dim=DIM, refresh_interval=0.05, chunk=16),
                        garbage["catalog"])
    with caplog.at_level(logging.WARNING, logger="recall_api"), \
            ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["vectors_loaded"] == len(GOOD), health.text
        snap = store.matrix.snapshot()
        assert sorted(snap.raw.tolist()) == GOOD.tolist()  # only the good rows, each once
        assert len(store.matrix._ids) <= MAX_INITIAL_CAPACITY  # the counter was not trusted
        assert np.isfinite(snap.vec).all() and np.isfinite(snap.bias).all()
        assert store.stats.extra["rows_skipped"] == 6 and store.stats.unmapped == 2
        for words in ("has 7 bytes, expected", "has 92 bytes, expected", "not finite or beyond",
                      "its id is no int64"):
            assert words in caplog.text, words
        for m in GOOD[:5].tolist():
            r = client.get(f"/i2i/{m}?k=100")
            assert r.status_code == 200 and {it["movie_id"] for it in r.json()["items"]} <= set(GOOD.tolist())
        r = client.get("/u2i/3?k=100")
        assert r.status_code == 200 and {it["movie_id"] for it in r.json()["items"]} <= set(GOOD.tolist())
        assert client.get("/i2i/700002").status_code == 404


def test_rows_that_turn_bad_leave_the_matrix_and_a_bad_change_entry_reloads(garbage, caplog):
    ps, r, key = garbage["ps"], garbage["r"], garbage["key"]
    store = RecallStore(StoreConfig(garbage["url"], garbage["ns"], dim=DIM, refresh_interval=0.05),
                        garbage["catalog"])
    log = ActivityLog(ps)
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json()["vectors_loaded"] == len(GOOD)
        a, b, c = (int(m) for m in GOOD[:3])
        with caplog.at_level(logging.WARNING, logger="recall_api"):
            r.set(key(a), b"\x01" * 10)  # now the wrong length
            r.set(key(b), packed(b, vec=np.nan))  # now not finite
            record(log, [1, 1], [a, b])  # the learner's change stream names them
            wait_for(lambda: store.matrix is not None and len(store.matrix) == len(GOOD) - 2)
            assert client.get(f"/i2i/{a}").status_code == 404 and client.get(f"/i2i/{b}").status_code == 404
            reloads = store.stats.full_reloads
            r.xadd(ps.keys.act_changes, {"junk": "1"})  # a change entry without item ids
            r.xadd(ps.keys.act_changes, {"ids": b"\x01\x02\x03"})  # ids that are no int64 array
            wait_for(lambda: store.stats.full_reloads > reloads)
        assert "malformed entry in the change stream" in caplog.text
        r.set(key(c), packed(c, vec=0.25))  # later changes are applied again
        record(log, [2], [c])
        wait_for(lambda: np.allclose(store.matrix.snapshot().vec[store.matrix.row_of_raw(c)], 0.25))
        assert store.healthy and client.get(f"/i2i/{c}").status_code == 200
        assert client.get("/healthz").json()["vectors_loaded"] == len(GOOD) - 2


def test_malformed_user_rows_seen_sets_and_popularity_are_skipped(garbage, caplog):
    """A user row of the wrong length or with a NaN vector is answered like a user without a vector (logged once);
    garbage members of a seen set or of the popularity ranking are skipped."""
    ps, r = garbage["ps"], garbage["r"]
    user_key = lambda u: ps.keys.row_key("user", user_hash(u))  # noqa: E731
    r.set(user_key(3), b"\x00" * 5)
    row = np.frombuffer(r.get(user_key(4)), row_dtype(DIM)).copy()
    row["vec"][0, 0] = np.nan
    r.set(user_key(4), row.tobytes())
    r.sadd(f"{ps.keys.act_seen_prefix}5", b"abc", b"99999999999999999999999", b"-1")
    r.zadd(ps.keys.act_popular, {b"not a movie": 10**9})
    store = RecallStore(StoreConfig(garbage["url"], garbage["ns"], dim=DIM, refresh_interval=0.05),
                        garbage["catalog"])
    with caplog.at_level(logging.WARNING, logger="recall_api"), \
            ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for u in (3, 4, 5, 3, 4):
            got = client.get(f"/u2i/{u}?k=20")
            assert got.status_code == 200, got.text
            assert {it["movie_id"] for it in got.json()["items"]} <= set(GOOD.tolist())
        assert store.popularity(5).movies and set(store.popularity(5).movies) <= set(GOOD.tolist())
    assert caplog.text.count("has 5 bytes, expected") == 1  # once per key, not once per request
    assert caplog.text.count("has a vector or bias that is not finite") == 1


def test_a_namespace_claiming_a_huge_dimension_is_reported_not_loaded(redis_url):
    from ps_redis.keys import KeySpace

    ns = f"gd{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url)
    r.hset(KeySpace(ns).meta, mapping={"dim": 10**9})
    store = RecallStore(StoreConfig(redis_url, ns, dim=None, refresh_interval=0.05))
    try:
        with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/healthz")
            assert health.status_code == 503 and "dim-1000000000 rows, more than the 4096" in health.text
            assert store.matrix is None and not store.healthy
    finally:
        r.close()


def test_malformed_item_channel_entries_are_skipped(garbage, caplog):
    """Garbage under ``{<ns>:@co}`` (values or ids that are no int64, odd neighbour strings, a bad latest bucket, a
    contract that is no contract): the service starts and answers from the well-formed entries."""
    ps, r = garbage["ps"], garbage["r"]
    tag = "{" + f"{ps.namespace}:@co" + "}"
    good = [int(m) for m in GOOD[:4]]
    r.set(f"{tag}:nb:{good[0]}", f"{good[1]} 3 {good[2]} 1")  # the one well-formed list
    r.hset(f"{tag}:deg", mapping={good[0]: 4, good[1]: 3, good[2]: 1})
    r.hset(f"{tag}:pop:all", mapping={good[1]: 2})
    r.hset(f"{tag}:pop:0", mapping={good[1]: 2})
    r.hset(f"{tag}:meta", mapping={"events": 10, "bucket": 0})
    for key, value in {"nb:" + "9" * 25: f"{good[1]} 1", f"nb:{good[1]}": "1 2 3", f"nb:{good[2]}": "x y",
                       f"nb:{good[3]}": f"{good[0]} -1", "nb:abc": "1 1", f"nb:{good[0] + 1}": "9" * 25 + " 1",
                       "recent:3": "0 " + "9" * 25, "recent:4": "9" * 25 + f" {good[0]}", "recent:5": "zz",
                       "recent:6": f"{2**63 - 1} {good[0]}"}.items():
        r.set(f"{tag}:{key}", value)
    r.set(tag.encode() + b":nb:\xff\xfe", b"1 1")  # a key that is no UTF-8
    r.hset(f"{tag}:deg", mapping={"9" * 25: 1, "abc": 2, good[3]: "9" * 25})
    r.hset(f"{tag}:pop:" + "9" * 25, mapping={good[0]: 1})
    r.hset(f"{tag}:pop:1", mapping={"9" * 25: 1, good[2]: "x"})
    store = RecallStore(StoreConfig(garbage["url"], garbage["ns"], dim=DIM, refresh_interval=0.05,
                                    channel_interval=0.1), garbage["catalog"])
    with ServerThread(create_app(store)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        body = client.get(f"/i2i/{good[0]}?k=10").json()
        assert body["source"] == "covisit" and [it["movie_id"] for it in body["items"]] == [good[1], good[2]]
        for u in (1, 2, 3, 4, 5, 6):
            got = client.get(f"/u2i/{u}?k=20")
            assert got.status_code == 200, got.text
            assert {it["movie_id"] for it in got.json()["items"]} <= set(GOOD.tolist())
        r.hset(f"{tag}:meta", "bucket", "not a bucket")
        r.set(contract_key(ps.namespace), "{not json")
        checks = client.get("/stats").json()["channels"]["checks"]
        wait_for(lambda: client.get("/stats").json()["channels"]["checks"] >= checks + 2)
        assert store.healthy and client.get("/u2i/1?k=5").status_code == 200
