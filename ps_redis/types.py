"""Value types of the PS API: ``Update``, ``Fence``, ``Rows`` and push validation (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ps_redis.codec import row_dtype

#: Field bits of an update (the ``mask`` argument of ``lfm_push``).
VEC, BIAS, ACCUM, COUNT = 1, 2, 4, 8


@dataclass
class Update:
    """New values (``assign``) or steps (``gradient``) for rows ``ids`` of one table.

    ``vec`` float32[n, dim], ``bias`` float32[n], ``accum`` float32[n, dim + 1], ``count`` int[n];
    ``None`` leaves a field unchanged.  ``count`` is always added.
    """

    ids: np.ndarray
    vec: np.ndarray | None = None
    bias: np.ndarray | None = None
    accum: np.ndarray | None = None
    count: np.ndarray | None = None


@dataclass(frozen=True)
class Fence:
    """The Kafka position a push covers: consumer ``group``, ``topic``, ``{partition: next offset}``.

    ``seqs`` holds ``{partition: highest event sequence number applied}`` (the producer's ``lfm-seq`` header),
    raised to at least these in the same atomic step as the offsets (fields ``s<partition>`` of the fence hash):
    a reader that resumes from the offsets knows which re-sent events it applied already.

    ``stored`` holds lower bounds of what the writer knows the server stored at this fence key
    (``{partition: next offset}``: what it resumed from and its own earlier writes): a fenced write that finds
    an offset below its bound fails with :class:`~ps_redis.connection.PSStateLost` before writing anything,
    because the server lost writes (e.g. a Redis restart without persistence) and writing on would claim
    events that are not in the PS.
    """

    group: str
    topic: str
    offsets: dict[int, int] = field(default_factory=dict)
    stored: dict[int, int] = field(default_factory=dict)
    seqs: dict[int, int] = field(default_factory=dict)

    def args(self) -> list[str]:
        """``[partition, next offset] * n`` as strings, partitions sorted."""
        out: list[str] = []
        for p in sorted(self.offsets):
            out += [str(int(p)), str(int(self.offsets[p]))]
        return out

    def block(self) -> list:
        """The fence block the Lua functions take: ``np, (field, value) * np, ne, (partition, stored at least) * ne``
        (see :mod:`ps_redis.functions`); the fields are the partitions (next offsets), then ``s<partition>``
        (event seqs)."""
        bounds: list[str] = []
        for p in sorted(self.stored):
            bounds += [str(int(p)), str(int(self.stored[p]))]
        pairs = self.args()
        for p in sorted(self.seqs):
            pairs += [f"{SEQ_FIELD}{int(p)}", str(int(self.seqs[p]))]
        return [len(pairs) // 2, *pairs, len(bounds) // 2, *bounds]


#: prefix of a fence hash's event-seq fields (``s<partition>``); the offsets' fields are bare partitions
SEQ_FIELD = "s"

#: the fence block of an unfenced call
NO_FENCE = [0, 0]


@dataclass
class Rows:
    """Rows of one table in the order asked (absent rows zero, ``found`` False)."""

    ids: np.ndarray
    vec: np.ndarray
    bias: np.ndarray
    accum: np.ndarray
    count: np.ndarray
    updated: np.ndarray
    raw: np.ndarray
    found: np.ndarray
    struct: np.ndarray | None = None  # the structured rows the fields came from (may be a read-only view)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_struct(cls, ids: np.ndarray, rows: np.ndarray, found: np.ndarray) -> "Rows":
        """Contiguous, writable field arrays out of a structured row array."""
        return cls(ids=ids, vec=np.array(rows["vec"]), bias=np.array(rows["bias"]),
                   accum=np.array(rows["accum"]), count=np.array(rows["count"]),
                   updated=np.array(rows["updated"]), raw=np.array(rows["raw"]), found=found, struct=rows)


def as_ids(ids, what: str = "ids") -> np.ndarray:
    """int64 1-d array of ids; ValueError naming the bad dtype or shape."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-d (got shape {arr.shape})")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers (got dtype {arr.dtype})")
    return arr.astype(np.int64, copy=False)


def _check(table: str, name: str, value, shape: tuple[int, ...], kind: str) -> np.ndarray:
    arr = np.asarray(value)
    if kind == "f" and arr.dtype != np.float32:
        raise ValueError(f"push {table}.{name}: expected dtype float32, got {arr.dtype}")
    if kind == "i" and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"push {table}.{name}: expected an integer dtype, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"push {table}.{name}: expected shape {shape}, got {arr.shape}")
    return arr


def pack_update(table: str, up: Update, dim: int, mode: str) -> tuple[np.ndarray, int, np.ndarray]:
    """Validate one update and pack it for ``lfm_push``: ``(unique ids, mask, packed fields)``.

    ``packed.tobytes()`` is the blob ``lfm_push`` takes: per id the given fields in row order.

    Duplicate ids are merged first, because the server reads every row before writing: steps,
    accumulators and counts are summed (gradient) or the last value wins and counts are summed (assign).
    """
    ids = as_ids(up.ids, f"push {table}.ids")
    n = len(ids)
    fields = []
    if up.vec is not None:
        fields.append(("vec", VEC, _check(table, "vec", up.vec, (n, dim), "f"), ("<f4", (dim,))))
    if up.bias is not None:
        fields.append(("bias", BIAS, _check(table, "bias", up.bias, (n,), "f"), "<f4"))
    if up.accum is not None:
        fields.append(("accum", ACCUM, _check(table, "accum", up.accum, (n, dim + 1), "f"), ("<f4", (dim + 1,))))
    if up.count is not None:
        fields.append(("count", COUNT, _check(table, "count", up.count, (n,), "i").astype(np.int64), "<i8"))
    srt = np.sort(ids)
    if n > 1 and (srt[1:] == srt[:-1]).any():  # else keep the caller's order (the PS reuses its pull's keys)
        uniq, inverse = np.unique(ids, return_inverse=True)
        _, ridx = np.unique(ids[::-1], return_index=True)
        last = n - 1 - ridx  # position of the last occurrence of each unique id
        merged = []
        for name, bit, arr, dt in fields:
            if mode == "gradient" or name == "count":
                acc = np.zeros((len(uniq),) + arr.shape[1:], dtype=arr.dtype)
                np.add.at(acc, inverse, arr)
            else:
                acc = arr[last]
            merged.append((name, bit, acc, dt))
        fields, ids = merged, uniq
    mask = sum(bit for _, bit, _, _ in fields)
    packed = np.empty(len(ids), dtype=[(name, dt) for name, _, _, dt in fields] or [("none", "V0")])
    for name, _, arr, _ in fields:
        packed[name] = arr
    return ids, mask, packed


def empty_rows(dim: int) -> np.ndarray:
    """A zero-length structured row array."""
    return np.zeros(0, dtype=row_dtype(dim))
