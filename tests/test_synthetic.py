"""Synthetic MovieLens data: seeded determinism, exact size, power laws, time order, ground-truth signal; the planted
structure (sessions over clusters, popularity drift) measured on small sets."""

from __future__ import annotations

import numpy as np

from producer import movielens, planted, synthetic
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


# ---- planted structure (SyntheticConfig(planted=True)): sessions over clusters, popularity drift ----

# sha256 of the default generator's files for (n=5000, seed=7), computed before the planted option existed
DEFAULT_5000_SEED_7 = {"ratings.csv": "06e394d90f55830e3c43da85b308f6f8ec802e43defaef3fb76ee76c71002cce",
                       "movies.csv": "ab7e22b21e5b5f45db4434ffb4e518aebae8a6e26560c06f8ffcafa027aca342"}
YEAR = 365.25 * 86400


def _movie_index(d: dict) -> np.ndarray:
    """Row of each rating's movie in the ground-truth arrays."""
    return np.argsort(d["movie_ids"])[np.searchsorted(np.sort(d["movie_ids"]), d["movieId"])]


def _same_cluster_next(users: np.ndarray, cluster: np.ndarray) -> float:
    """Share of a user's consecutive ratings (in the given order) whose movies are in the same cluster."""
    order = np.argsort(users, kind="stable")
    u, c = users[order], cluster[order]
    return float((c[1:] == c[:-1])[u[1:] == u[:-1]].mean())


def _top(movies: np.ndarray, k: int) -> set:
    ids, n = np.unique(movies, return_counts=True)
    return set(ids[np.argsort(-n, kind="stable")[:k]].tolist())


def test_default_output_unchanged(tmp_path):
    import hashlib

    path = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7), tmp_path)
    got = {name: hashlib.sha256((path.parent / name).read_bytes()).hexdigest() for name in DEFAULT_5000_SEED_7}
    assert got == DEFAULT_5000_SEED_7


def test_planted_same_seed_same_bytes(tmp_path):
    a = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7, planted=True), tmp_path / "a")
    b = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7, planted=True), tmp_path / "b")
    c = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=8, planted=True), tmp_path / "c")
    d = synthetic.write(synthetic.SyntheticConfig(n=5000, seed=7), tmp_path / "d")
    assert a.read_bytes() == b.read_bytes() and (a.parent / "movies.csv").read_bytes() == (b.parent / "movies.csv").read_bytes()
    assert a.read_bytes() != c.read_bytes() and a.read_bytes() != d.read_bytes()


def test_planted_file_is_valid_movielens(tmp_path):
    path = synthetic.write(synthetic.SyntheticConfig(n=20_000, seed=1, planted=True), tmp_path)
    r = movielens.read_ratings(path)
    assert len(r.user) == 20_000 and (np.diff(r.timestamp) >= 0).all()
    assert set(np.unique(r.rating).tolist()) <= {x / 2 for x in range(1, 11)}
    assert len(np.unique(r.user * 10**7 + r.movie)) == 20_000, "a user rates a movie at most once"
    movies = {m for m, _, _ in movielens.read_movies(path.parent / "movies.csv")}
    assert set(np.unique(r.movie).tolist()) <= movies
    for n in (1, 10, 999, 3001):
        d = synthetic.generate(synthetic.SyntheticConfig(n=n, seed=n, planted=True))
        assert len(d["userId"]) == n and (np.diff(d["timestamp"]) >= 0).all()


def test_planted_sessions_consecutive_ratings_share_a_cluster():
    d = synthetic.generate(synthetic.SyntheticConfig(n=20_000, seed=1, planted=True))
    cluster = d["movie_cluster"][_movie_index(d)]
    in_time = _same_cluster_next(d["userId"], cluster)  # the file is in time order
    shuffled = np.random.default_rng(0).permutation(len(cluster))  # each user's ratings in random order
    chance = _same_cluster_next(d["userId"][shuffled], cluster[shuffled])
    # sessions of mean length 5 over 20 clusters: ~4 of 5 next ratings stay in the cluster (less the repeats
    # dropped); a user's own mix of clusters gives ~1 in 6
    assert in_time > 0.5 and chance < 0.25, (in_time, chance)
    # the default generator has no sessions: the same clusters of its movies are at chance level in time order
    plain = synthetic.generate(synthetic.SyntheticConfig(n=20_000, seed=1))
    plain_cluster = planted.clusters(plain["movie_factors"], 20, np.random.default_rng(0))[_movie_index(plain)]
    assert _same_cluster_next(plain["userId"], plain_cluster) < 0.2


def test_planted_popularity_drifts():
    d = synthetic.generate(synthetic.SyntheticConfig(n=20_000, seed=1, planted=True))
    ts = d["timestamp"]
    early, late = d["movieId"][ts < ts.min() + 2 * YEAR], d["movieId"][ts > ts.max() - 2 * YEAR]
    assert len(early) > 1000 and len(late) > 1000
    assert len(_top(early, 50) & _top(late, 50)) <= 5  # the hits of the first two years are not those of the last
    plain = synthetic.generate(synthetic.SyntheticConfig(n=20_000, seed=1))
    ts = plain["timestamp"]
    early, late = plain["movieId"][ts < ts.min() + 2 * YEAR], plain["movieId"][ts > ts.max() - 2 * YEAR]
    assert len(_top(early, 50) & _top(late, 50)) >= 20  # static popularity: mostly the same hits
    # no movie is rated before its release, except by the uniform fill (heavy users who exhaust the catalogue)
    before = d["timestamp"] < d["movie_release"][_movie_index(d)]
    assert before.sum() <= d["filled"] < 0.1 * len(before)


def test_planted_choices_and_stars_follow_the_latent_factors():
    cfg = synthetic.SyntheticConfig(n=20_000, seed=1, planted=True)
    d = synthetic.generate(cfg)
    k, u = _movie_index(d), d["userId"] - 1
    interaction = np.einsum("ij,ij->i", d["user_factors"][u], d["movie_factors"][k])
    score = cfg.mu + d["user_bias"][u] + d["movie_bias"][k] + cfg.scale * interaction
    assert np.corrcoef(score, d["rating"])[0, 1] > 0.6
    # users pick sessions in the clusters they like: rated pairs have p·q above zero (random pairs: ~0)
    shuffled = np.random.default_rng(0).permutation(k)
    random_pairs = np.einsum("ij,ij->i", d["user_factors"][u], d["movie_factors"][shuffled])
    assert interaction.mean() > 0.08 and abs(random_pairs.mean()) < 0.02


def test_weight_table_hand_computed():
    # two movies released at t=0 and t=2, half-life 2, bins 1 long: weights 2^(-age/2) once released
    w = planted.weight_table(np.array([1.0, 1.0]), np.array([0.0, 2.0]), width=1.0, span=4.0, half_life=2.0)
    np.testing.assert_allclose(w, [[1, 0], [1, 0], [1 / 3, 2 / 3], [1 / 3, 2 / 3], [1 / 3, 2 / 3]])
    flat = planted.weight_table(np.array([1.0, 3.0]), np.array([0.0, 2.0]), width=1.0, span=4.0)  # no decay
    np.testing.assert_allclose(flat, [[1, 0], [1, 0], [0.25, 0.75], [0.25, 0.75], [0.25, 0.75]])


def test_cluster_sampler_draws_by_weight_within_the_cluster():
    # movies 0..3 in clusters [1, 0, 1, 0]; bin 0: only movies 0, 1 released; bin 1: weights 0.1, 0.2, 0.3, 0.4
    table = np.array([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    s = planted.ClusterSampler(table, np.array([1, 0, 1, 0]), 2)
    rng = np.random.default_rng(0)
    n = 40_000
    assert set(s.movies(np.zeros(n, int), np.zeros(n, int), rng).tolist()) == {1}  # movie 3 not out yet
    got = np.bincount(s.movies(np.ones(n, int), np.ones(n, int), rng), minlength=4) / n
    np.testing.assert_allclose(got, [0.25, 0, 0.75, 0], atol=0.01)  # 0.1 : 0.3 within cluster 1
    # clusters by exp(logit) x the cluster's weight in the bin: bin 1 masses 0.6 (k=0), 0.4 (k=1)
    k = s.clusters(np.zeros((n, 2)), np.ones(n, int), rng)
    assert abs(np.mean(k == 0) - 0.6) < 0.01
    k = s.clusters(np.tile([np.log(2 / 3), 0.0], (n, 1)), np.ones(n, int), rng)  # 0.6 * 2/3 = 0.4: even
    assert abs(np.mean(k == 0) - 0.5) < 0.01


def test_planted_flag_on_both_commands(tmp_path):
    out = tmp_path / "syn"
    assert main(["--synthetic", "3000", "--seed", "5", "--synthetic-planted", "--out", str(out)]) == 0
    assert manifest(out)["synthetic"]["planted"] is True
    assert synthetic.main(["3000", str(tmp_path / "raw"), "--seed", "5", "--planted"]) == 0
    assert (tmp_path / "raw" / "ratings.csv").read_bytes() == (out / "raw" / "ratings.csv").read_bytes()
    assert synthetic.main(["3000", str(tmp_path / "plain"), "--seed", "5"]) == 0
    assert (tmp_path / "plain" / "ratings.csv").read_bytes() != (out / "raw" / "ratings.csv").read_bytes()
