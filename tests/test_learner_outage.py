"""The learner through broker outages, on a Tansu broker of its own (killed and restarted on the same port).

Tansu keeps topics in memory, so a restarted broker has lost the topic, its offsets and the consumer group.  What
"resume" means then: the learner waits and retries (with backoff, within ``--retry-budget``) while the broker is
away, rejoins its group when it is back and seeks to the offsets stored in the PS (the truth; the group's own
commits are gone with the broker).  The stream published again from its start has the same offsets, so the
learner continues exactly where it stopped: every event applied once.  While the new log is still shorter than
the PS offset the consumer waits there.  A broker away for longer than the budget ends the learner with a clear
error and exit code 3, never a traceback, and with everything it trained written to the PS.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from _learner_util import (FAST, ROOT, assert_activity_exactly_once, assert_exactly_once, child_env, learner_cmd,
                           produce, ps_state)
from learner_fixtures import COMMON, syn_dir, syn_values  # noqa: F401 (fixtures)
from lfm_local.stack import TansuBroker, free_port

FLAGS = [*FAST, *COMMON, "--no-xla", "--train-log-steps", "20"]


def _wait(what: str, ok, timeout: float = 120.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the learner exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n" + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.1)


def _applied(redis_url: str, namespace: str, topic: str) -> int:
    ps, _ = ps_state(redis_url, namespace)
    return sum(ps.offsets(f"g-{namespace}", topic).values())


@pytest.fixture
def broker(tmp_path):
    """A Tansu broker of the test's own on a fixed free port (a restart keeps the address)."""
    b = TansuBroker(tmp_path / "tansu", free_port())
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("flags", [(), ("--no-consumer-process",), ("--backend", "confluent")],
                         ids=["kafka-python-child", "kafka-python-in-process", "confluent-child"])
def test_a_broker_restart_is_ridden_out_and_every_event_applied_once(redis_url, namespace, syn_values, broker,
                                                                     tmp_path, flags):
    values = syn_values
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    first = len(values) * 6 // 10
    produce(broker.bootstrap, topic, values[:first])
    log = tmp_path / "learner.log"
    cmd = learner_cmd(redis_url, broker.bootstrap, topic, namespace, *FLAGS, "--max-events", str(len(values)),
                      "--retry-budget", "90", *flags)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait("the first part applied", lambda: _applied(redis_url, namespace, topic) == first, 180, proc, log)
        broker.kill()
        _wait("the learner backing off", lambda: "away (no answer to a probe" in log.read_text(), 60, proc, log)
        time.sleep(2)  # a few retries while the broker is away
        broker.start()
        # the broker lost the topic: the stream is published again from its start, first only a part that ends
        # before the PS offset (the consumer waits there), then the rest (the same offsets as before, and more)
        produce(broker.bootstrap, topic, values[:first // 2])
        time.sleep(4)
        assert _applied(redis_url, namespace, topic) == first  # nothing applied twice or skipped meanwhile
        produce(broker.bootstrap, topic, values[first // 2:])
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "answering again after" in text and "Traceback" not in text
    assert "retry 2 in 0.2s" in text  # backoff doubles
    if "confluent" in flags:  # librdkafka rejoins as soon as the broker answers (its session timed out meanwhile);
        # kafka-python keeps its fetch position until a commit fails: either way the consumer waits at the offset
        assert f"partition 0 ends at offset {first // 2}, before the PS offset {first}" in text
    assert_exactly_once(redis_url, namespace, values)
    assert_activity_exactly_once(redis_url, namespace, values)
    assert _applied(redis_url, namespace, topic) == len(values)


@pytest.mark.parametrize("flags", [(), ("--no-consumer-process",)], ids=["child-process", "in-process"])
def test_a_broker_away_past_the_retry_budget_ends_the_learner_with_a_clear_error(redis_url, namespace, syn_values,
                                                                                 broker, tmp_path, flags):
    values = syn_values[:1000]
    topic = f"gone-{uuid.uuid4().hex[:8]}"
    produce(broker.bootstrap, topic, values)
    log = tmp_path / "learner.log"
    cmd = learner_cmd(redis_url, broker.bootstrap, topic, namespace, *FLAGS, "--retry-budget", "4", *flags)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        _wait("the stream applied", lambda: _applied(redis_url, namespace, topic) == len(values), 180, proc, log)
        broker.kill()
        assert proc.wait(timeout=60) == 3  # the budget, then a prompt exit (leaving the group is not waited for)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"lfm-learner: error: Kafka broker {broker.bootstrap} (PLAINTEXT): still failing after" in text
    assert "(retry budget 4 s, " in text and "ConnectionRefusedError" in text and "Traceback" not in text
    assert_exactly_once(redis_url, namespace, values)  # what was trained is in the PS
    assert _applied(redis_url, namespace, topic) == len(values)


@pytest.mark.parametrize("backend", ["kafka-python", "confluent"])
def test_settings_the_broker_does_not_take_end_the_learner_with_a_clear_error(redis_url, bootstrap, namespace,
                                                                              backend):
    """KAFKA_SECURITY_PROTOCOL=SSL against the plain listener: the consumer cannot get through, and says why within
    the retry budget (exit 3, no traceback) instead of waiting without end."""
    r = subprocess.run(learner_cmd(redis_url, bootstrap, "never", namespace, *FLAGS, "--retry-budget", "3",
                                   "--backend", backend),
                       env=child_env(KAFKA_SECURITY_PROTOCOL="SSL"), cwd=ROOT, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 3, r.stderr[-3000:]
    assert f"lfm-learner: error: connecting to Kafka broker {bootstrap} (SSL, CA (system)): still failing" in r.stderr
    assert "accepts TCP connections but the TLS handshake failed" in r.stderr and "Traceback" not in r.stderr
