"""Whole-namespace operations of the PS: list tables, stream a table (SCAN), flush (pure I/O helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ps_redis.connection import node_clients
from ps_redis.interface import ParameterServerAPI
from ps_redis.keys import KeySpace
from ps_redis.types import Rows


def scan_keys(ps: ParameterServerAPI, pattern: str) -> set[bytes]:
    """Every key matching the SCAN MATCH ``pattern``, on every primary (each once)."""
    found = set()
    with ps.io():
        for node in node_clients(ps.redis, ps.is_cluster):
            found.update(node.scan_iter(match=pattern, count=1000))
    return found


def tables(ps: ParameterServerAPI) -> list[str]:
    """Names of the tables that hold rows (or once did): from the row-counter keys."""
    pattern = f"{{{ps.namespace}:*}}:@n" if ps.keys.shards else f"{ps.namespace}:@n:*"
    found = {k.decode()[1:].split(":")[1] if ps.keys.shards else k.decode().rsplit(":", 1)[1]
             for k in scan_keys(ps, pattern)}
    return sorted(t for t in found if not t.startswith("@"))


def scan(ps: ParameterServerAPI, table: str, chunk: int) -> Iterator[Rows]:
    """Rows of ``table`` in chunks of up to ``chunk``, each id once (SCAN may repeat keys)."""
    pattern = ps.keys.scan_patterns(table)[0]
    seen: set[int] = set()
    for node in node_clients(ps.redis, ps.is_cluster):
        batch: list[int] = []
        cursor = None
        while cursor != 0:
            with ps.io():
                cursor, keys = node.scan(cursor or 0, match=pattern, count=chunk)
            for key in keys:
                hid = KeySpace.id_of(key)
                if hid is not None and hid not in seen:
                    seen.add(hid)
                    batch.append(hid)
            while len(batch) >= chunk:
                yield _present(ps, table, batch[:chunk])
                batch = batch[chunk:]
        if batch:
            yield _present(ps, table, batch)


def _present(ps: ParameterServerAPI, table: str, ids: list[int]) -> Rows:
    rows = ps.pull(table, np.array(ids, dtype=np.int64), create=False)
    if rows.found.all():
        return rows
    keep = rows.found
    fields = ("ids", "vec", "bias", "accum", "count", "updated", "raw", "found")
    return Rows(**{f: getattr(rows, f)[keep] for f in fields})


def flush(ps: ParameterServerAPI) -> int:
    """UNLINK every key of the namespace on every primary; returns keys deleted."""
    n = 0
    with ps.io():
        for node in node_clients(ps.redis, ps.is_cluster):
            for pattern in ps.keys.namespace_patterns():
                pipe = node.pipeline(transaction=False)
                for key in node.scan_iter(match=pattern, count=1000):
                    pipe.unlink(key)  # one key per UNLINK: on a cluster keys sit in many slots
                    if len(pipe) >= 1000:
                        n += sum(pipe.execute())
                n += sum(pipe.execute())
    return n
