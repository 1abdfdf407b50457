"""The parameter server's public interface, as the modules it is built from use it (a ``Protocol``).

:class:`ps_redis.server.ParameterServer` delegates to helper modules: the pull path (:mod:`ps_redis.pullpath`), the
assign fast path (:mod:`ps_redis.fastpath`), whole-namespace maintenance (:mod:`ps_redis.maintenance`) and
snapshots (:mod:`ps_redis.snapshot`, which saves the activity log too).  Those take the server
as an argument typed by :class:`ParameterServerAPI` instead of importing ``ps_redis.server``, so imports go one
way (server → helpers) and the modules form no cycle.  Everything named here is public on the server, and the
helpers use nothing else of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ps_redis.keys import KeySpace
from ps_redis.rowcache import RowCache
from ps_redis.types import Fence, Rows


@runtime_checkable
class ParameterServerAPI(Protocol):
    """What a :class:`ps_redis.ParameterServer` offers the modules built around it (see each method there)."""

    url: str
    namespace: str
    dim: int
    init_scale: float
    seed: int
    keys: KeySpace
    redis: Any  # redis.Redis or redis.cluster.RedisCluster
    is_cluster: bool
    row_cache: RowCache

    def io(self) -> AbstractContextManager[None]:
        """Context for direct redis-py calls on ``redis``: connection errors become ``PSConnectionError``."""

    def run(self, commands: Sequence[tuple[str | bytes, tuple]]) -> list:
        """``(routing key, command)`` pairs in one round trip per node; replies in order."""

    def covered(self, fence: Fence, bounds: bool = False) -> bool:
        """Whether the namespace's stored offsets cover ``fence``."""

    def pull(self, table: str, ids, raw_ids=None, create: bool = True) -> Rows:
        """Rows of ``ids`` in order."""

    def put_rows(self, table: str, ids: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite whole rows; returns rows created."""

    def write_rows(self, tables: dict[str, tuple], fence: Fence | None = None, extra: Sequence[tuple] = ()) -> bool:
        """Whole rows of several tables and ``extra`` commands in one fenced Function call."""

    def scan(self, table: str, chunk: int = 4096) -> Iterator[Rows]:
        """Every row of ``table`` in chunks."""

    def tables(self) -> list[str]:
        """Names of the tables that hold rows."""

    def flush(self) -> int:
        """Delete every key of the namespace; returns keys deleted."""

    def fence_state(self, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """Stored (offsets, event seqs) of (group, topic)."""
