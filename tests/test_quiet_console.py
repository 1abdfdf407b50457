"""A quiet console on real servers: no TensorFlow C++/absl/Python log lines, no alarming messages on normal
paths, one start line per service saying what it is and where it listens, a clean Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from _learner_util import FAST, ROOT, child_env, learner_cmd
from learner_fixtures import syn_dir, syn_topic, syn_values  # noqa: F401 (fixtures)
from lfm_stream.quiet import QUIET_ENV
from lfm_local.stack import free_port
from lfm_stream.version import version

#: What TensorFlow, XLA, absl and oneDNN print when nobody quiets them.
TF_NOISE = re.compile(r"^[IWEF]\d{4} |oneDNN|absl::|cpu_feature_guard|WARNING:tensorflow|WARNING:absl|AutoGraph"
                      r"|XLA service|StreamExecutor|TF_ENABLE_ONEDNN_OPTS|rebuild TensorFlow", re.M)
#: Messages that alarm a user and have no place on a normal run.
ALARMS = re.compile(r"revoked|redis unavailable|Traceback|unpushed records", re.I)


def _user_env() -> dict[str, str]:
    """A user's environment: none of the TF log variables set (the entry points must quiet TF themselves)."""
    env = child_env(PYTHONUNBUFFERED="1")
    for name in QUIET_ENV:
        env.pop(name, None)
    return env


def test_learner_prints_no_tensorflow_lines_and_one_start_line(redis_url, bootstrap, syn_topic, syn_dir, namespace,
                                                               tmp_path):
    cmd = learner_cmd(redis_url, bootstrap, syn_topic, namespace, *FAST, "--data-dir", str(syn_dir),
                      "--max-events", "1500", "--idle-timeout", "5", "--metrics", str(tmp_path / "m.jsonl"))
    proc = subprocess.run(cmd, env=_user_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = proc.stderr
    assert not TF_NOISE.findall(err), f"TensorFlow log lines on stderr:\n{err[:4000]}"
    assert not ALARMS.findall(err), f"alarming lines on a normal run:\n{err[:4000]}"
    start = [line for line in err.splitlines() if f"lfm-learner {version()}: consuming" in line]
    assert len(start) == 1, err[:4000]
    assert (f"consuming '{syn_topic}' from {bootstrap} as group 'g-{namespace}', PS {redis_url} "
            f"namespace '{namespace}'") in start[0]
    assert "test test_rows=" in err and "done (max_events)" in err  # the run itself did happen


def _read_lines(stream, lines: list[str]) -> threading.Thread:
    def pump():
        for line in stream:
            lines.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _wait_line(lines: list[str], needle: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if needle in line:
                return line
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{''.join(lines)[-4000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no line with {needle!r} in {timeout} s:\n{''.join(lines)[-4000:]}")


def test_recall_api_says_where_it_listens_and_stops_quietly(redis_url, namespace):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recall_api", "--port", str(port), "--redis-url", redis_url,
                             "--namespace", namespace, "--dim", "8"], cwd=ROOT, env=_user_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    pump = _read_lines(proc.stderr, lines)
    try:
        start = _wait_line(lines, "recall_api", proc, 60)
        url = f"http://127.0.0.1:{port}"
        assert f"recall_api {version()}: namespace '{namespace}' of {redis_url}, serving {url} " in start
        assert f"API docs {url}/docs" in start
        deadline = time.monotonic() + 60
        while True:  # the URL it printed answers
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-4000:]
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    pump.join(10)
    err = "".join(lines)
    assert not ALARMS.findall(err), f"alarming lines on a clean start and Ctrl-C:\n{err[:4000]}"
    assert not TF_NOISE.findall(err)
    assert len(err.strip().splitlines()) == 1, f"more than the start line:\n{err[:4000]}"


def test_demo_ctrl_c_stops_clients_before_servers(ml_small_ratings, tmp_path):
    """Ctrl-C on the running demo (SIGINT to its whole process group, as a terminal sends it): the learner,
    replay and recall API stop while Redis and the broker are still up, so none of them complains."""
    work = tmp_path / "demo"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lfm_local.cli", "demo", "--port", "0", "--max-events", "3000",
                             "--no-seed", "--ratings", str(ml_small_ratings), "--workdir", str(work)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    pump = _read_lines(proc.stdout, lines)
    try:
        _wait_line(lines, "Ctrl-C stops everything", proc, 540)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines)[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    pump.join(10)
    out = "".join(lines)
    assert not TF_NOISE.findall(out), f"TensorFlow log lines in the demo:\n{out[-6000:]}"
    assert not ALARMS.findall(out), f"alarming lines in the demo:\n{out[-6000:]}"
    assert re.search(r"^recall_api \S+: namespace 'lfm-demo' of redis://127\.0\.0\.1:\d+/0, serving http://", out, re.M)
    assert re.search(r"lfm-learner \S+: consuming 'ratings-demo-\d+' from 127\.0\.0\.1:\d+", out)
    assert re.search(r"^replay \S+: \S+ to topic 'ratings-demo-\d+' at 127\.0\.0\.1:\d+, as fast as possible$", out,
                     re.M)
    # the demo's servers are gone: nothing answers on the ports of its stack any more
    redis_port = int(re.search(r"Redis redis://127\.0\.0\.1:(\d+)/0", out).group(1))
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", redis_port)) != 0, "the demo left its redis-server running"


def test_muted_native_stderr_hides_fd_2_for_its_duration_unless_tf_logs_are_wanted():
    """What a C++ library writes to fd 2 inside the block is gone; what is written after is there; a user who set
    TF_CPP_MIN_LOG_LEVEL=0 sees everything."""
    code = ("import os, sys\n"
            "from lfm_stream.quiet import muted_native_stderr\n"
            "with muted_native_stderr():\n"
            "    os.write(2, b'native inside\\n'); print('python inside', file=sys.stderr)\n"
            "os.write(2, b'native after\\n')\n")
    quiet = subprocess.run([sys.executable, "-c", code], env=_user_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == "native after\n", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], env={**_user_env(), "TF_CPP_MIN_LOG_LEVEL": "0"}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert loud.stderr.splitlines() == ["native inside", "python inside", "native after"], loud.stderr
