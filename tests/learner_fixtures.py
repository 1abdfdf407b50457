"""Session fixtures of the learner integration tests (imported by tests/test_learner*.py)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from _learner_util import FAST, ROOT, child_env, learner_cmd, prepare, produce, read_metrics, train_records

#: the learner flags every integration test shares (small batches: many kill points on a small stream)
COMMON = ["--batch-size", "32", "--train-log-steps", "1", "--hr-sample", "0.3"]


def run_learner(redis_url, bootstrap, topic, namespace, metrics, *args, timeout=120) -> subprocess.CompletedProcess:
    cmd = learner_cmd(redis_url, bootstrap, topic, namespace, "--metrics", str(metrics), *FAST, *args)
    return subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def syn_dir(tmp_path_factory) -> Path:
    """A small synthetic data set (prepare --synthetic)."""
    return prepare(tmp_path_factory.mktemp("syn") / "data", synthetic=5000,
                   extra=["--synthetic-users", "120", "--synthetic-movies", "300"])


@pytest.fixture(scope="session")
def syn_values(syn_dir) -> list[bytes]:
    """Its train records in stream order."""
    return train_records(syn_dir)


@pytest.fixture(scope="session")
def syn_topic(bootstrap, syn_values) -> str:
    """A 2-partition topic holding the synthetic train stream (read by several groups)."""
    topic = f"syn-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, syn_values, partitions=2)
    return topic


@pytest.fixture(scope="session")
def reference_run(redis_url, bootstrap, syn_topic, syn_dir, tmp_path_factory) -> dict:
    """One uninterrupted learner run over the whole synthetic stream."""
    tmp = tmp_path_factory.mktemp("ref")
    namespace = f"ref{uuid.uuid4().hex[:8]}"
    metrics = tmp / "m.jsonl"
    r = run_learner(redis_url, bootstrap, syn_topic, namespace, metrics, *COMMON, "--data-dir", str(syn_dir),
                    "--checkpoint-dir", str(tmp / "ckpt"), "--idle-timeout", "2")
    return {"proc": r, "namespace": namespace, "metrics": read_metrics(metrics), "ckpt": tmp / "ckpt",
            "topic": syn_topic}
