"""Opt-in time-aware popularity prior of the learner's recall score (``--score-prior``; not the design contract).

The learner's recipe v1 (``learner.config``, ``pop_period_days`` > 0) ranks with

    s(u, i) = q_u·v_i + gamma·b_i + pop_weight·τ_u(i)
    τ_u(i)  = log(pop_smooth + Σ_{|k − k_u| ≤ pop_window} n[k, i] + pop_total_w·n_i)

where ``n[k, i]`` counts positive events of movie i in period k (the ``ppop`` counter set of
:mod:`ps_redis.counters`: bucket k, member the raw movie id) and ``k_u`` is the period of the user's last event (PS table
``user_ctx``, field ``bias``; users without one get the latest period).  The design contract
(docs/design.md "Recall scoring") is the special case ``gamma = 1, pop_weight = 0``, which is what the
service serves unless started with ``--score-prior``.

``ppop`` changes are not in the activity log's change stream, so the prior is rebuilt from a full read of
``ppop`` (one HGETALL per period) every ``prior_interval`` seconds by the refresh thread.  The formula and its parameters come from the
learner itself (:class:`learner.evaluate.PeriodPrior`, :func:`learner.config.preset`), so the service and the
learner's test evaluation cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from recall_api.topk import lookup_rows

USER_CTX_TABLE = "user_ctx"


class ScorePrior:
    """τ rows over the item matrix's rows, rebuilt from ``ppop``.

    Args:
        preset: learner preset name whose ``gamma`` / ``pop_*`` parameters to use (``learner.config.PRESETS``).
    """

    def __init__(self, preset: str = "default"):
        from learner.config import preset as learner_preset

        self.cfg = learner_preset(preset)
        if not (self.cfg.pop_period_days > 0 and self.cfg.pop_weight > 0):
            raise ValueError(f"learner preset {preset!r} has no popularity prior (pop_period_days="
                             f"{self.cfg.pop_period_days}, pop_weight={self.cfg.pop_weight})")
        self.gamma = float(self.cfg.gamma) if self.cfg.use_bias else 0.0
        self.weight = float(self.cfg.pop_weight)
        self.prior = None
        self.n_built = 0
        self.rows = 0
        self.version = 0  # bumped by every build (keys the store's cached u2i base)
        self.empty_tau = float(np.log(self.cfg.pop_smooth))

    def build(self, ps, raw_pos: dict[int, int], n_items: int) -> None:
        """Rebuild from every ``ppop`` count; ``raw_pos`` maps raw movie ids to matrix rows (n_items of them)."""
        from learner.evaluate import PPOP, PeriodPrior
        from ps_redis.counters import Counters

        periods, movies, counts = Counters(ps, PPOP).read()
        cols = lookup_rows(raw_pos, movies.tolist())
        ok = (cols >= 0) & (cols < n_items)
        self.prior = PeriodPrior(self.cfg, periods[ok], cols[ok], counts[ok], n_items)
        self.n_built, self.rows = n_items, int(ok.sum())
        self.version += 1

    @property
    def latest(self) -> int:
        """Newest period seen in ``ppop`` (the period of users without ``user_ctx``)."""
        return self.prior.latest if self.prior is not None else 0

    def tau(self, period: int | None, n: int) -> np.ndarray:
        """float32[n] τ of a user in ``period`` (None = latest) over the first n matrix rows.

        Rows added after the last rebuild have no counts yet: τ = log(pop_smooth).
        """
        out = np.full(n, self.empty_tau, np.float32)
        if self.prior is not None and self.n_built:
            k = self.latest if period is None else period
            m = min(n, self.n_built)
            out[:m] = self.prior.tau(np.array([k]))[0, :m]
        return out

    def stats(self) -> dict:
        """Facts for /stats."""
        return {"preset_gamma": self.gamma, "pop_weight": self.weight, "pop_period_days": self.cfg.pop_period_days,
                "ppop_rows": self.rows, "latest_period": self.latest}
