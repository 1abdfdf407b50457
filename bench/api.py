"""Recall service latency and throughput over HTTP (and freshness), printed as JSON.

    python bench/api.py                                  # ~9k synthetic movies, local redis-server
    python bench/api.py --movies 1000000 --faiss both    # 1M synthetic movies, brute force and Faiss
    python bench/api.py --redis-url URL --namespace lfm --data-dir DIR   # a trained model
    python bench/api.py --freshness --data-dir DIR       # + event -> answer freshness (needs Kafka)

What runs: the service as its own process (``python -m recall_api``, uvicorn, one worker) on a free
loopback port, and a load generator in this process: ``--concurrency`` keep-alive HTTP/1.1 connections
(asyncio + uvloop, raw sockets, so the client costs a few µs per request), each sending its next request
when the previous answer arrived (closed loop), bounded by ``--requests`` and ``--seconds``.  Latency is
request-write to last-body-byte.  u2i asks random users that have a vector, i2i random movies; k = --k.
A concurrency-1 pass gives the unloaded latency.

Synthetic mode fills a fresh namespace of a redis-server started here (``put_rows``, whole rows with raw
ids) with ``--movies`` item and ``--users`` user vectors (dim --dim) and ~``--seen`` rated movies per user.
Freshness (``--freshness``) is measured by :mod:`bench.freshness` (replay at --rate 1000 + learner).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lfm_stream.hashing import hash_movie_ids, hash_user_ids  # noqa: E402
from lfm_stream.stack import LocalStack, free_port  # noqa: E402


# ------------------------------------------------------------------------------------------ data
def fill_synthetic(redis_url: str, namespace: str, movies: int, users: int, dim: int, seen: int,
                   seed: int = 0, chunk: int = 50_000) -> dict:
    """Random item / user rows (whole rows via put_rows) and an activity log; returns timings."""
    from ps_redis import ParameterServer, row_dtype
    from ps_redis.activity import ActivityLog

    t0 = time.perf_counter()
    ps = ParameterServer.get(redis_url, namespace, dim=dim)
    rng = np.random.default_rng(seed)
    dt = row_dtype(dim)

    def put(table: str, raw: np.ndarray, hashed: np.ndarray, scale: float) -> None:
        for s in range(0, len(raw), chunk):
            r = raw[s:s + chunk]
            rows = np.zeros(len(r), dt)
            rows["vec"] = rng.normal(scale=scale, size=(len(r), dim))
            rows["bias"] = rng.normal(scale=0.3, size=len(r))
            rows["count"], rows["updated"], rows["raw"] = 1, time.time(), r
            ps.put_rows(table, hashed[s:s + chunk], rows)

    movie_ids = np.arange(1, movies + 1, dtype=np.int64)
    put("item", movie_ids, hash_movie_ids(movie_ids), 1.0 / np.sqrt(dim))
    user_ids = np.arange(1, users + 1, dtype=np.int64)
    put("user", user_ids, hash_user_ids(user_ids), 1.0)
    log = ActivityLog(ps)
    # rated movies: popularity-skewed (Zipf-like), like MovieLens
    p = 1.0 / np.arange(1, movies + 1) ** 0.8
    p /= p.sum()
    for s in range(0, users, 500):
        us = user_ids[s:s + 500]
        ru = np.repeat(us, seen)
        rm = rng.choice(movie_ids, size=len(ru), p=p)
        log.record(hash_user_ids(ru), ru, rm, hash_movie_ids(rm), (rng.random(len(ru)) < 0.5).astype(np.float32),
                   np.full(len(ru), 1_000_000, np.int64))
    return {"fill_s": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------------------- server
class Service:
    """``python -m recall_api`` as a subprocess on a free port."""

    def __init__(self, redis_url: str, namespace: str, data_dir: str | None, faiss: bool, nprobe: int,
                 log_path: Path):
        self.port = free_port()
        argv = [sys.executable, "-m", "recall_api", "--host", "127.0.0.1", "--port", str(self.port),
                "--redis-url", redis_url, "--namespace", namespace, "--faiss-nprobe", str(nprobe)]
        if data_dir:
            argv += ["--data-dir", data_dir]
        if faiss:
            argv.append("--faiss")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds until /healthz answered 200 (vectors loaded)."""
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recall_api exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.base + "/healthz", timeout=5).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"recall_api not ready within {timeout} s; see {self.log.name}")

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base + "/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------ load client
async def _worker(port: int, paths: list[bytes], start: int, step: int, stop_at: float, budget: list[int],
                  lat: list[float], codes: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    perf = time.perf_counter
    try:
        while budget[0] > 0 and perf() < stop_at:
            budget[0] -= 1
            t0 = perf()
            writer.write(b"GET " + paths[i % len(paths)] + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            cl = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    cl = int(line[15:])
                    break
            await reader.readexactly(cl)
            lat.append(perf() - t0)
            codes[status] = codes.get(status, 0) + 1
            i += step
    finally:
        writer.close()


def load(port: int, paths: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    """Closed-loop load: ``concurrency`` connections, at most ``requests`` requests or ``seconds``."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    lat: list[float] = []
    codes: dict[int, int] = {}

    async def run() -> float:
        budget = [requests]
        t0 = time.perf_counter()
        await asyncio.gather(*(_worker(port, paths, c, concurrency, t0 + seconds, budget, lat, codes)
                               for c in range(concurrency)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    ms = np.array(lat) * 1000.0
    return {"concurrency": concurrency, "requests": len(lat), "seconds": round(elapsed, 3),
            "qps": round(len(lat) / elapsed, 1), "status": {str(k): v for k, v in sorted(codes.items())},
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3)}


def query_paths(kind: str, ids: np.ndarray, k: int, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [b"/%s/%d?k=%d" % (kind.encode(), int(i), k) for i in rng.choice(ids, size=n)]


def bench_service(svc: Service, users: np.ndarray, movies: np.ndarray, args: argparse.Namespace) -> dict:
    """Warm up, then a concurrency-1 pass and a loaded pass per endpoint."""
    out: dict = {}
    for kind, ids in (("u2i", users), ("i2i", movies)):
        paths = query_paths(kind, ids, args.k, 20_000, args.seed)
        load(svc.port, paths, 2, min(500, args.requests), 10)  # warm-up
        out[kind] = {
            "unloaded": load(svc.port, paths, 1, min(args.requests, 2000), args.seconds / 2),
            "loaded": load(svc.port, paths, args.concurrency, args.requests, args.seconds),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/api.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default=None, help="use this PS (default: start a local redis-server)")
    p.add_argument("--namespace", default=None, help="namespace of a trained model (default: synthetic fill)")
    p.add_argument("--data-dir", default=None, help="prepared data directory (titles, known users)")
    p.add_argument("--movies", type=int, default=9000, help="synthetic movies (default 9000)")
    p.add_argument("--users", type=int, default=600, help="synthetic users (default 600)")
    p.add_argument("--seen", type=int, default=150, help="synthetic rated movies per user (default 150)")
    p.add_argument("--dim", type=int, default=32, help="synthetic vector dimension (default 32)")
    p.add_argument("--faiss", choices=["no", "yes", "both"], default="no", help="rank with Faiss (default no)")
    p.add_argument("--nprobe", type=int, default=16, help="Faiss lists probed (default 16)")
    p.add_argument("--k", type=int, default=50, help="k of every query (default 50)")
    p.add_argument("--concurrency", type=int, default=8, help="connections of the loaded pass (default 8)")
    p.add_argument("--requests", type=int, default=20_000, help="max requests per pass (default 20000)")
    p.add_argument("--seconds", type=float, default=10.0, help="max seconds per pass (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freshness", action="store_true", help="also measure freshness (see bench/freshness.py)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    result: dict = {"bench": "recall_api", "cpus": os.cpu_count(), "k": args.k,
                    "note": "measured on a shared 2-core machine unless stated otherwise"}
    run_dir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    stack = None
    try:
        redis_url = args.redis_url
        if redis_url is None:
            stack = LocalStack(run_dir, kafka=False, use_env=False).start()
            redis_url = stack.redis_url
        namespace = args.namespace
        if namespace is None:
            namespace = f"bench{uuid.uuid4().hex[:6]}"
            result["synthetic"] = {"movies": args.movies, "users": args.users, "dim": args.dim, "seen": args.seen,
                                   **fill_synthetic(redis_url, namespace, args.movies, args.users, args.dim,
                                                    args.seen, args.seed)}
        from ps_redis import ParameterServer

        ps = ParameterServer.get(redis_url, namespace, dim=None)
        users = np.concatenate([r.raw for r in ps.scan("user")])
        movies = np.concatenate([r.raw for r in ps.scan("item")])
        users, movies = users[users >= 0], movies[movies >= 0]
        result["model"] = {"namespace": namespace, "dim": ps.dim, "movies": int(len(movies)), "users": int(len(users))}
        modes = {"no": [False], "yes": [True], "both": [False, True]}[args.faiss]
        for faiss in modes:
            svc = Service(redis_url, namespace, args.data_dir, faiss, args.nprobe, run_dir / "recall.log")
            try:
                ready = svc.wait_ready()
                entry = {"startup_s": round(ready, 2), **bench_service(svc, users, movies, args)}
                st = svc.stats()
                entry["vectors_loaded"] = st["vectors_loaded"]
                entry["index"] = st["index"] if not faiss else {"faiss": st["faiss"]}
            finally:
                svc.stop()
            result["faiss" if faiss else "brute_force"] = entry
        if args.freshness:
            from bench.freshness import measure_freshness

            result["freshness"] = measure_freshness(args.data_dir, run_dir)
    finally:
        if stack is not None:
            stack.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
