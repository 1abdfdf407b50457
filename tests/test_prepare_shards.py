"""The vectorized tf.train.Example encoder and the TFRecord framing against TensorFlow's own."""

from __future__ import annotations

import numpy as np

from lfm_stream.schema import encode_examples, encode_varints, feature_spec, make_example
from producer.shards import crc32c_batch, frame_records, masked_crc, write_shards
from tests._prepare_util import read_split


def _columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {
        "user_id": rng.integers(0, 2**60, n), "movie_id": rng.integers(0, 2**60, n),
        "raw_user_id": rng.integers(0, 300_000, n), "raw_movie_id": rng.integers(0, 300_000, n),
        "rating": (rng.integers(1, 11, n) / 2).astype(np.float32),
        "label": rng.integers(0, 2, n).astype(np.float32), "timestamp": rng.integers(0, 2**34, n),
    }
    # varint length edges: 0, 127, 128, 2**63 - 1, negative (10 bytes)
    edges = np.array([0, 127, 128, 16383, 16384, 2**63 - 1, -1, -(2**63)], dtype=np.int64)
    cols["raw_user_id"][:len(edges)] = edges
    cols["timestamp"][:len(edges)] = edges[::-1]
    cols["rating"][:3] = [0.5, 5.0, -0.0]
    return cols


def test_varints_hand_computed():
    vb, vlen = encode_varints(np.array([0, 1, 127, 128, 300, -1]))
    assert vlen.tolist() == [1, 1, 1, 2, 2, 10]
    assert bytes(vb[3, :2]) == b"\x80\x01" and bytes(vb[4, :2]) == b"\xac\x02"  # protobuf docs: 300 = ac 02
    assert bytes(vb[5]) == b"\xff" * 9 + b"\x01"


def test_encoder_parses_like_make_example():
    import tensorflow as tf

    cols = _columns(300)
    buffer, offsets = encode_examples(cols)
    ours = [bytes(buffer[offsets[i]:offsets[i + 1]]) for i in range(300)]
    ref = [make_example(**{k: v[i] for k, v in cols.items()}) for i in range(300)]
    a = tf.io.parse_example(tf.constant(ours), feature_spec())
    b = tf.io.parse_example(tf.constant(ref), feature_spec())
    for name in a:
        assert np.array_equal(a[name].numpy(), b[name].numpy()), name
    for name, values in cols.items():
        assert np.array_equal(a[name].numpy(), values.astype(a[name].dtype.as_numpy_dtype)), name
    assert all(tf.train.Example.FromString(x) == tf.train.Example.FromString(y) for x, y in zip(ours, ref))


def test_crc32c_known_values():
    data = np.frombuffer(b"123456789" + b"a" + b"", dtype=np.uint8)
    crc = crc32c_batch(data, np.array([0, 9, 10, 10]))
    assert crc.tolist() == [0xE3069283, 0xC1D04330, 0]  # RFC 3720 check value; "a"; empty
    assert masked_crc(np.array([0], dtype=np.uint32)).tolist() == [0xA282EAD8]


def test_framing_byte_identical_to_tfrecordwriter(tmp_path):
    import tensorflow as tf

    cols = _columns(1000, seed=1)
    buffer, offsets = encode_examples(cols)
    path = tmp_path / "ref.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(1000):
            w.write(bytes(buffer[offsets[i]:offsets[i + 1]]))
    assert frame_records(buffer, offsets).tobytes() == path.read_bytes()


def test_write_shards_splits_and_reports(tmp_path):
    cols = _columns(25, seed=2)
    cols["timestamp"] = np.arange(100, 125)
    entries = write_shards(tmp_path / "train", cols, shard_size=10)
    assert [(e["file"], e["records"], e["first_ts"], e["last_ts"]) for e in entries] == [
        ("train/part-00000.tfrecord", 10, 100, 109), ("train/part-00001.tfrecord", 10, 110, 119),
        ("train/part-00002.tfrecord", 5, 120, 124)]
    got = read_split(tmp_path, "train")
    assert np.array_equal(got["timestamp"], cols["timestamp"])
    assert np.array_equal(got["user_id"], cols["user_id"])
