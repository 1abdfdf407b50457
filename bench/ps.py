"""Benchmark of the Redis parameter server; prints JSON.

For batch sizes x dims: pull and push keys/s (assign / gradient, fenced / unfenced), each timed
alternately with the raw redis-py ceiling on the same keys and bytes (MGET for pull, MSET for
pushes) so machine noise hits both; keys/s from medians of per-call times, ``ratio`` = median of
the per-iteration ratios raw time / our time.  Also Redis memory per key (INFO
memory before / after creating N rows) against the payload bytes, and the activity log's cost per
micro-batch.  Starts its own redis-server unless ``--redis-url`` is given.

    python bench/ps.py                        # full grid, ~1 min
    python bench/ps.py --batches 1024 --dims 32 --reps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from pathlib import Path

# run as a script: put the checkout first on sys.path so `ps_redis` is the package, whatever was installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from lfm_stream.config import REDIS_URL_ENV, env_default, env_help  # noqa: E402
from ps_redis.activity import ActivityLog  # noqa: E402
from ps_redis.codec import row_dtype  # noqa: E402
from ps_redis.server import ParameterServer  # noqa: E402
from ps_redis.types import Fence, Update  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """What to measure."""

    redis_url: str | None = None
    batches: tuple[int, ...] = (256, 1024, 4096)
    dims: tuple[int, ...] = (8, 32, 64)
    reps: int = 20
    population: int = 50_000
    memory_keys: int = 100_000
    seed: int = 0


def _median_rate(times: list[float], n: int) -> float:
    return n / statistics.median(times)


def bench_dim(url: str, dim: int, cfg: BenchConfig) -> list[dict]:
    """All (batch, op) measurements for one dimension, in a fresh namespace."""
    ps = ParameterServer.get(url, f"bench{dim}", dim=dim)
    ps.flush()
    raw = redis.Redis.from_url(url)
    rng = np.random.default_rng(cfg.seed)
    population = rng.choice(2**60, size=cfg.population, replace=False).astype(np.int64)
    for i in range(0, len(population), 4096):
        ps.pull("item", population[i:i + 4096])
    out = []
    offset = 0
    for b in cfg.batches:
        batches = [rng.choice(population, size=b, replace=False) for _ in range(cfg.reps)]
        vec = rng.normal(size=(b, dim)).astype(np.float32)
        upd = Update(None, vec=vec, bias=np.ones(b, np.float32), accum=np.ones((b, dim + 1), np.float32),
                     count=np.ones(b, np.int64))
        rows = np.zeros(b, dtype=row_dtype(dim))
        rows["vec"] = vec
        blob = rows.tobytes()
        values = [blob[i * rows.itemsize:(i + 1) * rows.itemsize] for i in range(b)]
        times: dict[str, list[float]] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)

        for rep, ids in enumerate(batches):
            keys = ps.keys.row_keys("item", ids)
            flat: list = [None] * (2 * b)
            flat[0::2], flat[1::2] = keys, values
            u = Update(ids, upd.vec, upd.bias, upd.accum, upd.count)
            step = Update(ids, vec=upd.vec * np.float32(1e-6), bias=upd.bias * np.float32(1e-6),
                          accum=upd.accum, count=upd.count)
            pairs = [("raw_mget", lambda: raw.execute_command("MGET", *keys)),
                     ("pull", lambda: ps.pull("item", ids)),  # also feeds the assign fast path below
                     ("raw_mset", lambda: raw.execute_command("MSET", *flat)),
                     ("push_assign", lambda: ps.push({"item": u}, mode="assign"))]
            if rep % 2:  # alternate who goes first: the second call on the same keys finds warmer caches
                pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
            for name, fn in pairs:
                timed(name, fn)
            offset += 1
            timed("push_assign_fenced", lambda: ps.push({"item": u}, mode="assign",
                                                        fence=Fence("bench", "t", {0: offset})))
            timed("push_gradient", lambda: ps.push({"item": step}, mode="gradient"))
            offset += 1
            timed("push_gradient_fenced", lambda: ps.push({"item": step}, mode="gradient",
                                                          fence=Fence("bench", "t", {0: offset})))
            ps.row_cache.forget()
            timed("push_assign_server_side", lambda: ps.push({"item": u}, mode="assign"))
        raw_get, raw_set = _median_rate(times["raw_mget"], b), _median_rate(times["raw_mset"], b)
        for op, ts in times.items():
            if op.startswith("raw_"):
                continue
            rate = _median_rate(ts, b)
            raw_ts = times["raw_mget" if op == "pull" else "raw_mset"]
            # median of per-iteration ratios: each pair ran back to back, so a slow spell of the
            # (shared) machine hits both sides of a pair
            paired = statistics.median(r / t for r, t in zip(raw_ts, ts))
            out.append({"dim": dim, "batch": b, "op": op, "keys_per_s": round(rate),
                        "ceiling_op": "MGET" if op == "pull" else "MSET",
                        "ceiling_keys_per_s": round(raw_get if op == "pull" else raw_set),
                        "ratio": round(paired, 3), "median_ms": round(statistics.median(ts) * 1e3, 3)})
    ps.flush()
    raw.close()
    return out


def bench_memory(url: str, dim: int, n: int) -> dict:
    """Redis used_memory per row after creating ``n`` rows, vs the packed payload bytes.

    Uses a 3-letter namespace (``m08``, ``m32``, ...; flushed before and after) so keys have the
    length they have under the default namespace ``lfm``.
    """
    ps = ParameterServer.get(url, f"m{dim:02d}"[:3], dim=dim)  # 3 letters like the default 'lfm': usual key length
    ps.flush()
    r = redis.Redis.from_url(url)
    before = r.info("memory")["used_memory"]
    ids = np.random.default_rng(1).choice(2**60, size=n, replace=False).astype(np.int64)
    for i in range(0, n, 4096):
        ps.pull("item", ids[i:i + 4096], raw_ids=np.arange(i, min(i + 4096, n)))
    after = r.info("memory")["used_memory"]
    key_len = float(np.mean([len(k) for k in ps.keys.row_keys("item", ids[:1000])]))
    ps.flush()
    r.close()
    per_key = (after - before) / n
    return {"dim": dim, "rows": n, "bytes_per_row": round(per_key, 1), "payload_bytes": ps.row_bytes,
            "key_bytes": round(key_len, 1), "ratio_to_payload": round(per_key / ps.row_bytes, 3)}


def bench_activity(url: str, batch: int = 1024, batches: int = 100) -> dict:
    """Client CPU and wall time of ActivityLog.record per micro-batch of ``batch`` events."""
    ps = ParameterServer.get(url, "benchact", dim=4)
    ps.flush()
    log = ActivityLog(ps)
    rng = np.random.default_rng(2)
    cpu, wall = [], []
    for _ in range(batches):
        users = np.sort(rng.integers(1, 600, batch))  # time-ordered streams come in user sessions
        movies = rng.integers(1, 10_000, batch)
        labels = (rng.random(batch) < 0.5).astype(np.float32)
        c0, w0 = time.process_time(), time.perf_counter()
        log.record(users * 7, users, movies, movies * 11, labels, np.full(batch, 1_000_000))
        cpu.append(time.process_time() - c0), wall.append(time.perf_counter() - w0)
    ps.flush()
    return {"batch": batch, "client_cpu_ms": round(statistics.median(cpu) * 1e3, 3),
            "wall_ms": round(statistics.median(wall) * 1e3, 3), "events_per_s": round(batch / statistics.median(wall))}


def run(cfg: BenchConfig) -> dict:
    """Run every measurement against ``cfg.redis_url`` or a redis-server of our own."""
    from lfm_local.stack import LocalStack

    stack = None
    url = cfg.redis_url
    if url is None:
        stack = LocalStack(tempfile.mkdtemp(prefix="lfm-bench-ps-"), kafka=False, use_env=False).start()
        url = stack.redis_url
    try:
        results = [m for dim in cfg.dims for m in bench_dim(url, dim, cfg)]
        memory = [bench_memory(url, dim, cfg.memory_keys) for dim in cfg.dims] if cfg.memory_keys else []
        activity = bench_activity(url)
        info = redis.Redis.from_url(url).info("server")
    finally:
        if stack is not None:
            stack.stop()
    at = {(m["dim"], m["batch"], m["op"]): m["ratio"] for m in results}
    targets = {}
    if (32, 1024, "pull") in at:
        targets = {"pull_ratio_b1024_d32": at[(32, 1024, "pull")],
                   "assign_ratio_b1024_d32": at[(32, 1024, "push_assign")],
                   "target_ratio": 0.7,
                   "pull_ok": at[(32, 1024, "pull")] >= 0.7, "assign_ok": at[(32, 1024, "push_assign")] >= 0.7}
    targets.update({f"memory_ratio_d{m['dim']}": m["ratio_to_payload"] for m in memory})
    targets.update({f"memory_ok_d{m['dim']}": m["ratio_to_payload"] <= 2.0 for m in memory})
    return {"bench": "ps", "config": asdict(cfg) | {"redis_url": url if cfg.redis_url else "local"},
            "redis_version": info.get("redis_version"), "targets": targets, "throughput": results,
            "memory": memory, "activity": activity}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    """``python bench/ps.py [--redis-url URL] [--batches 256,1024] [--dims 32] [--reps N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=env_default("LFM_BENCH_REDIS_URL"),
                        help=env_help("Redis to benchmark (default: start a local redis-server; "
                                      f"{REDIS_URL_ENV} is not used so a shared Redis is never flushed by accident)",
                                      "LFM_BENCH_REDIS_URL"))
    parser.add_argument("--batches", type=_ints, default=BenchConfig.batches, help="batch sizes, comma-separated")
    parser.add_argument("--dims", type=_ints, default=BenchConfig.dims, help="dimensions, comma-separated")
    parser.add_argument("--reps", type=int, default=BenchConfig.reps, help="timed calls per (batch, dim, op)")
    parser.add_argument("--population", type=int, default=BenchConfig.population, help="rows to sample batches from")
    parser.add_argument("--memory-keys", type=int, default=BenchConfig.memory_keys,
                        help="rows for the memory figure (0 skips it)")
    args = parser.parse_args(argv)
    cfg = BenchConfig(args.redis_url, args.batches, args.dims, args.reps, args.population, args.memory_keys)
    json.dump(run(cfg), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
