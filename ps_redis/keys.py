"""Key layout of one namespace.

Standalone Redis (``shards == 0``)::

    <ns>:<table>:<hashed id>             packed row (see ps_redis.codec)
    <ns>:@n:<table>                      number of rows in the table (kept by the Lua functions)
    <ns>:@fence:<group>:<topic>          hash partition -> next offset (fenced pushes)
    <ns>:@meta                           hash: dim, shards, init_scale, seed, layout
    <ns>:@epoch                          random token, new after every delete / put_rows / flush

Redis Cluster (``shards == S > 0``): rows are spread over S hash-tagged shard groups per table,
``shard = id mod S``, so a batch splits into at most S single-slot groups and each group is updated
by one Function call::

    {<ns>:<table>:<shard>}:<hashed id>   packed row
    {<ns>:<table>:<shard>}:@n            row count of the shard group
    {<ns>:<table>:<shard>}:@fence:<group>:<topic>   offsets this shard group has applied
    <ns>:@fence:<group>:<topic>          offsets every shard group has applied (what offsets() returns)

Activity log keys share one hash tag, ``{<ns>:@act}``, so one call updates them on a cluster too.

Table names match ``[a-z_]+``; ``@`` never appears in a table name, so the kinds cannot collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

TABLE_RE = re.compile(r"[a-z_]+")
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def check_table(table: str) -> str:
    """Return ``table`` if it is a valid table name (``[a-z_]+``), else raise ValueError."""
    if not isinstance(table, str) or not TABLE_RE.fullmatch(table):
        raise ValueError(f"table name must match [a-z_]+ (got {table!r})")
    return table


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is valid (``[A-Za-z0-9_.-]+``), else raise ValueError."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"namespace must match [A-Za-z0-9_.-]+ (got {namespace!r})")
    return namespace


@dataclass(frozen=True)
class KeySpace:
    """Key names of one namespace; ``shards`` > 0 selects the hash-tagged cluster layout."""

    namespace: str
    shards: int = 0

    @property
    def meta(self) -> str:
        return f"{self.namespace}:@meta"

    @property
    def epoch(self) -> str:
        return f"{self.namespace}:@epoch"

    def fence(self, group: str, topic: str) -> str:
        """Key of the offsets hash of (group, topic) that ``offsets()`` reads."""
        return f"{self.namespace}:@fence:{group}:{topic}"

    def prefix(self, table: str, shard: int | None = None) -> str:
        """Row key prefix (ends with ':') of a table, or of one shard group on a cluster."""
        if self.shards:
            return f"{{{self.namespace}:{table}:{shard}}}:"
        return f"{self.namespace}:{table}:"

    def counter(self, table: str, shard: int | None = None) -> str:
        """Row counter key of a table (standalone) or of one shard group (cluster)."""
        if self.shards:
            return f"{{{self.namespace}:{table}:{shard}}}:@n"
        return f"{self.namespace}:@n:{table}"

    def shard_fence(self, table: str, shard: int, group: str, topic: str) -> str:
        """Cluster only: offsets hash of one shard group."""
        return f"{{{self.namespace}:{table}:{shard}}}:@fence:{group}:{topic}"

    def row_key(self, table: str, hashed_id: int) -> str:
        """Key of one row, e.g. ``lfm:item:8147326611291137`` (what ``FCALL lfm_vec 1 <key>`` takes)."""
        shard = int(hashed_id) % self.shards if self.shards else None
        return f"{self.prefix(table, shard)}{int(hashed_id)}"

    def row_keys(self, table: str, ids: np.ndarray) -> list[bytes]:
        """Keys of many rows, in order (standalone layout)."""
        return list(map((self.prefix(table).encode() + b"%d").__mod__, ids.tolist()))

    def groups(self, table: str, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Cluster layout: (shard, positions into ``ids``) for every shard group present."""
        shard_of = np.mod(ids, self.shards)
        order = np.argsort(shard_of, kind="stable")
        sorted_shards = shard_of[order]
        cuts = np.flatnonzero(np.diff(sorted_shards)) + 1
        return [(int(shard_of[part[0]]), part) for part in np.split(order, cuts) if len(part)] \
            if len(ids) else []

    def slot_groups(self, table: str, ids: np.ndarray) -> list[tuple[list[bytes], np.ndarray, str]]:
        """(row keys, positions into ``ids``, row counter key) per single-slot group: one group standalone, one per
        shard group present on a cluster (what one Function call may touch)."""
        if not self.shards:
            return [(self.row_keys(table, ids), np.arange(len(ids)), self.counter(table))]
        return [(self.shard_keys(table, shard, ids[pos]), pos, self.counter(table, shard))
                for shard, pos in self.groups(table, ids)]

    def shard_keys(self, table: str, shard: int, ids: np.ndarray) -> list[bytes]:
        """Keys of rows that all belong to one shard group."""
        return list(map((self.prefix(table, shard).encode() + b"%d").__mod__, ids.tolist()))

    def scan_patterns(self, table: str) -> list[str]:
        """SCAN MATCH patterns covering every row of a table."""
        if self.shards:
            return [f"{{{self.namespace}:{table}:*}}:*"]
        return [f"{self.namespace}:{table}:*"]

    def namespace_patterns(self) -> list[str]:
        """SCAN MATCH patterns covering every key of the namespace (for ``flush``)."""
        return [f"{self.namespace}:*", f"{{{self.namespace}:*"]

    @staticmethod
    def id_of(key: bytes) -> int | None:
        """Hashed id at the end of a row key, or None for a non-row key (counter, fence)."""
        tail = key.rsplit(b":", 1)[-1]
        try:
            return int(tail)
        except ValueError:
            return None

    # activity log ------------------------------------------------------------------------------
    @property
    def act_tag(self) -> str:
        return f"{{{self.namespace}:@act}}"

    @property
    def act_seen_prefix(self) -> str:
        """``{ns:@act}:seen:`` + raw user id: set of raw movie ids the user rated."""
        return f"{self.act_tag}:seen:"

    @property
    def act_popular(self) -> str:
        """Sorted set raw movie id -> positive count."""
        return f"{self.act_tag}:pop"

    @property
    def act_changes(self) -> str:
        """Capped stream of changed item ids (field ``ids``: packed int64)."""
        return f"{self.act_tag}:changes"

    @property
    def act_clock(self) -> str:
        """Largest event timestamp recorded (stream time, unix seconds)."""
        return f"{self.act_tag}:clock"
