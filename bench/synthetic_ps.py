"""Synthetic content of the parameter server for ``bench/api.py``: a random model, and churn on it.

:func:`fill_synthetic` writes what a trained model would leave in a namespace (whole item and user rows
via ``put_rows``, with raw ids, an activity log of popularity-skewed rated movies, the item channel the item worker
would have written from those ratings, and the default score contract), so the recall service's served score
(every channel) can be measured at any catalogue size without training.  :func:`churn_user_rows` rewrites
random user rows at a fixed rate, as a learner's pushes would, to exercise the service's user cache
invalidation during a u2i pass; it runs in a separate (spawned) process.
"""

from __future__ import annotations

import time

import numpy as np

from lfm_stream.hashing import hash_movie_ids, hash_user_ids
from lfm_stream.scoring import ScoreContract


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
    channel = ItemChannelFill(ps, ScoreContract(dim=dim))
    channel.contract_to_redis()
    # rated movies: popularity-skewed (Zipf-like), like MovieLens
    p = 1.0 / np.arange(1, movies + 1) ** 0.8
    p /= p.sum()
    for s in range(0, users, 500):
        us = user_ids[s:s + 500]
        ru = np.repeat(us, seen)
        rm = rng.choice(movie_ids, size=len(ru), p=p)
        labels = (rng.random(len(ru)) < 0.5).astype(np.float32)
        log.record(hash_user_ids(ru), ru, rm, hash_movie_ids(rm), labels, np.full(len(ru), 1_000_000, np.int64))
        channel.apply(ru, rm, labels)
    return {"fill_s": round(time.perf_counter() - t0, 2), "item_channel_events": channel.events}


class ItemChannelFill:
    """The item worker's writes (:class:`learner.items.ChannelCounter`) without Kafka: co-occurrence counts,
    neighbour lists, degrees, recent movies and popularity buckets of a rating stream, ``window`` events per
    fenced write."""

    def __init__(self, ps, contract, window: int = 20_000):
        from learner.items import ChannelCounter
        from ps_redis.covisit import Covisit

        self.ps, self.window = ps, window
        self.counter = ChannelCounter(Covisit(ps), contract)

    @property
    def events(self) -> int:
        return self.counter.events

    def contract_to_redis(self) -> None:
        """The contract, as the learner publishes it at start."""
        from lfm_stream.scoring import contract_key

        self.ps.redis.set(contract_key(self.ps.namespace), self.counter.contract.to_json())

    def apply(self, users: np.ndarray, movies: np.ndarray, labels: np.ndarray) -> None:
        """Count ratings in stream order (raw ids)."""
        from ps_redis import Fence

        for s in range(0, len(users), self.window):
            cut = slice(s, s + self.window)
            end = self.events + len(users[cut])
            fence = Fence(f"bench-items-{self.ps.namespace}", "ratings", {0: end})
            if not self.counter.write(users[cut], movies[cut], labels[cut], fence):
                raise RuntimeError("the item channel's fenced write was refused")


def churn_user_rows(redis_url: str, namespace: str, users: np.ndarray, rate: float, stop_at_wall: float,
                    seed: int) -> None:
    """Rewrite ``rate`` random user rows per second (new random vectors, whole rows) until ``stop_at_wall``
    (``time.time()``): what a learner's pushes do to the users the service is asked about."""
    from ps_redis import ParameterServer, row_dtype

    ps = ParameterServer.get(redis_url, namespace, dim=None)
    rng = np.random.default_rng(seed)
    batch = max(1, int(round(rate / 100)))  # every 10 ms
    dt = row_dtype(ps.dim)
    next_t = time.time()
    while time.time() < stop_at_wall:
        raw = rng.choice(users, size=batch)
        rows = np.zeros(batch, dt)
        rows["vec"] = rng.normal(size=(batch, ps.dim))
        rows["count"], rows["updated"], rows["raw"] = 1, time.time(), raw
        ps.put_rows("user", hash_user_ids(raw), rows)
        next_t += 0.01
        time.sleep(max(0.0, next_t - time.time()))
