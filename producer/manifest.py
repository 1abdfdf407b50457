"""The prepared-data manifest: ``<data_dir>/manifest.json`` and the train shards it lists.

:func:`load_manifest` reads and checks the manifest (schema version, train shard list, record counts
and time ranges; the listed shard files must exist and no test shard may be listed) into a
:class:`Manifest` of :class:`ShardInfo`; :func:`verify_shards` reads every train shard once
(CRC-checked TFRecord framing) and compares its record count with the manifest.  Every problem raises
:class:`DataError` naming the file.  The time-ordered merge of the shards is :mod:`producer.stream`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lfm_stream.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"


class DataError(ValueError):
    """The prepared data directory is missing, inconsistent or corrupt (the message names the file)."""


@dataclass(frozen=True)
class ShardInfo:
    """One train shard as listed in the manifest."""

    path: Path
    records: int
    first_ts: int
    last_ts: int
    number: int  # position in the manifest list (tie-breaker of the merge)


@dataclass(frozen=True)
class Manifest:
    """The parts of ``manifest.json`` the replay needs."""

    path: Path
    shards: tuple[ShardInfo, ...]
    train_records: int
    digest: str  # sha256 of the manifest file: identifies the data set in the replay state file

    @property
    def ordered(self) -> bool:
        """True when the shards are in global time order (the stream is their concatenation)."""
        return all(a.last_ts <= b.first_ts for a, b in zip(self.shards, self.shards[1:]))


def load_manifest(data_dir: str | Path) -> Manifest:
    """Read and check ``<data_dir>/manifest.json`` (train shard list, counts, schema version).

    Raises:
        DataError: the directory or manifest is missing, unreadable or inconsistent, or a listed
            shard file does not exist.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; prepare it first "
                        f"(`python -m producer.prepare --ratings ratings.csv --out {data_dir}`) "
                        "or point --data-dir / LFM_DATA_DIR at a prepared directory")
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: {data_dir} is not a prepared data directory "
                        "(run `python -m producer.prepare ... --out` on it)")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version!r} is not the supported {SCHEMA_VERSION}; re-run prepare")
    entries = doc.get("train_shards")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: field 'train_shards' must be a non-empty list (got {entries!r:.80})")
    shards = []
    for i, e in enumerate(entries):
        where = f"{path}: train_shards[{i}]"
        try:
            rel, records, first, last = e["file"], int(e["records"]), int(e["first_ts"]), int(e["last_ts"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} needs file, records, first_ts, last_ts (got {e!r:.120}): {exc}") from exc
        shard = (data_dir / rel).resolve()
        if re.search(r"(^|/)test/", str(rel)):
            raise DataError(f"{where}: {rel!r} is a test shard; the held-out set is never streamed")
        if records < 0 or (records > 0 and first > last):
            raise DataError(f"{where}: bad records/time range ({records}, {first}..{last})")
        if not shard.is_file():
            raise DataError(f"shard {shard} listed in {path} (train_shards[{i}]) does not exist")
        shards.append(ShardInfo(shard, records, first, last, i))
    total = sum(s.records for s in shards)
    train_records = int(doc.get("train_records", total))
    if train_records != total:
        raise DataError(f"{path}: train_records is {train_records} but the train_shards add up to {total}")
    return Manifest(path, tuple(shards), total, hashlib.sha256(raw).hexdigest())


def data_loss_error(shard: ShardInfo, exc: Exception) -> DataError:
    """The :class:`DataError` for a TensorFlow read error ``exc`` (corrupt or truncated record) in ``shard``."""
    msg = getattr(exc, "message", None) or str(exc)
    m = re.search(r"(corrupted record at \d+[^\[]*|truncated record at \d+)", msg)
    what = m.group(1).strip() if m else msg.strip().splitlines()[-1][:200]
    return DataError(f"shard {shard.path} is corrupt or truncated ({what}; byte offset in the file); "
                     "re-run prepare to rewrite it")


def verify_shards(manifest: Manifest) -> None:
    """Read every train shard once (CRC-checked, in TensorFlow's C++ reader) and compare record counts.

    Raises:
        DataError: a shard is corrupt or truncated, or holds a different number of records than
            the manifest says.
    """
    import tensorflow as tf  # lazy: `--help` and the pure parts do not need TensorFlow

    for shard in manifest.shards:
        ds = tf.data.TFRecordDataset(str(shard.path), buffer_size=1 << 20).batch(8192)
        try:
            n = sum(int(b.shape[0]) for b in ds)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise data_loss_error(shard, exc) from exc
        if n != shard.records:
            raise DataError(f"shard {shard.path} holds {n} records but {manifest.path} says {shard.records}")
