"""``ParameterServer``: the Redis-backed singleton PS (pull / push / fence / scan / save / load).

Update equations applied on the server (``lfm_push``), for each row ``r`` of an update:

- assign:   ``vec ← vec'``, ``bias ← bias'``, ``accum ← accum'``, ``count ← count + Δcount``
- gradient: ``vec ← vec − step``, ``bias ← bias − step_b``, ``accum ← accum + Δaccum``,
  ``count ← count + Δcount``

and ``updated ← now`` for every row touched.  Fields given as ``None`` stay unchanged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import redis

from ps_redis import fastpath, maintenance, pullpath, snapshot
from ps_redis.codec import CorruptRowError, row_size
from ps_redis.connection import PSError, PSStateLost, connect, mask_url, node_clients, run, translate_errors
from ps_redis.functions import load_library
from ps_redis.keys import KeySpace, check_namespace, check_table
from ps_redis.rowcache import RowCache
from ps_redis.types import NO_FENCE, SEQ_FIELD, Fence, Rows, Update, as_ids, pack_update

DEFAULT_SHARDS = 32  # shard groups per table on a cluster
DEFAULT_INIT_SCALE = 0.1
DEFAULT_SEED = 0
MODES = ("assign", "gradient")


class ParameterServer:
    """One instance per process per (Redis URL, namespace, dim): use :meth:`get`.

    Args (of :meth:`get`):
        url: Redis URL (``redis://``, ``rediss://``, with ``user:password@`` for AUTH/ACL).
        namespace: key prefix; another namespace is an independent model.
        dim: vector dimension; ``None`` reads it from the namespace's ``@meta``.
        init_scale: std of the seeded normal initial vectors (``None``: stored or 0.1).
        seed: initializer seed (``None``: stored or 0).
        shards: shard groups per table (cluster layout); default 0 standalone, 32 on a cluster.
        retries: reconnect attempts with capped exponential backoff before PSConnectionError.
    """

    _instances: dict[tuple[str, str, int], "ParameterServer"] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, url: str, namespace: str = "lfm", dim: int | None = 32, init_scale: float | None = None,
            seed: int | None = None, *, shards: int | None = None, retries: int = 4,
            backoff_base: float = 0.05, backoff_cap: float = 1.0, socket_timeout: float = 10.0
            ) -> "ParameterServer":
        """The process-wide instance for (url, namespace, dim), created on first use."""
        check_namespace(namespace)
        with cls._lock:
            if dim is not None and (url, namespace, int(dim)) in cls._instances:
                return cls._instances[(url, namespace, int(dim))]._same(init_scale, seed)
            ps = cls(url, namespace, dim, init_scale, seed, shards=shards, retries=retries,
                     backoff_base=backoff_base, backoff_cap=backoff_cap, socket_timeout=socket_timeout)
            key = (url, namespace, ps.dim)
            if key in cls._instances:
                ps.close()
                return cls._instances[key]._same(init_scale, seed)
            cls._instances[key] = ps
            return ps

    @classmethod
    def reset_instances(cls) -> None:
        """Forget (and close) every instance of this process, e.g. after fork or in tests."""
        with cls._lock:
            for ps in cls._instances.values():
                ps.close()
            cls._instances.clear()

    def __init__(self, url: str, namespace: str, dim: int | None, init_scale: float | None, seed: int | None,
                 *, shards: int | None, retries: int, backoff_base: float, backoff_cap: float,
                 socket_timeout: float):
        self.url, self.namespace, self.retries = url, namespace, retries
        self.redis, self.is_cluster = connect(url, retries, backoff_base, backoff_cap, socket_timeout)
        try:
            self._setup(dim, init_scale, seed, shards)
        except BaseException:
            self.redis.close()
            raise

    def _setup(self, dim: int | None, init_scale: float | None, seed: int | None, shards: int | None) -> None:
        namespace, url = self.namespace, self.url
        self.load_functions()
        with self.io():
            meta = {k.decode(): v.decode() for k, v in self.redis.hgetall(KeySpace(namespace).meta).items()}
        if dim is None and "dim" not in meta:
            raise PSError(f"namespace {namespace!r} at {mask_url(url)} is empty; give dim")
        self.dim = int(dim if dim is not None else meta["dim"])
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1 (got {self.dim})")
        if "dim" in meta and int(meta["dim"]) != self.dim:
            raise ValueError(f"namespace {namespace!r} at {mask_url(url)} holds dim-{meta['dim']} rows; "
                             f"asked for dim {self.dim}")
        stored_shards = int(meta["shards"]) if "shards" in meta else None
        if shards is None:
            shards = stored_shards if stored_shards is not None else (DEFAULT_SHARDS if self.is_cluster else 0)
        elif stored_shards is not None and stored_shards != shards:
            raise ValueError(f"namespace {namespace!r} uses {stored_shards} shard groups; asked for {shards}")
        if self.is_cluster and shards < 1:
            raise ValueError(f"namespace {namespace!r} uses the standalone key layout; a cluster needs shards >= 1")
        self.keys = KeySpace(namespace, int(shards))
        self.init_scale = float(init_scale if init_scale is not None else meta.get("init_scale", DEFAULT_INIT_SCALE))
        self.seed = int(seed if seed is not None else meta.get("seed", DEFAULT_SEED))
        self.row_cache = RowCache()  # rows of recent pulls / pushes: what the assign fast path builds rows from
        self.write_meta()

    def _same(self, init_scale: float | None, seed: int | None) -> "ParameterServer":
        if init_scale is not None and float(init_scale) != self.init_scale:
            raise ValueError(f"PS {self!r} exists with init_scale {self.init_scale}; asked for {init_scale}")
        if seed is not None and int(seed) != self.seed:
            raise ValueError(f"PS {self!r} exists with seed {self.seed}; asked for {seed}")
        return self

    def write_meta(self) -> None:
        """(Re)write the namespace's ``@meta`` (dim, shards, init scale, seed, row layout): it describes the
        namespace to readers (``dim=None``), e.g. after a Redis that lost everything."""
        with self.io():
            self.redis.hset(self.keys.meta, mapping={
                "dim": self.dim, "shards": self.keys.shards, "init_scale": repr(self.init_scale),
                "seed": self.seed, "layout": "vec f32[dim] | bias f32 | accum f32[dim+1] | count i64 | "
                                              "updated f64 | raw i64 (little-endian)"})

    def __repr__(self) -> str:
        return f"ParameterServer({mask_url(self.url)!r}, namespace={self.namespace!r}, dim={self.dim})"

    def close(self) -> None:
        """Close the connections (the instance stays registered; see :meth:`reset_instances`)."""
        self.redis.close()

    # ------------------------------------------------------------------------------------ raw I/O
    def io(self) -> AbstractContextManager[None]:
        """Context for direct redis-py calls on :attr:`redis` (``with ps.io(): ps.redis.get(key)``): connection
        errors, raised after redis-py's retries with backoff, become :class:`PSConnectionError` and refused
        credentials :class:`PSAuthError`, each naming the URL (password masked)."""
        return translate_errors(self.url, self.retries)

    def run(self, commands: Sequence[tuple[str | bytes, tuple]]) -> list:
        """Run ``(routing key, (command, *args))`` pairs in one round trip per node; replies in order.

        On a cluster each command touches the one slot of its routing key (see :func:`ps_redis.connection.run`).
        A server that lost the Function library (a restart without persistence) gets it again and only the
        commands that failed so are resent.  The first error is raised after every reply was read: a row that
        is not a packed row as :class:`CorruptRowError`, offsets behind the writer's as :class:`PSStateLost`,
        anything else as the ``redis.ResponseError``.
        """
        with self.io():
            out = run(self.redis, self.is_cluster, commands, raise_on_error=False)
            lost = [i for i, r in enumerate(out)
                    if isinstance(r, redis.ResponseError) and "Function not found" in str(r)]
            if lost:
                self.load_functions()
                for i, r in zip(lost, run(self.redis, self.is_cluster, [commands[i] for i in lost], False)):
                    out[i] = r
        for r in out:
            if isinstance(r, redis.ResponseError):
                if "lfm: stored value of key" in str(r):
                    raise CorruptRowError(str(r).split("lfm: ", 1)[1]) from r
                if "lfm: state lost" in str(r):
                    raise PSStateLost(f"{mask_url(self.url)}: {str(r).split('lfm: ', 1)[1]}") from r
                raise r
        return out

    def load_functions(self) -> None:
        """FUNCTION LOAD REPLACE the ``lfm`` library on every primary (done at start and after a restart)."""
        with self.io():
            for node in node_clients(self.redis, self.is_cluster):
                load_library(node)

    # --------------------------------------------------------------------------------------- pull
    def pull(self, table: str, ids, raw_ids=None, create: bool = True) -> Rows:
        """Rows of ``ids`` in order, in one round trip (two when unseen ids must be created).

        Unseen ids are initialized with ``vec ~ N(0, init_scale²)`` seeded by (seed, table, id), zero
        bias / accum / count, ``raw`` from ``raw_ids`` (else -1), and stored set-if-absent, so two
        processes creating an id at once end up with one value.  ``found`` is False for ids that
        did not exist before this call (with ``create=False`` they come back zero and nothing is written).
        """
        return self.pull_many({table: (ids, raw_ids)}, create=create)[table]

    def pull_many(self, requests: dict, create: bool = True, defer_create: bool = False) -> dict[str, Rows]:
        """:meth:`pull` of several tables in one round trip (two when unseen ids must be created).

        ``requests`` maps a table to ``ids`` or ``(ids, raw_ids)``; the answer maps it to its :class:`Rows`.
        A standalone server gets one MGET over every key (a cluster one MGET per slot group, pipelined
        per node), and unseen ids of every table are created in one more pipelined round trip.

        ``defer_create=True`` (standalone; for a process that assign-pushes every row it pulls, such as
        the single-writer learner): unseen ids come back initialized as above but are not written now;
        the next assign push of them stores the whole row and counts it (nothing is written for ids never
        pushed).  Saves the create round trip and a Lua call per batch with new ids.
        """
        return pullpath.pull_many(self, requests, create, defer_create)

    # --------------------------------------------------------------------------------------- push
    def push(self, updates: dict[str, Update], mode: str = "assign", fence: Fence | None = None) -> bool:
        """Apply updates to one or more tables atomically (per slot group on a cluster).

        Returns False (and changes nothing) when ``fence`` is already covered: every partition's
        stored next offset is >= the fence's.  Otherwise applies the updates and raises the stored
        offsets to the fence's in the same atomic step.  See the module docstring for the equations.
        ``push({}, fence=f)`` only moves the offsets (a batch with nothing to learn).  Without a
        fence, returns whether anything was written.

        Assign pushes of ids this process pulled (or pushed) recently are one MSET of whole rows built
        from the cached rows (see :mod:`ps_redis.fastpath`: one writer per row assumed); other pushes
        run ``lfm_push`` on the server.

        Raises:
            ValueError: unknown mode, bad table name, or a field of the wrong dtype / shape
                (the message names table, field, expected and got).
        """
        packed = self._pack_updates(updates, mode)
        if fence is not None and not fence.offsets:
            fence = None
        if not packed and fence is None:
            return False
        now = time.time()
        if packed and mode == "assign" and not self.keys.shards:
            done = fastpath.assign(self, packed, fence, now)
            if done is not None:
                return done
        for table, _, _, _ in packed:
            self.row_cache.forget(table)  # the server changes these rows: cached copies are stale now
        if not self.keys.shards:
            args = self._push_args(packed, mode, now, fence)
            return bool(self.run([(args[3], args)])[0])
        if fence is not None and self.covered(fence, bounds=True):
            return False  # e.g. a replay after load(): the shard groups' own offsets are gone
        commands = self._shard_commands(packed, mode, now, fence)
        applied = any(self.run(commands)) if commands else True  # a fence-only push moves the offsets
        if fence is not None:
            fkey = self.keys.fence(fence.group, fence.topic)
            block = fence.block()
            self.run([(fkey, ("FCALL", "lfm_fence_max", 1, fkey, *block))])
        return applied

    def _pack_updates(self, updates: dict[str, Update], mode: str) -> list[tuple]:
        """``(table, ids, field mask, packed fields)`` of each update with ids (validated)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        packed = [(check_table(t), *pack_update(t, up, self.dim, mode)) for t, up in updates.items()]
        return [(t, ids, mask, arr) for t, ids, mask, arr in packed if len(ids)]

    def _push_args(self, packed: list, mode: str, now: float, fence: Fence | None) -> tuple:
        """``FCALL lfm_push`` of packed updates on a standalone server."""
        keys: list = [self.keys.fence(fence.group, fence.topic)] if fence is not None else []
        segs: list = []
        for table, ids, mask, arr in packed:
            rkeys = self.keys.row_keys(table, ids)
            keys += [self.keys.counter(table), *rkeys]
            segs += [len(rkeys), mask, arr.tobytes()]
        block = fence.block() if fence is not None else NO_FENCE
        return ("FCALL", "lfm_push", len(keys), *keys, mode, repr(now), self.dim, *block, len(packed), *segs)

    def write_rows(self, tables: dict[str, tuple], fence: Fence | None = None, extra: list[tuple] = ()) -> bool:
        """Overwrite whole rows of several tables in one Function call, ``lfm_write`` (standalone server only).

        ``tables`` maps a table to ``(ids, rows, new)``: structured rows of :func:`ps_redis.codec.row_dtype`
        (``updated`` is set to now) and a bool mask of rows that do not exist yet (added to the table's
        row counter).  For a process that holds rows it pulled and trained and is their only writer (the
        learner between two syncs): one MSET, no server-side read-modify-write.  With ``fence``: skipped
        (returns False) when already covered, else the offsets are raised in the same transaction.
        ``extra`` commands run in the same transaction (e.g. the activity-log record of the same events).

        Raises:
            ValueError: on a cluster (use :meth:`push`), a bad table name or rows of another dim.
            PSStateLost: the stored offsets are below ``fence.stored`` (nothing written).
            redis.ResponseError: an ``extra`` command failed (no row or offset written).
        """
        if self.keys.shards:
            raise ValueError("write_rows needs a standalone server; on a cluster use push()")
        return fastpath.write_rows(self, tables, fence, extra)

    def _shard_commands(self, packed: list, mode: str, now: float, fence: Fence | None) -> list:
        """Cluster layout: one ``lfm_push`` per (table, shard group), each with its own offsets copy (the writer's
        bounds are checked on the namespace's offsets, by :meth:`covered` and ``lfm_fence_max``)."""
        block = Fence(fence.group, fence.topic, fence.offsets).block() if fence is not None else NO_FENCE
        commands = []
        for table, ids, mask, arr in packed:
            for shard, pos in self.keys.groups(table, ids):
                rkeys = self.keys.shard_keys(table, shard, ids[pos])
                fkeys = [self.keys.shard_fence(table, shard, fence.group, fence.topic)] if fence else []
                keys = [*fkeys, self.keys.counter(table, shard), *rkeys]
                commands.append((keys[-1], ("FCALL", "lfm_push", len(keys), *keys, mode, repr(now), self.dim,
                                            *block, 1, len(rkeys), mask, arr[pos].tobytes())))
        return commands

    def covered(self, fence: Fence, bounds: bool = False) -> bool:
        """Whether the namespace's stored offsets cover ``fence`` (every partition's at or past the fence's): a
        fenced write of it would be skipped.  With ``bounds``, :class:`PSStateLost` when they are below the
        fence's ``stored`` bounds."""
        key = self.keys.fence(fence.group, fence.topic)
        stored = self.fence_offsets([key])[0]
        if bounds:
            self.check_stored(key, stored, fence.stored)
        return bool(fence.offsets) and all(stored.get(int(p), -1) >= int(o) for p, o in fence.offsets.items())

    def check_stored(self, key: str, stored: dict[int, int], bounds: dict[int, int]) -> None:
        """Raise :class:`PSStateLost` naming each partition whose offset ``stored`` at fence ``key`` is below its
        bound (what the writer knows it stored), as the Lua functions check it inside a fenced write."""
        behind = [f"partition {p} at {stored.get(int(p), 'none')} < {int(b)}" for p, b in sorted(bounds.items())
                  if stored.get(int(p), -1) < int(b)]
        if behind:
            raise PSStateLost(f"{mask_url(self.url)}: state lost: offsets {key} behind what this writer stored: "
                              + ", ".join(behind))

    def offsets(self, group: str, topic: str) -> dict[int, int]:
        """Stored ``{partition: next offset}`` of (group, topic): where a restarted learner resumes."""
        return self.fence_offsets([self.keys.fence(group, topic)])[0]

    def fence_state(self, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """Stored ``({partition: next offset}, {partition: highest event seq applied})`` of (group, topic), in one
        round trip: where a restarted learner resumes, and which re-sent events it has applied already."""
        return self._fence_hashes([self.keys.fence(group, topic)])[0]

    def fence_offsets(self, keys: list[str]) -> list[dict[int, int]]:
        """``{partition: next offset}`` stored at each fence key (this namespace's, a counter set's, the activity
        log's), read in one round trip (one per node on a cluster)."""
        return [offsets for offsets, _ in self._fence_hashes(keys)]

    def _fence_hashes(self, keys: list[str]) -> list[tuple[dict[int, int], dict[int, int]]]:
        """(offsets, event seqs) stored at each fence key, one round trip."""
        with self.io():
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            replies = pipe.execute()
        out = []
        seq_field = SEQ_FIELD.encode()
        for stored in replies:
            offsets = {int(f): int(v) for f, v in stored.items() if not f.startswith(seq_field)}
            seqs = {int(f[len(seq_field):]): int(v) for f, v in stored.items() if f.startswith(seq_field)}
            out.append((offsets, seqs))
        return out

    # ------------------------------------------------------------------------------ maintenance
    def delete(self, table: str, ids) -> int:
        """Delete rows; returns how many existed."""
        check_table(table)
        ids = np.unique(as_ids(ids))
        self.row_cache.forget(table)
        commands = [(counter, ("FCALL", "lfm_delete", len(keys) + 1, counter, *keys))
                    for keys, _, counter in self.keys.slot_groups(table, ids)] if len(ids) else []
        n = int(sum(self.run(commands)))
        self._new_epoch()
        return n

    def count(self, table: str) -> int:
        """Number of rows in ``table`` (O(1): counters kept by the Lua functions)."""
        check_table(table)
        if not self.keys.shards:
            counters = [self.keys.counter(table)]
        else:
            counters = [self.keys.counter(table, s) for s in range(self.keys.shards)]
        return int(sum(int(v or 0) for v in self.run([(c, ("GET", c)) for c in counters])))

    def tables(self) -> list[str]:
        """Names of the tables that hold rows (or once did)."""
        return maintenance.tables(self)

    def scan(self, table: str, chunk: int = 4096) -> Iterator[Rows]:
        """Iterate over every row of ``table`` in chunks of up to ``chunk`` rows (SCAN-based, streaming).

        Every row present for the whole scan appears exactly once; rows written or deleted during
        the scan may or may not appear (deleted ones are skipped when already gone).
        """
        check_table(table)
        return maintenance.scan(self, table, chunk)

    def put_rows(self, table: str, ids: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite whole rows (structured array of :func:`ps_redis.codec.row_dtype`); returns rows created."""
        check_table(table)
        ids = as_ids(ids)
        self.row_cache.forget(table)
        commands = [(counter, ("FCALL", "lfm_put", len(keys) + 1, counter, *keys, self.dim, rows[pos].tobytes()))
                    for keys, pos, counter in self.keys.slot_groups(table, ids)] if len(ids) else []
        n = int(sum(self.run(commands)))
        self._new_epoch()
        return n

    def flush(self) -> int:
        """Delete every key of this namespace (rows, offsets, activity log); returns keys deleted.

        The instance stays usable (its ``@meta`` is written again).
        """
        self.row_cache.forget()
        n = maintenance.flush(self)
        self.write_meta()
        self._new_epoch()
        return n

    def epoch(self) -> str | None:
        """Token that changes whenever rows change other than by push / write_rows (delete, put_rows, load,
        flush): a process holding rows it pulled drops them when it moves."""
        with self.io():
            v = self.redis.get(self.keys.epoch)
        return None if v is None else v.decode()

    def _new_epoch(self) -> None:
        with self.io():
            self.redis.set(self.keys.epoch, uuid.uuid4().hex[:12])

    def save(self, path: str | Path) -> Path:
        """Write the namespace to an ``.npz`` file (see :mod:`ps_redis.snapshot` for the fields)."""
        return snapshot.save(self, path)

    def load(self, path: str | Path) -> None:
        """Replace the namespace with the content of a :meth:`save` file (bit-exact rows and offsets)."""
        snapshot.load(self, path)

    @property
    def row_bytes(self) -> int:
        """Bytes of one packed row (``8 * dim + 32``)."""
        return row_size(self.dim)
