"""The item channel's Redis state: co-occurrence neighbours, degrees, users' recent movies, stream popularity.

Written by the item-channel worker (:mod:`learner.items`): one ``lfm_covisit`` call per window inside the fenced
write of :meth:`ParameterServer.write_rows` (so each event counts once across crashes), read by the recall service.
All keys share one hash tag (one node of a cluster)::

    {<ns>:@co}:nb:<raw movie>       string "<movie> <count> <movie> <count> …": movies rated within the pair
                                    window of it, most counted first (up to `neighbor_hold` kept, `neighbors` served)
    {<ns>:@co}:deg                  hash  raw movie → all its pair counts (D, exact)
    {<ns>:@co}:recent:<raw user>    string "<bucket of the user's last event> <movie> … <movie>" (oldest first)
    {<ns>:@co}:pop:<bucket>         hash  raw movie → positive events in that stream bucket
    {<ns>:@co}:pop:all              hash  raw movie → positive events of all time
    {<ns>:@co}:meta                 hash  events (stream events applied), bucket (latest bucket)

Every one is readable with one redis-cli call, e.g. ``GET "{lfm:@co}:nb:318"``,
``GET "{lfm:@co}:recent:42"``, ``HGET "{lfm:@co}:deg" 318``.
"""

from __future__ import annotations

import numpy as np

from ps_redis.interface import ParameterServerAPI
from ps_redis.types import Fence

INT64_MAX = (1 << 63) - 1


def _ints(values) -> list[int]:
    return np.asarray(values, np.int64).tolist()


def _id_of(text: str) -> int | None:
    """The id (an int64 >= 0 in ASCII digits) that the last part of a key names, None for anything else."""
    return int(text) if text.isascii() and text.isdigit() and int(text) <= INT64_MAX else None


def _key_text(key) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else key


class Covisit:
    """The item channel's keys in ``ps``'s namespace, the commands that update them and the reads of them."""

    def __init__(self, ps: ParameterServerAPI):
        self.ps = ps
        self.tag = "{" + f"{ps.namespace}:@co" + "}"
        self.degree_key = f"{self.tag}:deg"
        self.pop_total_key = f"{self.tag}:pop:all"
        self.meta_key = f"{self.tag}:meta"

    def neighbours_key(self, raw_movie: int) -> str:
        return f"{self.tag}:nb:{int(raw_movie)}"

    def recent_key(self, raw_user: int) -> str:
        return f"{self.tag}:recent:{int(raw_user)}"

    def pop_key(self, bucket: int) -> str:
        return f"{self.tag}:pop:{int(bucket)}"

    # ------------------------------------------------------------------------------- writes
    def update_command(self, update, neighbour_lists: dict[int, str], events_after: int,
                       bucket_events: int) -> tuple:
        """The ``FCALL lfm_covisit`` that applies a :class:`learner.covisit.ChunkUpdate` (run inside the fenced
        ``lfm_write`` of :meth:`apply`): the changed movies' neighbour lists (encoded, whole), degrees,
        popularity, the users' recent movies and the applied-event count."""
        hargs = self._pairs(update.degree_movies, update.degree_n)
        hargs += self._pairs(*self._sum_by_movie(update.pop_movies, update.pop_n))
        bkeys = []
        for bucket in np.unique(update.pop_buckets).tolist():
            at = update.pop_buckets == bucket
            bkeys.append(self.pop_key(bucket))
            hargs += self._pairs(update.pop_movies[at], update.pop_n[at])
        skeys = [self.neighbours_key(m) for m in neighbour_lists]
        svals = list(neighbour_lists.values())
        for user, bucket, movies in zip(_ints(update.users), _ints(update.last_bucket), update.recent):
            skeys.append(self.recent_key(user))
            svals.append(" ".join(map(str, [bucket, *_ints(movies)])))
        last = (events_after - 1) // bucket_events if events_after else 0
        keys = [self.meta_key, self.degree_key, self.pop_total_key, *bkeys, *skeys]
        args = [events_after, last, len(bkeys), len(skeys), *hargs, *svals]
        return ("FCALL", "lfm_covisit", len(keys), *keys, *args)

    @staticmethod
    def _pairs(fields, counts) -> list:
        """``n, field, count, …`` of one hash's increments."""
        out = [len(fields)]
        for f, c in zip(_ints(fields), _ints(counts)):
            out += [f, c]
        return out

    @staticmethod
    def _sum_by_movie(movies: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uniq, inv = np.unique(movies, return_inverse=True)
        out = np.zeros(len(uniq), np.int64)
        np.add.at(out, inv, counts)
        return uniq, out

    def apply(self, update, neighbour_lists: dict[int, str], events_after: int, bucket_events: int,
              fence: Fence) -> bool:
        """Apply an update in one fenced write; False when ``fence``'s offsets were already applied."""
        command = self.update_command(update, neighbour_lists, events_after, bucket_events)
        return self.ps.write_rows({}, fence=fence, extra=[command])

    # -------------------------------------------------------------------------------- reads
    def events_applied(self) -> int:
        """Stream events the channel has applied (0 for a fresh namespace)."""
        value = self.ps.redis.hget(self.meta_key, "events")
        return int(value) if value is not None else 0

    def latest_bucket(self) -> int | None:
        """The bucket of the newest applied event (None before any)."""
        value = self.ps.redis.hget(self.meta_key, "bucket")
        return _id_of(_key_text(value)) if value is not None else None  # (None for a malformed value too)

    def recent(self, raw_users) -> dict[int, tuple[int, np.ndarray]]:
        """raw user → (bucket of the last event, recent movies oldest first), for the users that have some."""
        users = _ints(raw_users)
        if not users:
            return {}
        values = self.ps.redis.mget([self.recent_key(u) for u in users])
        out = {}
        for user, value in zip(users, values):
            parsed = parse_recent(value)
            if parsed is not None:
                out[user] = parsed
        return out

    def neighbours(self, raw_movies) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per movie: (neighbour raw ids, counts), most counted first (empty for a movie without), one MGET."""
        movies = _ints(raw_movies)
        if not movies:
            return []
        return [parse_neighbours(v) for v in self.ps.redis.mget([self.neighbours_key(m) for m in movies])]

    def all_neighbours(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner raw ids, neighbour raw ids, counts) of every stored list (SCAN + MGET in batches), at most the
        first ``limit`` (the most counted) of each list; malformed keys or values are skipped."""
        keys = [_key_text(k) for k in self.ps.redis.scan_iter(match=f"{self.tag}:nb:*", count=2000)]
        owners, cols, counts = [], [], []
        for lo in range(0, len(keys), 2000):
            part = keys[lo:lo + 2000]
            for key, value in zip(part, self.ps.redis.mget(part)):
                owner = _id_of(key.rsplit(":", 1)[1])
                if owner is None:
                    continue
                ids, cnt = parse_neighbours(value)
                if limit is not None:
                    ids, cnt = ids[:limit], cnt[:limit]
                owners.append(np.full(len(ids), owner, np.int64))
                cols.append(ids)
                counts.append(cnt)
        if not owners:
            z = np.zeros(0, np.int64)
            return z, z, z
        return np.concatenate(owners), np.concatenate(cols), np.concatenate(counts)

    def degrees(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw movies, D) of every movie with pairs."""
        return _hash_arrays(self.ps.redis.hgetall(self.degree_key))

    def popularity(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(buckets, raw movies, positives) of every stream bucket (one HGETALL per bucket)."""
        latest = self.latest_bucket()
        if latest is None:
            z = np.zeros(0, np.int64)
            return z, z, z
        keys = []
        cursor = 0
        pattern = f"{self.tag}:pop:*"
        while True:
            cursor, found = self.ps.redis.scan(cursor, match=pattern, count=1000)
            keys += [_key_text(k) for k in found]
            if not cursor:
                break
        buckets, movies, counts = [], [], []
        keys = [k for k in keys if _id_of(k.rsplit(":", 1)[1]) is not None]
        pipe = self.ps.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        for k, res in zip(keys, pipe.execute()):
            m, c = _hash_arrays(res)
            buckets.append(np.full(len(m), int(k.rsplit(":", 1)[1]), np.int64))
            movies.append(m)
            counts.append(c)
        if not keys:
            z = np.zeros(0, np.int64)
            return z, z, z
        return np.concatenate(buckets), np.concatenate(movies), np.concatenate(counts)


def parse_recent(value) -> tuple[int, np.ndarray] | None:
    """``"<bucket> <movie> …"`` → (bucket, movies); None for a missing or malformed value."""
    if value is None:
        return None
    try:
        parts = [int(p) for p in (value.decode() if isinstance(value, bytes) else value).split()]
    except (ValueError, UnicodeDecodeError):
        return None
    if not parts or any(p < 0 or p > INT64_MAX for p in parts):
        return None
    return parts[0], np.asarray(parts[1:], np.int64)


def parse_neighbours(value) -> tuple[np.ndarray, np.ndarray]:
    """A stored list ``"<id> <count> …"`` → (raw ids, counts); missing or malformed: empty."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if value is None:
        return empty
    try:
        flat = np.array((value.decode() if isinstance(value, bytes) else value).split(), dtype=np.int64)
    except (ValueError, UnicodeDecodeError, OverflowError):
        return empty
    if len(flat) % 2 or (flat < 0).any():
        return empty
    return flat[0::2], flat[1::2]


def _hash_arrays(res: dict) -> tuple[np.ndarray, np.ndarray]:
    fields, values = [], []
    for f, v in (res or {}).items():
        try:
            field, value = int(f), int(v)
        except (TypeError, ValueError):
            continue
        if -INT64_MAX - 1 <= field <= INT64_MAX and -INT64_MAX - 1 <= value <= INT64_MAX:  # else no int64: skipped
            fields.append(field)
            values.append(value)
    return np.asarray(fields, np.int64), np.asarray(values, np.int64)
