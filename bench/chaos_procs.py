"""Processes of the chaos bench (``bench/chaos.py``): restartable workers, the PS-offset monitor, the recall check.

A :class:`Worker` is one role (the learner, the item channel) run as a subprocess that the bench kills and starts
again; every start gets its own log (and metrics file), so what each process said survives its death.  The
:class:`FenceMonitor` samples the PS offsets of each consumer group every 50 ms from Redis: a group's offsets
move only when its worker's fenced write lands, which is what "making progress" means here.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import redis

from bench.chaos_state import fence_offsets
from lfm_local.stack import free_port

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


@dataclass
class Start:
    """One process of a worker: when it started, its files, how it ended (None: running)."""

    at: float
    log: Path
    metrics: Path | None
    proc: subprocess.Popen = field(repr=False)
    rc: int | None = None
    stopped_by: str | None = None  # "sigkill" / "sigterm" when the bench ended it


class Worker:
    """A role the bench runs as a subprocess and restarts.

    Args:
        name: file prefix (``learner``, ``items``).
        argv: the command line of a start, given its metrics path (None when the role writes none).
        run_dir: where the logs go.
        metrics: whether the role writes a metrics file (``--metrics``).
    """

    def __init__(self, name: str, argv: Callable[[Path | None], list[str]], run_dir: Path, metrics: bool):
        self.name, self.argv, self.run_dir, self.metrics = name, argv, run_dir, metrics
        self.starts: list[Start] = []

    @property
    def current(self) -> Start:
        return self.starts[-1]

    def start(self) -> Start:
        k = len(self.starts)
        log = self.run_dir / f"{self.name}-{k:02d}.log"
        metrics = self.run_dir / f"{self.name}-{k:02d}.jsonl" if self.metrics else None
        with open(log, "wb") as out:
            proc = subprocess.Popen(self.argv(metrics), cwd=ROOT, env=child_env(), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts.append(Start(time.monotonic(), log, metrics, proc))
        return self.current

    def exited(self) -> int | None:
        """The return code of the current process if it ended on its own (the bench notes it), else None."""
        s = self.current
        if s.rc is None and s.proc.poll() is not None:
            s.rc = s.proc.returncode
        return s.rc if s.stopped_by is None else None

    def kill(self) -> int:
        """SIGKILL the current process (a crash) and wait for it."""
        s = self.current
        if s.proc.poll() is None:
            s.stopped_by = "sigkill"
            s.proc.kill()
        s.rc = s.proc.wait(30)
        return s.rc

    def stop(self, timeout: float = 180.0) -> int:
        """SIGTERM the current process (it finishes, writes and exits) and wait; SIGKILL after ``timeout``."""
        s = self.current
        if s.proc.poll() is None:
            s.stopped_by = "sigterm"
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.rc = s.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                s.stopped_by = "sigkill after a sigterm timeout"
                s.proc.kill()
                s.rc = s.proc.wait(30)
        s.rc = s.proc.returncode
        return s.rc

    def logs(self) -> str:
        return "".join(s.log.read_text(errors="replace") for s in self.starts if s.log.exists())

    def metrics_records(self) -> list[dict]:
        """Every metrics record of every start (a line torn by a kill is left out)."""
        out = []
        for s in self.starts:
            if s.metrics is None or not s.metrics.exists():
                continue
            for line in s.metrics.read_text().split("\n")[:-1]:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out


class FenceMonitor(threading.Thread):
    """Samples the summed PS offsets of each consumer group every 50 ms (None while Redis is away).

    Args:
        redis_url: the PS (a restarted server on the same port is found again).
        namespace, topic: the stream's namespace and topic.
        groups: role → consumer group.
    """

    def __init__(self, redis_url: str, namespace: str, topic: str, groups: dict[str, str]):
        super().__init__(name=f"monitor-{namespace}", daemon=True)
        self.redis_url, self.namespace, self.topic, self.groups = redis_url, namespace, topic, groups
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        r = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), {role: fence_offsets(r, self.namespace, g, self.topic)
                                                    for role, g in self.groups.items()}))
            self._halt.wait(0.05)
        r.close()

    def close(self) -> None:
        self._halt.set()
        self.join()

    def latest(self, role: str) -> int | None:
        return self.samples[-1][1][role] if self.samples else None

    def first_above(self, role: str, since: float, value: int) -> float | None:
        """The first sample time at or after ``since`` when ``role``'s offsets were above ``value``."""
        start = bisect.bisect_left(self.samples, since, key=lambda sample: sample[0])
        for t, v in self.samples[start:]:
            if v[role] is not None and v[role] > value:
                return t
        return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET (status 0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


class RecallService:
    """``python -m recall_api`` on a free port against the run's Redis and namespace; ``/healthz`` is asked every
    half second while it runs (what it answered during the faults)."""

    def __init__(self, redis_url: str, namespace: str, data_dir: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "recall_api", "--port", str(self.port), "--redis-url", redis_url,
                "--namespace", namespace, "--data-dir", str(data_dir)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.probes: list[tuple[float, int]] = []  # (time, /healthz status; 0 = no answer)
        self._halt = threading.Event()
        self._prober = threading.Thread(target=self._probe, name=f"recall-{self.port}", daemon=True)
        self._prober.start()

    def _probe(self) -> None:
        while not self._halt.wait(0.5) and self.proc.poll() is None:
            self.probes.append((time.monotonic(), http_get(f"{self.url}/healthz", timeout=2)[0]))

    def _probe_summary(self) -> dict:
        """Probes after the first healthy answer: how many were healthy, the longest unhealthy stretch."""
        first = next((t for t, status in self.probes if status == 200), None)
        after = [(t, status) for t, status in self.probes if first is not None and t >= first]
        longest, since = 0.0, None
        for t, status in after:
            if status != 200 and since is None:
                since = t
            elif status == 200 and since is not None:
                longest, since = max(longest, t - since), None
        statuses: dict[str, int] = {}
        for _, status in after:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        return {"first_healthy_s": None if first is None else round(first - self.started, 1),
                "probes_after_first_healthy": len(after), "healthz_statuses": statuses,
                "longest_unhealthy_s": round(longest, 1)}

    def check(self, user: int, timeout: float = 60.0) -> dict:
        """Wait for ``/healthz`` to answer 200, then ask ``/u2i/<user>?k=10``."""
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline and self.proc.poll() is None:
            status, _ = http_get(f"{self.url}/healthz")
            if status == 200:
                break
            time.sleep(0.25)
        out = {"alive": self.proc.poll() is None, "healthz": status}
        code, body = http_get(f"{self.url}/u2i/{user}?k=10")
        out["u2i_status"] = code
        if code == 200:
            ans = json.loads(body)
            out["u2i_movies"] = len(ans.get("items") or [])
            out["u2i_source"] = ans.get("source")
        out["up"] = out["alive"] and status == 200 and code == 200 and out.get("u2i_movies") == 10
        out.update(self._probe_summary())
        return out

    def stop(self) -> int:
        self._halt.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._prober.join(5)
        return self.proc.returncode
