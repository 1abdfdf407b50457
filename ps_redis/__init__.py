"""ps_redis: a Redis-backed singleton parameter server for the online LFM learner.

    from ps_redis import ParameterServer, Update, Fence, Rows
    ps = ParameterServer.get("redis://127.0.0.1:6379/0", namespace="lfm", dim=32, init_scale=0.1, seed=0)
    rows = ps.pull("item", ids)                                       # one MGET
    ps.push({"item": Update(ids, vec=new_vec)}, mode="assign",
            fence=Fence("learner", "ratings", {0: 1024}))             # one Function call, atomic

Storage: one packed little-endian binary string per row (``8 * dim + 32`` bytes, layout in
:mod:`ps_redis.codec`: vec f32[dim] | bias f32 | accum f32[dim+1] | count i64 | updated f64 | raw i64)
under ``<namespace>:<table>:<hashed id>`` (standalone) or ``{<namespace>:<table>:<id mod S>}:<hashed id>``
(Redis Cluster, S = 32 shard groups per table); full key layout in :mod:`ps_redis.keys`.

Reading a vector with redis-cli alone (the PS loads the ``lfm`` Function library at start)::

    redis-cli -u "$REDIS_URL" FCALL lfm_movie 0 lfm 318     # by raw MovieLens id (namespace lfm)
    redis-cli -u "$REDIS_URL" FCALL lfm_user 0 lfm 42
    redis-cli -u "$REDIS_URL" FCALL lfm_vec 1 lfm:item:950013827834067564   # by key (hashed id)

each prints ``key=``, ``raw=``, ``dim=``, ``count=``, ``updated=`` (unix s), ``bias=``, ``norm=``,
``vec=`` and ``accum=`` lines.  ``lfm_movie`` / ``lfm_user`` hash the raw id in Lua and need a
standalone Redis; on a cluster use ``redis-cli -c ... FCALL lfm_vec 1 "{lfm:item:<id mod 32>}:<id>"``
(``python -m ps_redis inspect --movie 318`` prints the key, and also the nearest movies).
Hashed ids: ``lfm_stream.hashing.movie_hash(318)`` / ``user_hash(42)``.

Assign pushes are one MSET when this process pulled the rows just before (the learner's cycle),
else a Lua read-modify-write; gradient pushes always run in Lua (atomic ``v ← v − step``).  Assign
is last-writer-wins per row (count included): concurrent learners should use ``mode="gradient"``.

Exactly-once (fenced pushes): on a standalone Redis one push (all its tables) and its offsets are
one atomic Function call.  On a cluster each shard group applies its part atomically together with
its own copy of the offsets and skips a fence it already covers; ``offsets()`` returns offsets that
every shard group of the push has applied (raised after all groups answered).  A learner that
crashes mid-push and replays the same batch (same fence) therefore applies every row exactly once;
readers may briefly see a push half applied across shard groups.
"""

from __future__ import annotations

from ps_redis.codec import CorruptRowError, row_dtype, row_size
from ps_redis.connection import PSConnectionError, PSError, PSStateLost, mask_url
from ps_redis.server import ParameterServer
from ps_redis.types import Fence, Rows, Update

__all__ = ["ParameterServer", "Update", "Fence", "Rows", "PSError", "PSConnectionError", "PSStateLost",
           "CorruptRowError",
           "row_dtype", "row_size", "mask_url"]
