"""MovieLens ratings -> time-ordered TFRecord shards (``python -m producer.prepare`` / ``lfm-prepare``).

Steps (the seed protocol):

1. drop users with more than ``max_user_ratings`` ratings;
2. per user, order by timestamp (ties keep file order); the last ``test_per_user`` go to test, the
   rest to train (``--validation`` applies the same rule once more inside train: that holdout is
   written as ``test`` and the real test records are not written at all);
3. ``label = 1.0 if rating >= pos_threshold else 0.0``; ids hashed with ``bkdr2hash64``;
4. train in global timestamp order (ties: file order) across shards in name order, test likewise.

Output (docs/design.md, "Prepared data directory")::

    OUT/manifest.json  OUT/train/part-00000.tfrecord ...  OUT/test/part-00000.tfrecord ...  OUT/movies.csv

Everything is written to a temporary directory next to OUT and renamed at the end; an error, SIGINT, SIGTERM
or SIGHUP removes the temporary directories and leaves OUT as it was (a signal exits ``128 + signal``).  A
preparation that leaves no train record (e.g. a file with one rating per user) is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lfm_stream.config import DATA_DIR_ENV, default_data_dir, env_default, env_help
from lfm_stream.version import add_version_flag
from lfm_stream.hashing import hash_movie_ids, hash_user_ids
from lfm_stream.schema import SCHEMA_VERSION
from producer import movielens
from producer.movielens import DataError
from producer.shards import write_shards

RATINGS_ENV = "LFM_RATINGS"


@dataclass(frozen=True)
class PrepareConfig:
    """Parameters of one preparation run (all recorded in the manifest's ``params``)."""

    ratings: str
    out: str
    format: str | None = None
    movies: str | None = None
    max_user_ratings: int = 2000
    test_per_user: int = 2
    pos_threshold: float = 4.0
    shard_size: int = 200_000
    validation: bool = False
    skip_bad_lines: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.max_user_ratings < 1:
            raise ValueError(f"max_user_ratings must be >= 1 (got {self.max_user_ratings})")
        if self.test_per_user < 0:
            raise ValueError(f"test_per_user must be >= 0 (got {self.test_per_user})")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 (got {self.shard_size})")
        if self.format is not None and self.format not in movielens.FORMATS:
            raise ValueError(f"format must be one of {movielens.FORMATS} (got {self.format!r})")


def holdout_last(users: np.ndarray, timestamps: np.ndarray, n_last: int) -> np.ndarray:
    """Mask of each user's last ``n_last`` events by timestamp (ties: later array position is later).

    Args:
        users: user id per event, events in file order.
        timestamps: event time per event.
        n_last: events held out per user (a user with fewer events has all of them held out).

    Returns:
        bool mask, True where the event is among its user's last ``n_last``.
    """
    n = len(users)
    if n == 0 or n_last <= 0:
        return np.zeros(n, dtype=bool)
    order = np.lexsort((timestamps, users))  # stable: equal (user, ts) keep array order
    sorted_users = users[order]
    # rank from the end inside each user's run of the sorted order
    run_end = np.flatnonzero(np.r_[sorted_users[1:] != sorted_users[:-1], True])
    run_id = np.repeat(np.arange(len(run_end)), np.diff(np.r_[-1, run_end]))
    from_end = run_end[run_id] - np.arange(n)
    mask = np.zeros(n, dtype=bool)
    mask[order] = from_end < n_last
    return mask


def _hash_unique(raw: np.ndarray, hasher) -> np.ndarray:
    """``hasher(raw)``, computed once per distinct id (ids repeat ~100 times in MovieLens)."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    return hasher(uniq)[inverse]


def _columns(r: movielens.Ratings, idx: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Record columns for the events ``idx`` (already in output order)."""
    user, movie = r.user[idx], r.movie[idx]
    rating = r.rating[idx]
    return {"user_id": _hash_unique(user, hash_user_ids), "movie_id": _hash_unique(movie, hash_movie_ids),
            "raw_user_id": user,
            "raw_movie_id": movie, "rating": rating, "label": (rating >= threshold).astype(np.float32),
            "timestamp": r.timestamp[idx]}


def _rate(labels: np.ndarray) -> float:
    return float(labels.mean()) if len(labels) else 0.0


def split(r: movielens.Ratings, cfg: PrepareConfig) -> dict:
    """Apply the drop / holdout rules; returns event indices (output order) and counts."""
    uniq, inverse, counts = np.unique(r.user, return_inverse=True, return_counts=True)
    keep = counts[inverse] <= cfg.max_user_ratings
    kept = np.flatnonzero(keep)
    test_mask = holdout_last(r.user[kept], r.timestamp[kept], cfg.test_per_user)
    train_idx, test_idx = kept[~test_mask], kept[test_mask]
    if cfg.validation:
        val_mask = holdout_last(r.user[train_idx], r.timestamp[train_idx], cfg.test_per_user)
        train_idx, test_idx = train_idx[~val_mask], train_idx[val_mask]
    # global time order, ties in file order (indices are ascending, so a stable sort keeps file order)
    train_idx = train_idx[np.argsort(r.timestamp[train_idx], kind="stable")]
    test_idx = test_idx[np.argsort(r.timestamp[test_idx], kind="stable")]
    return {"train": train_idx, "test": test_idx, "kept": kept,
            "users_total": int(len(uniq)), "users_dropped": int((counts > cfg.max_user_ratings).sum()),
            "ratings_dropped": int(len(r.user) - len(kept))}


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing, non-empty OUT unless ``force``."""
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {out} already exists (use --force to replace it)")


def prepare(cfg: PrepareConfig, log=print, raw_dir: Path | None = None, extra: dict | None = None) -> dict:
    """Run the whole preparation; returns the manifest (also written to ``OUT/manifest.json``).

    Args:
        cfg: parameters.
        log: ``print``-like sink for notes (skipped lines).
        raw_dir: a directory holding the source files (e.g. generated ones) to move into ``OUT/raw``.
        extra: more manifest keys (e.g. the synthetic generator's parameters).

    Raises:
        DataError: bad input (missing file, unknown format, malformed line).
        FileExistsError: OUT exists and is not empty, without ``force``.
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    check_out(out, cfg.force)
    ratings_path = Path(cfg.ratings)
    r = movielens.read_ratings(ratings_path, cfg.format, cfg.skip_bad_lines)
    for message in r.bad_examples:
        log(f"skipped bad line: {message}", file=sys.stderr)
    movies_path = Path(cfg.movies) if cfg.movies else movielens.find_movies_file(ratings_path, r.format)
    movies = movielens.read_movies(movies_path) if movies_path else None
    parts = split(r, cfg)
    if not len(parts["train"]):
        raise DataError(
            f"{ratings_path}: no train records left: ratings {len(r.user)}, users {parts['users_total']}, "
            f"ratings dropped {parts['ratings_dropped']} (users with more than {cfg.max_user_ratings}), and the "
            f"last {cfg.test_per_user} of each user held out{' twice (--validation)' if cfg.validation else ''}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = STOP.temp_dir(f".{out.name}.tmp-", out.parent)
        shards = {}
        labels = {}
        for name in ("train", "test"):
            idx = parts[name]
            labels[name] = r.rating[idx] >= cfg.pos_threshold
            shards[name] = write_shards(tmp / name, lambda a, b: _columns(r, idx[a:b], cfg.pos_threshold),
                                        cfg.shard_size, n=len(idx))
        if movies is not None:
            movielens.write_movies_csv(movies, tmp / "movies.csv")
        kept = parts["kept"]
        written = np.concatenate([parts["train"], parts["test"]])
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "train_records": int(len(parts["train"])),
            "test_records": int(len(parts["test"])),
            "test_is_validation": cfg.validation,
            "users_dropped": parts["users_dropped"],
            "ratings_dropped": parts["ratings_dropped"],
            "bad_lines": r.bad_lines,
            "input_ratings": int(len(r.user)),
            "train_positive_rate": _rate(labels["train"]),
            "test_positive_rate": _rate(labels["test"]),
            "users": int(len(np.unique(r.user[kept]))),
            "movies": int(len(np.unique(r.movie[kept]))),
            "train_users": int(len(np.unique(r.user[parts["train"]]))),
            "train_movies": int(len(np.unique(r.movie[parts["train"]]))),
            "time_range": ([int(r.timestamp[written].min()), int(r.timestamp[written].max())]
                           if len(written) else None),
            "source": {"path": str(ratings_path.resolve()), "format": r.format, "sha256": r.sha256,
                       "movies": str(movies_path.resolve()) if movies_path else None},
            **(extra or {}),
            "params": asdict(cfg),
            "train_shards": shards["train"],
            "test_shards": shards["test"],
        }
        if raw_dir is not None:
            os.rename(raw_dir, tmp / "raw")
            final = out.resolve() / "raw"
            manifest["source"]["path"] = str(final / ratings_path.name)
            if movies_path and movies_path.parent == ratings_path.parent:
                manifest["source"]["movies"] = str(final / movies_path.name)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    return manifest


def replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``, replacing an existing ``out`` (moved aside, then deleted); signals wait until the
    swap is done, so OUT is always either the old or the new directory."""
    with STOP.deferred():
        if not out.exists():
            os.rename(new, out)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.rename(out, trash / "old")
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(trash / "old", out)
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """What SIGINT / SIGTERM / SIGHUP do while :meth:`installed`: remove the temporary directories made with
    :meth:`temp_dir` (those still there), say so and exit ``128 + signal`` at once.

    The handler ends the process (``os._exit``) rather than raising: an exception raised by a signal handler lands
    wherever the main thread is, e.g. inside an import (numpy imports lazily), and can corrupt the import system's
    locks instead of unwinding cleanly.  Inside :meth:`deferred` blocks (the swap of OUT) a signal waits for the
    block's end.  Outside :meth:`installed` (``prepare`` called as a library) nothing changes: errors still remove
    the directories through ``except`` / ``finally``.
    """

    def __init__(self) -> None:
        self.depth = 0  # deferred blocks entered
        self.pending: int | None = None  # a signal held back
        self.dirs: list[Path] = []  # temporary directories to remove (recorded while installed)
        self.active = False

    def temp_dir(self, prefix: str, parent: Path) -> Path:
        """``tempfile.mkdtemp(prefix=prefix, dir=parent)``, removed by a stop signal while it exists (the caller
        removes or renames it otherwise)."""
        with self.deferred():  # no signal between creating it and recording it
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            if self.active:
                self.dirs.append(path)
        return path

    def _handle(self, signum, frame) -> None:
        if self.depth:
            self.pending = self.pending or signum
            return
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        print(f"error: interrupted by {signal.Signals(signum).name}; temporary files removed", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)

    @contextlib.contextmanager
    def deferred(self):
        """Hold stop signals until the block ends (one that arrived meanwhile acts then)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            self._stop(self.pending)

    @contextlib.contextmanager
    def installed(self):
        """Handle stop signals as the class says (main thread only; the previous handlers come back at the end)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        self.active = True
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.active = False
            self.dirs.clear()


STOP = StopSignals()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lfm-prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_flag(p)
    src = p.add_argument_group("input (one of)")
    src.add_argument("--ratings", default=env_default(RATINGS_ENV),
                     help=env_help("ratings.csv / ratings.dat / u.data; wins over --download", RATINGS_ENV))
    src.add_argument("--download", metavar="NAME",
                     help="fetch an official MovieLens zip (ml-latest-small, ml-100k, ml-1m, ml-10m, ml-20m, "
                          "ml-25m, ml-32m) into the cache (see --cache-dir) and prepare it")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="generate N synthetic ratings (ratings.csv + movies.csv in OUT/raw) and prepare them")
    p.add_argument("--out", default=str(default_data_dir()),
                   help=env_help("output directory", DATA_DIR_ENV, default_data_dir()))
    p.add_argument("--format", choices=movielens.FORMATS, help="ratings format (default: detected)")
    p.add_argument("--movies", help="movies side table (default: movies.csv / movies.dat / u.item beside the ratings)")
    p.add_argument("--max-user-ratings", type=int, default=2000, help="drop users with more ratings (default 2000)")
    p.add_argument("--test-per-user", type=int, default=2, help="last N ratings per user go to test (default 2)")
    p.add_argument("--pos-threshold", type=float, default=4.0, help="label = rating >= this (default 4.0)")
    p.add_argument("--shard-size", type=int, default=200_000, help="records per shard at most (default 200000)")
    p.add_argument("--validation", action="store_true",
                   help="hold out the last N of train as 'test' (validation set); real test records not written")
    p.add_argument("--skip-bad-lines", action="store_true", help="drop and count malformed lines instead of failing")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--if-missing", action="store_true", help="do nothing when OUT already holds a manifest.json")
    from producer import download, synthetic  # noqa: F401  (their flags)

    download.add_arguments(p)
    synthetic.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m producer.prepare``."""
    args = build_parser().parse_args(argv)
    if args.if_missing and (Path(args.out) / "manifest.json").is_file():
        print(f"{args.out} already prepared (manifest.json present); nothing to do")
        return 0
    from producer import download, synthetic

    raw_dir, extra = None, None
    with contextlib.ExitStack() as signals:  # stop signals remove the temp dirs, except during a download
        try:
            check_out(Path(args.out), args.force)  # before any download or generation
            if args.ratings and (args.download or args.synthetic is not None):
                print(f"note: using --ratings {args.ratings} (given or from ${RATINGS_ENV}); "
                      "--download / --synthetic ignored", file=sys.stderr)
            if args.synthetic is not None and not args.ratings:
                syn = synthetic.config_from_args(args)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                signals.enter_context(STOP.installed())
                raw_dir = STOP.temp_dir(f".{Path(args.out).name}.synthetic-", Path(args.out).parent)
                args.ratings = str(synthetic.write(syn, raw_dir))
                extra = {"synthetic": asdict(syn)}
            elif not args.ratings and args.download:
                args.ratings = str(download.fetch_ratings(args))  # (Ctrl-C: its own cleanup runs)
                extra = {"download": {"name": args.download, "base_url": args.base_url}}
            if not args.ratings:
                print("error: give --ratings FILE, --download NAME or --synthetic N", file=sys.stderr)
                return 2
            cfg = PrepareConfig(ratings=args.ratings, out=args.out, format=args.format, movies=args.movies,
                                max_user_ratings=args.max_user_ratings, test_per_user=args.test_per_user,
                                pos_threshold=args.pos_threshold, shard_size=args.shard_size,
                                validation=args.validation, skip_bad_lines=args.skip_bad_lines, force=args.force)
            if raw_dir is None:
                signals.enter_context(STOP.installed())
            m = prepare(cfg, raw_dir=raw_dir, extra=extra)
        except (DataError, FileExistsError, ValueError, download.DownloadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if raw_dir is not None and raw_dir.exists():
                shutil.rmtree(raw_dir, ignore_errors=True)
    print(f"prepared {args.out}: {m['train_records']} train + {m['test_records']} "
          f"{'validation' if cfg.validation else 'test'} records, {m['users']} users, {m['movies']} movies; "
          f"dropped {m['users_dropped']} users ({m['ratings_dropped']} ratings), {m['bad_lines']} bad lines; "
          f"{m['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
