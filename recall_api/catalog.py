"""The movie catalog and the set of known users, read once from a prepared data directory.

* Movies: ``OUT/movies.csv`` (``movieId,title,genres``, genres ``|``-separated; ``(no genres listed)`` = none),
  with the hashed id of every movie (:func:`lfm_stream.hashing.hash_movie_ids`) so a PS item row whose
  ``raw`` field is -1 can still be named.
* Users: the raw user ids of the prepared train and test shards listed in ``OUT/manifest.json``.  They
  decide whether a user without a vector is *known* (popularity fallback) or *unknown* (404).  The ids are
  pulled out of the TFRecord bytes with one regular expression over each file (the ``raw_user_id`` feature
  of the ``tf.train.Example``), so the service needs neither TensorFlow nor a per-record parser.

Everything is optional: without a data directory titles are ``None``, genres empty, and only the PS and
the activity log decide who is known.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lfm_stream.hashing import hash_movie_ids

NO_GENRES = "(no genres listed)"

# Features map entry: key (field 1) "raw_user_id", value (field 2) Feature{int64_list (field 3){value (field 1)}},
# the value packed (tag 0x0a + length) as TensorFlow and producer.shards write it, or unpacked (tag 0x08).
_RAW_USER_RE = re.compile(
    rb"\n\x0braw_user_id\x12[\x00-\x7f]\x1a[\x00-\x7f](?:\n[\x00-\x7f]|\x08)([\x80-\xff]{0,9}[\x00-\x7f])")


@dataclass(frozen=True)
class Movie:
    """One catalog entry."""

    movie_id: int
    title: str | None
    genres: tuple[str, ...]


def decode_varint(data: bytes) -> int:
    """Value of one protobuf base-128 varint (int64 two's complement for 10-byte negatives)."""
    value = 0
    for shift, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * shift)
    return value - (1 << 64) if value >= 1 << 63 else value


def read_movies(path: Path) -> dict[int, Movie]:
    """Parse a MovieLens ``movies.csv``; ValueError names the file, line and bad field."""
    movies: dict[int, Movie] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise ValueError(f"{path}:1: expected header movieId,title,genres (got {header!r})")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{line_no}: expected 3 fields movieId,title,genres (got {row!r})")
            try:
                movie_id = int(row[0])
            except ValueError:
                raise ValueError(f"{path}:{line_no}: movieId is not an integer (got {row[0]!r})") from None
            genres = tuple(g for g in row[2].split("|") if g and g != NO_GENRES)
            movies[movie_id] = Movie(movie_id, row[1], genres)
    return movies


def scan_raw_user_ids(path: Path) -> set[int]:
    """Distinct ``raw_user_id`` values of the records in one TFRecord file."""
    data = Path(path).read_bytes()
    return {decode_varint(v) for v in set(_RAW_USER_RE.findall(data))}


def read_users(data_dir: Path) -> set[int] | None:
    """Raw user ids of every train and test shard in ``data_dir/manifest.json`` (None without a manifest)."""
    manifest_path = Path(data_dir) / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    users: set[int] = set()
    for key in ("train_shards", "test_shards"):
        for i, shard in enumerate(manifest.get(key) or []):
            if not isinstance(shard, dict) or "file" not in shard:
                raise ValueError(f"{manifest_path}: {key}[{i}] has no 'file' (got {shard!r})")
            users |= scan_raw_user_ids(Path(data_dir) / shard["file"])
    return users


@dataclass
class Catalog:
    """Movie names and the known users; lookups are dict reads (no I/O after construction).

    Attributes:
        movies: raw movie id -> :class:`Movie`.
        raw_of_hash: hashed movie id -> raw movie id (names PS rows whose ``raw`` is -1).
        users: raw user ids of the prepared data, or None when unknown (no manifest).
        source: where the catalog came from (for /stats).
        render_cache: movie id -> its encoded answer item up to the score, filled by ``recall_api.app.render``.
    """

    movies: dict[int, Movie] = field(default_factory=dict)
    raw_of_hash: dict[int, int] = field(default_factory=dict)
    users: set[int] | None = None
    source: str | None = None
    render_cache: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, data_dir: str | Path | None) -> "Catalog":
        """Read ``movies.csv`` and the shard users of ``data_dir``; missing parts stay empty.

        Raises:
            FileNotFoundError: ``data_dir`` is given but is not a directory.
        """
        if data_dir is None:
            return cls()
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(f"prepared data directory {data_dir} does not exist")
        movies_path = data_dir / "movies.csv"
        movies = read_movies(movies_path) if movies_path.exists() else {}
        return cls.from_movies(movies, users=read_users(data_dir), source=str(data_dir))

    @classmethod
    def from_movies(cls, movies: dict[int, Movie], users: set[int] | None = None,
                    source: str | None = None) -> "Catalog":
        """A catalog over ``movies`` (and optionally a known-user set)."""
        raw = np.fromiter(movies.keys(), dtype=np.int64, count=len(movies))
        raw = raw[raw >= 0]
        hashed = hash_movie_ids(raw) if len(raw) else np.zeros(0, dtype=np.int64)
        return cls(movies=movies, raw_of_hash=dict(zip(hashed.tolist(), raw.tolist())), users=users,
                   source=source)

    def movie(self, movie_id: int) -> Movie:
        """The catalog entry of a raw movie id (title None, no genres when it is not in movies.csv)."""
        m = self.movies.get(movie_id)
        return m if m is not None else Movie(movie_id, None, ())

    def knows_user(self, user_id: int) -> bool:
        """True when the prepared data contains ``user_id``."""
        return self.users is not None and user_id in self.users

    def stats(self) -> dict:
        """Counts for /stats."""
        return {"source": self.source, "movies": len(self.movies),
                "users": None if self.users is None else len(self.users)}
