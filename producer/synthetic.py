"""Seeded synthetic MovieLens data: ``ratings.csv`` + ``movies.csv`` from a ground-truth latent-factor model.

The model, for ``U`` users and ``M`` movies (``U ≈ N / 150``, ``M ≈ 12 √N``, like the MovieLens releases):

- user activity ``n_u`` ∝ Pareto(``activity_alpha``) weights (power law), ``Σ n_u = N``, ``1 <= n_u <= M/3``;
- movie choice: ``p(i) = 0.8 · Zipf(i; popularity_s) + 0.2 / M`` over a random permutation of the movie
  ids, each user rates ``n_u`` distinct movies (duplicates dropped; a heavy user's shortfall is filled
  uniformly from the movies it has not rated);
- stars ``r = clip(round₀.₅(μ + b_u + b_i + s · p_u·q_i + ε), 0.5, 5)`` with ``p_u, q_i ~ N(0, I/dim)``,
  ``b_u ~ N(0, 0.35²)``, ``b_i ~ N(0, 0.5²)``, ``ε ~ N(0, noise²)``;
- time: user ``u`` is active from a uniform start over ``years`` years for an exponential duration; its
  ratings are spread uniformly in that window; the file is written in increasing timestamp order.

With ``planted=True`` (``--planted``) users rate in sessions of related movies and popularity drifts with time
(``producer.planted``): structure for the co-occurrence, time-popularity and latent-factor channels to find; the
stars come from the same model.

Same ``(N, seed, options)`` → byte-identical files.  ``python -m producer.synthetic N DIR`` writes the two files;
``python -m producer.prepare --synthetic N --out OUT`` also prepares them (raw files in ``OUT/raw``).
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lfm_stream.version import add_version_flag
from producer import planted as planted_structure

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
T0 = 946684800  # 2000-01-01T00:00:00Z
CHUNK = 1 << 20


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic data set parameters (``n`` ratings, everything else has MovieLens-like defaults)."""

    n: int
    seed: int = 0
    users: int | None = None  # default max(10, n // 150)
    movies: int | None = None  # default max(40, 12 * sqrt(n))
    dim: int = 8
    scale: float = 1.5
    noise: float = 0.6
    mu: float = 3.6
    activity_alpha: float = 1.4
    popularity_s: float = 1.0
    years: float = 20.0
    planted: bool = False  # sessions over clusters + popularity drift (producer.planted); the rest below too
    clusters: int = 20
    session_mean: float = 5.0  # mean ratings per session (geometric)
    half_life: float = 1.0  # years for a movie's choice weight to halve after its release
    focus: float = 1.5  # how strongly a user's sessions favour the clusters it likes

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 10**9:
            raise ValueError(f"synthetic n must be in [1, 1e9] (got {self.n})")
        if self.planted and (self.clusters < 1 or self.session_mean < 1 or self.half_life <= 0):
            raise ValueError(f"planted structure needs clusters >= 1, session_mean >= 1 and half_life > 0 (got "
                             f"{self.clusters}, {self.session_mean}, {self.half_life})")

    @property
    def n_users(self) -> int:
        if self.users:
            return self.users
        # enough users that each needs at most a third of the catalogue
        return min(self.n, max(10, self.n // 150, -(-self.n // self.cap)))

    @property
    def cap(self) -> int:
        """Most ratings one user gets (a third of the movies)."""
        return max(1, self.n_movies // 3)

    @property
    def n_movies(self) -> int:
        return self.movies or max(40, int(12 * self.n ** 0.5))


def _counts(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: power-law weights, total exactly ``n``, each in ``[1, cap]``."""
    u, cap = cfg.n_users, cfg.cap
    if u * cap < cfg.n:
        raise ValueError(f"{u} users x at most {cap} movies each cannot hold {cfg.n} ratings; "
                         "raise users or movies")
    w = rng.pareto(cfg.activity_alpha, u) + 1.0
    counts = np.clip(np.floor(w / w.sum() * cfg.n).astype(np.int64), 1, cap)
    while (rest := cfg.n - int(counts.sum())) != 0:
        room = counts < cap if rest > 0 else counts > 1
        p = w * room
        step = np.bincount(rng.choice(u, size=min(abs(rest), int(room.sum())), replace=False, p=p / p.sum()),
                           minlength=u)
        counts += step if rest > 0 else -step
    return counts


def _first_per_user(du: np.ndarray, dm: np.ndarray, m: int, quota: np.ndarray,
                    taken: np.ndarray | None = None) -> np.ndarray:
    """Keys ``u * m + i`` of the first distinct draws per user (draw order), at most ``quota[u]`` each,
    skipping keys in ``taken``."""
    key, first = np.unique(du * m + dm, return_index=True)
    if taken is not None and len(taken):
        fresh = ~np.isin(key, taken)
        key, first = key[fresh], first[fresh]
    key = key[np.argsort(first)]  # back to draw order (first indices are distinct)
    ku = key // m
    order = np.argsort(ku, kind="stable")
    ku, key = ku[order], key[order]
    start = np.searchsorted(ku, np.arange(len(quota)))
    return key[(np.arange(len(ku)) - start[ku]) < quota[ku]]


def _movies_for_users(counts: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Distinct (user, movie index) pairs, ``counts[u]`` per user: drawn by popularity with replacement,
    duplicates dropped; a user's remaining shortfall is then filled uniformly from the movies it lacks."""
    m = cfg.n_movies
    zipf = 1.0 / np.arange(1, m + 1) ** cfg.popularity_s
    p = 0.8 * zipf / zipf.sum() + 0.2 / m
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    by_rank = rng.permutation(m)  # popularity rank -> movie index
    draw = np.ceil(counts * 1.3).astype(np.int64) + 4
    du = np.repeat(np.arange(len(counts)), draw)
    dm = by_rank[np.minimum(np.searchsorted(cdf, rng.random(len(du))), m - 1)]
    keys = [_first_per_user(du, dm, m, counts)]
    del du, dm
    need = counts - np.bincount(keys[0] // m, minlength=len(counts))
    while need.sum() > 0:
        needy = np.flatnonzero(need > 0)
        du = np.repeat(needy, need[needy] * 2 + 4)
        dm = rng.integers(0, m, len(du))
        have = np.concatenate(keys)
        have = have[need[have // m] > 0]
        new = _first_per_user(du, dm, m, need, have)
        keys.append(new)
        need = need - np.bincount(new // m, minlength=len(counts))
    key = np.concatenate(keys)
    return key // m, key % m


def generate(cfg: SyntheticConfig) -> dict[str, np.ndarray]:
    """Generate the ratings as columns ``userId, movieId, rating, timestamp`` (time order).

    Also returns the ground truth: ``user_factors`` / ``user_bias`` (row ``userId - 1``), ``movie_factors`` /
    ``movie_bias`` (row ``k`` is movie ``movie_ids[k]``); with ``planted`` also ``movie_cluster``, ``movie_release``
    (unix seconds) and ``filled`` (see :func:`producer.planted.events`).
    """
    rng = np.random.default_rng(cfg.seed)
    counts = _counts(cfg, rng)
    if cfg.planted:
        return _generate_planted(cfg, counts, rng)
    users, movies = _movies_for_users(counts, cfg, rng)
    truth = _ground_truth(cfg, rng)
    stars = _stars(users, movies, truth, cfg, rng)
    u, m = cfg.n_users, cfg.n_movies
    span = cfg.years * 365.25 * 86400
    start = rng.uniform(0, span * 0.95, u)
    duration = np.minimum(span - start, rng.exponential(span / 10, u) + 3600)
    ts = (T0 + start[users] + rng.random(len(users)) * duration[users]).astype(np.int64)
    order = np.argsort(ts, kind="stable")
    movie_ids = rng.permutation(np.arange(1, m + 1) * 2 - 1)  # odd, shuffled raw ids: not 0..m-1
    return {"userId": users[order] + 1, "movieId": movie_ids[movies[order]], "rating": stars[order],
            "timestamp": ts[order], "movie_ids": movie_ids, **truth}


def _generate_planted(cfg: SyntheticConfig, counts: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """:func:`generate` with sessions and popularity drift; adds the truth ``movie_cluster``, ``movie_release``
    (unix seconds) and ``filled`` (ratings outside the planted structure)."""
    truth = _ground_truth(cfg, rng)
    ev = planted_structure.events(counts, truth["user_factors"], truth["movie_factors"], rng, years=cfg.years,
                                  n_clusters=cfg.clusters, popularity_s=cfg.popularity_s,
                                  session_mean=cfg.session_mean, half_life=cfg.half_life, focus=cfg.focus)
    users, movies = ev["user"], ev["movie"]
    stars = _stars(users, movies, truth, cfg, rng)
    ts = (T0 + ev["seconds"]).astype(np.int64)
    order = np.argsort(ts, kind="stable")  # ties keep each user's time order
    movie_ids = rng.permutation(np.arange(1, cfg.n_movies + 1) * 2 - 1)
    return {"userId": users[order] + 1, "movieId": movie_ids[movies[order]], "rating": stars[order],
            "timestamp": ts[order], "movie_ids": movie_ids, **truth, "movie_cluster": ev["cluster"],
            "movie_release": (T0 + ev["release"]).astype(np.int64), "filled": ev["filled"]}


def _ground_truth(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Factors and biases of the star model: ``p_u, q_i ~ N(0, I/dim)``, ``b_u``, ``b_i``."""
    u, m = cfg.n_users, cfg.n_movies
    p_u = rng.normal(0, 1 / np.sqrt(cfg.dim), (u, cfg.dim)).astype(np.float32)
    q_i = rng.normal(0, 1 / np.sqrt(cfg.dim), (m, cfg.dim)).astype(np.float32)
    b_u = rng.normal(0, 0.35, u).astype(np.float32)
    b_i = rng.normal(0, 0.5, m).astype(np.float32)
    return {"movie_factors": q_i, "user_factors": p_u, "movie_bias": b_i, "user_bias": b_u}


def _stars(users: np.ndarray, movies: np.ndarray, truth: dict[str, np.ndarray], cfg: SyntheticConfig,
           rng: np.random.Generator) -> np.ndarray:
    """``clip(round₀.₅(μ + b_u + b_i + s · p_u·q_i + ε), 0.5, 5)`` per (user, movie) pair."""
    p_u, q_i, b_u, b_i = (truth[k] for k in ("user_factors", "movie_factors", "user_bias", "movie_bias"))
    stars = np.empty(len(users), dtype=np.float32)
    for s in range(0, len(users), CHUNK):
        uu, mm = users[s:s + CHUNK], movies[s:s + CHUNK]
        score = (cfg.mu + b_u[uu] + b_i[mm] + cfg.scale * np.einsum("ij,ij->i", p_u[uu], q_i[mm])
                 + rng.normal(0, cfg.noise, len(uu)).astype(np.float32))
        stars[s:s + CHUNK] = np.clip(np.round(score * 2) / 2, 0.5, 5.0)
    return stars


def _digits(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digits of non-negative ints, right aligned in ``[n, width]`` (ASCII), and the keep mask."""
    v = values.astype(np.int64)
    out = np.full((len(v), width), 48, dtype=np.uint8)
    nd = np.ones(len(v), dtype=np.int64)
    for k in range(width):
        out[:, width - 1 - k] += (v % 10).astype(np.uint8)
        v = v // 10
        if not v.any():
            break
        nd += v > 0
    return out, np.arange(width)[None, :] >= (width - nd)[:, None]


def format_csv_rows(user: np.ndarray, movie: np.ndarray, rating: np.ndarray, timestamp: np.ndarray) -> bytes:
    """``userId,movieId,rating,timestamp`` lines (ratings as ``4.5``), vectorized."""
    n = len(user)
    halves = np.round(np.asarray(rating) * 2).astype(np.int64)
    pieces = []
    for col in (user, movie):
        pieces += [_digits(col, 10), (np.full((n, 1), ord(","), np.uint8), None)]
    r = np.empty((n, 4), dtype=np.uint8)
    r[:, 0] = 48 + halves // 2
    r[:, 1] = ord(".")
    r[:, 2] = np.where(halves % 2 == 1, ord("5"), ord("0"))
    r[:, 3] = ord(",")
    pieces.append((r, None))
    pieces += [_digits(timestamp, 12), (np.full((n, 1), ord("\n"), np.uint8), None)]
    matrix = np.concatenate([p for p, _ in pieces], axis=1)
    keep = np.concatenate([np.ones(p.shape, bool) if k is None else k for p, k in pieces], axis=1)
    return matrix[keep].tobytes()


def write(cfg: SyntheticConfig, directory: Path) -> Path:
    """Generate and write ``directory/ratings.csv`` and ``directory/movies.csv``; returns the ratings path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = generate(cfg)
    path = directory / "ratings.csv"
    with open(path, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        for s in range(0, len(data["userId"]), CHUNK):
            f.write(format_csv_rows(*(data[k][s:s + CHUNK] for k in ("userId", "movieId", "rating", "timestamp"))))
    genre_of = np.argmax(data["movie_factors"][:, :min(cfg.dim, len(GENRES))], axis=1)
    second = np.argmin(data["movie_factors"][:, :min(cfg.dim, len(GENRES))], axis=1) + cfg.dim
    with open(directory / "movies.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["movieId", "title", "genres"])
        order = np.argsort(data["movie_ids"])
        release = data.get("movie_release")
        for i in order:
            year = 1920 + int(i) % 100 if release is None else time.gmtime(int(release[i])).tm_year
            genres = f"{GENRES[genre_of[i]]}|{GENRES[second[i] % len(GENRES)]}"
            w.writerow([int(data["movie_ids"][i]), f"Synthetic Movie {int(data['movie_ids'][i])}, The ({year})", genres])
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the synthetic generator (shared by ``producer.prepare --synthetic``)."""
    g = p.add_argument_group("synthetic data (with --synthetic N)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--synthetic-users", type=int, help="number of users (default N // 150, at least 10)")
    g.add_argument("--synthetic-movies", type=int, help="number of movies (default 12 * sqrt(N), at least 40)")
    g.add_argument("--synthetic-planted", "--planted", action="store_true", dest="synthetic_planted",
                   help="planted structure: users rate in sessions of related movies, popularity drifts over time")


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(n=args.synthetic, seed=args.seed, users=args.synthetic_users,
                           movies=args.synthetic_movies, planted=args.synthetic_planted)


def main(argv: list[str] | None = None) -> int:
    """``python -m producer.synthetic N DIR``: write ratings.csv + movies.csv only."""
    p = argparse.ArgumentParser(prog="python -m producer.synthetic", description=__doc__.split("\n\n")[0])
    add_version_flag(p)
    p.add_argument("synthetic", type=int, metavar="N", help="number of ratings")
    p.add_argument("dir", type=Path, help="output directory for ratings.csv and movies.csv")
    add_arguments(p)
    args = p.parse_args(argv)
    path = write(config_from_args(args), args.dir)
    print(f"wrote {path} ({args.synthetic} ratings) and {args.dir / 'movies.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
