"""``python -m ps_redis`` (lfm-ps): inspect --movie / --user / --stats, save and load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_data_dir
from lfm_stream.hashing import movie_hash, user_hash
from ps_redis import Fence, ParameterServer, Update
from ps_redis.__main__ import main

DIM = 4
MOVIES = shared_data_dir() / "ml-latest-small" / "movies.csv"


@pytest.fixture
def ps(redis_url, namespace) -> ParameterServer:
    """Movies 318, 858, 1, 2571 and user 42 with hand-set vectors; 858 is the closest to 318."""
    ps = ParameterServer.get(redis_url, namespace, dim=DIM)
    raw = np.array([318, 858, 1, 2571])
    ids = np.array([movie_hash(r) for r in raw])
    ps.pull("item", ids, raw_ids=raw)
    vec = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0]], np.float32)
    ps.push({"item": Update(ids, vec=vec, bias=np.float32([0.25, 0, 0, 0]), count=np.int64([5, 1, 1, 1]))})
    ps.pull("user", np.array([user_hash(42)]), raw_ids=np.array([42]))
    ps.push({}, fence=Fence("learner", "ratings", {0: 99}))
    yield ps
    ps.flush()


def run(ps: ParameterServer, *args: str) -> int:
    return main(["--redis-url", ps.url, "--namespace", ps.namespace, *args])


def test_inspect_movie_prints_row_and_neighbours(ps, capsys):
    assert run(ps, "inspect", "--movie", "318", "--movies", str(MOVIES), "-k", "3") == 0
    out = capsys.readouterr().out
    assert "movie 318 (Shawshank Redemption, The (1994))" in out
    assert f"key      {ps.namespace}:item:{movie_hash(318)}" in out
    assert "count    5" in out and "bias     0.25" in out and "norm     1" in out and "raw      318" in out
    assert f"redis-cli FCALL lfm_vec 1 '{ps.namespace}:item:{movie_hash(318)}'" in out
    neighbours = out.split("nearest movies by cosine (top 3):")[1].strip().splitlines()
    assert "movie 858  Godfather, The (1972)" in neighbours[0] and "+0.9939" in neighbours[0]
    assert "movie 1  Toy Story (1995)" in neighbours[1]
    assert "movie 2571  Matrix, The (1999)" in neighbours[2] and "-1.0000" in neighbours[2]


def test_inspect_user_stats_and_missing(ps, capsys):
    assert run(ps, "inspect", "--user", "42") == 0
    out = capsys.readouterr().out
    assert out.startswith("user 42\n") and "raw      42" in out and "nearest" not in out
    assert run(ps, "inspect", "--movie", "999999") == 1
    assert "movie 999999: no row in namespace" in capsys.readouterr().out
    assert run(ps, "inspect", "--stats") == 0
    out = capsys.readouterr().out
    assert f"dim {DIM}, {8 * DIM + 32} B per row" in out
    assert "table item                4 rows" in out and "table user                1 rows" in out
    assert "group 'learner' topic 'ratings': {0: 99}" in out


def test_save_and_load_commands(ps, tmp_path, capsys):
    path = tmp_path / "snap.npz"
    before = ps.pull("item", np.array([movie_hash(318)]))
    assert run(ps, "save", str(path)) == 0 and path.exists()
    ps.flush()
    assert run(ps, "load", str(path)) == 0
    assert "item 4 rows" in capsys.readouterr().out.splitlines()[-1]
    after = ps.pull("item", np.array([movie_hash(318)]))
    assert after.vec.tobytes() == before.vec.tobytes() and after.count[0] == 5
    assert run(ps, "load", str(tmp_path / "missing.npz")) == 1
    assert "does not exist" in capsys.readouterr().err


def test_empty_namespace_and_entry_point(redis_url, capsys):
    assert main(["--redis-url", redis_url, "--namespace", "never_used_ns", "inspect", "--stats"]) == 1
    assert "is empty; give dim" in capsys.readouterr().err
    res = subprocess.run([sys.executable, "-m", "ps_redis", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "[env REDIS_URL" in res.stdout and "inspect" in res.stdout
