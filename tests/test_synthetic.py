"""Synthetic MovieLens data: seeded determinism, exact size, power laws, time order, ground-truth signal."""

from __future__ import annotations

import numpy as np

from producer import movielens, synthetic
from producer.prepare import main
from tests._prepare_util import manifest, read_split


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7), tmp_path / "a")
    b = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7), tmp_path / "b")
    c = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=8), tmp_path / "c")
    assert a.read_bytes() == b.read_bytes() and (a.parent / "movies.csv").read_bytes() == (b.parent / "movies.csv").read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_ratings_file_is_valid_movielens(tmp_path):
    path = synthetic.write(synthetic.SyntheticConfig(n=20_000, seed=1), tmp_path)
    r = movielens.read_ratings(path)  # the strict reader accepts every line
    assert r.format == "csv" and len(r.user) == 20_000
    assert (np.diff(r.timestamp) >= 0).all() and r.timestamp.min() >= synthetic.T0
    assert set(np.unique(r.rating).tolist()) <= {x / 2 for x in range(1, 11)}
    assert len(np.unique(r.user * 10**7 + r.movie)) == 20_000, "a user rates a movie at most once"
    movies = {m for m, _, _ in movielens.read_movies(path.parent / "movies.csv")}
    assert set(np.unique(r.movie).tolist()) <= movies


def test_power_laws_and_latent_factor_signal():
    cfg = synthetic.SyntheticConfig(n=20_000, seed=1)
    d = synthetic.generate(cfg)
    per_movie = np.sort(np.bincount(d["movieId"]))[::-1]
    per_user = np.sort(np.bincount(d["userId"]))[::-1]
    # heavy heads: a uniform choice would give the top 10% about 10-15% of the ratings
    assert per_movie[:cfg.n_movies // 10].sum() > 0.3 * cfg.n
    assert per_user[:cfg.n_users // 10].sum() > 0.2 * cfg.n
    assert per_user.max() <= cfg.cap and per_user[per_user > 0].min() >= 1
    # ratings follow the ground-truth model: mu + b_u + b_i + s * p_u . q_i (+ noise)
    k = np.argsort(d["movie_ids"])[np.searchsorted(np.sort(d["movie_ids"]), d["movieId"])]
    u = d["userId"] - 1
    score = (cfg.mu + d["user_bias"][u] + d["movie_bias"][k]
             + cfg.scale * np.einsum("ij,ij->i", d["user_factors"][u], d["movie_factors"][k]))
    assert np.corrcoef(score, d["rating"])[0, 1] > 0.6
    interaction = np.einsum("ij,ij->i", d["user_factors"][u], d["movie_factors"][k])
    assert np.corrcoef(interaction, d["rating"])[0, 1] > 0.2  # the factors matter, not only the biases


def test_any_size_exact_count():
    for n in (1, 10, 999, 1000, 3001):
        d = synthetic.generate(synthetic.SyntheticConfig(n=n, seed=n))
        assert len(d["userId"]) == n and (np.diff(d["timestamp"]) >= 0).all()


def test_prepare_synthetic_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["--synthetic", "3000", "--seed", "5", "--out", str(out), "--shard-size", "1000"]) == 0
    assert "prepared" in capsys.readouterr().out
    m = manifest(out)
    assert m["synthetic"]["n"] == 3000 and m["synthetic"]["seed"] == 5
    assert m["input_ratings"] == 3000 == m["train_records"] + m["test_records"] + m["ratings_dropped"]
    assert m["source"]["path"] == str((out / "raw" / "ratings.csv").resolve())
    assert (out / "raw" / "ratings.csv").is_file() and (out / "movies.csv").is_file()
    assert len(m["train_shards"]) == -(-m["train_records"] // 1000)
    ts = read_split(out, "train")["timestamp"]
    assert len(ts) == m["train_records"] and (np.diff(ts) >= 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no generator leftovers
    # the sibling command writes only the raw files, byte-identical for the same seed
    assert synthetic.main(["3000", str(tmp_path / "raw"), "--seed", "5"]) == 0
    assert (tmp_path / "raw" / "ratings.csv").read_bytes() == (out / "raw" / "ratings.csv").read_bytes()
    # refusing an existing OUT happens before generating anything
    assert main(["--synthetic", "3000", "--out", str(out)]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "syn"]
