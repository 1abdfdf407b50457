"""The replay against a real broker (Tansu): order, keys, timestamps, partitions, resume, broker restart."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.partitioner.default import murmur2

from lfm_stream.event_seq import seq_of
from lfm_local.stack import TansuBroker, free_port
from producer.publish import Publisher, PublishConfig, _Chunk
from producer.replay import main
from tests._replay_util import ROOT, child_env, consume, prepare_synthetic, read_stream, replay_cmd


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A prepared synthetic data set (real prepare CLI), 4 ordered train shards."""
    return prepare_synthetic(tmp_path_factory.mktemp("replay") / "data", n=4000, shard_size=1000)


@pytest.fixture(scope="module")
def expected(data):
    return read_stream(data)


def summary_of(stdout: str) -> dict:
    """The ``--json`` summary line of a replay run."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_replays_train_stream_in_time_order_with_keys_and_timestamps(data, expected, bootstrap, topic, capsys):
    values, ts, users = expected
    assert main(["--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--rate", "0",
                 "--partitions", "1", "--json", "--state-file", str(data.parent / "st.json")]) == 0
    out = capsys.readouterr().out
    s = summary_of(out)
    assert s["events"] == len(values) and s["resume"] == len(values) and s["last_ts"] == int(ts[-1])
    assert f"resume position: {len(values)} of {len(values)}" in out
    msgs = consume(bootstrap, topic, expect=len(values))
    assert list(msgs) == [0]
    got = msgs[0]
    assert [m.value for m in got] == values  # the stream equals the train shards in timestamp order
    assert [m.key for m in got] == [str(u).encode("ascii") for u in users]
    assert [m.timestamp for m in got] == [int(t) * 1000 for t in ts]
    # every record carries its global index in the time-ordered stream as header lfm-seq
    assert [m.headers for m in got] == [[("lfm-seq", b"%d" % i)] for i in range(len(values))]


def test_partitions_keep_each_partition_in_time_order(data, expected, bootstrap, topic, capsys):
    values, ts, users = expected
    assert main(["--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--rate", "0",
                 "--partitions", "3", "--max-events", "2500", "--state-file", str(data.parent / "st.json")]) == 0
    assert "created topic" in capsys.readouterr().err
    msgs = consume(bootstrap, topic, expect=2500)
    assert sorted(msgs) == [0, 1, 2]
    for p, got in msgs.items():
        want = [(v, t, u) for v, t, u in zip(values[:2500], ts, users)
                if (murmur2(str(u).encode()) & 0x7FFFFFFF) % 3 == p]  # Kafka's default partitioner
        assert [m.value for m in got] == [w[0] for w in want]
        assert [m.timestamp for m in got] == [int(w[1]) * 1000 for w in want]
        assert all(m.key == str(w[2]).encode() for m, w in zip(got, want))
    assert sum(len(g) for g in msgs.values()) == 2500


def test_sigterm_prints_resume_position_and_resume_continues_without_gaps(data, expected, bootstrap, topic, tmp_path,
                                                                          capsys):
    """The script (``python producer/replay.py``) is stopped by SIGTERM, then ``--resume`` finishes the stream."""
    values = expected[0]
    state = tmp_path / "state.json"
    args = ["--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--partitions", "1",
            "--state-file", str(state), "--json", "--progress-interval", "0.5"]
    proc = subprocess.Popen(replay_cmd(*args, "--rate", "1500"), cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until it is streaming (first progress line), then interrupt
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if re.search(r"replay: \d+/\d+ events", line) or time.monotonic() > deadline:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    s = summary_of(out)
    assert s["stopped_by"] == "SIGTERM" and 0 < s["resume"] < len(values)
    assert f"resume position: {s['resume']} of {len(values)}" in out
    assert json.loads(state.read_text())[topic]["next_index"] == s["resume"]
    assert main([*args, "--rate", "0", "--resume"]) == 0
    s2 = summary_of(capsys.readouterr().out)
    assert s2["start"] == s["resume"] and s2["resume"] == len(values)
    got = consume(bootstrap, topic, expect=len(values))[0]
    assert [m.value for m in got] == values  # flushed on SIGTERM: no gap and no duplicate
    # the resumed run continued the numbering where the first one stopped
    assert [seq_of(m.headers) for m in got] == list(range(len(values)))


def test_broker_restart_mid_replay_loses_nothing_from_the_resume_point(data, expected, tmp_path):
    """Tansu keeps topics in memory: a restart loses what it held. The replay must notice, recreate the
    topic and re-send from the first record the old broker did not acknowledge, each record with its lfm-seq.
    The producer is paused (SIGSTOP) around the restart so the old broker's content can be read completely
    first.  Its requests still in flight reach the new broker first, and Tansu recreates the topic for them
    with its default 4 partitions: the replay keeps every key in the partition it had (partition 0)."""
    values = expected[0]
    port = free_port()
    broker = TansuBroker(tmp_path / "run", port)
    broker.start()
    topic = "restart"
    try:
        proc = subprocess.Popen(
            replay_cmd("--data-dir", str(data), "--bootstrap", broker.bootstrap, "--topic", topic, "--rate", "2000",
                       "--partitions", "1", "--state-file", str(tmp_path / "st.json"), "--json",
                       "--progress-interval", "0.3", "--retry-budget", "30"),
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        head = []
        for line in proc.stderr:
            head.append(line)
            if re.search(r"replay: \d+/\d+ events", line):
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # in-flight requests settle on the broker
        old = consume(broker.bootstrap, topic)[0]
        held = [m.value for m in old]
        assert 0 < len(held) < len(values) and held == values[:len(held)]
        broker.kill()
        broker.start()
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=90)
        err = "".join(head) + err
        assert proc.returncode == 0, err
        m = re.search(r"resumed from record #(\d+)", err)
        assert m, err
        k = int(m.group(1))
        assert k <= len(held)  # nothing the old broker lacked was skipped
        assert summary_of(out)["resume"] == len(values)
        parts = consume(broker.bootstrap, topic, expect=len(values) - k)
        assert not any(parts[p] for p in parts if p), {p: len(m) for p, m in parts.items()}
        got = parts[0]
        new = [x.value for x in got]
        assert set(values[k:]) <= set(new)  # every record from the resume point is on the new broker
        assert set(new) <= set(values[k:])  # and nothing from before it
        seqs = [seq_of(x.headers) for x in got]
        assert all(values[q] == v for q, v in zip(seqs, new))  # a re-sent record kept its number
        assert set(seqs) == set(range(k, len(values)))
        assert "idempotent producer on" in err  # Tansu takes the idempotent producer
    finally:
        broker.stop()


def _acked_chunk(start: int, parts: list[int], offsets: list[int]) -> _Chunk:
    """A chunk whose records the broker acknowledged at ``offsets`` (what kafka-python's futures carry)."""
    chunk = _Chunk(start, [b"v"] * len(parts), [b"k"] * len(parts), [0] * len(parts), parts)
    chunk.futures = [SimpleNamespace(value=SimpleNamespace(offset=o)) for o in offsets]
    return chunk


def test_a_chunk_straddling_a_broker_restart_is_caught():
    """A chunk travels in several requests: its head can reach the old broker and its tail a restarted
    one (offsets from 0 again). Checking only each partition's first offset let such a chunk pass as
    acknowledged, and the next chunk continued the new broker's offsets unnoticed."""
    pub = Publisher(PublishConfig("127.0.0.1:1", "t", partitions=2))
    assert pub._check_offsets(_acked_chunk(0, [0, 1, 0, 1], [0, 0, 1, 1])) is None
    assert pub._max_offset == {0: 1, 1: 1}
    assert pub._check_offsets(_acked_chunk(4, [1, 0, 0, 1], [2, 2, 3, 3])) is None
    assert pub._max_offset == {0: 3, 1: 3}
    # partition 0's head went to the old broker (4, 5), its tail to the new one (0, 1)
    lost = pub._check_offsets(_acked_chunk(8, [0, 1, 0, 0, 0], [4, 4, 5, 0, 1]))
    assert lost == ("partition 0 of 't' restarted at offset 0 after 5: the broker lost its log "
                    "(restarted with memory storage?)")
    assert pub._max_offset == {0: 3, 1: 3}  # a rejected chunk moves nothing
    # a first offset behind what the partition already reached is caught as before
    assert "partition 1 of 't' restarted at offset 2 after 3" in pub._check_offsets(_acked_chunk(8, [1], [2]))


def test_unreachable_broker_fails_after_retry_budget(data, tmp_path, capsys):
    port = free_port()
    t = time.monotonic()
    rc = main(["--data-dir", str(data), "--bootstrap", f"127.0.0.1:{port}", "--retry-budget", "1.5",
               "--state-file", str(tmp_path / "st.json"), "--no-verify"])
    took = time.monotonic() - t
    err = capsys.readouterr().err
    assert rc == 3
    assert f"Kafka broker 127.0.0.1:{port} unreachable for 1.5 s (retry budget" in err
    assert took >= 1.5


@pytest.mark.parametrize("case", ["missing_dir", "missing_manifest", "truncated"])
def test_bad_input_is_a_clear_error_with_exit_1(data, tmp_path, capsys, case):
    import shutil

    d = tmp_path / "d"
    if case == "missing_manifest":
        d.mkdir()
    elif case == "truncated":
        shutil.copytree(data, d)
        shard = d / "train" / "part-00002.tfrecord"
        shard.write_bytes(shard.read_bytes()[:-10])
    rc = main(["--data-dir", str(d), "--bootstrap", "127.0.0.1:1", "--retry-budget", "0.5"])
    err = capsys.readouterr().err
    assert rc == 1
    assert {"missing_dir": f"error: data directory {d} does not exist",
            "missing_manifest": f"error: {d / 'manifest.json'} not found",
            "truncated": f"error: shard {(d / 'train' / 'part-00002.tfrecord').resolve()} is corrupt or truncated"}[case] in err


def test_resume_without_saved_state_names_the_file(data, tmp_path, bootstrap, capsys):
    rc = main(["--data-dir", str(data), "--bootstrap", bootstrap, "--resume", "--state-file", str(tmp_path / "none.json")])
    assert rc == 1
    assert f"--resume: no state file {tmp_path / 'none.json'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--rate", "-5"], "rate must be >= 0"),
    (["--rate", "10", "--speedup", "2"], "use either --rate"),
    (["--acks", "2"], "invalid choice"),
    (["--resume", "x"], "--resume takes no value or a record index"),
    (["--start-ts", "yesterday"], "expected unix seconds or an ISO date"),
])
def test_bad_flags_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "producer.replay"], ["lfm-replay"],
                                 [sys.executable, "producer/replay.py"]])
def test_entry_points_show_help_with_env_fallbacks(cmd):
    r = subprocess.run([*cmd, "--help"], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for env in ("LFM_DATA_DIR", "KAFKA_BOOTSTRAP", "LFM_TOPIC", "LFM_REPLAY_RATE", "LFM_PARTITIONS", "LFM_KAFKA_ACKS"):
        assert f"env {env}" in r.stdout


def test_corrupt_shard_met_mid_stream_keeps_delivered_records_and_position(data, expected, bootstrap, topic, tmp_path,
                                                                           capsys):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(data, d)
    shard = d / "train" / "part-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10])
    rc = main(["--data-dir", str(d), "--bootstrap", bootstrap, "--topic", topic, "--rate", "0", "--no-verify",
               "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"error: shard {shard.resolve()} is corrupt or truncated" in err
    assert summary_of(out)["resume"] == 2000  # shards 0 and 1 (1000 records each) went out, in full
    assert json.loads((d / "replay-state.json").read_text())[topic]["next_index"] == 2000
    assert [m.value for m in consume(bootstrap, topic, expect=2000)[0]] == expected[0][:2000]


def test_start_ts_iso_date_max_events_and_speedup(data, expected, bootstrap, topic, capsys):
    from datetime import datetime, timezone

    values, ts, _ = expected
    cut = int(ts[1500])
    first = int((ts < cut).sum())
    iso = datetime.fromtimestamp(cut, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert main(["--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--start-ts", iso,
                 "--max-events", "100", "--speedup", "1e9", "--json", "--state-file", str(data.parent / "st.json")]) == 0
    s = summary_of(capsys.readouterr().out)
    assert (s["start"], s["events"], s["resume"]) == (first, 100, first + 100)
    assert [m.value for m in consume(bootstrap, topic, expect=100)[0]] == values[first:first + 100]


@pytest.mark.parametrize("flags, said", [
    ([], "idempotent producer on: the broker deduplicates the producer's own retries"),
    (["--acks", "1"], "idempotent producer off: it needs acks=all (--acks 1); every record still carries its lfm-seq"),
    (["--no-idempotent"], "idempotent producer off: turned off; every record still carries its lfm-seq header"),
])
def test_the_replay_says_whether_its_producer_is_idempotent(data, expected, bootstrap, topic, capsys, flags, said):
    assert main(["--data-dir", str(data), "--bootstrap", bootstrap, "--topic", topic, "--rate", "0", "--max-events",
                 "50", "--state-file", str(data.parent / "st.json"), *flags]) == 0
    assert said in capsys.readouterr().err
    got = consume(bootstrap, topic, expect=50)[0]
    assert [seq_of(m.headers) for m in got] == list(range(50))  # numbered either way
