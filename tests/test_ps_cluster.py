"""ps_redis against a 3-master Redis Cluster started by the fixture (hash-tagged shard groups)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis

from _ps_cluster import LocalCluster
from ps_redis import Fence, ParameterServer, Update
from ps_redis.activity import ActivityLog

DIM = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def cps(cluster) -> ParameterServer:
    ps = ParameterServer.get(cluster.url, f"c{uuid.uuid4().hex[:8]}", dim=DIM, init_scale=0.1, seed=3)
    yield ps
    ps.flush()


def test_cluster_layout_spreads_rows_over_all_masters(cps, cluster):
    assert cps.is_cluster and cps.keys.shards == 32
    ids = np.arange(2000, dtype=np.int64)
    rows = cps.pull("item", ids, raw_ids=ids + 1)
    assert not rows.found.any() and cps.count("item") == 2000
    sizes = [redis.Redis(port=s.port).dbsize() for s in cluster.servers]
    assert all(n > 0 for n in sizes), sizes
    assert cps.keys.row_key("item", 33) == f"{{{cps.namespace}:item:1}}:33"
    again = cps.pull("item", ids[::-1])  # order asked is kept across shard groups
    np.testing.assert_array_equal(again.vec, rows.vec[::-1])
    assert again.raw.tolist() == (ids[::-1] + 1).tolist() and again.found.all()


def test_cluster_push_modes_and_fence(cps):
    ids = np.arange(100, dtype=np.int64)
    cps.pull("item", ids)
    zeros = np.zeros((100, DIM), np.float32)
    fence = Fence("learner", "ratings", {0: 10})
    assert cps.push({"item": Update(ids, vec=zeros, bias=np.zeros(100, np.float32)),
                     "user": Update(ids[:5], vec=zeros[:5])}, mode="assign", fence=fence)
    assert not cps.push({"item": Update(ids, vec=zeros + 1)}, mode="assign", fence=fence)  # covered
    assert cps.offsets("learner", "ratings") == {0: 10}
    step = Update(ids, vec=np.full((100, DIM), 0.25, np.float32), count=np.ones(100, np.int64))
    fence2 = Fence("learner", "ratings", {0: 20})
    assert cps.push({"item": step}, mode="gradient", fence=fence2)
    assert not cps.push({"item": step}, mode="gradient", fence=fence2)
    rows = cps.pull("item", ids)
    assert (rows.vec == -0.25).all() and (rows.count == 1).all()
    assert cps.offsets("learner", "ratings") == {0: 20}
    assert (cps.pull("user", ids[:5]).vec == 0).all()


def test_cluster_delete_scan_save_load(cps, tmp_path):
    ids = np.arange(500, dtype=np.int64)
    cps.pull("item", ids, raw_ids=ids)
    cps.push({}, fence=Fence("g", "t", {1: 5}))
    assert sorted(np.concatenate([r.ids for r in cps.scan("item", chunk=64)]).tolist()) == ids.tolist()
    assert cps.delete("item", ids[:50]) == 50 and cps.count("item") == 450
    before = cps.pull("item", ids[50:], create=False)
    path = cps.save(tmp_path / "c.npz")
    cps.flush()
    assert cps.count("item") == 0
    cps.load(path)
    after = cps.pull("item", ids[50:], create=False)
    for f in ("vec", "bias", "accum", "count", "updated", "raw"):
        assert getattr(after, f).tobytes() == getattr(before, f).tobytes(), f
    assert cps.count("item") == 450 and cps.offsets("g", "t") == {1: 5}


def test_cluster_activity_log(cps):
    log = ActivityLog(cps)
    log.record(np.arange(3), np.array([1, 1, 2]), np.array([10, 11, 10]), np.array([7, 8, 7]),
               np.array([1.0, 0.0, 1.0]), np.array([100, 101, 102]))
    assert log.seen(1) == {10, 11} and log.popular(2) == [(10, 2.0)]
    cursor, changed = log.changes_since(None)
    assert changed.tolist() == [7, 8]
    assert log.changes_since(cursor)[1].tolist() == []


def test_cluster_replay_after_a_crash_mid_push_applies_each_row_once(cps):
    """A learner dies after some shard groups applied a fenced push; replaying the same push
    applies the remaining groups only (the exactly-once claim of the cluster layout)."""
    from ps_redis.types import pack_update

    ids = np.arange(64, dtype=np.int64)
    cps.push({"item": Update(ids, vec=np.zeros((64, DIM), np.float32))})
    step = Update(ids, vec=np.full((64, DIM), 0.5, np.float32), count=np.ones(64, np.int64))
    fence = Fence("learner", "ratings", {0: 42})
    commands = cps._shard_commands([("item", *pack_update("item", step, DIM, "gradient"))], "gradient", 0.0, fence)
    assert len(commands) == 32
    cps.run(commands[:10])  # ... and the process dies here: global offsets not raised yet
    assert cps.offsets("learner", "ratings") == {}
    assert cps.push({"item": step}, mode="gradient", fence=fence) is True  # the replay
    rows = cps.pull("item", ids)
    assert (rows.vec == -0.5).all() and (rows.count == 1).all()
    assert cps.offsets("learner", "ratings") == {0: 42}
    assert cps.push({"item": step}, mode="gradient", fence=fence) is False


def test_cluster_push_below_the_writers_bounds_fails_before_any_shard_group_writes(cps):
    from ps_redis import PSStateLost

    ids = np.arange(64, dtype=np.int64)
    step = Update(ids, bias=np.ones(64, np.float32))
    assert cps.push({"item": step}, mode="gradient", fence=Fence("g", "t", {0: 10}))
    cps.redis.delete(cps.keys.fence("g", "t"))  # the namespace's offsets are gone
    with pytest.raises(PSStateLost, match=r"partition 0 at none < 10"):
        cps.push({"item": step}, mode="gradient", fence=Fence("g", "t", {0: 20}, stored={0: 10}))
    assert (cps.pull("item", ids, create=False).bias == -1).all() and cps.offsets("g", "t") == {}


def test_cluster_push_stores_event_seqs_with_the_namespaces_offsets(cps):
    ids = np.arange(40, dtype=np.int64)
    assert cps.push({"item": Update(ids, bias=np.ones(40, np.float32))}, mode="gradient",
                    fence=Fence("g", "t", {0: 7}, seqs={0: 99}))
    assert cps.fence_state("g", "t") == ({0: 7}, {0: 99})
