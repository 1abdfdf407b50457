"""Validation folds for choosing settings: data sets cut from the *train* split only (the test split is never read).

Each fold is a ratings file; ``producer.prepare`` applies the seed protocol to it (its last two ratings per user
become the fold's held-out set), exactly as it does to the full data:

* ``val``: the whole train split (its held-out set is ``prepare --validation``'s);
* ``cut50`` / ``cut75``: the train split up to its 50% / 75% time quantile (earlier, shorter logs);
* ``half0`` / ``half1``: a seeded random half of the users and the other half (sparser logs, other users);
* ``synthetic``: ``producer.synthetic`` data with planted sessions (users rate runs of related movies) and
  popularity that drifts over time — structure of the kind the channels look for, in data we generated (the size
  of ml-latest-small; not cut from the train split).

    python bench/folds.py OUT_DIR [--ratings PATH] [--folds val,cut50,...]   # writes OUT_DIR/<fold>/ratings.csv
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from producer.movielens import read_ratings  # noqa: E402
from producer.prepare import holdout_last  # noqa: E402
from producer.synthetic import SyntheticConfig, generate  # noqa: E402

DEFAULT_RATINGS = ROOT.parent / "shared" / "data" / "ml-latest-small" / "ratings.csv"
ML_FOLDS = ("val", "cut50", "cut75", "half0", "half1")
FOLDS = ALL_FOLDS = ML_FOLDS + ("synthetic",)
SYNTHETIC = SyntheticConfig(n=100_836, users=610, movies=9_742, planted=True)  # ml-latest-small's counts


def train_split(ratings: Path, max_user_ratings: int = 2000, test_per_user: int = 2) -> dict[str, np.ndarray]:
    """The seed protocol's train split of ``ratings`` (file order kept)."""
    r = read_ratings(ratings)
    users, movies, stars, ts = (np.asarray(a) for a in (r.user, r.movie, r.rating, r.timestamp))
    keep = np.bincount(users)[users] <= max_user_ratings
    users, movies, stars, ts = users[keep], movies[keep], stars[keep], ts[keep]
    train = ~holdout_last(users, ts, test_per_user)
    return {"user": users[train], "movie": movies[train], "rating": stars[train], "timestamp": ts[train]}


def fold(train: dict[str, np.ndarray] | None, name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The ratings of one fold (see the module docstring); ``synthetic`` generates them (``train`` unused)."""
    if name == "synthetic":
        d = generate(replace(SYNTHETIC, seed=seed))
        return {"user": d["userId"], "movie": d["movieId"], "rating": d["rating"], "timestamp": d["timestamp"]}
    if name == "val":
        keep = np.ones(len(train["user"]), bool)
    elif name.startswith("cut"):
        keep = train["timestamp"] <= np.quantile(train["timestamp"], int(name[3:]) / 100)
    elif name in ("half0", "half1"):
        users = np.unique(train["user"])
        half = np.random.default_rng(seed).permutation(users)[: len(users) // 2]
        keep = np.isin(train["user"], half) == (name == "half0")
    else:
        raise ValueError(f"unknown fold {name!r}; choose from {ALL_FOLDS}")
    return {k: v[keep] for k, v in train.items()}


def write_ratings(cols: dict[str, np.ndarray], path: Path) -> Path:
    """``userId,movieId,rating,timestamp`` CSV in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for u, m, r, t in zip(cols["user"].tolist(), cols["movie"].tolist(), cols["rating"].tolist(),
                              cols["timestamp"].tolist()):
            f.write(f"{u},{m},{r:g},{t}\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/folds.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--ratings", type=Path, default=DEFAULT_RATINGS)
    p.add_argument("--folds", default=",".join(FOLDS))
    args = p.parse_args(argv)
    names = args.folds.split(",")
    train = train_split(args.ratings) if set(names) - {"synthetic"} else None
    for name in names:
        path = write_ratings(fold(train, name), args.out / name / "ratings.csv")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
