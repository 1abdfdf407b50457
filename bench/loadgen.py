"""The HTTP load generator of ``bench/api.py``: keep-alive connections driving the recall service.

``concurrency`` HTTP/1.1 connections to ``127.0.0.1:<port>``, each a bare asyncio protocol on uvloop
(~20-50 µs of client CPU per request: the generator shares the 2 cores with the service and Redis), no
cyclic GC during a pass.  Closed loop (``rate`` 0): each connection sends its next request when the
previous answer arrived, so a pass measures pure latency (one connection) or saturation throughput
(several; latency includes queueing).  Open loop (``rate`` > 0): requests are due on a fixed schedule
of ``rate`` requests/s in total and their latency is charged from the scheduled send time.  Latency is
request-write (or due time) to last-body-byte; a pass ends after ``requests`` requests or ``seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the load generator (a bare asyncio protocol: the client costs
    ~20 µs of CPU per request, which matters because it shares the 2 cores with the service and Redis).

    Closed loop (``interval`` 0): the next request is written when the previous answer is complete; latency
    is write -> last body byte.  Open loop (``interval`` > 0): requests are due every ``interval`` s on a
    fixed schedule; a request is written at its due time, or as soon as the previous answer arrived when
    that is later, and its latency is counted from the due time (so a late answer is charged, also for the
    requests it delayed)."""

    def __init__(self, paths: list[bytes], start: int, step: int, stop_at: float, budget: list[int],
                 lat: list[float], codes: dict[int, int], interval: float, done: asyncio.Future):
        self.paths, self.i, self.step, self.stop_at, self.budget = paths, start, step, stop_at, budget
        self.lat, self.codes, self.interval, self.done = lat, codes, interval, done
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.need = -1  # bytes of the current answer (head + body) once its head is complete
        self.t0 = 0.0
        self.next_t = time.perf_counter() + (interval * start / step if interval else 0.0)
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._next()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("the service closed the connection"))

    def _next(self) -> None:
        if self.budget[0] <= 0 or time.perf_counter() >= self.stop_at:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.budget[0] -= 1
        if self.interval:
            delay = self.next_t - time.perf_counter()
            if delay > 0:
                self.loop.call_later(delay, self._send)
                return
        self._send()

    def _send(self) -> None:
        if self.interval:
            self.t0 = self.next_t
            self.next_t += self.interval
        else:
            self.t0 = time.perf_counter()
        self.transport.write(b"GET " + self.paths[self.i % len(self.paths)] + b" HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.i += self.step

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            cl = 0
            for line in self.buf[:end].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    cl = int(line[15:])
                    break
            self.need = end + 4 + cl
        if len(self.buf) < self.need:
            return
        self.lat.append(time.perf_counter() - self.t0)
        status = int(self.buf[9:12])
        self.codes[status] = self.codes.get(status, 0) + 1
        self.buf, self.need = self.buf[self.need:], -1
        self._next()


async def _worker(port: int, paths: list[bytes], start: int, step: int, stop_at: float, budget: list[int],
                  lat: list[float], codes: dict[int, int], interval: float = 0.0) -> None:
    """One keep-alive connection (:class:`_Connection`) until the budget or the time is used up."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await loop.create_connection(lambda: _Connection(paths, start, step, stop_at, budget, lat, codes, interval, done),
                                 "127.0.0.1", port)
    await done


def load(port: int, paths: list[bytes], concurrency: int, requests: int, seconds: float, rate: float = 0.0) -> dict:
    """``concurrency`` connections, at most ``requests`` requests or ``seconds``; closed loop, or open loop
    at ``rate`` requests/s in total when ``rate`` > 0."""
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
        interval = concurrency / rate if rate > 0 else 0.0
        await asyncio.gather(*(_worker(port, paths, c, concurrency, t0 + seconds, budget, lat, codes, interval)
                               for c in range(concurrency)))
        return time.perf_counter() - t0

    # the generator's own pauses would be charged to the service: no cyclic GC during a pass (its full
    # collections walk everything this process imported: tens of ms); collected right after
    gc.collect()
    gc.disable()
    try:
        elapsed = asyncio.run(run())
    finally:
        gc.enable()
    ms = np.array(lat) * 1000.0
    return {"concurrency": concurrency, "target_qps": rate or None, "requests": len(lat), "seconds": round(elapsed, 3),
            "qps": round(len(lat) / elapsed, 1), "status": {str(k): v for k, v in sorted(codes.items())},
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3)}


def query_paths(kind: str, ids: np.ndarray, k: int, n: int, seed: int) -> list[bytes]:
    """``n`` request paths ``/<kind>/<id>?k=<k>`` with ids drawn uniformly (with replacement) from ``ids``."""
    rng = np.random.default_rng(seed)
    return [b"/%s/%d?k=%d" % (kind.encode(), int(i), k) for i in rng.choice(ids, size=n)]
