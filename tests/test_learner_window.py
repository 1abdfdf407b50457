"""Pure parts of the learner's streaming path: RowWindow (rows held between PS syncs), Decoded (records
decoded on the prefetch thread and cut into micro-batches) and ItemMirror (prequential HR's item copy)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.evaluate import ItemMirror
from learner.input import Decoded
from learner.window import RowWindow
from ps_redis import row_dtype

DIM = 2


def rows_of(*counts: int) -> np.ndarray:
    r = np.zeros(len(counts), row_dtype(DIM))
    r["count"] = counts
    r["vec"] = np.arange(len(counts) * DIM, dtype=np.float32).reshape(-1, DIM)
    return r


def test_window_holds_trains_and_keeps_the_pulled_base():
    w = RowWindow(DIM)
    assert w.missing(np.array([5, 3])).tolist() == [True, True]
    w.add(np.array([5, 3]), rows_of(1, 2), new=np.array([False, True]))
    assert w.missing(np.array([3, 4, 5])).tolist() == [False, True, False]
    w.update_at(w.slots(np.array([3])), vec=[[7.0, 8.0]], bias=[0.5], count=[4])
    w.add(np.array([4]), rows_of(0))
    got = w.cur[w.slots(np.array([3, 5, 4]))]
    assert got["count"].tolist() == [6, 1, 0] and got["vec"][0].tolist() == [7.0, 8.0] and got["bias"][0] == 0.5
    assert w.base["count"].tolist() == [1, 2, 0]  # slot order, as pulled
    assert w.ids.tolist() == [5, 3, 4] and w.new.tolist() == [False, True, False]
    assert w.slots(np.array([9])).tolist() == [-1]  # not held
    w.clear()
    assert len(w) == 0 and w.missing(np.array([3])).tolist() == [True]


def test_window_grows_without_moving_rows():
    w = RowWindow(DIM)
    for start in range(0, 3000, 500):
        ids = np.arange(start, start + 500)[::-1].copy()
        w.add(ids, rows_of(*ids.tolist()))
    assert len(w) == 3000
    ids = np.array([0, 1234, 2999])
    assert w.cur[w.slots(ids)]["count"].tolist() == [0, 1234, 2999]
    w.update_at(w.slots(ids), count=[1, 1, 1])
    assert w.cur[w.slots(ids)]["count"].tolist() == [1, 1235, 3000]


def test_decoded_cut_and_join_keep_records_and_reasons_aligned():
    cols = {"label": np.array([1.0, 0.0, 0.0, 1.0], np.float32), "user_id": np.array([1, 0, 3, 4])}
    d = Decoded(cols, np.array([True, False, True, True]), {1: "bad"})
    a, b = d.cut(0, 2), d.cut(2, 4)
    assert a.reasons == {1: "bad"} and b.reasons == {} and len(b) == 2
    j = Decoded.join([b, a])
    assert j.ok.tolist() == [True, True, True, False] and j.reasons == {3: "bad"}
    p = d.parsed()
    assert p.valid.tolist() == [0, 2, 3] and p.columns["user_id"].tolist() == [1, 3, 4] and p.bad == [(1, "bad")]


def test_item_mirror_maps_ids_and_raw_ids_to_rows():
    m = ItemMirror(DIM)
    m.update(np.array([30, 10]), np.array([3, 1]), np.ones((2, DIM), np.float32), np.array([0.1, 0.2], np.float32),
             np.array([5, 1]))
    m.update(np.array([20, 30]), np.array([2, 3]), np.full((2, DIM), 2.0, np.float32), np.array([0.3, 0.4], np.float32),
             np.array([2, 6]))
    assert m.n == 3
    assert m.columns(np.array([10, 20, 30, 40])).tolist() == [1, 2, 0, -1]
    assert m.bias[:3].tolist() == pytest.approx([0.4, 0.2, 0.3])
    assert m.count[:3].tolist() == [6, 1, 2]
    assert sorted(m.raw_columns({1, 2, 99}).tolist()) == [1, 2]
    for _ in range(3):  # growth past the initial capacity keeps every row
        ids = np.arange(1000, 1700) + 1000 * _
        m.update(ids, ids, np.zeros((700, DIM), np.float32), np.zeros(700, np.float32), np.ones(700, np.int64))
    assert m.n == 2103 and m.columns(np.array([10, 3699])).tolist() == [1, 2102] and m.count[1] == 1


def test_window_packed_view_writes_rows_and_dirty_rows_are_taken_once():
    w = RowWindow(DIM)
    w.add(np.array([5, 3]), rows_of(1, 2), new=np.array([True, False]))
    P = w.packed()  # vec | bias | accum of each slot
    assert P.shape == (2, 2 * DIM + 2) and P[1, :DIM].tolist() == [2.0, 3.0]
    assert len(w.take_dirty()[0]) == 0  # held, not changed yet
    w.update_at(np.array([0, 1]))  # no field: only marks them changed
    ids, cur, base, new = w.take_dirty()
    assert ids.tolist() == [5, 3] and new.tolist() == [True, False]
    assert len(w.take_dirty()[0]) == 0 and not w.new.any()  # clean now, and stored
    s = w.slots(np.array([3, 9]))
    assert s.tolist() == [1, -1]
    P[1, DIM] = 0.75  # bias of id 3
    w.update_at(s[:1])
    ids, cur, base, _ = w.take_dirty()
    assert ids.tolist() == [3] and cur["bias"].tolist() == [0.75] and base["bias"].tolist() == [0.0]
    assert w.base["bias"][1] == 0.75  # after a sync the base is the written value


def test_chunk_index_counts_rows_and_grades_the_target():
    from learner.batch import index_chunk
    from learner.config import ModelConfig

    m = ModelConfig(dim=DIM, batch_size=4)
    day = 86400
    c = {"label": np.array([1, 0, 1, 1, 0], np.float32), "user_id": np.array([7, 8, 7, 9, 7]),
         "movie_id": np.array([70, 70, 71, 72, 71]), "raw_user_id": np.array([1, 2, 1, 3, 1]),
         "raw_movie_id": np.array([10, 10, 11, 12, 11]), "rating": np.array([4.0, 2.5, 5.0, 4.5, 0.5], np.float32),
         "timestamp": np.array([0, 1, 2, 200 * day, 201 * day])}
    ci = index_chunk(c, m)
    # the training target: (1 − w)·label + w·(rating − 0.5)/4.5 with w = rating_weight (0.5)
    assert ci.target.tolist() == pytest.approx([0.5 + 0.5 * 3.5 / 4.5, 0.5 * 2 / 4.5, 1.0, 0.5 + 0.5 * 4 / 4.5, 0.0])
    assert ci.labels.tolist() == [1, 0, 1, 1, 0]  # metrics keep the 0/1 label
    assert ci.uu.tolist() == [7, 8, 9] and ci.ucnt.tolist() == [3, 1, 1] and ci.uinv.tolist() == [0, 1, 0, 2, 0]
    assert ci.icnt.tolist() == [2, 2, 1] and ci.wanted["item"][1].tolist() == [10, 11, 12]
    assert ci.wanted["user"][1].tolist() == [1, 2, 3] and set(ci.wanted) == {"user", "item", "global"}


def test_held_rows_survive_syncs_until_the_ps_epoch_moves(redis_url, namespace):
    """A single writer pulls a row once; a delete by another process (epoch) makes it pull again."""
    from learner.sync import WindowSync
    from ps_redis import Fence, ParameterServer
    from ps_redis.activity import ActivityLog

    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=1)
    try:
        sync = WindowSync(ps, ActivityLog(ps), DIM, "assign", fence=lambda o: Fence("g", "t", o),
                          commit=lambda o: None, retry=lambda what, fn, *a, **k: (fn(*a, **k), 0),
                          say=lambda s: None, tick=lambda name, t: t)
        ids = np.array([11, 12], np.int64)

        def train_once(offset: int, bias: float) -> None:
            slots = sync.hold({"user": (ids, None)})
            sync.packed("user")[slots["user"], DIM] = bias
            sync.held["user"].update_at(slots["user"])
            sync.add_batch(np.array([0]), np.array([offset]))
            sync.sync(wait=True)

        train_once(0, 0.5)
        assert ps.pull("user", ids, create=False).bias.tolist() == [0.5, 0.5] and ps.count("user") == 2
        ps.redis.set(f"{namespace}:user:11", b"x" * ps.row_bytes)  # what the learner holds wins (single writer)
        train_once(1, 0.25)
        assert ps.pull("user", ids, create=False).bias.tolist() == [0.25, 0.25]
        assert ps.offsets("g", "t") == {0: 2}
        ps.delete("user", ids[:1])  # another process: moves the epoch
        train_once(2, 0.125)  # this write may still carry the held row ...
        train_once(3, 1.0)  # ... then the rows are dropped and pulled again
        assert len(sync.held["user"]) == 0
        train_once(4, 2.0)
        assert len(sync.held["user"]) == 2 and ps.pull("user", ids, create=False).bias.tolist() == [2.0, 2.0]
        sync.close()
    finally:
        ps.flush()


def test_metrics_records_torn_by_a_kill_stay_on_their_own_line(tmp_path, capsys):
    from learner.report import open_metrics
    from learner.plot import load

    path = tmp_path / "m.jsonl"
    path.write_text('{"event": "train", "step": 1}\n{"event": "tra')  # a learner killed mid-write
    with open_metrics(path) as f:
        f.write('{"event": "assign", "step": 1}\n')
    assert [r["event"] for r in load(path)] == ["train", "assign"]
    assert f"{path}:2: not a JSON object" in capsys.readouterr().err
    path.write_text("garbage\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: not a JSON object"):
        load(path)


def test_id_index_finds_rows_of_ids_added_in_any_order():
    from learner.idindex import IdIndex

    ix = IdIndex()
    assert ix.find([5]).tolist() == [-1] and len(ix) == 0
    ix.add([2**59, 7, -3], [0, 1, 2])
    ix.add([4], [3])
    assert ix.find([7, 4, 2**59, -3, 8, 2**60]).tolist() == [1, 3, 0, 2, -1, -1] and len(ix) == 4
    ix.clear()
    assert ix.find([7]).tolist() == [-1]


def test_consumer_runs_in_a_child_by_default_unless_polling_on_the_loop_thread():
    from learner.config import LearnerConfig

    assert LearnerConfig().in_child  # kafka-python parses records in Python: off the loop's GIL
    assert LearnerConfig(backend="confluent").in_child
    assert not LearnerConfig(prefetch=False).in_child  # polling on the loop's thread
    assert not LearnerConfig(consumer_process=False).in_child
    assert not LearnerConfig(backend="confluent", consumer_process=False).in_child


def test_read_ahead_holds_the_rows_of_pending_records_and_writes_nothing(redis_url, namespace):
    """Before a background write the loop pulls the rows of what it consumed already; training those records
    afterwards sends Redis nothing, and rows held early are not written until trained."""
    import redis

    from learner.config import LearnerConfig, preset
    from learner.kafka_io import Chunk
    from learner.loop import Learner
    from lfm_stream.hashing import movie_hash as item_key, user_hash as user_key
    from lfm_stream.schema import make_example

    users, movies = [1, 2, 3, 1, 2, 4], [10, 11, 12, 13, 10, 14]
    values = [make_example(user_id=user_key(u), movie_id=item_key(m), raw_user_id=u, raw_movie_id=m, rating=4.0,
                           label=1.0, timestamp=1_000_000 + i) for i, (u, m) in enumerate(zip(users, movies))]
    learner = Learner(LearnerConfig(redis_url=redis_url, namespace=namespace, hr_sample=0.0,
                                    model=preset("default", dim=DIM, batch_size=2)))
    r = redis.Redis.from_url(redis_url)

    def calls() -> int:
        return sum(v["calls"] for k, v in r.info("commandstats").items() if k not in ("cmdstat_info",))

    try:
        chunk = Chunk(np.zeros(6, np.int32), np.arange(6, dtype=np.int64), values)
        chunk.decoded = learner.input.decode(values)
        learner.source.pending.add(chunk)
        learner._read_ahead()
        held = learner.sync.held
        assert not held["user"].missing(np.array(sorted({user_key(u) for u in users}))).any()
        assert not held["item"].missing(np.array(sorted({item_key(m) for m in movies}))).any()
        assert not any(w.dirty.any() for w in held.values()) and learner.ps.count("user") == 0
        before = calls()
        learner._process(learner._take(6))  # three micro-batches, all rows held: no pull
        assert calls() == before and learner.trainer.step == 3 and learner.records == 6
        assert held["user"].dirty.all() and held["item"].dirty.all()
        learner.sync.close()  # the fenced write of the trained rows
        assert learner.ps.count("user") == 4 and learner.ps.count("item") == 5
        assert learner.ps.offsets(learner.cfg.group, learner.cfg.topic) == {0: 6}
    finally:
        learner.ps.flush()


def test_side_writes_of_a_replayed_window_with_other_bounds_count_each_event_once(redis_url, namespace):
    """Gradient mode / cluster: a learner killed after its activity-log write but before its rows replays from the
    rows' offsets, in windows cut elsewhere: the side write skips exactly the recorded events."""
    from learner.sync import WindowSync
    from ps_redis import Fence, ParameterServer
    from ps_redis.activity import ActivityLog

    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=1)
    try:
        fence = lambda o: Fence("g", "t", o)  # noqa: E731
        sync = WindowSync(ps, ActivityLog(ps), DIM, "gradient", fence=fence, commit=lambda o: None,
                          retry=lambda what, fn, *a, **k: (fn(*a, **k), 0), say=lambda s: None,
                          tick=lambda name, t: t)
        n = 20
        users = np.arange(n, dtype=np.int64) % 3 + 1
        movies = np.arange(n, dtype=np.int64) % 4 + 10
        labels = np.ones(n, np.float32)
        ts, parts, offs = np.full(n, 1000, np.int64), np.arange(n, dtype=np.int32) % 2, np.arange(n) // 2
        # the crashed sync: the activity of events 0..11 (offsets 0..5 of both partitions), no rows
        first = slice(0, 12)
        sync.activity.record(None, users[first], movies[first], movies[first], labels[first], ts[first],
                             fence=fence({0: 6, 1: 6}))
        # the replay: one window of all 20 events (offsets 0..9), then its rows
        sync.add_events(users, movies, movies, labels, ts, parts, offs)
        sync.add_batch(parts, offs)
        sync.sync(wait=True)
        assert sorted(sync.activity.popular(10)) == [(10, 5.0), (11, 5.0), (12, 5.0), (13, 5.0)]
        assert ps.offsets("g", "t") == {0: 10, 1: 10}
        sync.close()
    finally:
        ps.flush()


def test_prequential_hr_ranks_by_the_lfm_channel():
    """log σ(q·v + b_i + b_u + μ) + log(1 + n_i), computed by hand for three items; rated movies are excluded."""
    from learner.config import ModelConfig
    from learner.prequential import PrequentialHR

    hr = PrequentialHR(ModelConfig(dim=DIM), k=1)
    hr.learn(np.array([1, 2, 3]), np.array([11, 12, 13]), np.array([[1, 0], [0, 1], [1, 1]], np.float32),
             np.array([0.0, 0.0, -2.0], np.float32), np.array([0, 100, 0]))
    # q = [2, 0], b_u + μ = 0.5: logits 2.5, 0.5, 0.5; channel -0.079, -0.474 + log 101 = 4.141, -0.474
    q, offsets = np.array([[2.0, 0.0]] * 3, np.float32), np.full(3, 0.5, np.float32)
    hr.score(q, offsets, np.array([2, 1, 1]), [set(), set(), {12}])
    assert (hr.hits, hr.n) == (2, 3)  # item 2 tops; item 1 only once item 2 is rated


def test_probe_mirrors_item_counts_as_trained_so_far(redis_url, namespace):
    """The held rows count a whole chunk's events before it trains; the probe's mirror counts only the events
    trained before the sample (the LFM channel's n_i does not see the chunk's later events)."""
    from learner.batch import index_chunk
    from learner.config import ModelConfig
    from learner.probe import HRProbe
    from learner.sync import WindowSync
    from ps_redis import Fence, ParameterServer
    from ps_redis.activity import ActivityLog

    m = ModelConfig(dim=DIM, batch_size=2)
    ps = ParameterServer.get(redis_url, namespace, dim=DIM, init_scale=0.1, seed=1)
    try:
        retry = lambda what, fn, *a, **k: (fn(*a, **k), 0)  # noqa: E731
        sync = WindowSync(ps, ActivityLog(ps), DIM, "assign", fence=lambda o: Fence("g", "t", o),
                          commit=lambda o: None, retry=retry, say=lambda s: None, tick=lambda name, t: t)
        movies = np.array([70, 71, 70, 70, 72, 71])
        c = {"label": np.array([1, 0, 1, 1, 0, 1], np.float32), "user_id": np.array([1, 2, 1, 3, 2, 1]),
             "movie_id": movies, "raw_user_id": np.array([1, 2, 1, 3, 2, 1]), "raw_movie_id": movies - 60,
             "rating": np.full(6, 4.0, np.float32), "timestamp": np.arange(6)}
        ci = index_chunk(c, m)
        slots = sync.hold(ci.wanted)
        sync.count(ci, slots)  # the whole chunk: 70 → 3, 71 → 2, 72 → 1
        item_slots = slots["item"][ci.iinv]
        probe = HRProbe(m, 10, 0.0, ActivityLog(ps), sync, retry)
        probe.plan(c, ci, 0, item_slots)
        mirror = probe.hr.mirror
        probe.trained(np.unique(item_slots[:2]), slice(0, 2))  # the first micro-batch: one event of 70 and of 71
        probe.refresh()
        probe.rate()
        assert mirror.count[mirror.columns(np.array([70, 71]))].tolist() == [1, 1] and mirror.n == 2
        probe.trained(np.unique(item_slots[2:]), slice(2, 6))
        probe.refresh()
        probe.rate()
        assert mirror.count[mirror.columns(np.array([70, 71, 72]))].tolist() == [3, 2, 1]
        probe.close()
    finally:
        ps.flush()
