"""Planted structure for ``producer.synthetic``: users rate in sessions over movie clusters, popularity drifts.

With ``SyntheticConfig(planted=True)`` the (user, movie, time) triples come from :func:`events` instead of a static
popularity draw; the stars still come from the generator's latent-factor model.  For ``U`` users with ``n_u``
ratings each, ``M`` movies with ground-truth factors ``q_i`` and users' ``p_u``:

- clusters: ``K`` random directions ``d_k ~ N(0, I)``; movie ``i`` belongs to ``argmax_k q_i·d_k``; the centroid
  ``c_k`` is the mean ``q_i`` of its members; user ``u``'s affinity is ``a_uk = p_u·c_k / std(p·c)``;
- drift: movie ``i`` is released at ``r_i ~ U(-3 h, span)`` (``h`` = ``half_life`` years: a stock of movies is out
  when the log starts); its weight at time ``t`` is ``w_i(t) = (0.8 Zipf(rank_i) + 0.2 / M) · 2^(-(t - r_i) / h)``
  for ``t >= r_i``, else 0 (evaluated at the start of bins ``h / 12`` long, so no movie is rated before release);
- sessions: ``u`` is active in a window (uniform start, exponential length, as in the default model); its ratings
  come in sessions of Geometric(1 / ``session_mean``) length, at uniform times in the window; a session at time
  ``t`` picks cluster ``k`` with probability ``∝ exp(focus · a_uk) · Σ_{i∈k} w_i(t)`` and draws each of its movies
  from that cluster by ``w_i(t)``, a minute or so apart;
- a user rates a movie once: repeated draws are dropped and the user gets more sessions until it has ``n_u``
  movies.  A heavy user exhausts the recent movies of its clusters: after ``DRIFT_ROUNDS`` rounds its further
  sessions draw from the back catalogue (the same, without the decay: ``w_i(t) = base_i`` for ``t >= r_i``), and
  after ``CATALOGUE_ROUNDS`` more the rest is drawn uniformly from all movies, at any time (counted in ``filled``).
"""

from __future__ import annotations

import numpy as np

YEAR = 365.25 * 86400
DRIFT_ROUNDS = 4
CATALOGUE_ROUNDS = 4
BINS_PER_HALF_LIFE = 12
GAP = 60.0  # seconds between ratings of a session (plus up to GAP of jitter)
CHUNK = 1 << 16  # sessions per block of the cluster choice (a block x K matrix)


def clusters(q_i: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster of each movie: the nearest of ``k`` random directions by dot product."""
    directions = rng.normal(size=(k, q_i.shape[1]))
    return np.argmax(q_i @ directions.T, axis=1)


def weight_table(base: np.ndarray, release: np.ndarray, width: float, span: float,
                 half_life: float = np.inf) -> np.ndarray:
    """``W[b, i] = base_i · 2^(-(t_b - r_i) / half_life)`` for ``t_b >= r_i`` (else 0), ``t_b = b · width`` the
    start of bin ``b``; each row normalized to sum 1 (times in seconds from the start of the log)."""
    t = np.arange(int(span // width) + 1)[:, None] * width
    age = t - release[None, :]
    w = np.where(age >= 0, base[None, :] * np.exp2(-np.maximum(age, 0) / half_life), 0.0)
    return w / w.sum(axis=1, keepdims=True)


class ClusterSampler:
    """Draws by time bin: a session's cluster by ``focus · a_uk + log W_k(t)`` (Gumbel-max), a movie of the
    cluster by ``W[b, i]``, with one flat cumulative table searched for every draw at once."""

    def __init__(self, table: np.ndarray, cluster: np.ndarray, n_clusters: int) -> None:
        members = np.bincount(cluster, minlength=n_clusters)
        self.by_cluster = np.argsort(cluster, kind="stable")  # position in the table -> movie index
        self.bounds = np.concatenate([[0], np.cumsum(members)])  # cluster k = positions bounds[k]:bounds[k + 1]
        cdf = np.cumsum(table[:, self.by_cluster], axis=1)
        self.n_bins, self.m = cdf.shape
        self.cdf0 = np.concatenate([np.zeros((self.n_bins, 1)), cdf], axis=1)
        mass = self.cdf0[:, self.bounds[1:]] - self.cdf0[:, self.bounds[:-1]]  # [bin, cluster]
        with np.errstate(divide="ignore"):
            self.log_mass = np.where(mass > 0, np.log(np.maximum(mass, 1e-300)), -np.inf)  # -inf: nothing out yet
        self.flat = (cdf + 2.0 * np.arange(self.n_bins)[:, None]).ravel()  # rows sum to 1: row b in [2b, 2b + 1]

    def clusters(self, logits_user: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A cluster per session from its user's logits ``[session, K]`` and its bin ``b``."""
        k = np.empty(len(b), dtype=np.int64)
        for s in range(0, len(b), CHUNK):
            logits = logits_user[s:s + CHUNK] + self.log_mass[b[s:s + CHUNK]]
            k[s:s + CHUNK] = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        return k

    def movies(self, k: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A movie per draw from cluster ``k`` by the weights of bin ``b``."""
        start, end = self.bounds[k], self.bounds[k + 1]
        lo, hi = self.cdf0[b, start], self.cdf0[b, end]
        target = lo + rng.random(len(k)) * (hi - lo) + 2.0 * b
        pos = np.searchsorted(self.flat, target, side="right") - b * self.m
        return self.by_cluster[np.clip(pos, start, end - 1)]


def events(counts: np.ndarray, p_u: np.ndarray, q_i: np.ndarray, rng: np.random.Generator, *, years: float,
           n_clusters: int, popularity_s: float, session_mean: float, half_life: float, focus: float
           ) -> dict[str, np.ndarray]:
    """Distinct (user, movie) pairs, ``counts[u]`` per user, with times; see the module docstring.

    The keyword arguments are the planted fields of ``producer.synthetic.SyntheticConfig``: ``years`` of log,
    ``n_clusters`` (K), ``popularity_s`` (the Zipf exponent), ``session_mean`` (mean ratings per session),
    ``half_life`` (years) and ``focus``.

    Returns:
        ``user``, ``movie`` (indices) and ``seconds`` (float, from the start of the log), in (user, time) order;
        the ground truth ``cluster`` and ``release`` (seconds, may be negative) of each movie; ``filled``: how many
        pairs came from the uniform fill.
    """
    u, m = len(counts), len(q_i)
    span = years * YEAR
    half_life_s = half_life * YEAR
    start = rng.uniform(0, span * 0.95, u)
    duration = np.minimum(span - start, rng.exponential(span / 10, u) + 3600)
    cluster = clusters(q_i, n_clusters, rng)
    centroid = np.zeros((n_clusters, q_i.shape[1]))
    np.add.at(centroid, cluster, q_i)
    centroid /= np.maximum(np.bincount(cluster, minlength=n_clusters), 1)[:, None]
    affinity = p_u @ centroid.T
    affinity /= affinity.std() or 1.0
    zipf = 1.0 / np.arange(1, m + 1) ** popularity_s
    base = (0.8 * zipf / zipf.sum() + 0.2 / m)[rng.permutation(m)]  # movie index -> base weight
    release = rng.uniform(-3 * half_life_s, span, m)
    width = half_life_s / BINS_PER_HALF_LIFE
    drift = ClusterSampler(weight_table(base, release, width, span, half_life_s), cluster, n_clusters)
    catalogue = ClusterSampler(weight_table(base, release, width, span), cluster, n_clusters)

    kept_user, kept_movie, kept_seconds = [], [], []
    taken = np.empty(0, dtype=np.int64)
    need = counts.astype(np.int64).copy()
    filled = 0
    rounds = 0
    while need.sum() > 0:
        needy = np.flatnonzero(need > 0)
        draws = np.ceil(need[needy] * (1.3 if rounds == 0 else 2.0)).astype(np.int64) + 4
        du = np.repeat(needy, draws)
        first = np.concatenate([[0], np.cumsum(draws)[:-1]])
        new_session = rng.random(len(du)) < 1.0 / session_mean
        new_session[first] = True
        session = np.cumsum(new_session) - 1
        su = du[new_session]
        when = start[su] + rng.random(len(su)) * duration[su]
        when = when[np.lexsort((when, su))]  # su is sorted: the user's sessions in time order
        head = np.flatnonzero(new_session)
        position = np.arange(len(du)) - head[session]
        seconds = when[session] + position * GAP + rng.random(len(du)) * GAP
        if rounds < DRIFT_ROUNDS + CATALOGUE_ROUNDS:
            sampler = drift if rounds < DRIFT_ROUNDS else catalogue
            b = np.minimum((when // width).astype(np.int64), sampler.n_bins - 1)
            k = sampler.clusters(focus * affinity[su], b, rng)
            movie = sampler.movies(k[session], b[session], rng)
        else:
            movie = rng.integers(0, m, len(du))
        keep = _first_new(du, movie, m, need, taken)
        kept_user.append(du[keep])
        kept_movie.append(movie[keep])
        kept_seconds.append(seconds[keep])
        taken = np.concatenate([taken, du[keep] * m + movie[keep]])
        need -= np.bincount(du[keep], minlength=u)
        filled += len(keep) if rounds >= DRIFT_ROUNDS + CATALOGUE_ROUNDS else 0
        rounds += 1
    user, movie, seconds = (np.concatenate(x) for x in (kept_user, kept_movie, kept_seconds))
    order = np.lexsort((seconds, user))
    return {"user": user[order], "movie": movie[order], "seconds": seconds[order], "cluster": cluster,
            "release": release, "filled": np.int64(filled)}


def _first_new(du: np.ndarray, dm: np.ndarray, m: int, quota: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Indices of the draws kept: each user's first draw of a movie it has not ``taken`` (keys ``u * m + i``),
    at most ``quota[u]`` per user, in draw order (``du`` sorted)."""
    key = du * m + dm
    _, first = np.unique(key, return_index=True)
    idx = np.sort(first[~np.isin(key[first], taken)])
    owner = du[idx]
    rank = np.arange(len(idx)) - np.searchsorted(owner, owner)
    return idx[rank < quota[owner]]
