"""ps_redis.counters.Counters on a real redis-server: additions, fences, transactions, save / load, flush."""

from __future__ import annotations

import numpy as np
import pytest

from ps_redis import Fence, ParameterServer
from ps_redis.counters import Counters


@pytest.fixture
def ps(redis_url, namespace) -> ParameterServer:
    ps = ParameterServer.get(redis_url, namespace, dim=4)
    yield ps
    ps.flush()


def as_dict(c: Counters) -> dict:
    b, m, n = c.read()
    return {(int(x), int(y)): int(z) for x, y, z in zip(b, m, n)}


def test_add_read_total(ps):
    c = Counters(ps, "ppop")
    assert c.read()[0].size == 0 and c.total() == 0 and Counters.names(ps) == []
    assert c.add([20, 20, 21], [318, 50, 318], [2, 1, 1])
    assert c.add([20, -1], [318, 7], [3, 1])  # buckets may be negative (times before 1970)
    assert as_dict(c) == {(20, 318): 5, (20, 50): 1, (21, 318): 1, (-1, 7): 1}
    b, m, _ = c.read()
    assert b.tolist() == [-1, 20, 20, 21] and m.tolist() == [7, 50, 318, 318]  # sorted by bucket, then member
    assert c.total() == 8 and Counters.names(ps) == ["ppop"]
    assert not c.add([], [], [])
    with pytest.raises(ValueError, match="differ in length"):
        c.add([1], [2, 3], [1])
    with pytest.raises(ValueError):
        Counters(ps, "Bad-Name")


def test_fence_counts_a_replayed_batch_once(ps):
    c = Counters(ps, "ppop")
    f = Fence("learner", "ratings", {0: 100, 1: 50})
    assert c.add([1, 1], [10, 11], [1, 2], fence=f)
    assert not c.add([1, 1], [10, 11], [1, 2], fence=f)  # a retry after a lost reply, or a restart
    assert c.add([1], [10], [4], fence=Fence("learner", "ratings", {0: 120}))
    assert as_dict(c) == {(1, 10): 5, (1, 11): 2}
    # covered by the namespace's offsets (e.g. restored by load() while this set's own fence is gone)
    ps.push({}, fence=Fence("learner", "ratings", {0: 200}))
    assert not c.add([1], [10], [9], fence=Fence("learner", "ratings", {0: 150}))
    assert as_dict(c)[(1, 10)] == 5


def test_add_command_runs_inside_a_transaction(ps):
    c = Counters(ps, "ppop")
    cmd = c.add_command([3, 3], [1, 2], [1, 1])
    assert c.add_command([], [], []) is None
    pipe = ps.redis.pipeline(transaction=True)
    pipe.execute_command(*cmd)
    pipe.execute_command(*cmd)
    assert pipe.execute() == [1, 1]
    assert as_dict(c) == {(3, 1): 2, (3, 2): 2}


def test_add_command_inside_a_fenced_write_rows(ps):
    """The learner's sync: counter additions next to the row MSET, under one fence; a replay is skipped."""
    from ps_redis.codec import row_dtype

    c = Counters(ps, "ppop")
    rows = np.zeros(1, row_dtype(4))
    rows["count"] = 1
    ids = np.array([3], np.int64)
    fence = Fence("g", "t", {0: 4})
    cmd = c.add_command([7, 7], [1, 2], [2, 5])
    assert ps.write_rows({"item": (ids, rows, np.array([True]))}, fence=fence, extra=[cmd])
    assert as_dict(c) == {(7, 1): 2, (7, 2): 5}
    assert ps.pull("item", ids, create=False).count.tolist() == [1]
    assert not ps.write_rows({"item": (ids, rows, np.array([True]))}, fence=fence, extra=[cmd])
    assert as_dict(c) == {(7, 1): 2, (7, 2): 5}  # counters included


def test_save_load_and_flush(ps, tmp_path):
    c = Counters(ps, "ppop")
    c.add([5, 6], [1, 1], [3, 4])
    Counters(ps, "other").add([0], [9], [1])
    path = ps.save(tmp_path / "s.npz")
    assert np.load(path)["counters"].tolist() == ["other", "ppop"]
    ps.flush()
    assert c.read()[0].size == 0 and Counters.names(ps) == []
    ps.load(path)
    assert as_dict(c) == {(5, 1): 3, (6, 1): 4} and as_dict(Counters(ps, "other")) == {(0, 9): 1}
    assert c.total() == 7
