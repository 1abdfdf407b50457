"""The item-channel worker (python -m learner.items) against real Tansu + redis-server: its Redis state equals
one pass of learner.covisit over the stream, also after SIGKILLs at random points."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import redis

from _learner_util import ROOT, child_env
from learner_fixtures import syn_dir, syn_topic, syn_values  # noqa: F401


def items_cmd(redis_url, bootstrap, topic, namespace, *args) -> list[str]:
    return [sys.executable, "-m", "learner.items", "--redis-url", redis_url, "--bootstrap", bootstrap,
            "--topic", topic, "--namespace", namespace, "--group", f"items-{namespace}",
            "--session-timeout-ms", "3000", "--neighbors", "100000", *args]


def expected_state(values: list[bytes]) -> dict:
    from learner.covisit import chunk_update
    from lfm_stream.schema import parse_batch
    from lfm_stream.scoring import ScoreContract, pair_weights

    c = parse_batch(values)
    k = ScoreContract()  # the worker's defaults
    u = chunk_update(c["raw_user_id"], c["raw_movie_id"], c["label"], {}, 0, pair_window=k.pair_window,
                     keep=k.recent_items, bucket_events=k.bucket_events,
                     pair_weights=pair_weights(k.pair_window, k.pair_decay))
    nb: dict[int, dict[int, int]] = {}
    for a, b, n in zip(u.pair_a.tolist(), u.pair_b.tolist(), u.pair_n.tolist()):
        nb.setdefault(a, {})[b] = n
    pop: dict[int, int] = {}
    for m, n in zip(u.pop_movies.tolist(), u.pop_n.tolist()):
        pop[m] = pop.get(m, 0) + n
    return {"nb": nb, "deg": dict(zip(u.degree_movies.tolist(), u.degree_n.tolist())), "pop": pop,
            "recent": {user: r.tolist() for user, r in zip(u.users.tolist(), u.recent)}}


def stored_state(redis_url: str, namespace: str) -> dict:
    r = redis.Redis.from_url(redis_url)
    tag = "{" + f"{namespace}:@co" + "}"
    nb = {}
    for key in r.scan_iter(match=f"{tag}:nb:*"):
        flat = [int(x) for x in r.get(key).split()]
        nb[int(key.rsplit(b":", 1)[1])] = dict(zip(flat[0::2], flat[1::2]))
    recent = {}
    for key in r.scan_iter(match=f"{tag}:recent:*"):
        recent[int(key.rsplit(b":", 1)[1])] = [int(x) for x in r.get(key).split()[1:]]
    by_bucket: dict[int, int] = {}
    for key in r.scan_iter(match=f"{tag}:pop:*"):
        if key.endswith(b":all"):
            continue
        for m, n in r.hgetall(key).items():
            by_bucket[int(m)] = by_bucket.get(int(m), 0) + int(n)
    return {"nb": nb, "deg": {int(k): int(v) for k, v in r.hgetall(f"{tag}:deg").items()},
            "pop": {int(k): int(v) for k, v in r.hgetall(f"{tag}:pop:all").items()}, "recent": recent,
            "pop_by_bucket": by_bucket, "events": int(r.hget(f"{tag}:meta", "events") or 0)}


def assert_one_pass(redis_url, namespace, values):
    want, got = expected_state(values), stored_state(redis_url, namespace)
    assert got["events"] == len(values)
    for key in ("nb", "deg", "pop", "recent"):
        assert got[key] == want[key], key
    assert got["pop_by_bucket"] == want["pop"]


def make_namespace(redis_url: str, namespace: str) -> None:
    """The learner creates the namespace the worker writes into (the worker waits for it)."""
    from ps_redis import ParameterServer

    ParameterServer.get(redis_url, namespace, 8)


def test_item_channel_state_is_one_pass(redis_url, bootstrap, syn_topic, syn_values, namespace):
    make_namespace(redis_url, namespace)
    r = subprocess.run(items_cmd(redis_url, bootstrap, syn_topic, namespace, "--idle-timeout", "2",
                                 "--poll-records", "500"),
                       env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_one_pass(redis_url, namespace, syn_values)


def test_item_channel_sigkill_applies_every_event_once(redis_url, bootstrap, syn_topic, syn_values, namespace):
    make_namespace(redis_url, namespace)
    cmd = items_cmd(redis_url, bootstrap, syn_topic, namespace, "--poll-records", "100", "--window-events", "300")
    r = redis.Redis.from_url(redis_url)
    meta = "{" + f"{namespace}:@co" + "}:meta"
    rng = np.random.default_rng()
    kills = []
    for _ in range(3):
        target = (kills[-1] if kills else 0) + int(rng.integers(200, 1200))
        assert target < len(syn_values) - 500
        proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while int(r.hget(meta, "events") or 0) < target and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        proc.kill()
        proc.wait()
        kills.append(int(r.hget(meta, "events") or 0))
    assert len(set(kills)) > 1, kills
    done = subprocess.run(cmd + ["--idle-timeout", "2"], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_one_pass(redis_url, namespace, syn_values)


def test_item_channel_drops_re_sent_records(redis_url, bootstrap, syn_values, namespace):
    """10% of the stream re-sent later with the same lfm-seq, and a malformed record with a forged, too-high seq:
    the item channel counts each event once, like the learner (learner.dedup), the forged seq moves no mark, and
    each partition's mark is stored with its offsets."""
    import uuid

    from test_learner_dedup import produce_numbered, resent

    topic = f"items-dedup-{uuid.uuid4().hex[:8]}"
    n = len(syn_values)
    again = resent(n, 10, 0, n)
    order = list(range(n // 2)) + [i for i in again if i < n // 2] + list(range(n // 2, n)) + \
        [i for i in again if i >= n // 2]
    produce_numbered(bootstrap, topic, [syn_values[i] for i in order], order, forged_at=10)  # + a forged seq
    make_namespace(redis_url, namespace)
    r = subprocess.run(items_cmd(redis_url, bootstrap, topic, namespace, "--idle-timeout", "2",
                                 "--poll-records", "500", "--window-events", "700"),
                       env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_one_pass(redis_url, namespace, syn_values)
    from ps_redis import ParameterServer

    offsets, marks = ParameterServer.get(redis_url, namespace, 8).fence_state(f"items-{namespace}", topic)
    assert sum(offsets.values()) == len(order) + 1 and max(marks.values()) == n - 1


def test_item_channel_stops_on_a_ps_that_lost_its_writes_and_a_restart_rebuilds(redis_url, bootstrap, syn_values,
                                                                                namespace):
    """Redis loses the namespace while the worker runs (a restart without persistence): its next write finds less
    stored than it wrote, writes nothing and the worker exits 3 naming the loss; started again, it replays from the
    earliest offset and the item channel equals one pass over the stream (nothing lost, nothing counted twice)."""
    import uuid

    from _learner_util import produce

    topic = f"items-loss-{uuid.uuid4().hex[:8]}"
    half = len(syn_values) // 2
    produce(bootstrap, topic, syn_values[:half], partitions=1)
    make_namespace(redis_url, namespace)
    cmd = items_cmd(redis_url, bootstrap, topic, namespace, "--poll-records", "200", "--window-events", "500")
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    r = redis.Redis.from_url(redis_url)
    meta = "{" + f"{namespace}:@co" + "}:meta"
    deadline = time.monotonic() + 90
    while int(r.hget(meta, "events") or 0) < half:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    lost = [k for k in r.scan_iter(match=f"*{namespace}*")]
    assert lost and r.delete(*lost) == len(lost)  # everything of the namespace is gone
    from ps_redis import ParameterServer

    ParameterServer.get(redis_url, namespace, 8).write_meta()  # the learner, restarted, creates it again
    produce(bootstrap, topic, syn_values[half:], partitions=1)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err[-3000:]
    assert "lost item-channel writes" in err and "state lost" in err and "Traceback" not in err
    assert int(r.hget(meta, "events") or 0) == 0  # the failed write wrote nothing
    done = subprocess.run(cmd + ["--idle-timeout", "2"], env=child_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_one_pass(redis_url, namespace, syn_values)
