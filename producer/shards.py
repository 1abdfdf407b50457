"""TFRecord shard writer: rating columns -> ``part-NNNNN.tfrecord`` files plus their manifest entries.

A TFRecord file is a sequence of ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little endian), where ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8``
(mod 2**32).  Records are serialized with :func:`lfm_stream.schema.encode_examples` and framed here
with a CRC-32C computed for all records of a shard at once (numpy, slicing by 4 bytes), so one shard is
one ``write`` call and no Python code runs per record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lfm_stream.schema import encode_examples

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _tables() -> np.ndarray:
    """Slicing-by-4 lookup tables, uint32 ``[4, 256]``."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> np.uint32(1)) ^ np.uint32(_POLY), t >> np.uint32(1)).astype(np.uint32)
    tables = np.empty((4, 256), dtype=np.uint32)
    tables[0] = t
    for k in range(1, 4):
        prev = tables[k - 1]
        tables[k] = (prev >> np.uint32(8)) ^ t[prev & np.uint32(0xFF)]
    return tables


_T = _tables()


def _rows(buffer: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """Records as rows of a uint8 ``[n, width]`` matrix (zero padded), gathered without index arrays."""
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    padded = np.concatenate([np.asarray(buffer, dtype=np.uint8), np.zeros(width, dtype=np.uint8)])
    return np.lib.stride_tricks.sliding_window_view(padded, width)[starts]


def crc32c_rows(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC-32C of ``rows[i, :lengths[i]]`` for every row (uint32 ``[n]``).

    Works on all rows at once: 4 bytes per step (slicing-by-4) while every row has 4 left, then byte by
    byte where a row is still that long.
    """
    n = len(lengths)
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    if n == 0:
        return crc
    t0, t1, t2, t3 = _T[0], _T[1], _T[2], _T[3]
    m8 = np.uint32(0xFF)
    common = int(lengths.min()) // 4
    # one contiguous row of words per step (column access of the [n, width] matrix would be strided)
    words = np.ascontiguousarray(np.ascontiguousarray(rows[:, :common * 4]).view("<u4").T)
    for k in range(common):
        x = crc ^ words[k]
        crc = t3[x & m8] ^ t2[(x >> np.uint32(8)) & m8] ^ t1[(x >> np.uint32(16)) & m8] ^ t0[x >> np.uint32(24)]
    for p in range(common * 4, int(lengths.max())):
        nxt = t0[(crc ^ rows[:, p]) & m8] ^ (crc >> np.uint32(8))
        crc = np.where(lengths > p, nxt, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


def crc32c_batch(buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """CRC-32C of every record ``buffer[offsets[i]:offsets[i + 1]]`` (uint32 ``[n]``)."""
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    width = int(lengths.max()) if len(lengths) else 0
    return crc32c_rows(_rows(buffer, offsets, width), lengths)


def masked_crc(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC: ``((c >> 15) | (c << 17)) + 0xa282ead8`` modulo 2**32."""
    c = np.asarray(crc, dtype=np.uint32)
    with np.errstate(over="ignore"):
        return (((c >> np.uint32(15)) | (c << np.uint32(17))) + np.uint32(0xA282EAD8)).astype(np.uint32)


def frame_records(buffer: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """TFRecord file bytes (uint8) for the records ``buffer[offsets[i]:offsets[i + 1]]``."""
    lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    width = int(lengths.max())
    rows = _rows(buffer, offsets, width)
    len_bytes = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    len_crc = masked_crc(crc32c_rows(len_bytes, np.full(n, 8)))
    data_crc = masked_crc(crc32c_rows(rows, lengths))
    matrix = np.zeros((n, 12 + width + 4), dtype=np.uint8)
    matrix[:, :8] = len_bytes
    matrix[:, 8:12] = len_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    matrix[:, 12:12 + width] = rows
    tail = 12 + lengths[:, None] + np.arange(4)
    matrix[np.arange(n)[:, None], tail] = data_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    return matrix[np.arange(matrix.shape[1])[None, :] < (16 + lengths)[:, None]]


def write_shards(directory: Path, columns: dict[str, np.ndarray] | Callable[[int, int], dict[str, np.ndarray]],
                 shard_size: int, n: int | None = None, prefix: str = "part") -> list[dict]:
    """Write records (already in their final order) as ``directory/<prefix>-NNNNN.tfrecord`` shards.

    Args:
        directory: created if missing.
        columns: the record columns of :func:`lfm_stream.schema.encode_examples`, or a function
            ``(start, stop) -> columns`` of records ``start..stop-1`` (then ``n`` is required), so only
            one shard's columns are in memory at a time.
        shard_size: at most this many records per shard (> 0).
        n: number of records (default: the length of ``columns["timestamp"]``).
        prefix: file name prefix.

    Returns:
        One manifest entry per shard: ``{"file": "<dir name>/<file>", "records", "first_ts", "last_ts"}``
        (``file`` relative to the directory's parent, i.e. the prepared-data root).
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0 (got {shard_size})")
    if callable(columns):
        if n is None:
            raise ValueError("write_shards: n is required when columns is a function")
        get = columns
    else:
        n = len(columns["timestamp"]) if n is None else n
        get = lambda a, b: {k: v[a:b] for k, v in columns.items()}  # noqa: E731
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    for index, start in enumerate(range(0, n, shard_size)):
        part = get(start, min(n, start + shard_size))
        buffer, offsets = encode_examples(part)
        name = f"{prefix}-{index:05d}.tfrecord"
        with open(directory / name, "wb") as f:
            f.write(memoryview(frame_records(buffer, offsets)))
        ts = part["timestamp"]
        entries.append({"file": f"{directory.name}/{name}", "records": int(len(ts)),
                        "first_ts": int(ts[0]), "last_ts": int(ts[-1])})
    return entries
