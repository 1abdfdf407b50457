"""Value types of the recall store: configuration, answers, refresh counters, errors (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE_MODEL = "model"
SOURCE_POPULARITY = "popularity"
SOURCE_COVISIT = "covisit"  # i2i from the item channel
SOURCE_LFM = "lfm"  # i2i by cosine of the learner's item vectors
I2I_SOURCES = (SOURCE_COVISIT, SOURCE_LFM)
I2I_DEFAULT = SOURCE_COVISIT


class Unavailable(RuntimeError):
    """Redis is unreachable, or no item vectors are loaded yet (HTTP 503)."""


class NotFound(LookupError):
    """Unknown user or movie (HTTP 404); the message says why."""


@dataclass(frozen=True)
class StoreConfig:
    """Where the vectors are and how the store keeps them fresh.

    Attributes:
        redis_url, namespace: the PS to read.
        dim: vector dimension; None reads it from the namespace (waits until the learner created it).
        refresh_interval: seconds between incremental refreshes (and between probes while Redis is down).
        max_backoff: cap of the probe interval while Redis is down.
        faiss: rank with Faiss IVF indexes instead of brute force (approximate; for >= 100k movies).
        faiss_nprobe: inverted lists visited per Faiss query.
        chunk: rows per MGET when loading or re-pulling items.
        socket_timeout, retries: Redis client settings of the PS this store creates.
        channel_interval: seconds between rebuilds of the score contract, item channel and popularity from Redis
            (:mod:`recall_api.channels`).
        user_cache: users whose u2i context (row, rated movies, recent movies) the async request path keeps in
            memory, invalidated by Redis key tracking (:mod:`recall_api.usercache`); 0 = read Redis on
            every request.
    """

    redis_url: str
    namespace: str = "lfm"
    dim: int | None = None
    refresh_interval: float = 0.1
    max_backoff: float = 1.0
    faiss: bool = False
    faiss_nprobe: int = 128
    chunk: int = 8192
    socket_timeout: float = 2.0
    retries: int = 1
    channel_interval: float = 5.0
    user_cache: int = 20_000

    def __post_init__(self) -> None:
        if not self.refresh_interval > 0:
            raise ValueError(f"refresh_interval must be > 0 seconds (got {self.refresh_interval!r})")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be >= 1 (got {self.dim!r})")
        if not self.channel_interval > 0:
            raise ValueError(f"channel_interval must be > 0 seconds (got {self.channel_interval!r})")
        if self.user_cache < 0:
            raise ValueError(f"user_cache must be >= 0 users (got {self.user_cache})")
        if self.faiss_nprobe < 1 or self.chunk < 1:
            raise ValueError(f"faiss_nprobe and chunk must be >= 1 (got {self.faiss_nprobe}, {self.chunk})")


@dataclass
class Answer:
    """Ranked movies: raw ids and scores, best first, and where they came from."""

    source: str
    movies: list[int]
    scores: list[float]


@dataclass
class RefreshStats:
    """Counters the refresh thread keeps for /stats."""

    refreshes: int = 0
    full_reloads: int = 0
    rows_applied: int = 0
    unmapped: int = 0
    last_refresh: float | None = None
    last_full_reload: float | None = None
    applied_change_ms: int | None = None  # stream time of the newest change applied
    last_error: str | None = None
    errors: int = 0
    extra: dict = field(default_factory=dict)


def cursor_ms(cursor: str | None) -> int | None:
    """Redis stream time (ms) of an activity-log cursor ``"<epoch>/<ms>-<seq>"`` (None before any entry)."""
    if not cursor or "/" not in cursor:
        return None
    ms = int(cursor.split("/", 1)[1].split("-", 1)[0])
    return ms or None
