"""A 3-master Redis Cluster on free loopback ports, for the ps_redis tests.

Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create ...
--cluster-replicas 0 --cluster-yes``; stopped (only the processes started here) at teardown.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from lfm_local.stack import RedisServer, free_port


class LocalCluster:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas)."""

    def __init__(self, run_dir: Path, masters: int = 3):
        self.run_dir = Path(run_dir)
        self.masters = masters
        self.servers: list[RedisServer] = []

    def start(self) -> "LocalCluster":
        try:
            for _ in range(self.masters):
                port = free_port()
                conf = self.run_dir / f"nodes-{port}.conf"
                srv = RedisServer(self.run_dir, port, extra=[
                    "--cluster-enabled", "yes", "--cluster-config-file", str(conf),
                    "--cluster-port", str(free_port()),  # the default, port + 10000, may not exist
                    "--cluster-node-timeout", "5000"])
                srv.start()
                self.servers.append(srv)
            addrs = [f"127.0.0.1:{s.port}" for s in self.servers]
            subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create", *addrs,
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [redis.Redis(port=s.port).cluster("info").get("cluster_state") for s in self.servers]
            if all(st == "ok" for st in states):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not reach state ok: {states}")

    @property
    def url(self) -> str:
        return self.servers[0].url

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers = []

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
