"""Every PS write is checked whole (real redis-server): one Function call per write (rows, side writes and
offsets all or nothing), the Function library reloaded when a server lost it, and fenced writes that find the
server lost what their writer stored fail with PSStateLost instead of writing on top of the loss."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from ps_redis import Fence, ParameterServer, PSStateLost, Update, row_dtype
from ps_redis.activity import ActivityLog

DIM = 4


@pytest.fixture
def ps(redis_url, namespace) -> ParameterServer:
    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=3)
    yield ps
    ps.flush()


def ids_of(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def rows_with_bias(*biases: float) -> np.ndarray:
    rows = np.zeros(len(biases), row_dtype(DIM))
    rows["bias"], rows["count"] = biases, 1
    return rows


def side_writes(ps: ParameterServer) -> list[tuple]:
    """The learner's extra command of one sync: the activity-log record (the write adds the row counters)."""
    log = ActivityLog(ps)
    users, movies = np.array([1, 2], np.int64), np.array([10, 20], np.int64)
    return [log.record_command(users, movies, movies, np.ones(2, np.float32), np.array([5, 6]))]


def test_a_failing_side_write_leaves_rows_and_offsets_unchanged(ps):
    """What MULTI/EXEC got wrong: EXEC runs every command even when one fails, so the rows and the offsets
    committed without the side writes.  One Function call stops at the failing command, before rows and offsets."""
    ps.write_rows({"user": (ids_of(1), rows_with_bias(0.5), np.array([True]))}, fence=Fence("g", "t", {0: 10}))
    ps.redis.set(ps.keys.act_popular, "not a sorted set")  # lfm_activity's ZINCRBY fails at run time
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ps.write_rows({"user": (ids_of(1, 2), rows_with_bias(7.0, 7.0), np.array([False, True]))},
                      fence=Fence("g", "t", {0: 20}), extra=side_writes(ps))
    back = ps.pull("user", ids_of(1, 2), create=False)
    assert back.bias.tolist() == [0.5, 0.0] and back.found.tolist() == [True, False]
    assert ps.offsets("g", "t") == {0: 10} and ps.count("user") == 1  # the row counter's INCRBY did not run


def test_a_write_after_the_library_was_flushed_reloads_it_and_lands_whole(ps):
    r = redis.Redis.from_url(ps.url)
    try:
        r.function_flush()  # what a restart without persistence does to the library
        assert ps.write_rows({"user": (ids_of(1), rows_with_bias(0.5), np.array([True]))},
                             fence=Fence("g", "t", {0: 10}), extra=side_writes(ps))
        assert r.function_list(library="lfm")  # loaded again
    finally:
        r.close()
    assert ps.pull("user", ids_of(1), create=False).bias.tolist() == [0.5] and ps.offsets("g", "t") == {0: 10}
    assert ActivityLog(ps).seen(1) == {10} and ActivityLog(ps).popular(5) == [(20, 1.0), (10, 1.0)]


def test_a_fast_assign_push_after_the_library_was_flushed_reloads_it(ps):
    ps.pull("item", ids_of(5))
    r = redis.Redis.from_url(ps.url)
    r.function_flush()
    r.close()
    assert ps.push({"item": Update(ids_of(5), bias=np.float32([1.5]))}, fence=Fence("g", "t", {0: 1}))
    assert ps.pull("item", ids_of(5), create=False).bias.tolist() == [1.5] and ps.offsets("g", "t") == {0: 1}


def test_fenced_writes_below_the_writers_bounds_fail_and_write_nothing(ps):
    """A writer passes what it knows is stored (Fence.stored); offsets gone or behind it mean the server lost
    writes, and every fenced write path refuses to write on top of that."""
    ps.write_rows({"user": (ids_of(1), rows_with_bias(0.5), np.array([True]))}, fence=Fence("g", "t", {0: 10, 1: 4}))
    ps.redis.hset(ps.keys.fence("g", "t"), "1", 2)  # partition 1 went back (an older state came back)
    bounded = Fence("g", "t", {0: 20, 1: 8}, stored={0: 10, 1: 4})
    with pytest.raises(PSStateLost, match=r"partition 1 at 2 < 4"):
        ps.write_rows({"user": (ids_of(1), rows_with_bias(9.0), np.array([False]))}, fence=bounded,
                      extra=side_writes(ps))
    assert ps.pull("user", ids_of(1), create=False).bias.tolist() == [0.5]
    assert ps.offsets("g", "t") == {0: 10, 1: 2} and ActivityLog(ps).seen(1) == set()
    ps.redis.delete(ps.keys.fence("g", "t"))  # offsets gone (a restart without persistence)
    with pytest.raises(PSStateLost, match=r"partition 0 at none < 10, partition 1 at none < 4"):
        ps.push({"user": Update(ids_of(1), bias=np.float32([1.0]))}, mode="gradient", fence=bounded)
    ps.pull("user", ids_of(1))  # the fast assign path (rows cached)
    with pytest.raises(PSStateLost):
        ps.push({"user": Update(ids_of(1), bias=np.float32([1.0]))}, mode="assign", fence=bounded)
    assert ps.pull("user", ids_of(1), create=False).bias.tolist() == [0.5] and ps.offsets("g", "t") == {}
    # the side write checks its own fence key the same way
    log = ActivityLog(ps)
    with pytest.raises(PSStateLost, match="@act"):
        log.record(None, [1], [10], [10], [1.0], [5], fence=Fence("g", "t", {0: 6}, stored={0: 1}))
    assert log.seen(1) == set()
    # bounds met: the write goes through
    assert ps.write_rows({}, fence=Fence("g", "t", {0: 3}))
    assert ps.write_rows({"user": (ids_of(1), rows_with_bias(2.0), np.array([False]))},
                         fence=Fence("g", "t", {0: 4}, stored={0: 3}))
    assert ps.pull("user", ids_of(1), create=False).bias.tolist() == [2.0]


def test_a_server_restarted_without_persistence_is_detected_by_the_next_bounded_write(tmp_path, namespace):
    """SIGKILL + restart of a redis-server without persistence: the library and every key are gone; a write that
    knows what it stored fails with PSStateLost, an unbounded one reloads the library and lands."""
    from lfm_local.stack import RedisServer

    srv = RedisServer(tmp_path)
    srv.start()
    try:
        ps = ParameterServer.get(srv.url, namespace, dim=DIM, retries=2, backoff_base=0.01, backoff_cap=0.05)
        fence = Fence("g", "t", {0: 10})
        assert ps.write_rows({"user": (ids_of(1), rows_with_bias(0.5), np.array([True]))}, fence=fence,
                             extra=side_writes(ps))
        srv.kill()
        srv = RedisServer(tmp_path, srv.port)
        srv.start()
        with pytest.raises(PSStateLost, match=rf"{namespace}:@fence:g:t.*partition 0 at none < 10"):
            ps.write_rows({"user": (ids_of(1), rows_with_bias(1.0), np.array([False]))},
                          fence=Fence("g", "t", {0: 20}, stored=fence.offsets), extra=side_writes(ps))
        assert ps.offsets("g", "t") == {} and not ps.pull("user", ids_of(1), create=False).found.any()
        assert ps.write_rows({"user": (ids_of(1), rows_with_bias(1.0), np.array([True]))},
                             fence=Fence("g", "t", {0: 20}), extra=side_writes(ps))
        assert ps.offsets("g", "t") == {0: 20} and ActivityLog(ps).seen(2) == {20}
    finally:
        ParameterServer.reset_instances()
        srv.stop()
