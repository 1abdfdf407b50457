"""``python -m ps_redis`` (``lfm-ps``): inspect, save and load the parameter server.

    lfm-ps inspect --movie 318            # vector, norm, bias, update count, nearest movies
    lfm-ps inspect --user 42
    lfm-ps inspect --stats                # tables, row counts, stored offsets, memory
    lfm-ps save snapshot.npz              # whole namespace to a numpy file
    lfm-ps load snapshot.npz              # replace the namespace with a snapshot
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfm_stream.config import (DEFAULT_NAMESPACE, NAMESPACE_ENV, REDIS_URL_ENV, default_data_dir,
                               default_redis_url, env_default, env_help)
from lfm_stream.hashing import movie_hash, user_hash
from lfm_stream.version import add_version_flag
from ps_redis.connection import PSError
from ps_redis.server import ParameterServer


@dataclass(frozen=True)
class InspectConfig:
    """Where to look and what to print."""

    redis_url: str
    namespace: str = DEFAULT_NAMESPACE
    movies: Path | None = None
    k: int = 10


def load_titles(path: Path | None) -> dict[int, str]:
    """raw movie id -> title from a MovieLens ``movies.csv`` (empty when there is no file)."""
    if path is None or not Path(path).exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {int(r["movieId"]): r["title"] for r in csv.DictReader(f)}


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def nearest(ps: ParameterServer, query: np.ndarray, exclude: int, k: int) -> list[tuple[float, int, int]]:
    """(cosine, raw id, hashed id) of the ``k`` item rows closest to ``query``, scanning the item table."""
    ids, raws, vecs = [], [], []
    for rows in ps.scan("item"):
        ids.append(rows.ids), raws.append(rows.raw), vecs.append(rows.vec)
    if not ids:
        return []
    ids_a, raw_a, v = np.concatenate(ids), np.concatenate(raws), np.concatenate(vecs)
    norms = np.linalg.norm(v, axis=1) * (np.linalg.norm(query) or 1.0)
    cos = (v @ query) / np.where(norms > 0, norms, 1.0)
    cos[ids_a == exclude] = -np.inf
    top = np.argsort(-cos, kind="stable")[:k]
    return [(float(cos[i]), int(raw_a[i]), int(ids_a[i])) for i in top if np.isfinite(cos[i])]


def inspect_row(ps: ParameterServer, kind: str, raw_id: int, cfg: InspectConfig, out=None) -> int:
    """Print one user's or movie's row; for movies also the nearest movies.  Returns an exit code."""
    out = out or sys.stdout
    table, hashed = ("user", user_hash(raw_id)) if kind == "user" else ("item", movie_hash(raw_id))
    key = ps.keys.row_key(table, hashed)
    rows = ps.pull(table, np.array([hashed]), create=False)
    titles = load_titles(cfg.movies) if kind == "movie" else {}
    label = f"{kind} {raw_id}" + (f" ({titles[raw_id]})" if raw_id in titles else "")
    if not rows.found[0]:
        print(f"{label}: no row in namespace {ps.namespace!r} (key {key})", file=out)
        return 1
    vec = rows.vec[0]
    print(f"{label}\n  key      {key}\n  hashed   {hashed}\n  raw      {rows.raw[0]}\n"
          f"  count    {rows.count[0]}\n  updated  {_when(float(rows.updated[0]))}\n"
          f"  bias     {rows.bias[0]:.6g}\n  norm     {np.linalg.norm(vec):.6g}\n"
          f"  vec      {np.array2string(vec, precision=4, max_line_width=100, separator=' ')}", file=out)
    print(f"  redis-cli {'-c ' if ps.is_cluster else ''}FCALL lfm_vec 1 '{key}'", file=out)
    if not ps.is_cluster:
        print(f"  redis-cli FCALL lfm_{'movie' if kind == 'movie' else 'user'} 0 {ps.namespace} {raw_id}", file=out)
    if kind == "movie":
        print(f"nearest movies by cosine (top {cfg.k}):", file=out)
        for rank, (cos, raw, _) in enumerate(nearest(ps, vec, hashed, cfg.k), 1):
            title = titles.get(raw, "")
            print(f"  {rank:2d}. {cos:+.4f}  movie {raw if raw >= 0 else '?'}  {title}", file=out)
    return 0


def print_stats(ps: ParameterServer, out=None) -> int:
    """Namespace, dim, tables with row counts, stored offsets, activity summary, Redis memory."""
    out = out or sys.stdout
    from ps_redis.activity import ActivityLog
    from ps_redis.snapshot import fence_names

    print(f"namespace {ps.namespace!r} at {ps!r}\n  dim {ps.dim}, {ps.row_bytes} B per row, "
          f"shard groups {ps.keys.shards or '-'}, cluster {ps.is_cluster}", file=out)
    for table in ps.tables():
        print(f"  table {table:10s} {ps.count(table):>10d} rows", file=out)
    for group, topic in fence_names(ps):
        print(f"  offsets  group {group!r} topic {topic!r}: {dict(sorted(ps.offsets(group, topic).items()))}", file=out)
    log = ActivityLog(ps)
    clock = log.clock()
    print(f"  activity stream time {_when(clock) if clock else '-'}; most popular: {log.popular(5)}", file=out)
    mem = ps.redis.info("memory")
    used = mem.get("used_memory_human") if isinstance(mem, dict) and "used_memory_human" in mem else None
    if used:
        print(f"  redis used_memory {used}", file=out)
    return 0


def _connect(args: argparse.Namespace) -> ParameterServer:
    dim = None
    if args.command == "load":  # the namespace may be empty: take dim from the snapshot
        if not args.path.exists():
            raise PSError(f"snapshot {args.path} does not exist")
        with np.load(args.path, allow_pickle=False) as z:
            dim = int(z["dim"])
    return ParameterServer.get(args.redis_url, args.namespace, dim=dim)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ps_redis`` / ``lfm-ps``."""
    parser = argparse.ArgumentParser(prog="lfm-ps", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add_version_flag(parser)
    parser.add_argument("--redis-url", default=default_redis_url(),
                        help=env_help("Redis URL", REDIS_URL_ENV, "redis://127.0.0.1:6379/0"))
    parser.add_argument("--namespace", default=env_default(NAMESPACE_ENV, DEFAULT_NAMESPACE),
                        help=env_help("PS namespace", NAMESPACE_ENV, DEFAULT_NAMESPACE))
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print a user's or movie's row, or namespace statistics")
    what = ins.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", type=int, help="raw MovieLens user id")
    what.add_argument("--movie", type=int, help="raw MovieLens movie id")
    what.add_argument("--stats", action="store_true", help="tables, row counts, offsets, memory")
    default_movies = default_data_dir() / "movies.csv"
    ins.add_argument("--movies", type=Path, default=default_movies if default_movies.exists() else None,
                     help="movies.csv for titles [default: <data dir>/movies.csv if it exists; data dir from "
                          "env LFM_DATA_DIR]")
    ins.add_argument("-k", type=int, default=10, help="nearest movies to list (default: 10)")
    for name, text in (("save", "write the namespace to an .npz snapshot"),
                       ("load", "replace the namespace with an .npz snapshot")):
        p = sub.add_parser(name, help=text)
        p.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        ps = _connect(args)
        if args.command == "inspect":
            cfg = InspectConfig(args.redis_url, args.namespace, args.movies, args.k)
            if args.stats:
                return print_stats(ps)
            return inspect_row(ps, "user" if args.user is not None else "movie",
                               args.user if args.user is not None else args.movie, cfg)
        if args.command == "save":
            print(f"saved {ps.save(args.path)}")
            return 0
        ps.load(args.path)
        print(f"loaded {args.path} into namespace {args.namespace!r}: "
              + ", ".join(f"{t} {ps.count(t)} rows" for t in ps.tables()))
        return 0
    except (PSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
