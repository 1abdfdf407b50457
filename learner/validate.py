"""Field checks of decoded rating records: which ones the learner must not train, and why (pure numpy).

A record that decodes (:mod:`learner.input`) can still be poison: a timestamp of 2**62 once made the popularity
prior allocate terabytes, and negative ids or an infinite rating trained silently into bogus rows.
:func:`check_records` runs every check on whole columns (a handful of vectorized comparisons, no Python loop per
record) and names each failing record with a :class:`Poison` reason: a short ``kind`` (the counter the learner
keeps per reason) and a ``detail`` naming the field, the allowed range and the value.  A record failing several
checks is reported once, for the first of them in this order:

=========================  ===========================================================================
kind                       check
=========================  ===========================================================================
``schema_version``         ``schema_version == SCHEMA_VERSION``
``id_out_of_range``        ``user_id``, ``movie_id`` in [0, 2**60) (the hash range);
                           ``raw_user_id``, ``raw_movie_id`` in [0, 2**32) (MovieLens ids are 32-bit; the
                           PS's Lua Functions read raw ids as doubles, exact only below 2**53, and the
                           recall service takes an item row's raw id outside this range for one the
                           learner did not store: ``recall_api.refresh``)
``timestamp_out_of_range`` ``timestamp`` in [min_timestamp, max_timestamp] (default [0, now + 1 day])
``rating_not_finite``      ``rating`` is a finite number
``rating_out_of_range``    ``rating`` in [min_rating, max_rating] (default [0.5, 5], MovieLens stars)
``label_invalid``          ``label`` is exactly 0 or 1
``label_mismatch``         ``label == (rating >= pos_threshold)`` (prepare's rule; None = not checked)
=========================  ===========================================================================

Decoding failures get their kinds in :mod:`learner.input` (``null_value``, ``empty_value``,
``missing_feature``, ``wrong_type``, ``wrong_length``, ``not_an_example``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lfm_stream.hashing import MASK60
from lfm_stream.schema import SCHEMA_VERSION

HASH_LIMIT = MASK60 + 1  # hashed ids are 60-bit: [0, 2**60)
RAW_ID_LIMIT = 1 << 32  # raw ids: [0, 2**32), the range the recall service takes as stored (module docstring)
DAY = 86400


class Poison(NamedTuple):
    """Why a record is not trained: ``kind`` (a counter name) and ``detail`` (names the field and value)."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class RecordLimits:
    """What a trainable record looks like (see the module docstring).

    Attributes:
        min_timestamp: earliest event time accepted, seconds since the epoch.
        max_timestamp: latest event time accepted; None = ``future_s`` after the wall clock at check time.
        future_s: how far ahead of the clock an event may be when ``max_timestamp`` is None.
        min_rating, max_rating: the rating range (inclusive).
        pos_threshold: the label must be ``1.0 if rating >= pos_threshold else 0.0`` (``producer.prepare``'s
            rule and default); None checks only that the label is 0 or 1.
    """

    min_timestamp: int = 0
    max_timestamp: int | None = None
    future_s: int = DAY
    min_rating: float = 0.5
    max_rating: float = 5.0
    pos_threshold: float | None = 4.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"record limits: {name} {why} (got {getattr(self, name)!r})")

        if self.max_timestamp is not None and self.max_timestamp < self.min_timestamp:
            bad("max_timestamp", f"must be >= min_timestamp ({self.min_timestamp})")
        if self.future_s < 0:
            bad("future_s", "must be >= 0")
        for name in ("min_rating", "max_rating"):
            if not math.isfinite(getattr(self, name)):
                bad(name, "must be a finite number")
        if self.max_rating < self.min_rating:
            bad("max_rating", f"must be >= min_rating ({self.min_rating})")
        if self.pos_threshold is not None and not math.isfinite(self.pos_threshold):
            bad("pos_threshold", "must be a finite number or None")

    def timestamp_window(self, now: float | None = None) -> tuple[int, int]:
        """``[lo, hi]`` of accepted timestamps (``now``: the clock, default ``time.time()``)."""
        if self.max_timestamp is not None:
            return int(self.min_timestamp), int(self.max_timestamp)
        now = time.time() if now is None else now
        return int(self.min_timestamp), int(now) + int(self.future_s)


def check_records(columns: dict[str, np.ndarray], limits: RecordLimits,
                  now: float | None = None) -> tuple[np.ndarray, list[tuple[int, Poison]]]:
    """The records of ``columns`` that may be trained, and why each other one may not.

    Args:
        columns: decoded record columns (every name of :data:`lfm_stream.schema.FEATURES`, same length).
        limits: the accepted ranges.
        now: the clock for a ``max_timestamp`` of None (default ``time.time()``).

    Returns:
        ``(ok, bad)``: bool mask over the records, and ``(index, Poison)`` of each rejected one in index order.
    """
    n = len(columns["label"])
    ok = np.ones(n, bool)
    bad: list[tuple[int, Poison]] = []

    def reject(failing: np.ndarray, kind: str, describe) -> None:
        failing &= ok
        if failing.any():
            for j in np.flatnonzero(failing).tolist():
                bad.append((j, Poison(kind, describe(j))))
            ok[failing] = False

    version = columns["schema_version"]
    reject(version != SCHEMA_VERSION, "schema_version",
           lambda j: f"unknown schema_version {int(version[j])} (expected {SCHEMA_VERSION})")
    for name, limit in (("user_id", HASH_LIMIT), ("movie_id", HASH_LIMIT),
                        ("raw_user_id", RAW_ID_LIMIT), ("raw_movie_id", RAW_ID_LIMIT)):
        col = columns[name]
        reject((col < 0) | (col >= limit), "id_out_of_range",
               lambda j, col=col, name=name, limit=limit: f"{name} {int(col[j])} outside [0, {limit})")
    ts = columns["timestamp"]
    lo, hi = limits.timestamp_window(now)
    reject((ts < lo) | (ts > hi), "timestamp_out_of_range",
           lambda j: f"timestamp out of range [{lo}, {hi}] (got {int(ts[j])})")
    rating = columns["rating"]
    finite = np.isfinite(rating)
    reject(~finite, "rating_not_finite", lambda j: f"rating is {float(rating[j])!r}, not a finite number")
    with np.errstate(invalid="ignore"):
        reject((rating < limits.min_rating) | (rating > limits.max_rating), "rating_out_of_range",
               lambda j: f"rating {float(rating[j])!r} outside [{limits.min_rating}, {limits.max_rating}]")
        label = columns["label"]
        reject((label != 0) & (label != 1), "label_invalid", lambda j: f"label is {float(label[j])!r}, not 0 or 1")
    if limits.pos_threshold is not None:
        t = limits.pos_threshold
        expect = (rating >= t).astype(label.dtype)
        reject(label != expect, "label_mismatch",
               lambda j: f"label {float(label[j])!r} does not match rating {float(rating[j])!r} "
                         f"(label = 1 if rating >= {t} else 0)")
    bad.sort(key=lambda b: b[0])
    return ok, bad
