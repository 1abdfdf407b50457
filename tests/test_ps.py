"""ps_redis.ParameterServer against a real redis-server: each method, singleton, init, push modes, fences."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import redis

from _ps_util import create_worker, gradient_worker, raw_values
from ps_redis import Fence, ParameterServer, Rows, Update, row_dtype
from ps_redis.codec import init_vectors, row_size

DIM = 8


@pytest.fixture
def ps(redis_url, namespace) -> ParameterServer:
    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=7)
    yield ps
    ps.flush()


def ids_of(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def full_update(ids: np.ndarray, base: float) -> Update:
    n = len(ids)
    return Update(ids, vec=np.full((n, DIM), base, np.float32), bias=np.full(n, base + 1, np.float32),
                  accum=np.full((n, DIM + 1), base + 2, np.float32), count=np.full(n, 2, np.int64))


# ----------------------------------------------------------------------------------- singleton
def test_singleton_per_url_namespace_dim(redis_url, namespace, ps):
    assert ParameterServer.get(redis_url, namespace, dim=DIM) is ps
    assert ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=7) is ps
    assert ParameterServer.get(redis_url, namespace, dim=None) is ps  # dim read from the namespace
    other = ParameterServer.get(redis_url, namespace + "x", dim=DIM)
    assert other is not ps and other.namespace == namespace + "x"
    with pytest.raises(ValueError, match="init_scale 0.1; asked for 0.5"):
        ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.5)
    with pytest.raises(ValueError, match=f"holds dim-{DIM} rows; asked for dim 16"):
        ParameterServer.get(redis_url, namespace, dim=16)
    other.flush()


def test_public_interface_of_the_helpers(ps):
    """The server has every member of ``ParameterServerAPI`` (what its helper modules are typed with), and the raw
    I/O part of it works: ``covered`` reads the stored offsets, ``io`` wraps direct calls, ``run`` pipelines."""
    from ps_redis.interface import ParameterServerAPI

    assert isinstance(ps, ParameterServerAPI)
    fence = Fence("g", "t", {0: 5})
    assert not ps.covered(fence)
    assert ps.push({}, fence=fence) is True
    assert ps.covered(fence) and not ps.covered(Fence("g", "t", {0: 6}))
    with ps.io():
        assert ps.redis.hget(ps.keys.fence("g", "t"), "0") == b"5"
    assert ps.run([(ps.keys.meta, ("HGET", ps.keys.meta, "dim")), (ps.keys.meta, ("HGET", ps.keys.meta, "seed"))]) \
        == [str(DIM).encode(), b"7"]


# ---------------------------------------------------------------------------------------- pull
def test_pull_creates_seeded_rows_once(ps):
    ids = ids_of(11, 12, 11, 13)
    rows = ps.pull("item", ids, raw_ids=ids_of(1, 2, 1, 3))
    assert isinstance(rows, Rows) and len(rows) == 4
    assert rows.vec.shape == (4, DIM) and rows.vec.dtype == np.float32
    assert rows.accum.shape == (4, DIM + 1) and rows.count.dtype == np.int64
    assert not rows.found.any()  # none existed before this call
    np.testing.assert_array_equal(rows.vec[[0, 1, 3]], init_vectors(ids_of(11, 12, 13), DIM, 0.1, 7, "item"))
    np.testing.assert_array_equal(rows.vec[0], rows.vec[2])  # duplicate ids: the same row
    assert rows.raw.tolist() == [1, 2, 1, 3] and rows.count.tolist() == [0] * 4
    assert (rows.bias == 0).all() and (rows.accum == 0).all() and (rows.updated > 1e9).all()
    assert ps.count("item") == 3
    again = ps.pull("item", ids)
    assert again.found.all()
    np.testing.assert_array_equal(again.vec, rows.vec)
    # the user table is independent: same id, another vector
    assert not np.array_equal(ps.pull("user", ids_of(11)).vec[0], rows.vec[0])


def test_init_scale_is_the_std(redis_url, namespace):
    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.5, seed=1)
    vec = ps.pull("item", np.arange(4000)).vec
    assert abs(vec.std() - 0.5) < 0.01 and abs(vec.mean()) < 0.01
    ps.flush()


def test_pull_without_create_never_writes(ps):
    rows = ps.pull("item", ids_of(5, 6), create=False)
    assert not rows.found.any() and (rows.vec == 0).all() and (rows.raw == 0).all()
    assert ps.count("item") == 0 and raw_values(ps.url, [ps.keys.row_key("item", 5)]) == [None]
    ps.pull("item", ids_of(6))
    rows = ps.pull("item", ids_of(5, 6), create=False)
    assert rows.found.tolist() == [False, True] and ps.count("item") == 1
    assert len(ps.pull("item", ids_of())) == 0


def test_two_processes_creating_the_same_ids_agree(redis_url, namespace):
    """Different initializer seeds per process: set-if-absent makes both see one stored value."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    ids = list(range(1000, 1600))
    procs = [ctx.Process(target=create_worker, args=(redis_url, namespace, seed, ids, barrier, out))
             for seed in (1, 2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert results[0][1] == results[1][1]  # identical vectors, bit for bit
    ps = ParameterServer.get(redis_url, namespace, dim=DIM)
    assert ps.pull("item", np.array(ids), create=False).vec.tobytes() == results[0][1]
    assert ps.count("item") == len(ids)
    ps.flush()


# ---------------------------------------------------------------------------------------- push
@pytest.mark.parametrize("fast", [True, False], ids=["mset-fast-path", "lua-path"])
def test_push_assign_sets_values_and_adds_count(ps, fast):
    ids = ids_of(1, 2, 3)
    before = ps.pull("item", ids, raw_ids=ids_of(10, 20, 30))
    if not fast:
        ps.row_cache.forget()  # as if another process had pulled: the server-side path runs
    assert ps.push({"item": full_update(ids, 0.5)}, mode="assign") is True
    assert ps.push({"item": full_update(ids, 0.25)}, mode="assign") is True
    rows = ps.pull("item", ids)
    assert (rows.vec == 0.25).all() and (rows.bias == 1.25).all() and (rows.accum == 2.25).all()
    assert rows.count.tolist() == [4, 4, 4] and rows.raw.tolist() == [10, 20, 30]
    assert (rows.updated >= before.updated).all()
    assert ps.count("item") == 3


def test_push_assign_partial_fields_keep_the_rest(ps):
    ids = ids_of(1, 2)
    before = ps.pull("item", ids)
    ps.push({"item": Update(ids, bias=np.float32([3, 4]))})
    rows = ps.pull("item", ids)
    np.testing.assert_array_equal(rows.vec, before.vec)
    assert rows.bias.tolist() == [3, 4] and rows.count.tolist() == [0, 0]
    # an id never pulled is created by the push (zero vector, raw unknown)
    ps.push({"item": Update(ids_of(9), vec=np.ones((1, DIM), np.float32), count=np.int64([1]))})
    row = ps.pull("item", ids_of(9), create=False)
    assert row.found[0] and (row.vec == 1).all() and row.raw[0] == -1 and row.count[0] == 1
    assert ps.count("item") == 3


def test_push_gradient_and_duplicates(ps):
    ids = ids_of(1, 2)
    ps.push({"item": full_update(ids, 0.0)})  # vec 0, bias 1, accum 2, count 2
    step = Update(ids_of(1, 2, 1), vec=np.full((3, DIM), 0.125, np.float32), bias=np.float32([0.5, 0.5, 0.5]),
                  accum=np.ones((3, DIM + 1), np.float32), count=np.int64([1, 1, 1]))
    assert ps.push({"item": step}, mode="gradient")
    rows = ps.pull("item", ids)
    assert rows.vec[0].tolist() == [-0.25] * DIM and rows.vec[1].tolist() == [-0.125] * DIM  # id 1 twice
    assert rows.bias.tolist() == [0.0, 0.5] and rows.accum[:, 0].tolist() == [4.0, 3.0]
    assert rows.count.tolist() == [4, 3]


def test_push_several_tables_at_once(ps):
    assert ps.push({"user": full_update(ids_of(1), 1.0), "item": full_update(ids_of(2, 3), 2.0),
                    "global": Update(ids_of(0), bias=np.float32([3.5]))}, mode="assign")
    assert ps.pull("user", ids_of(1)).vec[0, 0] == 1.0 and ps.pull("item", ids_of(3)).bias[0] == 3.0
    assert ps.pull("global", ids_of(0)).bias[0] == 3.5
    assert ps.tables() == ["global", "item", "user"]


def test_concurrent_gradient_pushes_lose_nothing(redis_url, namespace):
    ps = ParameterServer.get(redis_url, namespace, dim=DIM)
    ids = np.arange(50, dtype=np.int64)
    ps.push({"item": Update(ids, vec=np.zeros((50, DIM), np.float32), bias=np.zeros(50, np.float32))})
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    steps, step = 100, 1 / 64  # sums of 1/64 are exact in float32
    procs = [ctx.Process(target=gradient_worker, args=(redis_url, namespace, ids.tolist(), steps, step, barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    done = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    rows = ps.pull("item", ids)
    assert done == 2 * steps
    assert (rows.vec == -done * step).all() and (rows.bias == -done * step).all()
    assert (rows.count == done).all()
    ps.flush()


# --------------------------------------------------------------------------------------- fence
@pytest.mark.parametrize("mode,fast", [("assign", True), ("assign", False), ("gradient", False)])
def test_fenced_push_is_idempotent(ps, mode, fast):
    ids = ids_of(1, 2, 3)
    ps.pull("item", ids)
    if not fast:
        ps.row_cache.forget()
    fence = Fence("learner", "ratings", {0: 100, 1: 50})
    assert ps.push({"item": full_update(ids, 0.5)}, mode=mode, fence=fence) is True
    keys = [ps.keys.row_key("item", i) for i in ids]
    stored = raw_values(ps.url, keys)
    assert ps.push({"item": full_update(ids, 0.5)}, mode=mode, fence=fence) is False
    assert raw_values(ps.url, keys) == stored  # nothing changed, not even `updated`
    assert ps.offsets("learner", "ratings") == {0: 100, 1: 50}
    # an older fence is covered too; a new partition or a later offset is not
    assert ps.push({"item": full_update(ids, 0.5)}, mode=mode, fence=Fence("learner", "ratings", {0: 90})) is False
    assert ps.push({"item": full_update(ids, 0.5)}, mode=mode, fence=Fence("learner", "ratings", {2: 1})) is True
    assert ps.offsets("learner", "ratings") == {0: 100, 1: 50, 2: 1}
    assert ps.offsets("learner", "other-topic") == {}


@pytest.mark.parametrize("path", ["write_rows", "fast assign", "lua assign", "gradient"])
def test_fence_stores_event_seqs_with_the_offsets(ps, tmp_path, path):
    """The highest event seq applied per partition lives next to the offsets (fields s<partition>), raised in the
    same atomic write, never lowered, and read back with them (and kept by save / load)."""
    ids = ids_of(1, 2)

    def write(fence: Fence) -> bool:
        if path == "write_rows":
            rows = np.zeros(2, row_dtype(DIM))
            return ps.write_rows({"item": (ids, rows, np.ones(2, bool))}, fence=fence)
        ps.pull("item", ids)
        if path == "lua assign":
            ps.row_cache.forget()
        return ps.push({"item": full_update(ids, 0.5)}, mode="gradient" if path == "gradient" else "assign",
                       fence=fence)

    assert write(Fence("g", "t", {0: 10, 1: 5}, seqs={0: 41, 1: 17}))
    assert ps.fence_state("g", "t") == ({0: 10, 1: 5}, {0: 41, 1: 17})
    assert ps.offsets("g", "t") == {0: 10, 1: 5}  # the seqs are not offsets
    assert not write(Fence("g", "t", {0: 10, 1: 5}, seqs={0: 41, 1: 17}))  # a replay: covered, nothing written
    assert write(Fence("g", "t", {0: 12}, seqs={0: 30}))  # only re-sent records in this window: the mark stays
    assert ps.fence_state("g", "t") == ({0: 12, 1: 5}, {0: 41, 1: 17})
    assert write(Fence("g", "t", {1: 9}, seqs={1: 60}))
    path_ = ps.save(tmp_path / "s.npz")
    ps.load(path_)
    assert ps.fence_state("g", "t") == ({0: 12, 1: 9}, {0: 41, 1: 60})


def test_functions_are_reloaded_after_a_server_lost_them(ps):
    ps.pull("item", ids_of(1))
    r = redis.Redis.from_url(ps.url)
    r.function_flush()  # what a restart without persistence does
    r.close()
    assert ps.push({"item": Update(ids_of(1), bias=np.float32([2]))}, mode="gradient")
    assert ps.pull("item", ids_of(1)).bias[0] == -2


def test_fence_only_push_moves_offsets(ps):
    assert ps.push({}, fence=Fence("g", "t", {3: 7})) is True
    assert ps.push({}, fence=Fence("g", "t", {3: 7})) is False
    assert ps.offsets("g", "t") == {3: 7}
    assert ps.push({}) is False


# --------------------------------------------------------------------------------- maintenance
def test_delete_count_scan(ps):
    ids = np.arange(1, 1001, dtype=np.int64)
    ps.pull("item", ids, raw_ids=ids + 5)
    assert ps.count("item") == 1000 and ps.count("user") == 0
    chunks = list(ps.scan("item", chunk=300))
    assert all(len(c) <= 300 for c in chunks) and len(chunks) >= 4
    got = np.concatenate([c.ids for c in chunks])
    assert sorted(got.tolist()) == ids.tolist()
    raw = np.concatenate([c.raw for c in chunks])
    assert (raw == got + 5).all() and all(c.found.all() for c in chunks)
    assert ps.delete("item", ids_of(1, 2, 2, 5000)) == 2
    assert ps.count("item") == 998
    assert ps.pull("item", ids_of(1), create=False).found.tolist() == [False]
    assert sum(len(c) for c in ps.scan("item")) == 998


def test_save_flush_load_round_trip_is_bit_exact(ps, tmp_path):
    from ps_redis.activity import ActivityLog

    users, items = np.arange(1, 40, dtype=np.int64), np.arange(100, 400, dtype=np.int64)
    ps.pull("user", users, raw_ids=users)
    ps.pull("item", items, raw_ids=items * 2)
    ps.push({"item": Update(items, vec=np.full((len(items), DIM), 0.001, np.float32),
                            accum=np.full((len(items), DIM + 1), 0.5, np.float32),
                            count=np.ones(len(items), np.int64))}, mode="gradient",
            fence=Fence("learner", "ratings", {0: 12, 1: 7}))
    log = ActivityLog(ps)
    log.record(users[:3], ids_of(1, 1, 2), ids_of(10, 11, 10), items[:3], np.float32([1, 0, 1]), ids_of(5, 6, 7))
    keys = [ps.keys.row_key("user", i) for i in users] + [ps.keys.row_key("item", i) for i in items]
    before = raw_values(ps.url, keys)
    path = ps.save(tmp_path / "snap.npz")
    ps.flush()
    assert ps.count("item") == 0 and ps.offsets("learner", "ratings") == {} and log.seen(1) == set()
    ps.load(path)
    assert raw_values(ps.url, keys) == before
    assert ps.count("user") == len(users) and ps.count("item") == len(items)
    assert ps.offsets("learner", "ratings") == {0: 12, 1: 7}
    assert log.seen(1) == {10, 11} and log.popular(5) == [(10, 2.0)]
    z = np.load(path)  # a numpy user can read everything without pickle
    assert int(z["dim"]) == DIM and z["item.vec"].shape == (len(items), DIM)
    assert z["item.raw"].tolist() == (items * 2).tolist() and z["item.accum"].shape == (len(items), DIM + 1)
    assert z["offsets.group"].tolist() == ["learner", "learner"] and z["offsets.next_offset"].tolist() == [12, 7]
    assert sorted(z["tables"].tolist()) == ["item", "user"]


# -------------------------------------------------------------------------------------- errors
def test_wrong_shape_or_dtype_names_expected_and_got(ps):
    ids = ids_of(1, 2)
    with pytest.raises(ValueError, match=r"item.vec: expected shape \(2, 8\), got \(2, 4\)"):
        ps.push({"item": Update(ids, vec=np.zeros((2, 4), np.float32))})
    with pytest.raises(ValueError, match="item.vec: expected dtype float32, got float64"):
        ps.push({"item": Update(ids, vec=np.zeros((2, DIM)))})
    with pytest.raises(ValueError, match=r"user.accum: expected shape \(2, 9\), got \(2, 8\)"):
        ps.push({"user": Update(ids, accum=np.zeros((2, DIM), np.float32))})
    with pytest.raises(ValueError, match="mode must be one of"):
        ps.push({"item": Update(ids)}, mode="sgd")
    with pytest.raises(ValueError, match=r"table name must match \[a-z_\]\+ \(got 'Item'\)"):
        ps.pull("Item", ids)
    with pytest.raises(ValueError, match="ids must be integers"):
        ps.pull("item", np.array([1.5]))


def test_corrupt_stored_value_names_the_key(ps):
    from ps_redis import CorruptRowError

    key = ps.keys.row_key("item", 77)
    r = redis.Redis.from_url(ps.url)
    r.set(key, b"x" * 10)
    with pytest.raises(CorruptRowError, match=f"{key}.*10 bytes, expected {row_size(DIM)}"):
        ps.pull("item", ids_of(1, 77))
    with pytest.raises(CorruptRowError, match=f"{key}.*10 bytes"):
        ps.push({"item": Update(ids_of(1, 77), bias=np.float32([1, 1]))}, mode="gradient")
    assert ps.pull("item", ids_of(1), create=False).bias[0] == 0  # nothing was written
    r.set(key, b"\0" * row_size(4))
    with pytest.raises(CorruptRowError, match=r"a dim-4 row\?"):
        ps.pull("item", ids_of(77))
    r.delete(key)
    r.close()


def test_connection_refused_names_masked_url_after_retries():
    from lfm_local.stack import free_port
    from ps_redis import PSConnectionError

    url = f"redis://alice:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(PSConnectionError) as info:
        ParameterServer.get(url, "x", dim=4, retries=2, backoff_base=0.01, backoff_cap=0.02)
    msg = str(info.value)
    assert "redis://alice:***@127.0.0.1:" in msg and "after 2 retries" in msg and "s3cret" not in msg


def test_auth_through_the_url(tmp_path, namespace):
    from lfm_local.stack import RedisServer
    from ps_redis.connection import PSAuthError

    class AuthRedis(RedisServer):
        @property
        def url(self) -> str:  # RedisServer.ready polls this URL: PING without the password would be refused
            return f"redis://:s3cret@{self.host}:{self.port}/0"

    srv = AuthRedis(tmp_path, extra=["--requirepass", "s3cret"])
    srv.start()
    try:
        good = f"redis://:s3cret@127.0.0.1:{srv.port}/0"
        ps = ParameterServer.get(good, namespace, dim=4)
        assert ps.pull("item", ids_of(1)).vec.shape == (1, 4)
        with pytest.raises(PSAuthError, match=r"redis://:\*\*\*@127.0.0.1.*authentication failed"):
            ParameterServer.get(f"redis://:wrong@127.0.0.1:{srv.port}/0", namespace, dim=4, retries=0)
        with pytest.raises(PSAuthError):
            ParameterServer.get(f"redis://127.0.0.1:{srv.port}/0", namespace, dim=4, retries=0)
        # an ACL user through the URL
        redis.Redis(port=srv.port, password="s3cret").acl_setuser(
            "learner", enabled=True, passwords=["+pw1"], keys=["*"], channels=["*"], commands=["+@all"])
        acl = ParameterServer.get(f"redis://learner:pw1@127.0.0.1:{srv.port}/0", namespace, dim=4)
        assert acl is not ps and acl.pull("item", ids_of(1), create=False).found[0]
    finally:
        srv.stop()


def test_redis_cli_fcall_one_liner(ps):
    import shutil
    import subprocess

    from lfm_stream.hashing import movie_hash

    mid = movie_hash(318)
    ps.pull("item", ids_of(mid), raw_ids=ids_of(318))
    ps.push({"item": Update(ids_of(mid), vec=(np.arange(DIM, dtype=np.float32) / 4)[None], bias=np.float32([0.5]),
                            count=np.int64([3]))})
    key = ps.keys.row_key("item", mid)
    assert key == f"{ps.namespace}:item:{mid}"
    out = subprocess.run([shutil.which("redis-cli"), "-u", ps.url, "FCALL", "lfm_vec", "1", key],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines())
    assert fields["raw"] == "318" and fields["count"] == "3" and fields["dim"] == str(DIM)
    assert fields["bias"] == "0.5" and [float(x) for x in fields["vec"].split()] == (np.arange(DIM) / 4).tolist()
    assert abs(float(fields["norm"]) - np.linalg.norm(np.arange(DIM) / 4)) < 1e-5
    missing = subprocess.run([shutil.which("redis-cli"), "-u", ps.url, "FCALL", "lfm_vec", "1", key + "0"],
                             capture_output=True, text=True, timeout=10).stdout
    assert "no row at key" in missing
    # by raw MovieLens id: the Function hashes it itself
    by_raw = subprocess.run([shutil.which("redis-cli"), "-u", ps.url, "FCALL", "lfm_movie", "0", ps.namespace, "318"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
    assert by_raw == out


def test_lua_hashing_matches_python(ps):
    from lfm_stream.hashing import movie_hash, user_hash

    r = redis.Redis.from_url(ps.url)
    raws = [0, 1, 9, 10, 318, 99999, 193609, 2**31 - 1, 10**12 + 7]
    for raw in raws:
        for fn, table, h in (("lfm_movie", "item", movie_hash), ("lfm_user", "user", user_hash)):
            with pytest.raises(redis.ResponseError, match="no row at key") as info:
                r.fcall(fn, 0, ps.namespace, str(raw))
            assert str(info.value).endswith(f"{ps.namespace}:{table}:{h(raw)}"), (raw, table)
    r.close()


def test_row_layout_is_the_documented_one(ps):
    ps.pull("item", ids_of(4), raw_ids=ids_of(44))
    ps.push({"item": full_update(ids_of(4), 1.0)})
    value = raw_values(ps.url, [ps.keys.row_key("item", 4)])[0]
    assert len(value) == 8 * DIM + 32
    row = np.frombuffer(value, dtype=row_dtype(DIM))[0]
    assert (row["vec"] == 1).all() and row["bias"] == 2 and (row["accum"] == 3).all()
    assert row["count"] == 2 and row["raw"] == 44
    assert np.frombuffer(value[8 * DIM + 24:], "<i8")[0] == 44


def test_tls_through_a_rediss_url(tmp_path, namespace):
    import shutil
    import subprocess

    from lfm_local.stack import RedisServer, free_port

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificates"

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lfm-test-ca",
       "-keyout", "ca.key", "-out", "ca.crt")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
       "-out", "server.crt", "-extfile", "san.ext")
    port = free_port()
    ca = tmp_path / "ca.crt"
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    class TlsRedis(RedisServer):
        @property
        def url(self) -> str:  # RedisServer.ready polls this URL: the TLS port
            return url

    srv = TlsRedis(tmp_path, port, extra=["--port", "0", "--tls-port", str(port),
                                          "--tls-cert-file", str(tmp_path / "server.crt"),
                                          "--tls-key-file", str(tmp_path / "server.key"),
                                          "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"])
    srv.start()
    try:
        ps = ParameterServer.get(url, namespace, dim=4)
        ps.pull("item", ids_of(1, 2))
        assert ps.push({"item": Update(ids_of(1), bias=np.float32([1]))}, mode="gradient")
        assert ps.pull("item", ids_of(1)).bias[0] == -1 and ps.count("item") == 2
    finally:
        srv.stop()


def test_timeout_names_the_url():
    import socket

    from ps_redis import PSConnectionError

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with pytest.raises(PSConnectionError, match=f"cannot reach Redis at {url} after 1 retries.*[Tt]imeout"):
            ParameterServer.get(url, "x", dim=4, retries=1, backoff_base=0.01, socket_timeout=0.2)


def test_server_restart_reconnects_and_reloads_functions(tmp_path, namespace):
    from lfm_local.stack import RedisServer
    from ps_redis import PSConnectionError

    srv = RedisServer(tmp_path)
    srv.start()
    port = srv.port
    try:
        ps = ParameterServer.get(srv.url, namespace, dim=4, retries=1, backoff_base=0.01, backoff_cap=0.05)
        ps.pull("item", ids_of(1))
        srv.stop()
        with pytest.raises(PSConnectionError, match=f"127.0.0.1:{port}"):
            ps.pull("item", ids_of(1))
        srv = RedisServer(tmp_path, port)  # back on the same port, empty (no persistence)
        srv.start()
        assert not ps.pull("item", ids_of(1), create=False).found[0]
        assert ps.push({"item": Update(ids_of(1), bias=np.float32([1]))}, mode="gradient")  # Function reloaded
        assert ps.pull("item", ids_of(1)).bias[0] == -1
    finally:
        srv.stop()


# ----------------------------------------------------------------------------------- pull_many / write_rows
def test_pull_many_equals_pulls_and_deferred_rows_are_written_by_write_rows(ps):
    ps.pull("user", ids_of(1, 2))  # stored now
    got = ps.pull_many({"user": (ids_of(2, 3), ids_of(20, 30)), "item": ids_of(5)}, defer_create=True)
    assert got["user"].found.tolist() == [True, False] and got["item"].found.tolist() == [False]
    assert got["user"].raw.tolist() == [-1, 30]  # id 2 was created without a raw id
    np.testing.assert_array_equal(got["user"].vec[1], init_vectors(ids_of(3), DIM, 0.1, 7, "user")[0])
    assert ps.count("user") == 2 and ps.count("item") == 0  # deferred: nothing written yet
    assert ps.pull("item", ids_of(5), create=False).found.tolist() == [False]

    rows = got["user"].struct.copy()
    rows["count"] += 1
    rows["bias"] = [0.5, 1.5]
    fence = Fence("g", "t", {0: 10})
    applied = ps.write_rows({"user": (got["user"].ids, rows, ~got["user"].found)}, fence=fence,
                            extra=[("SET", f"{ps.namespace}:probe", "x")])
    assert applied and ps.count("user") == 3  # one new row counted
    back = ps.pull("user", ids_of(2, 3), create=False)
    assert back.found.all() and back.bias.tolist() == [0.5, 1.5] and back.count.tolist() == [1, 1]
    assert ps.offsets("g", "t") == {0: 10}
    assert ps.redis.get(f"{ps.namespace}:probe") == b"x"  # the extra command ran in the transaction
    # a replay of the same fence changes nothing, its extra commands included
    ps.redis.delete(f"{ps.namespace}:probe")
    rows["bias"] = [9.0, 9.0]
    assert not ps.write_rows({"user": (got["user"].ids, rows, np.zeros(2, bool))}, fence=fence,
                             extra=[("SET", f"{ps.namespace}:probe", "y")])
    assert ps.pull("user", ids_of(2), create=False).bias.tolist() == [0.5]
    assert ps.redis.get(f"{ps.namespace}:probe") is None
    # a fence-only write moves the offsets
    assert ps.write_rows({}, fence=Fence("g", "t", {0: 12, 1: 3}))
    assert ps.offsets("g", "t") == {0: 12, 1: 3}


def test_write_rows_rejects_rows_of_another_dim(ps):
    with pytest.raises(ValueError, match="expected 1 rows of dim 8"):
        ps.write_rows({"user": (ids_of(1), np.zeros(1, row_dtype(4)), np.zeros(1, bool))})


def test_deferred_rows_are_stored_and_counted_by_the_next_assign_push(ps):
    got = ps.pull_many({"item": (ids_of(8, 9), ids_of(80, 90))}, defer_create=True)["item"]
    assert not got.found.any() and ps.count("item") == 0
    fence = Fence("g", "t", {0: 3})
    assert ps.push({"item": Update(ids_of(8, 9), bias=np.float32([0.5, 0.25]), count=np.int64([1, 2]))},
                   fence=fence)
    back = ps.pull("item", ids_of(8, 9), create=False)
    assert back.found.all() and ps.count("item") == 2  # the fast path's MSET counted the new rows
    np.testing.assert_array_equal(back.vec, init_vectors(ids_of(8, 9), DIM, 0.1, 7, "item"))  # seeded, not zero
    assert back.bias.tolist() == [0.5, 0.25] and back.count.tolist() == [1, 2] and back.raw.tolist() == [80, 90]
    assert ps.offsets("g", "t") == {0: 3}


def test_epoch_moves_on_delete_put_and_flush_not_on_pushes(ps):
    first = ps.epoch()
    ps.pull("user", ids_of(1, 2))
    ps.push({"user": Update(ids_of(1), bias=np.float32([1.0]))})
    assert ps.epoch() == first
    seen = {first}
    for change in (lambda: ps.delete("user", ids_of(2)),
                   lambda: ps.put_rows("user", ids_of(5), np.zeros(1, row_dtype(DIM))),
                   ps.flush):
        change()
        assert ps.epoch() not in seen and ps.epoch() is not None
        seen.add(ps.epoch())


def test_pipelined_reads_return_raw_replies_and_name_errors(ps):
    from ps_redis.connection import call_many

    ps.redis.sadd(f"{ps.namespace}:s", 3, 1)
    ps.redis.set(f"{ps.namespace}:k", "v")
    got = call_many(ps.redis, [("SMEMBERS", f"{ps.namespace}:s"), ("GET", f"{ps.namespace}:k")])
    assert sorted(got[0]) == [b"1", b"3"] and got[1] == b"v"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        call_many(ps.redis, [("GET", f"{ps.namespace}:s"), ("GET", f"{ps.namespace}:k")])
    back = call_many(ps.redis, [("GET", f"{ps.namespace}:s"), ("GET", f"{ps.namespace}:k")], raise_on_error=False)
    assert isinstance(back[0], redis.ResponseError) and back[1] == b"v"
    assert ps.redis.ping()  # the connection is usable after an error reply
