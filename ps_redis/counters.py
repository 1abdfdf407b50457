"""Counter sets: integer counts per (bucket, member), one Redis hash per bucket, all under one hash tag.

For what is only ever counted and read back in bulk, e.g. the learner's positive events per (90-day period,
movie) behind the recall prior (``ppop``: bucket = period, member = raw movie id).  A hash field costs ~50 bytes
and one ``HINCRBY`` where a PS row costs ~380 bytes and a read-modify-write of the whole row.  Keys (see
:mod:`ps_redis.keys`)::

    {<ns>:@cnt:<name>}:<bucket>                     hash member -> count
    {<ns>:@cnt:<name>}:@total                       sum of every count added
    {<ns>:@cnt:<name>}:@fence:<group>:<topic>       offsets of the fenced additions

One hash tag keeps a set on one node of a cluster, so one ``lfm_count`` call adds a whole batch atomically.
Example::

    pop = Counters(ps, "ppop")
    pop.add([20, 20, 21], [318, 50, 318], [2, 1, 1], fence=Fence("learner", "ratings", {0: 1024}))
    buckets, members, counts = pop.read()
"""

from __future__ import annotations

import numpy as np

from ps_redis.interface import ParameterServerAPI
from ps_redis.maintenance import scan_keys
from ps_redis.types import NO_FENCE, Fence

RECORD = np.dtype([("bucket", "<i8"), ("member", "<i8"), ("count", "<i8")])


class Counters:
    """The counter set ``name`` of ``ps``'s namespace."""

    def __init__(self, ps: ParameterServerAPI, name: str):
        self.ps, self.name = ps, name
        self.tag = ps.keys.counters_tag(name)
        self.total_key = f"{self.tag}:@total"

    def fence_key(self, group: str, topic: str) -> str:
        """Offsets of this set's fenced additions for (group, topic)."""
        return f"{self.tag}:@fence:{group}:{topic}"

    def add_command(self, buckets, members, counts, fence: Fence | None = None) -> tuple | None:
        """The ``FCALL lfm_count`` that adds ``counts`` to (bucket, member) pairs (None when there are none), to
        run alone (:meth:`add`) or inside another transaction (e.g. the learner's fenced sync)."""
        b, m, c = (np.asarray(a, np.int64).reshape(-1) for a in (buckets, members, counts))
        if not (len(b) == len(m) == len(c)):
            raise ValueError(f"counters {self.name!r}: buckets, members, counts differ in length "
                             f"({len(b)}, {len(m)}, {len(c)})")
        if not len(b):
            return None
        rec = np.empty(len(b), RECORD)
        rec["bucket"], rec["member"], rec["count"] = b, m, c
        fenced = fence is not None and bool(fence.offsets)
        keys = [self.total_key] + ([self.fence_key(fence.group, fence.topic)] if fenced else [])
        block = fence.block() if fenced else NO_FENCE
        return ("FCALL", "lfm_count", len(keys), *keys, f"{self.tag}:", *block, rec.tobytes())

    def add(self, buckets, members, counts, fence: Fence | None = None) -> bool:
        """Add counts in one atomic call.  With ``fence``: skipped (returns False) when the namespace's stored
        offsets (:meth:`ParameterServer.offsets`) or this set's own already cover it, else the set's offsets are
        raised in the same call — a replayed batch is counted once.  Returns whether anything was added."""
        cmd = self.add_command(buckets, members, counts, fence)
        if cmd is None:
            return False
        if fence is not None and fence.offsets and self.ps.covered(fence):
            return False  # e.g. a replay after load(): this set's own offsets are gone
        return bool(self.ps.run([(self.total_key, cmd)])[0])

    def total(self) -> int:
        """Sum of every count added."""
        return int(self.ps.run([(self.total_key, ("GET", self.total_key))])[0] or 0)

    def _bucket_keys(self) -> list[bytes]:
        return sorted(k for k in scan_keys(self.ps, f"{self.tag}:*")
                      if k.rsplit(b":", 1)[1].lstrip(b"-").isdigit())  # not @total / @fence

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (bucket, member, count), int64 arrays sorted by bucket then member (one HGETALL per bucket)."""
        keys = self._bucket_keys()
        replies = self.ps.run([(k, ("HGETALL", k)) for k in keys]) if keys else []
        b, m, c = [], [], []
        for key, flat in zip(keys, replies):
            if isinstance(flat, dict):
                flat = [x for kv in flat.items() for x in kv]
            n = len(flat) // 2
            b.append(np.full(n, int(key.rsplit(b":", 1)[1]), np.int64))
            m.append(np.array(flat[0::2], np.int64))
            c.append(np.array(flat[1::2], np.int64))
        if not b:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        b, m, c = np.concatenate(b), np.concatenate(m), np.concatenate(c)
        order = np.lexsort((m, b))
        return b[order], m[order], c[order]

    def restore(self, buckets, members, counts) -> None:
        """Set the given counts (after a flush: what :meth:`read` returned), without a fence."""
        b, m, c = (np.asarray(a, np.int64) for a in (buckets, members, counts))
        for lo in range(0, len(b), 100_000):
            self.add(b[lo:lo + 100_000], m[lo:lo + 100_000], c[lo:lo + 100_000])

    @staticmethod
    def names(ps: ParameterServerAPI) -> list[str]:
        """The counter sets present in ``ps``'s namespace."""
        prefix = f"{{{ps.namespace}:@cnt:"
        return sorted({k.decode()[len(prefix):].split("}", 1)[0] for k in scan_keys(ps, f"{prefix}*}}:@total")})
