"""The learner on real servers: stream path end to end, SIGTERM clean exit (poison records: test_learner_poison.py)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from _learner_util import FAST, ROOT, assert_exactly_once, child_env, learner_cmd, ps_state, read_metrics
from learner_fixtures import reference_run, run_learner, syn_dir, syn_topic, syn_values  # noqa: F401 (fixtures)


def test_stream_end_to_end(redis_url, syn_values, reference_run):
    """prepare --synthetic → produce → learner subprocess → metrics file, checkpoint and PS state."""
    r = reference_run["proc"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "prequential AUC" in r.stderr and "step 5 events 160" in r.stderr
    assert "(kafka-python in a child process, assign pushes" in r.stderr  # the default consumer
    recs = reference_run["metrics"]
    kinds = [m["event"] for m in recs]
    assert kinds.count("train") >= 5 and "test" in kinds and kinds[-1] == "end"
    end = recs[-1]
    assert end["reason"] == "idle_timeout" and end["events"] == len(syn_values) and end["poison"] == 0
    # the synthetic ratings come from a latent-factor model: the learner must beat chance clearly
    assert end["test_auc"] > 0.6 and end["prequential_auc"] > 0.55, end
    assert 0.9 < end["coverage"] <= 1.0 and end["warm_auc"] > 0.6
    for key in ("hr_at_10", "hr_at_50", "recall_at_50", "prequential_hr_at_50"):
        assert 0.0 <= end[key] <= 1.0
    assert end["hr_at_50"] >= end["hr_at_10"] and end["hr_samples"] > 50
    train = [m for m in recs if m["event"] == "train"]
    assert all(0.0 <= m["auc"] <= 1.0 and m["loss"] > 0 for m in train if m["auc"] is not None)
    assert list(reference_run["ckpt"].glob("*.npz")), "no PS checkpoint written"
    namespace = reference_run["namespace"]
    assert_exactly_once(redis_url, namespace, syn_values)
    ps, _ = ps_state(redis_url, namespace)
    from ps_redis.activity import ActivityLog

    offsets = ps.offsets(f"g-{namespace}", reference_run["topic"])
    assert sum(offsets.values()) == len(syn_values) and set(offsets) == {0, 1}
    assert ActivityLog(ps).popular(5), "activity log not written"


def test_sigterm_finishes_the_batch_and_exits_cleanly(redis_url, bootstrap, syn_topic, namespace, syn_values,
                                                     tmp_path):
    from kafka import KafkaConsumer, TopicPartition

    topic = syn_topic
    metrics = tmp_path / "m.jsonl"
    cmd = learner_cmd(redis_url, bootstrap, topic, namespace, "--metrics", str(metrics), *FAST, "--batch-size", "16",
                      "--train-log-steps", "1", "--hr-sample", "0.5", "--checkpoint-dir", str(tmp_path / "ckpt"))
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sum(m["event"] == "train" for m in read_metrics(metrics)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    end = read_metrics(metrics)[-1]
    assert end["event"] == "end" and end["reason"] == "signal" and 0 < end["events"] < len(syn_values)
    assert list((tmp_path / "ckpt").glob("*.npz"))
    ps, counts = ps_state(redis_url, namespace)
    group = f"g-{namespace}"
    stored = ps.offsets(group, topic)
    assert sum(stored.values()) == end["events"] == counts["global"][0]  # nothing applied beyond the offsets
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    committed = {p: c.committed(TopicPartition(topic, p)) for p in stored}
    c.close()
    assert committed == stored  # Kafka commits kept in step with the PS offsets


@pytest.mark.parametrize("flags", [("--backend", "confluent"), ("--backend", "confluent", "--no-consumer-process"),
                                   ("--no-consumer-process",)])
def test_other_consumers_train_the_same_stream(redis_url, bootstrap, syn_topic, syn_dir, syn_values, namespace,
                                               reference_run, tmp_path, flags):
    """The optional confluent-kafka consumer (in its child process, and in the learner's), and kafka-python in the
    learner's process (by default it runs in a child process): the whole stream exactly once, commits in step,
    the AUC of the default run."""
    from kafka import KafkaConsumer, TopicPartition

    from learner_fixtures import COMMON

    metrics = tmp_path / "m.jsonl"
    r = run_learner(redis_url, bootstrap, syn_topic, namespace, metrics, *COMMON, *flags,
                    "--data-dir", str(syn_dir), "--idle-timeout", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    backend = flags[1] if flags[0] == "--backend" else "kafka-python"
    where = "" if "--no-consumer-process" in flags else " in a child process"
    assert f"({backend}{where}, assign pushes" in r.stderr
    end = read_metrics(metrics)[-1]
    assert end["reason"] == "idle_timeout" and end["events"] == len(syn_values) and end["poison"] == 0
    assert_exactly_once(redis_url, namespace, syn_values)
    ref = reference_run["metrics"][-1]
    assert abs(end["test_auc"] - ref["test_auc"]) < 0.05, (end["test_auc"], ref["test_auc"])  # partition interleaving
    ps, _ = ps_state(redis_url, namespace)
    group = f"g-{namespace}"
    stored = ps.offsets(group, syn_topic)
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    committed = {p: c.committed(TopicPartition(syn_topic, p)) for p in stored}
    c.close()
    assert sum(stored.values()) == len(syn_values) and committed == stored
