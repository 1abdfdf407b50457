"""Record checks at the learner's edge: learner.validate on hand-made columns, learner.input on hand-made bytes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from learner.validate import HASH_LIMIT, RAW_ID_LIMIT, Poison, RecordLimits, check_records

NOW = 1_700_000_000
GOOD = dict(schema_version=1, user_id=11, movie_id=22, raw_user_id=1, raw_movie_id=2, rating=4.0, label=1.0,
            timestamp=10**9)


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Decoded-record columns (int64 / float32, as parse_example gives them) of ``rows`` (GOOD + overrides)."""
    full = [{**GOOD, **r} for r in rows]
    return {k: np.array([r[k] for r in full], np.float32 if k in ("rating", "label") else np.int64) for k in GOOD}


CASES = [  # (override, kind, words the detail must hold)
    ({"schema_version": 2}, "schema_version", "unknown schema_version 2"),
    ({"user_id": -1}, "id_out_of_range", "user_id -1 outside [0, 1152921504606846976)"),
    ({"movie_id": HASH_LIMIT}, "id_out_of_range", f"movie_id {HASH_LIMIT} outside"),
    ({"raw_user_id": -5}, "id_out_of_range", "raw_user_id -5"),
    ({"raw_movie_id": RAW_ID_LIMIT}, "id_out_of_range", f"raw_movie_id {RAW_ID_LIMIT} outside [0, 4294967296)"),
    ({"timestamp": 2**62}, "timestamp_out_of_range",
     f"timestamp out of range [0, {NOW + 86400}] (got 4611686018427387904)"),
    ({"timestamp": -1}, "timestamp_out_of_range", "(got -1)"),
    ({"rating": float("inf")}, "rating_not_finite", "rating is inf"),
    ({"rating": float("nan")}, "rating_not_finite", "rating is nan"),
    ({"rating": 5.5, "label": 1.0}, "rating_out_of_range", "rating 5.5 outside [0.5, 5.0]"),
    ({"rating": 0.0, "label": 0.0}, "rating_out_of_range", "rating 0.0 outside"),
    ({"label": 2.0}, "label_invalid", "label is 2.0, not 0 or 1"),
    ({"label": float("nan")}, "label_invalid", "label is nan"),
    ({"label": 0.0}, "label_mismatch", "label 0.0 does not match rating 4.0 (label = 1 if rating >= 4.0 else 0)"),
    ({"rating": 3.5, "label": 1.0}, "label_mismatch", "rating 3.5"),
]


@pytest.mark.parametrize("override,kind,words", CASES, ids=[c[1] + ":" + ",".join(c[0]) for c in CASES])
def test_each_bad_field_is_named_with_its_value(override, kind, words):
    ok, bad = check_records(columns([{}, override, {}]), RecordLimits(), now=NOW)
    assert ok.tolist() == [True, False, True]
    assert len(bad) == 1 and bad[0][0] == 1 and bad[0][1].kind == kind
    assert words in bad[0][1].detail, bad[0][1].detail


def test_good_records_pass_at_the_edges_of_every_range():
    rows = [{"rating": 0.5, "label": 0.0}, {"rating": 5.0}, {"rating": 3.5, "label": 0.0},
            {"timestamp": 0}, {"timestamp": NOW + 86400}, {"user_id": HASH_LIMIT - 1, "movie_id": 0},
            {"raw_user_id": 0, "raw_movie_id": RAW_ID_LIMIT - 1}]
    ok, bad = check_records(columns(rows), RecordLimits(), now=NOW)
    assert ok.all() and bad == []


def test_one_reason_per_record_the_first_failing_check():
    ok, bad = check_records(columns([{"user_id": -1, "timestamp": -1, "label": 2.0}, {"rating": float("nan")}]),
                            RecordLimits(), now=NOW)
    assert ok.tolist() == [False, False]
    assert [(i, p.kind) for i, p in bad] == [(0, "id_out_of_range"), (1, "rating_not_finite")]


def test_configured_window_range_and_no_label_rule():
    limits = RecordLimits(min_timestamp=100, max_timestamp=200, min_rating=1.0, max_rating=10.0, pos_threshold=None)
    rows = [{"timestamp": 100}, {"timestamp": 200, "rating": 10.0, "label": 0.0}, {"timestamp": 99},
            {"timestamp": 201}, {"timestamp": 150, "rating": 0.5}]
    ok, bad = check_records(columns(rows), limits, now=NOW)
    assert ok.tolist() == [True, True, False, False, False]
    assert [str(p) for _, p in bad] == ["timestamp out of range [100, 200] (got 99)",
                                        "timestamp out of range [100, 200] (got 201)",
                                        "rating 0.5 outside [1.0, 10.0]"]


def test_the_default_window_follows_the_clock():
    assert RecordLimits().timestamp_window(now=NOW) == (0, NOW + 86400)
    assert RecordLimits(max_timestamp=5).timestamp_window(now=NOW) == (0, 5)


@pytest.mark.parametrize("kwargs,words", [
    ({"min_timestamp": 10, "max_timestamp": 5}, "max_timestamp must be >= min_timestamp (10) (got 5)"),
    ({"min_rating": 3.0, "max_rating": 2.0}, "max_rating must be >= min_rating (3.0) (got 2.0)"),
    ({"max_rating": float("inf")}, "max_rating must be a finite number (got inf)"),
    ({"pos_threshold": float("nan")}, "pos_threshold must be a finite number or None (got nan)"),
])
def test_limits_reject_nonsense_up_front(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        RecordLimits(**kwargs)


def test_empty_columns_are_fine():
    empty = {k: v[:0] for k, v in columns([{}]).items()}
    ok, bad = check_records(empty, RecordLimits(), now=NOW)
    assert ok.shape == (0,) and bad == []


def test_learner_flags_build_the_limits():
    from learner.__main__ import build_parser, config_from_args, main

    args = build_parser().parse_args(["--min-timestamp", "5", "--max-timestamp", "9", "--min-rating", "1",
                                      "--max-rating", "10", "--pos-threshold", "none"])
    assert config_from_args(args).limits == RecordLimits(5, 9, min_rating=1.0, max_rating=10.0, pos_threshold=None)
    assert config_from_args(build_parser().parse_args([])).limits == RecordLimits()
    assert main(["--min-timestamp", "9", "--max-timestamp", "5"]) == 2  # rejected before connecting anywhere


# ----------------------------------------------------------------------------- the decode path (real TF)
def example(**features) -> bytes:
    """A tf.train.Example with the good record's features, ``features`` replacing (None: removing) some."""
    import tensorflow as tf

    from lfm_stream.schema import INT_FEATURES

    feats = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) if k in INT_FEATURES
             else tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in GOOD.items()}
    feats.update(features)
    feats = {k: v for k, v in feats.items() if v is not None}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_decode_names_every_malformed_value_and_keeps_the_rest():
    import tensorflow as tf

    from learner.input import InputFn
    from lfm_stream.schema import make_example

    good = make_example(**{k: v for k, v in GOOD.items() if k != "schema_version"})
    bad = {
        1: (None, "null_value"),
        2: (b"", "empty_value"),
        3: (b"\x08\xffnot a protobuf", "not_an_example"),
        4: (example(label=None), "missing_feature"),
        5: (example(rating=tf.train.Feature()), "missing_feature"),
        6: (example(rating=tf.train.Feature(float_list=tf.train.FloatList(value=[]))), "missing_feature"),
        7: (example(rating=tf.train.Feature(float_list=tf.train.FloatList(value=[4.0, 4.0]))), "wrong_length"),
        8: (example(user_id=tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))), "wrong_type"),
        9: (make_example(**{**GOOD, "timestamp": 2**62}), "timestamp_out_of_range"),
        10: (make_example(**{**GOOD, "user_id": -3}), "id_out_of_range"),
    }
    values = [good] + [v for v, _ in bad.values()] + [good]
    d = InputFn().decode(values)
    assert d.ok.tolist() == [True] + [False] * len(bad) + [True]
    assert {i: r.kind for i, r in d.reasons.items()} == {i: k for i, (_, k) in bad.items()}
    assert all(isinstance(r, Poison) and r.detail for r in d.reasons.values())
    assert "Feature: label (data type: float) is required" in d.reasons[4].detail
    assert "<unknown>" not in d.reasons[4].detail and "function_node" not in d.reasons[4].detail
    p = d.parsed()
    assert p.valid.tolist() == [0, len(values) - 1] and p.columns["user_id"].tolist() == [11, 11]


def test_decode_of_a_clean_batch_checks_its_fields():
    from learner.input import InputFn
    from lfm_stream.schema import make_example

    rec = {k: v for k, v in GOOD.items() if k != "schema_version"}
    values = [make_example(**rec), make_example(**{**rec, "rating": float("inf")}), make_example(**rec)]
    p = InputFn(RecordLimits(pos_threshold=None)).parse(values)
    assert p.valid.tolist() == [0, 2] and [(i, r.kind) for i, r in p.bad] == [(1, "rating_not_finite")]
