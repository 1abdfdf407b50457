"""The pull path of the PS: read rows by id (MGET), create unseen ones (``lfm_create``), cache what was read.

A standalone server gets one MGET over every key of every table; a cluster one MGET per slot group,
pipelined per node.  Unseen ids get seeded fresh rows (:func:`ps_redis.codec.new_rows`), stored
set-if-absent in one more pipelined round trip (or, with ``defer_create``, left to the next assign
push), and the rows as stored go to the PS's row cache (:mod:`ps_redis.rowcache`, read by :mod:`ps_redis.fastpath`).
"""

from __future__ import annotations

import time

import numpy as np

from ps_redis.codec import decode, new_rows
from ps_redis.connection import call
from ps_redis.interface import ParameterServerAPI
from ps_redis.keys import check_table
from ps_redis.types import Rows, as_ids, empty_rows


def pull_many(ps: ParameterServerAPI, requests: dict, create: bool, defer_create: bool) -> dict[str, Rows]:
    """:meth:`ParameterServer.pull_many`: rows of several tables, unseen ids created (or deferred) and cached."""
    asked = []
    for table, req in requests.items():
        ids, raw = req if isinstance(req, tuple) else (req, None)
        asked.append((check_table(table), as_ids(ids), raw))
    # (table, keys, positions) per MGET: one over all tables standalone, one per slot group on a cluster
    groups = [(t, keys, pos) for t, ids, _ in asked if len(ids) for keys, pos, _ in ps.keys.slot_groups(t, ids)]
    keys_of = {t: [b""] * len(ids) for t, ids, _ in asked}
    vals_of = {t: [None] * len(ids) for t, ids, _ in asked}
    if groups and not ps.keys.shards:  # the hot path: one MGET
        flat = [k for _, keys, _ in groups for k in keys]
        with ps.io():
            values = call(ps.redis, "MGET", *flat)
        at = 0
        for t, keys, _ in groups:
            keys_of[t], vals_of[t] = keys, values[at: at + len(keys)]
            at += len(keys)
    elif groups:
        replies = ps.run([(keys[0], ("MGET", *keys)) for _, keys, _ in groups])
        for (t, gkeys, pos), vals in zip(groups, replies):
            for p, k, v in zip(pos.tolist(), gkeys, vals):
                keys_of[t][p], vals_of[t][p] = k, v
    decoded = {t: decode(vals_of[t], keys_of[t], ps.dim) if len(ids) else (empty_rows(ps.dim), np.zeros(0, bool))
               for t, ids, _ in asked}
    missing = {t: np.flatnonzero(~decoded[t][1]) for t, ids, _ in asked if create and not decoded[t][1].all()}
    defer = defer_create and not ps.keys.shards
    if missing:
        now = time.time()
        fresh = {}
        for t, ids, raw in asked:
            if t in missing:
                m = missing[t]
                raw_m = None if raw is None else as_ids(raw, "raw_ids")[m]
                fresh[t] = new_rows(ids[m], raw_m, ps.dim, ps.init_scale, ps.seed, t, now)
        created = fresh if defer else create_many(
            ps, {t: (ids[missing[t]], fresh[t], [keys_of[t][i] for i in missing[t]]) for t, ids, _ in asked if t in missing})
    out = {}
    for t, ids, _ in asked:
        rows, found = decoded[t]
        if t in missing:
            rows = rows.copy()
            rows[missing[t]] = created[t]
        if create or found.all():
            ps.row_cache.remember(t, ids.copy(), rows, keys_of[t], ~found if defer and t in missing else None)
        out[t] = Rows.from_struct(ids, rows, found)
    return out


def create_many(ps: ParameterServerAPI, todo: dict[str, tuple[np.ndarray, np.ndarray, list[bytes]]]
                ) -> dict[str, np.ndarray]:
    """Store fresh rows set-if-absent (one pipelined round trip); returns the rows as stored.

    ``todo`` maps a table to ``(ids, fresh rows, row keys)``; a row another process created meanwhile
    comes back as that process stored it.
    """
    commands, where = [], []
    for table, (ids, fresh, keys) in todo.items():
        for gkeys, pos, counter in ps.keys.slot_groups(table, ids):
            commands.append((counter, ("FCALL", "lfm_create", len(gkeys) + 1, counter, *gkeys,
                                       ps.dim, fresh[pos].tobytes())))
            where.append((table, pos))
    out = {t: fresh.copy() for t, (_, fresh, _) in todo.items()}
    for (table, pos), values in zip(where, ps.run(commands)):
        keys = todo[table][2]
        stored, _ = decode(values, [keys[p] for p in pos.tolist()], ps.dim)
        out[table][pos] = stored
    return out
