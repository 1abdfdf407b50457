"""Helpers for the ps_redis tests: worker functions for multi-process tests (spawn-safe), raw key access."""

from __future__ import annotations

import numpy as np
import redis


def create_worker(url: str, namespace: str, seed: int, ids: list[int], barrier, out) -> None:
    """Pull (creating) ``ids`` with initializer ``seed`` right after the barrier; report the vectors."""
    from ps_redis import ParameterServer

    ps = ParameterServer.get(url, namespace, dim=8, init_scale=0.1, seed=seed)
    barrier.wait()
    rows = ps.pull("item", np.array(ids, dtype=np.int64))
    out.put((seed, rows.vec.tobytes(), int((~rows.found).sum())))


def gradient_worker(url: str, namespace: str, ids: list[int], steps: int, step: float, barrier, out) -> None:
    """Push ``steps`` gradient steps of ``step`` (and count 1) on every id, as fast as possible."""
    from ps_redis import ParameterServer, Update

    ps = ParameterServer.get(url, namespace, dim=8)
    arr = np.array(ids, dtype=np.int64)
    upd = Update(arr, vec=np.full((len(arr), 8), step, np.float32), bias=np.full(len(arr), step, np.float32),
                 count=np.ones(len(arr), np.int64))
    barrier.wait()
    for _ in range(steps):
        ps.push({"item": upd}, mode="gradient")
    out.put(steps)


def raw_values(url: str, keys: list[str]) -> list[bytes | None]:
    """The stored bytes of ``keys`` (plain redis-py, standalone server)."""
    r = redis.Redis.from_url(url)
    try:
        return r.mget(keys)
    finally:
        r.close()
