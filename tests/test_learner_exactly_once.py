"""Exactly-once under SIGKILL at random points, and two learner processes sharing one consumer group."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from _learner_util import (FAST, ROOT, assert_activity_exactly_once, assert_exactly_once, child_env, learner_cmd,
                           produce, ps_state, read_metrics)
from learner_fixtures import COMMON, reference_run, run_learner, syn_dir, syn_topic, syn_values  # noqa: F401


def _trains(path) -> int:
    return sum(m["event"] == "train" for m in read_metrics(path))


@pytest.mark.parametrize("flags", [(), ("--no-consumer-process",), ("--push-mode", "gradient")])
def test_sigkill_at_random_points_applies_every_event_once(redis_url, bootstrap, syn_topic, namespace, syn_dir,
                                                           syn_values, reference_run, tmp_path, flags):
    """Killed three times (by default the consumer runs in a child process, which must go with the learner; also
    with the consumer in process, and with gradient pushes, whose counters, activity log and rows are three
    fenced writes), then run to the end: every event applied once."""
    topic = syn_topic
    reference = reference_run["metrics"][-1]  # an uninterrupted run of the same stream (another group)
    metrics = tmp_path / "m.jsonl"
    cmd = learner_cmd(redis_url, bootstrap, topic, namespace, "--metrics", str(metrics), *FAST, *COMMON, *flags)
    n_batches = len(syn_values) // 32
    rng = np.random.default_rng()
    kills = []
    for _ in range(3):
        # each process trains 1-12 more batches before the kill (its log lines arrive a chunk of up to 16 at a
        # time, so the kill lands up to 15 later): three kills never reach the end of the ~90 batches
        target = (kills[-1] if kills else 0) + int(rng.integers(1, 13))
        assert target < n_batches - 10
        proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while _trains(metrics) < target and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))  # somewhere inside the next batch: pull, step, push or commit
        proc.kill()
        proc.wait()
        kills.append(_trains(metrics))
    print("kills after batches", kills)
    assert len(set(kills)) > 1, f"the kills did not land at different points: {kills}"
    r = run_learner(redis_url, bootstrap, topic, namespace, metrics, *COMMON, *flags, "--data-dir", str(syn_dir),
                    "--idle-timeout", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(redis_url, namespace, syn_values)
    # the activity log is written in the same transaction as the rows (or fenced on its own): exactly once too
    assert_activity_exactly_once(redis_url, namespace, syn_values)
    ps, _ = ps_state(redis_url, namespace)
    assert sum(ps.offsets(f"g-{namespace}", topic).values()) == len(syn_values)
    final = read_metrics(metrics)[-1]
    assert abs(final["test_auc"] - reference["test_auc"]) < 0.03, (final["test_auc"], reference["test_auc"])


def test_two_workers_split_partitions_and_train_one_model(redis_url, bootstrap, topic, namespace, syn_dir,
                                                          syn_values, tmp_path):
    from _learner_util import create_topic

    create_topic(bootstrap, topic, 2)
    procs, paths = [], []
    for w in range(2):
        path = tmp_path / f"w{w}.jsonl"
        cmd = learner_cmd(redis_url, bootstrap, topic, namespace, "--metrics", str(path), *FAST, *COMMON,
                          "--workers", "2", "--idle-timeout", "6", "--dlq" if w else "--no-dlq")
        procs.append(subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True))
        paths.append(path)

    def split() -> bool:  # both members hold exactly one partition each
        last = []
        for p in paths:
            assigns = [m for m in read_metrics(p) if m["event"] == "assign"]
            last.append(assigns[-1]["partitions"] if assigns else [])
        return sorted(sum(last, [])) == [0, 1] and all(len(x) == 1 for x in last)

    deadline = time.monotonic() + 60
    while not split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert split(), "the two learners did not split the two partitions"
    produce(bootstrap, topic, syn_values, partitions=2)
    ends = []
    for proc, path in zip(procs, paths):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "gradient pushes" in err
        ends.append(read_metrics(path)[-1])
    assert all(e["events"] > 0 for e in ends) and sum(e["events"] for e in ends) == len(syn_values)
    assert_exactly_once(redis_url, namespace, syn_values)


def test_learner_on_a_redis_cluster_applies_every_event_once(bootstrap, syn_topic, namespace, syn_values, tmp_path):
    """On a cluster the sync goes through ps.push (per-slot-group Lua with per-group fences), not write_rows."""
    from _ps_cluster import LocalCluster

    with LocalCluster(tmp_path / "cluster") as cluster:
        r = run_learner(cluster.url, bootstrap, syn_topic, namespace, tmp_path / "m.jsonl", *COMMON,
                        "--idle-timeout", "2")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "assign pushes" in r.stderr
        assert_exactly_once(cluster.url, namespace, syn_values)
        assert_activity_exactly_once(cluster.url, namespace, syn_values)
        ps, _ = ps_state(cluster.url, namespace)
        assert ps.is_cluster and sum(ps.offsets(f"g-{namespace}", syn_topic).values()) == len(syn_values)
