"""The learner against a Redis that loses state mid-run (real redis-server, SIGKILL + restart): it stops with a
clear error or rebuilds, never finishes claiming events the PS does not hold; with an append-only file it resumes
exactly once from the PS offsets."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from _learner_util import (FAST, ROOT, assert_activity_exactly_once, assert_exactly_once, child_env, learner_cmd,
                           produce, read_metrics)
from learner_fixtures import COMMON, run_learner, syn_dir, syn_values  # noqa: F401
from lfm_local.stack import RedisServer
from ps_redis import ParameterServer


@pytest.fixture
def topic() -> str:
    return f"loss-{uuid.uuid4().hex[:8]}"


def stored_offsets(url: str, namespace: str, topic: str) -> int | None:
    """Sum of the PS offsets of the test's group (None while Redis does not answer)."""
    r = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return sum(int(v) for v in r.hgetall(f"{namespace}:@fence:g-{namespace}:{topic}").values())
    except redis.RedisError:
        return None
    finally:
        r.close()


def wait_offsets(url: str, namespace: str, topic: str, total: int, proc: subprocess.Popen, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while stored_offsets(url, namespace, topic) != total:
        assert proc.poll() is None, f"the learner exited (rc {proc.returncode}) before the PS held {total} events"
        assert time.monotonic() < deadline, f"the PS offsets never reached {total}"
        time.sleep(0.05)


def start_learner(url: str, bootstrap: str, topic: str, namespace: str, tmp: Path, *flags: str) -> subprocess.Popen:
    cmd = learner_cmd(url, bootstrap, topic, namespace, "--metrics", str(tmp / "m.jsonl"), *FAST, *COMMON,
                      "--idle-timeout", "90", *flags)
    return subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stderr=open(tmp / "stderr.txt", "w"))


def restart(srv: RedisServer, tmp: Path, aof: bool) -> RedisServer:
    """SIGKILL the server and start it again on the same port and files."""
    srv.kill()
    again = RedisServer(tmp, srv.port, aof=aof)
    again.start()
    return again


def assert_whole_stream_once(url: str, namespace: str, topic: str, values: list[bytes]) -> None:
    assert_exactly_once(url, namespace, values)
    assert_activity_exactly_once(url, namespace, values)
    assert stored_offsets(url, namespace, topic) == len(values)


def test_a_redis_restart_without_persistence_stops_the_learner_and_a_restart_rebuilds(
        tmp_path, bootstrap, topic, namespace, syn_values, syn_dir):
    """The issue's run: Redis restarted empty mid-stream.  The learner's next write finds its offsets gone and
    it exits 3 naming them, without writing or committing; run again, it replays the topic from the earliest
    offset (the PS has no offsets) and ends with every event applied once."""
    half = len(syn_values) // 2
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        produce(bootstrap, topic, syn_values[:half], partitions=2)
        proc = start_learner(srv.url, bootstrap, topic, namespace, tmp_path)
        wait_offsets(srv.url, namespace, topic, half, proc)
        srv = restart(srv, tmp_path, aof=False)
        produce(bootstrap, topic, syn_values[half:], partitions=2)
        assert proc.wait(timeout=120) == 3
        err = (tmp_path / "stderr.txt").read_text()
        assert "state lost" in err and f"{namespace}:@fence:g-{namespace}:{topic}" in err and "< " in err, err[-3000:]
        assert stored_offsets(srv.url, namespace, topic) in (0, None)  # nothing claimed after the loss
        end = read_metrics(tmp_path / "m.jsonl")[-1]
        assert end["event"] == "end" and end["reason"] == "ps_state_lost" and "partition" in end["ps_state_lost"]
        r = run_learner(srv.url, bootstrap, topic, namespace, tmp_path / "m2.jsonl", *COMMON, "--idle-timeout", "3")
        assert r.returncode == 0, r.stderr[-3000:]
        assert_whole_stream_once(srv.url, namespace, topic, syn_values)
    finally:
        ParameterServer.reset_instances()
        srv.stop()


def test_on_ps_loss_rebuild_replays_from_the_earliest_offset_without_stopping(
        tmp_path, bootstrap, topic, namespace, syn_values):
    half = len(syn_values) // 2
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        produce(bootstrap, topic, syn_values[:half], partitions=2)
        proc = start_learner(srv.url, bootstrap, topic, namespace, tmp_path, "--on-ps-loss", "rebuild")
        wait_offsets(srv.url, namespace, topic, half, proc)
        srv = restart(srv, tmp_path, aof=False)
        produce(bootstrap, topic, syn_values[half:], partitions=2)
        wait_offsets(srv.url, namespace, topic, len(syn_values), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        end = read_metrics(tmp_path / "m.jsonl")[-1]
        assert end["reason"] == "signal" and end["rebuilds"] == 1 and end["ps_state_lost"] is None
        assert_whole_stream_once(srv.url, namespace, topic, syn_values)
        # the emptied Redis is described again: readers find the namespace's dim and the score contract
        import redis

        from lfm_stream.scoring import ScoreContract, contract_key

        r = redis.Redis.from_url(srv.url)
        assert int(r.hget(f"{namespace}:@meta", "dim")) == 8
        assert ScoreContract.from_json(r.get(contract_key(namespace))).dim == 8
    finally:
        ParameterServer.reset_instances()
        srv.stop()


def test_with_an_append_only_file_a_redis_sigkill_mid_run_loses_nothing_the_learner_does_not_replay(
        tmp_path, bootstrap, topic, namespace, syn_values):
    """The default local stack (AOF, fsync every second): Redis SIGKILLed while the learner trains a live stream
    and restarted from its files.  The learner goes on (or, had the kill lost its last writes, stops naming them
    and a restart resumes from the PS offsets): every event applied once."""
    third = len(syn_values) // 3
    srv = RedisServer(tmp_path, aof=True)
    srv.start()
    try:
        produce(bootstrap, topic, syn_values[:third], partitions=2)
        proc = start_learner(srv.url, bootstrap, topic, namespace, tmp_path)
        wait_offsets(srv.url, namespace, topic, third, proc)
        produce(bootstrap, topic, syn_values[third:2 * third], partitions=2)
        time.sleep(0.3)  # the learner is training the second third now
        before = stored_offsets(srv.url, namespace, topic)
        srv = restart(srv, tmp_path, aof=True)
        after = stored_offsets(srv.url, namespace, topic)
        print(f"PS offsets at the kill {before}, after the restart {after}")
        assert after is not None and after >= third  # the append-only file brought the PS back
        produce(bootstrap, topic, syn_values[2 * third:], partitions=2)
        deadline = time.monotonic() + 120
        while stored_offsets(srv.url, namespace, topic) != len(syn_values) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        else:  # the kill lost writes the learner had made: it stopped without claiming them
            assert proc.returncode == 3 and "state lost" in (tmp_path / "stderr.txt").read_text()
            r = run_learner(srv.url, bootstrap, topic, namespace, tmp_path / "m2.jsonl", *COMMON,
                            "--idle-timeout", "3")
            assert r.returncode == 0, r.stderr[-3000:]
        assert_whole_stream_once(srv.url, namespace, topic, syn_values)
    finally:
        ParameterServer.reset_instances()
        srv.stop()


def test_a_ps_that_came_back_older_is_replayed_from_its_offsets(tmp_path, bootstrap, topic, namespace, syn_values):
    """The AOF's last second lost, simulated deterministically: Redis restarts from a copy of its files taken
    earlier, so the PS offsets are behind the learner's (not gone).  With --on-ps-loss rebuild the learner replays
    from those offsets, not from the earliest: the events after them are applied once, the ones before not again."""
    third = len(syn_values) // 3
    srv = RedisServer(tmp_path, aof=True)
    srv.start()
    files = tmp_path / f"redis-{srv.port}"
    try:
        produce(bootstrap, topic, syn_values[:third], partitions=2)
        proc = start_learner(srv.url, bootstrap, topic, namespace, tmp_path, "--on-ps-loss", "rebuild")
        wait_offsets(srv.url, namespace, topic, third, proc)
        r = redis.Redis.from_url(srv.url)
        r.execute_command("BGREWRITEAOF")  # a consistent copy: the rewrite ends in a base file
        while r.info("persistence")["aof_rewrite_in_progress"]:
            time.sleep(0.05)
        r.close()
        shutil.copytree(files, tmp_path / "older")
        produce(bootstrap, topic, syn_values[third:2 * third], partitions=2)
        wait_offsets(srv.url, namespace, topic, 2 * third, proc)
        srv.kill()
        shutil.rmtree(files)
        shutil.copytree(tmp_path / "older", files)
        srv = RedisServer(tmp_path, srv.port, aof=True)
        srv.start()
        assert stored_offsets(srv.url, namespace, topic) == third
        produce(bootstrap, topic, syn_values[2 * third:], partitions=2)
        wait_offsets(srv.url, namespace, topic, len(syn_values), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
        end = read_metrics(tmp_path / "m.jsonl")[-1]
        assert end["rebuilds"] == 1
        assert_whole_stream_once(srv.url, namespace, topic, syn_values)
        resumes = [m["resume"] for m in read_metrics(tmp_path / "m.jsonl") if m["event"] == "assign"]
        assert sum(resumes[-1].values()) == third, resumes  # replayed from the PS offsets, not the earliest
    finally:
        ParameterServer.reset_instances()
        srv.stop()
