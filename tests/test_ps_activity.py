"""ps_redis.activity.ActivityLog on a real redis-server: seen sets, popularity, change stream, cursors."""

from __future__ import annotations

import numpy as np
import pytest

from lfm_stream.hashing import hash_movie_ids, hash_user_ids
from ps_redis import ParameterServer
from ps_redis.activity import ActivityLog, CursorExpired


@pytest.fixture
def ps(redis_url, namespace) -> ParameterServer:
    ps = ParameterServer.get(redis_url, namespace, dim=4)
    yield ps
    ps.flush()


def record(log: ActivityLog, users, movies, labels, ts=None):
    users, movies = np.asarray(users, np.int64), np.asarray(movies, np.int64)
    ts = np.arange(len(users), dtype=np.int64) + 1000 if ts is None else np.asarray(ts)
    return log.record(hash_user_ids(users), users, movies, hash_movie_ids(movies), np.asarray(labels, np.float32), ts)


def test_seen_and_popular(ps):
    log = ActivityLog(ps)
    record(log, [1, 2, 1, 3, 1], [10, 10, 20, 30, 10], [1, 1, 0, 1, 1])
    record(log, [2, 4], [20, 30], [1, 1], ts=[5000, 4000])
    assert log.seen(1) == {10, 20} and log.seen(2) == {10, 20} and log.seen(4) == {30}
    assert log.seen(99) == set()
    many = log.seen_arrays([4, 99, 1])
    assert [sorted(a.tolist()) for a in many] == [[30], [], [10, 20]] and all(a.dtype == np.int64 for a in many)
    assert log.seen_many([1, 4]) == [{10, 20}, {30}] and log.seen_arrays([]) == []
    assert log.popular(2) == [(10, 3.0), (30, 2.0)]  # movie 10 liked by 1 (twice) and 2
    assert log.popular(10) == [(10, 3.0), (30, 2.0), (20, 1.0)] and log.popular(0) == []
    assert log.clock() == 5000


def test_changes_since_cursor(ps):
    log = ActivityLog(ps)
    start = log.cursor()
    cursor, ids = log.changes_since(None)
    assert ids.tolist() == [] and cursor == start
    record(log, [1, 2], [10, 20], [1, 0])
    record(log, [3], [10], [1])
    cursor, ids = log.changes_since(None)
    assert sorted(ids.tolist()) == sorted(hash_movie_ids(np.array([10, 20])).tolist())
    assert log.changes_since(cursor) == (cursor, pytest.approx(np.zeros(0)))
    record(log, [4], [30], [0])
    newer, ids = log.changes_since(cursor)
    assert ids.tolist() == hash_movie_ids(np.array([30])).tolist() and newer != cursor
    assert log.cursor() == newer
    with pytest.raises(ValueError, match="not an activity-log cursor"):
        log.changes_since("garbage")


def test_trimmed_or_restarted_log_expires_cursors(ps):
    log = ActivityLog(ps, maxlen=10)
    record(log, [1], [1], [1])
    old, _ = log.changes_since(None)
    for i in range(300):  # MAXLEN ~ trims whole stream nodes (100 entries each)
        record(log, [i], [i], [1])
    with pytest.raises(CursorExpired, match="fell off the change stream"):
        log.changes_since(old)
    cursor, ids = log.changes_since(None)  # never raises: everything retained
    assert 10 <= len(ids) < 300
    log.changes_since(cursor)  # the new cursor is fine
    ps.flush()
    with pytest.raises(CursorExpired, match="older activity log"):
        log.changes_since(cursor)
    assert log.changes_since(None)[1].tolist() == []


def test_record_validates_lengths_and_handles_empty(ps):
    log = ActivityLog(ps)
    with pytest.raises(ValueError, match=r"differ in length \(2, 1, 2\)"):
        log.record([1, 2], [1, 2], [5], [7, 8], [1, 1], [0, 0])
    assert log.record([], [], [], [], [], []) is None
    assert log.popular(3) == []


def test_ids_beyond_int32_travel_as_int64(ps):
    log = ActivityLog(ps)
    big = 2**40 + 3
    log.record([7, 8], [big, 5], [big + 1, 6], [1, 2], [1, 1], [0, 0])
    assert log.seen(big) == {big + 1} and log.seen(5) == {6}
    assert dict(log.popular(5)) == {big + 1: 1.0, 6: 1.0}


def test_fenced_record_is_applied_once(ps):
    """What a learner without a transaction around rows and log sends: a replayed window is recorded once."""
    from ps_redis import Fence

    log = ActivityLog(ps)
    users, movies = np.array([1, 2, 1], np.int64), np.array([10, 10, 20], np.int64)

    def rec(fence, ts):
        return log.record(hash_user_ids(users), users, movies, hash_movie_ids(movies), np.ones(3, np.float32),
                          np.array([ts, ts, ts]), fence=fence)

    f = Fence("learner", "ratings", {0: 100, 1: 50})
    assert rec(f, 1000) is not None
    assert rec(f, 1000) is None  # a retry after a lost reply, or a restart before the rows landed
    assert log.popular(5) == [(10, 2.0), (20, 1.0)] and log.clock() == 1000
    assert ps.redis.hgetall(log.fence_key("learner", "ratings")) == {b"0": b"100", b"1": b"50"}
    assert rec(Fence("learner", "ratings", {0: 120}), 2000) is not None
    assert log.popular(5) == [(10, 4.0), (20, 2.0)] and log.clock() == 2000
    # covered by the namespace's offsets (e.g. restored by load() while the log's own fence is gone)
    ps.push({}, fence=Fence("learner", "ratings", {0: 200}))
    assert rec(Fence("learner", "ratings", {0: 150}), 3000) is None
    assert log.popular(5) == [(10, 4.0), (20, 2.0)] and log.clock() == 2000
    assert rec(None, 3000) is not None and log.popular(1) == [(10, 6.0)]  # unfenced: always applied
