"""InputFn: rating records → numpy column batches, from the Kafka stream or from TFRecord shards.

Both paths decode with the one feature spec of :mod:`lfm_stream.schema` (``tf.io.parse_example``).
Stream batches may hold poison records: no value (``null_value``), an empty one (``empty_value``), bytes that
are not an Example (``not_an_example``), a feature missing or empty (``missing_feature``), of the wrong type
(``wrong_type``) or with other than one value (``wrong_length``), or fields outside their ranges
(:mod:`learner.validate`).  :meth:`InputFn.parse` returns the valid rows and names each bad record with a
:class:`~learner.validate.Poison` reason, so the loop can dead-letter it and go on.  Shards read with
:meth:`InputFn.files` are trusted (the test set is written by ``producer.prepare``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from learner.validate import Poison, RecordLimits, check_records
from lfm_stream.schema import FEATURES, feature_spec


@dataclass
class Parsed:
    """Result of parsing a list of serialized records.

    Attributes:
        columns: feature → numpy array over the *valid* records, in input order.
        valid: int64 indexes (into the input list) of the valid records.
        bad: (input index, reason) of each poison record.
    """

    columns: dict[str, np.ndarray]
    valid: np.ndarray
    bad: list[tuple[int, Poison]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.valid.size)

    def valid_mask(self, n: int) -> np.ndarray:
        """True at the input indexes (of ``n`` records) of the valid records."""
        mask = np.zeros(n, bool)
        mask[self.valid] = True
        return mask

    def taking(self, keep: np.ndarray) -> "Parsed":
        """The valid records where ``keep`` (over the input indexes) is True; indexes and bad records unchanged."""
        at = keep[self.valid]
        if at.all():
            return self
        return Parsed({k: v[at] for k, v in self.columns.items()}, self.valid[at], self.bad)


@dataclass
class Decoded:
    """Per-record decode of stream values, aligned with the input (so it can be cut like the records).

    Attributes:
        columns: feature → numpy array over *every* record (zeros where a record is bad).
        ok: True for valid records.
        reasons: input index → why the record is poison.
    """

    columns: dict[str, np.ndarray]
    ok: np.ndarray
    reasons: dict[int, Poison] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ok.size)

    def cut(self, lo: int, hi: int) -> "Decoded":
        """Records ``lo:hi`` (indexes renumbered from 0)."""
        return Decoded({k: v[lo:hi] for k, v in self.columns.items()}, self.ok[lo:hi],
                       {i - lo: r for i, r in self.reasons.items() if lo <= i < hi})

    @staticmethod
    def join(parts: list["Decoded"]) -> "Decoded":
        """Concatenate decodes in order."""
        if len(parts) == 1:
            return parts[0]
        reasons, at = {}, 0
        for p in parts:
            reasons.update({i + at: r for i, r in p.reasons.items()})
            at += len(p)
        return Decoded({k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns},
                       np.concatenate([p.ok for p in parts]), reasons)

    def parsed(self) -> "Parsed":
        """The valid records' columns and the bad ones' reasons, as :meth:`InputFn.parse` returns them."""
        valid = np.flatnonzero(self.ok)
        cols = self.columns if valid.size == self.ok.size else {k: v[valid] for k, v in self.columns.items()}
        return Parsed(cols, valid, sorted(self.reasons.items()))


def empty_columns() -> dict[str, np.ndarray]:
    """Zero-length columns of the record schema."""
    from lfm_stream.schema import INT_FEATURES

    return {k: np.zeros(0, np.int64 if k in INT_FEATURES else np.float32) for k in FEATURES}


#: ``tf.io.parse_example`` errors of one record → the poison kind they mean
_DECODE_KINDS = (("is required but could not be found", "missing_feature"),
                 ("Values size: 0 ", "missing_feature"),
                 ("Data types don't match", "wrong_type"),
                 ("values != expected", "wrong_length"))


def decode_failure(value, exc: Exception) -> Poison:
    """The reason a single record failed to decode (``exc``: what decoding it raised)."""
    if value is None:
        return Poison("null_value", "record has no value (null)")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return Poison("not_an_example", f"record value is a {type(value).__name__}, not bytes")
    if len(value) == 0:
        return Poison("empty_value", "record value is empty (0 bytes)")
    if isinstance(exc, UnicodeDecodeError):  # TF may fail to decode its own error message
        return Poison("not_an_example", "not a valid rating Example: could not parse example input")
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]|Name: <unknown>,\s*", "", msg)
    kind = next((k for text, k in _DECODE_KINDS if text in msg), "not_an_example")
    return Poison(kind, f"not a valid rating Example: {msg[:200]}")


class InputFn:
    """Decodes serialized ``tf.train.Example`` rating records (stream values or shard records).

    Args:
        limits: the field checks of stream records (:mod:`learner.validate`; default :class:`RecordLimits`).
    """

    def __init__(self, limits: RecordLimits | None = None) -> None:
        import tensorflow as tf

        self._tf = tf
        self.limits = limits if limits is not None else RecordLimits()
        self._spec = feature_spec()
        self._parse = tf.function(lambda s: tf.io.parse_example(s, self._spec),
                                  input_signature=[tf.TensorSpec([None], tf.string)])

    def _decode(self, values: list[bytes]) -> dict[str, np.ndarray]:
        out = self._parse(self._tf.constant(values, dtype=self._tf.string))
        return {k: v.numpy() for k, v in out.items()}

    def parse(self, values: list[bytes]) -> Parsed:
        """Decode a batch; poison records are split off with a reason, the rest decoded and checked.

        A batch that fails to decode as a whole is bisected until the bad records are isolated, so a
        clean batch costs one ``parse_example`` call and one vectorized :func:`check_records`.
        """
        if not values:
            return Parsed(empty_columns(), np.zeros(0, np.int64))
        bad: list[tuple[int, Poison]] = []
        parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._bisect(values, 0, len(values), parts, bad)
        if parts:
            idx = np.concatenate([p[0] for p in parts])
            cols = {k: np.concatenate([p[1][k] for p in parts]) for k in FEATURES}
        else:
            idx, cols = np.zeros(0, np.int64), empty_columns()
        ok, rejected = check_records(cols, self.limits)
        if rejected:
            bad.extend((int(idx[j]), reason) for j, reason in rejected)
            idx = idx[ok]
            cols = {k: v[ok] for k, v in cols.items()}
        bad.sort(key=lambda b: b[0])
        return Parsed(cols, idx, bad)

    def decode(self, values: list[bytes]) -> Decoded:
        """:meth:`parse`, aligned with the input records (see :class:`Decoded`)."""
        p = self.parse(values)
        n = len(values)
        ok = np.zeros(n, bool)
        ok[p.valid] = True
        if p.valid.size == n:
            return Decoded(p.columns, ok)
        cols = {}
        for k, v in p.columns.items():
            full = np.zeros(n, v.dtype)
            full[p.valid] = v
            cols[k] = full
        return Decoded(cols, ok, dict(p.bad))

    def _bisect(self, values, lo, hi, parts, bad) -> None:
        try:
            cols = self._decode(values[lo:hi])
            parts.append((np.arange(lo, hi, dtype=np.int64), cols))
        except (self._tf.errors.InvalidArgumentError, UnicodeDecodeError, ValueError, TypeError) as exc:
            # InvalidArgumentError: a record is not a rating Example; ValueError / TypeError: a value is not
            # bytes (None: a null Kafka value) and the batch is no string tensor
            if hi - lo == 1:
                bad.append((lo, decode_failure(values[lo], exc)))
                return
            mid = (lo + hi) // 2
            self._bisect(values, lo, mid, parts, bad)
            self._bisect(values, mid, hi, parts, bad)

    def files(self, paths: list[str | Path], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of decoded records from TFRecord files, in file order (shards are trusted)."""
        tf = self._tf
        if not paths:
            return
        ds = tf.data.TFRecordDataset([str(p) for p in paths]).batch(batch_size)
        ds = ds.map(lambda s: tf.io.parse_example(s, self._spec)).prefetch(2)
        for batch in ds:
            yield {k: v.numpy() for k, v in batch.items()}

    def read_all(self, paths: list[str | Path]) -> dict[str, np.ndarray]:
        """Every record of the files as one column dict."""
        parts = list(self.files(paths, 65536))
        if not parts:
            return empty_columns()
        return {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}


def manifest(data_dir: str | Path) -> dict:
    """The prepared data directory's ``manifest.json`` (clear error when it is missing)."""
    path = Path(data_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m producer.prepare --out {data_dir}` first")
    return json.loads(path.read_text())


def shard_paths(data_dir: str | Path, split: str = "test") -> list[Path]:
    """Shard files of ``split`` (``train`` / ``test``) listed in the manifest, in order."""
    man = manifest(data_dir)
    key = f"{split}_shards"
    if key not in man:
        raise ValueError(f"{Path(data_dir) / 'manifest.json'} has no {key!r} list")
    paths = [Path(data_dir) / s["file"] for s in man[key]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"shard(s) listed in the manifest are missing: {missing[:3]}")
    return paths
