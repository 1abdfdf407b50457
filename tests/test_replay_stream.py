"""The time-ordered shard stream: merge order, resume/start positions, and every bad-input message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from producer.manifest import DataError, load_manifest, verify_shards
from producer.stream import iter_batches, start_index_for_ts
from tests._replay_util import prepare_synthetic, read_stream, write_shards


def stream(data: Path, **kw) -> tuple[list[bytes], np.ndarray, list[int]]:
    batches = list(iter_batches(load_manifest(data), **kw))
    values = [v for b in batches for v in b.values]
    ts = np.concatenate([b.timestamps for b in batches]) if batches else np.empty(0, np.int64)
    # global indices of every yielded record, from the batch headers
    idx = [b.index + j for b in batches for j in range(len(b))]
    return values, ts, idx


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory) -> Path:
    """Three overlapping shards with cross-shard timestamp ties, and a test shard that must not be read."""
    rng = np.random.default_rng(7)
    shards = []
    for s in range(3):
        ts = np.sort(rng.integers(1000, 1400, size=300 + 50 * s))
        shards.append([(int(t), int(u)) for t, u in zip(ts, rng.integers(1, 40, size=len(ts)))])
    return write_shards(tmp_path_factory.mktemp("overlap"), shards, test=[(5, 1), (6, 2)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Output of the real prepare CLI: several shards already in global time order."""
    return prepare_synthetic(tmp_path_factory.mktemp("prep") / "data", n=3000, shard_size=700)


def test_overlapping_shards_merge_by_timestamp_then_shard(overlapping):
    expected, exp_ts, _ = read_stream(overlapping)
    manifest = load_manifest(overlapping)
    assert not manifest.ordered
    for batch_size in (7, 64, 4096):  # the order must not depend on the read batch size
        values, ts, idx = stream(overlapping, batch_size=batch_size)
        assert values == expected
        assert np.array_equal(ts, exp_ts)
        assert idx == list(range(len(expected)))
    assert len(expected) == 300 + 350 + 400  # test records are not part of the stream


def test_ordered_shards_are_concatenated(prepared):
    expected, exp_ts, _ = read_stream(prepared)
    manifest = load_manifest(prepared)
    assert manifest.ordered and len(manifest.shards) >= 4
    verify_shards(manifest)
    values, ts, idx = stream(prepared)
    assert values == expected and np.array_equal(ts, exp_ts)
    assert idx == list(range(manifest.train_records))


@pytest.mark.parametrize("which", ["overlapping", "prepared"])
@pytest.mark.parametrize("start", [1, 699, 700, 1049])
def test_resume_yields_exactly_the_suffix(request, which, start):
    data = request.getfixturevalue(which)
    expected, _, _ = read_stream(data)
    start = min(start, len(expected))
    values, _, idx = stream(data, start_index=start, batch_size=100)
    assert values == expected[start:]
    assert idx == list(range(start, len(expected)))


@pytest.mark.parametrize("which", ["overlapping", "prepared"])
def test_start_ts_skips_earlier_events_and_keeps_their_indices(request, which):
    data = request.getfixturevalue(which)
    expected, exp_ts, _ = read_stream(data)
    cut = int(exp_ts[len(exp_ts) // 2])
    first = int(np.searchsorted(exp_ts, cut, side="left"))
    values, ts, idx = stream(data, start_ts=cut)
    assert values == expected[first:] and ts.min() >= cut
    assert idx[0] == first
    assert start_index_for_ts(load_manifest(data), cut) == first
    assert start_index_for_ts(load_manifest(data), int(exp_ts[-1]) + 1) == len(expected)


def test_resume_past_the_end_is_rejected(prepared):
    with pytest.raises(DataError, match="outside the stream"):
        list(iter_batches(load_manifest(prepared), start_index=10**9))


# -- bad input: every message names the file --------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=f"data directory {tmp_path / 'nope'} does not exist"):
        load_manifest(tmp_path / "nope")


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json not found"):
        load_manifest(tmp_path)


def test_manifest_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json is not valid JSON"):
        load_manifest(tmp_path)


def test_manifest_without_train_shards(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    m = _manifest(d)
    del m["train_shards"]
    _write_manifest(d, m)
    with pytest.raises(DataError, match=r"manifest\.json: field 'train_shards'"):
        load_manifest(d)


def test_listed_shard_missing(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    (d / "train" / "part-00002.tfrecord").unlink()
    with pytest.raises(DataError, match=r"part-00002\.tfrecord listed in .*manifest\.json .* does not exist"):
        load_manifest(d)


def test_test_shard_listed_as_train_is_refused(tmp_path, overlapping):
    d = _copy(overlapping, tmp_path / "d")
    m = _manifest(d)
    m["train_shards"].append(m["test_shards"][0])
    m["train_records"] += m["test_shards"][0]["records"]
    _write_manifest(d, m)
    with pytest.raises(DataError, match="test shard; the held-out set is never streamed"):
        load_manifest(d)


def test_record_count_mismatch(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    m = _manifest(d)
    m["train_shards"][1]["records"] += 1
    m["train_records"] += 1
    _write_manifest(d, m)
    manifest = load_manifest(d)
    with pytest.raises(DataError, match=r"part-00001\.tfrecord holds 700 records but .*manifest\.json says 701"):
        verify_shards(manifest)
    with pytest.raises(DataError, match=r"part-00001\.tfrecord holds 700 records but the manifest says 701"):
        list(iter_batches(manifest))  # also caught while streaming without the up-front check


def test_train_records_total_mismatch(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    m = _manifest(d)
    m["train_records"] += 5
    _write_manifest(d, m)
    with pytest.raises(DataError, match="train_records is .* but the train_shards add up to"):
        load_manifest(d)


def test_truncated_shard(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    shard = d / "train" / "part-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(DataError, match=r"part-00001\.tfrecord is corrupt or truncated \(truncated record at \d+"):
        verify_shards(load_manifest(d))
    with pytest.raises(DataError, match=r"part-00001\.tfrecord is corrupt or truncated"):
        list(iter_batches(load_manifest(d)))


def test_corrupt_shard(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    shard = d / "train" / "part-00003.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x5A
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"part-00003\.tfrecord is corrupt or truncated \(corrupted record at \d+"):
        verify_shards(load_manifest(d))


def test_first_ts_mismatch(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    m = _manifest(d)
    m["train_shards"][2]["first_ts"] -= 1
    _write_manifest(d, m)
    with pytest.raises(DataError, match=r"part-00002\.tfrecord: first timestamp \d+ but the manifest says first_ts"):
        list(iter_batches(load_manifest(d)))


def test_last_ts_mismatch(tmp_path, prepared):
    d = _copy(prepared, tmp_path / "d")
    m = _manifest(d)
    m["train_shards"][0]["last_ts"] += 1
    _write_manifest(d, m)
    with pytest.raises(DataError, match=r"part-00000\.tfrecord: last timestamp \d+ but the manifest says last_ts"):
        list(iter_batches(load_manifest(d)))


def test_records_out_of_time_order_in_a_shard(tmp_path):
    d = write_shards(tmp_path / "d", [[(10, 1), (12, 1), (11, 2), (13, 3)]])
    m = _manifest(d)
    m["train_shards"][0]["last_ts"] = 13
    _write_manifest(d, m)
    with pytest.raises(DataError, match=r"part-00000\.tfrecord: records out of time order at record #2"):
        list(iter_batches(load_manifest(d)))


def test_record_that_is_not_a_rating_example(tmp_path):
    import tensorflow as tf

    d = write_shards(tmp_path / "d", [[(10, 1), (11, 1)]])
    with tf.io.TFRecordWriter(str(d / "train" / "part-00000.tfrecord")) as w:
        w.write(b"\x0a\x00garbage")
        w.write(b"more garbage")
    with pytest.raises(DataError, match=r"part-00000\.tfrecord: a record in #0\.\.#\d+ is not a rating Example"):
        list(iter_batches(load_manifest(d)))
