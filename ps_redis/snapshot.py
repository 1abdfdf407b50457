"""``save`` / ``load`` of a whole namespace as one ``.npz`` file (numpy / pandas friendly).

Arrays in the file (``z = np.load(path)``)::

    dim, shards, init_scale, seed         scalars
    tables                                str[T]  table names
    <table>.ids                           int64[n]    hashed ids
    <table>.raw                           int64[n]    raw MovieLens ids (-1 unknown)
    <table>.vec / .bias / .accum          float32[n, dim] / [n] / [n, dim + 1]
    <table>.count / .updated              int64[n] / float64[n] (unix seconds)
    offsets.group / .topic                str[m]
    offsets.partition / .next_offset      int64[m]
    offsets.seq                           int64[m]  highest event seq applied (-1: none)
    seen.user / seen.movie                int64[k]  activity log: raw user rated raw movie
    popular.movie / popular.count         int64[p] / float64[p]

e.g. ``pd.DataFrame({"id": z["item.ids"], "raw": z["item.raw"], "bias": z["item.bias"]})``.
The activity log's change stream is not saved: after ``load`` a reader's old cursor is expired.  Files of older
versions may hold ``counters.*`` arrays (the counter sets of the learner's old popularity prior): ``load`` skips them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ps_redis.activity import ActivityLog
from ps_redis.codec import row_dtype
from ps_redis.interface import ParameterServerAPI
from ps_redis.maintenance import scan_keys
from ps_redis.types import SEQ_FIELD

FIELDS = ("vec", "bias", "accum", "count", "updated", "raw")


def save(ps: ParameterServerAPI, path: str | Path) -> Path:
    """Write every table, the stored offsets and the activity log of ``ps``'s namespace to ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    out: dict[str, np.ndarray] = {
        "dim": np.int64(ps.dim), "shards": np.int64(ps.keys.shards),
        "init_scale": np.float64(ps.init_scale), "seed": np.int64(ps.seed)}
    tables = ps.tables()
    out["tables"] = np.array(tables, dtype=str)
    for table in tables:
        parts = list(ps.scan(table, chunk=8192))
        ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        out[f"{table}.ids"] = ids[order]
        for f in FIELDS:
            arrs = [getattr(p, f) for p in parts]
            col = np.concatenate(arrs) if arrs else np.zeros((0,) + row_dtype(ps.dim)[f].shape,
                                                            row_dtype(ps.dim)[f].base)
            out[f"{table}.{f}"] = col[order]
    groups, topics, parts_, nexts, seqs = [], [], [], [], []
    for group, topic in fence_names(ps):
        offsets, marks = ps.fence_state(group, topic)
        for p, o in sorted(offsets.items()):
            groups.append(group), topics.append(topic), parts_.append(p), nexts.append(o)
            seqs.append(marks.get(p, -1))
    out["offsets.group"] = np.array(groups, dtype=str)
    out["offsets.topic"] = np.array(topics, dtype=str)
    out["offsets.partition"] = np.array(parts_, dtype=np.int64)
    out["offsets.next_offset"] = np.array(nexts, dtype=np.int64)
    out["offsets.seq"] = np.array(seqs, dtype=np.int64)
    users, movies, pop_m, pop_c = ActivityLog(ps).export()
    out["seen.user"], out["seen.movie"] = users, movies
    out["popular.movie"], out["popular.count"] = pop_m, pop_c
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return path


def fence_names(ps: ParameterServerAPI) -> list[tuple[str, str]]:
    """(group, topic) of every stored offsets hash of the namespace."""
    prefix = f"{ps.namespace}:@fence:"
    # topics never contain ':'
    return sorted(tuple(key.decode()[len(prefix):].rsplit(":", 1)) for key in scan_keys(ps, prefix + "*"))


def load(ps: ParameterServerAPI, path: str | Path) -> None:
    """Flush ``ps``'s namespace and restore the content of ``path`` (rows bit-exact)."""
    with np.load(Path(path), allow_pickle=False) as z:
        dim = int(z["dim"])
        if dim != ps.dim:
            raise ValueError(f"{path}: snapshot has dim {dim}, the PS {ps!r} has dim {ps.dim}")
        data = {k: z[k] for k in z.files}
    ps.flush()
    for table in data["tables"].tolist():
        ids = data[f"{table}.ids"]
        rows = np.zeros(len(ids), dtype=row_dtype(dim))
        for f in FIELDS:
            rows[f] = data[f"{table}.{f}"]
        for i in range(0, len(ids), 4096):
            ps.put_rows(table, ids[i:i + 4096], rows[i:i + 4096])
    fences: dict[tuple[str, str], dict[str, int]] = {}
    seqs = data["offsets.seq"].tolist() if "offsets.seq" in data else [-1] * len(data["offsets.partition"])
    for g, t, p, o, q in zip(data["offsets.group"].tolist(), data["offsets.topic"].tolist(),
                             data["offsets.partition"].tolist(), data["offsets.next_offset"].tolist(), seqs):
        fences.setdefault((g, t), {})[str(int(p))] = int(o)
        if q >= 0:
            fences[(g, t)][f"{SEQ_FIELD}{int(p)}"] = int(q)
    with ps.io():
        for (g, t), offs in fences.items():
            ps.redis.hset(ps.keys.fence(g, t), mapping=offs)
    ActivityLog(ps).restore(data["seen.user"], data["seen.movie"], data["popular.movie"], data["popular.count"])
