"""producer.prepare on ml-latest-small: the seed's counts, the shard/manifest invariants, --validation."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm_stream.hashing import MASK60, bkdr2hash64
from lfm_stream.schema import FEATURES, SCHEMA_VERSION
from producer.prepare import holdout_last, main
from tests._prepare_util import manifest, read_file, read_records, read_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(ml_small_ratings, tmp_path_factory) -> Path:
    """ml-latest-small prepared with defaults, through the real CLI (a subprocess)."""
    out = tmp_path_factory.mktemp("prep") / "out"
    done = subprocess.run([sys.executable, "-m", "producer.prepare", "--ratings", str(ml_small_ratings),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "92338 train + 1214 test" in done.stdout and "dropped 3 users" in done.stdout
    return out


@pytest.fixture(scope="module")
def small_sharded(ml_small_ratings, tmp_path_factory) -> Path:
    """Same data, small shards (many files) to check the ordering across shard boundaries."""
    out = tmp_path_factory.mktemp("prep") / "sharded"
    assert main(["--ratings", str(ml_small_ratings), "--out", str(out), "--shard-size", "7000"]) == 0
    return out


def test_seed_counts(small):
    m = manifest(small)
    assert (m["users_dropped"], m["train_records"], m["test_records"]) == (3, 92338, 1214)
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["users"] == 607 and m["bad_lines"] == 0 and m["test_is_validation"] is False
    for key in ("train_positive_rate", "test_positive_rate", "movies", "time_range", "source", "params",
                "train_shards", "test_shards"):
        assert key in m, key
    assert m["source"]["format"] == "csv" and len(m["source"]["sha256"]) == 64
    assert m["params"]["max_user_ratings"] == 2000 and m["params"]["pos_threshold"] == 4.0


def test_records_parse_and_match_the_source(small, ml_small_ratings):
    train, test = read_split(small, "train"), read_split(small, "test")
    assert len(train["user_id"]) == 92338 and len(test["user_id"]) == 1214
    for part in (train, test):
        assert set(part) == set(FEATURES)
        assert (part["schema_version"] == SCHEMA_VERSION).all()
        assert (part["label"] == (part["rating"] >= 4.0)).all()
        raw_users, raw_movies = np.unique(part["raw_user_id"]), np.unique(part["raw_movie_id"])
        user_hash = dict(zip(part["raw_user_id"].tolist(), part["user_id"].tolist()))
        movie_hash = dict(zip(part["raw_movie_id"].tolist(), part["movie_id"].tolist()))
        assert all(user_hash[u] == bkdr2hash64(f"UserID={u}") for u in raw_users.tolist())
        assert all(movie_hash[i] == bkdr2hash64(f"MovieID={i}") for i in raw_movies.tolist())
        assert (part["user_id"] <= MASK60).all() and (part["movie_id"] >= 0).all()
    # the events written are exactly the source's, minus the three dropped users
    with open(ml_small_ratings) as f:
        rows = [(int(u), int(i), float(r), int(t)) for u, i, r, t in list(csv.reader(f))[1:]]
    counts = np.bincount([r[0] for r in rows])
    kept = sorted(r for r in rows if counts[r[0]] <= 2000)
    got = sorted(zip(*(np.concatenate([train[k], test[k]]).tolist()
                       for k in ("raw_user_id", "raw_movie_id", "rating", "timestamp"))))
    assert got == kept
    # each user's test events are their 2 latest; no train event is later than a test event
    last_train = {}
    for u, t in zip(train["raw_user_id"].tolist(), train["timestamp"].tolist()):
        last_train[u] = max(t, last_train.get(u, t))
    assert np.bincount(test["raw_user_id"])[np.unique(test["raw_user_id"])].tolist() == [2] * 607
    assert all(t >= last_train[u] for u, t in zip(test["raw_user_id"].tolist(), test["timestamp"].tolist()))


def test_shards_time_ordered_and_manifest_consistent(small_sharded):
    m = manifest(small_sharded)
    files = sorted(p.name for p in (small_sharded / "train").iterdir())
    assert [e["file"] for e in m["train_shards"]] == [f"train/{f}" for f in files]
    assert len(files) == 14 and all(e["records"] <= 7000 for e in m["train_shards"])
    assert sum(e["records"] for e in m["train_shards"]) == m["train_records"] == 92338
    ts_all = []
    for entry in m["train_shards"]:
        ts = read_file(small_sharded / entry["file"])["timestamp"]
        assert len(ts) == entry["records"] and (ts[0], ts[-1]) == (entry["first_ts"], entry["last_ts"])
        ts_all.append(ts)
    ts = np.concatenate(ts_all)
    assert (np.diff(ts) >= 0).all(), "train timestamps decrease across shards in name order"
    assert m["time_range"] == [int(min(ts.min(), m["test_shards"][0]["first_ts"])),
                               int(max(ts.max(), m["test_shards"][-1]["last_ts"]))]
    # same records as the one-shard run, in the same order
    assert sum(e["records"] for e in m["test_shards"]) == 1214


def test_train_ties_keep_file_order(small, ml_small_ratings):
    """Equal timestamps: the earlier line of the file comes first in the stream."""
    with open(ml_small_ratings) as f:
        rows = [(int(u), int(i), int(t)) for u, i, _, t in list(csv.reader(f))[1:]]
    line_of = {(u, i): n for n, (u, i, _) in enumerate(rows)}
    train = read_split(small, "train")
    key = [(t, line_of[(u, i)]) for u, i, t in zip(train["raw_user_id"].tolist(), train["raw_movie_id"].tolist(),
                                                  train["timestamp"].tolist())]
    assert key == sorted(key)
    assert len(set(train["timestamp"].tolist())) < len(key)  # ties do occur in this data


def test_movies_side_table_copied(small):
    with open(small / "movies.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["movieId", "title", "genres"] and len(rows) == 9743
    assert rows[1] == ["1", "Toy Story (1995)", "Adventure|Animation|Children|Comedy|Fantasy"]


def test_validation_holds_out_inside_train(small, ml_small_ratings, tmp_path):
    out = tmp_path / "val"
    assert main(["--ratings", str(ml_small_ratings), "--out", str(out), "--validation"]) == 0
    m = manifest(out)
    assert m["test_is_validation"] is True and m["params"]["validation"] is True
    assert (m["train_records"], m["test_records"]) == (92338 - 1214, 1214)
    val, train = read_split(out, "test"), read_split(out, "train")
    full_train, real_test = read_split(small, "train"), read_split(small, "test")

    def events(p):
        return set(zip(p["raw_user_id"].tolist(), p["raw_movie_id"].tolist(), p["timestamp"].tolist()))

    assert events(val) | events(train) == events(full_train)
    assert not events(val) & events(real_test) and not events(train) & events(real_test)
    # validation = the last 2 train events of each user
    expect = holdout_last(full_train["raw_user_id"], full_train["timestamp"], 2)
    assert events(val) == {e for e, k in zip(zip(full_train["raw_user_id"].tolist(),
                                                full_train["raw_movie_id"].tolist(),
                                                full_train["timestamp"].tolist()), expect) if k}


def test_refuses_existing_out_unless_force(small, ml_small_ratings, capsys):
    before = (small / "manifest.json").read_text()
    assert main(["--ratings", str(ml_small_ratings), "--out", str(small), "--max-user-ratings", "50"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (small / "manifest.json").read_text() == before
    assert main(["--ratings", str(ml_small_ratings), "--out", str(small), "--if-missing"]) == 0
    assert (small / "manifest.json").read_text() == before
    leftovers = [p.name for p in small.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_force_replaces_atomically(ml_small_ratings, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["--ratings", str(ml_small_ratings), "--out", str(out), "--force", "--max-user-ratings", "300",
                 "--test-per-user", "1"]) == 0
    m = manifest(out)
    assert not (out / "stale.txt").exists()
    assert m["test_records"] == 610 - m["users_dropped"] and m["users_dropped"] > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_run_leaves_nothing(tmp_path):
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,10\n1,3,9.0,11\n")
    out = tmp_path / "out"
    assert main(["--ratings", str(bad), "--out", str(out)]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]


def test_records_are_example_bytes(small):
    """The vectorized encoder's bytes decode to the same tf.train.Example as make_example's."""
    import tensorflow as tf

    from lfm_stream.schema import make_example

    records = read_records(small, "test")[:50]
    for raw in records:
        ex = tf.train.Example.FromString(raw)
        values = {k: (f.int64_list.value or f.float_list.value)[0] for k, f in ex.features.feature.items()}
        assert set(values) == set(FEATURES)
        assert tf.train.Example.FromString(make_example(**values)) == ex
