"""AUCUtils against scikit-learn, the one-class case, top-k hit rates and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from learner.metrics import (AUCUtils, auc_exact, bootstrap_auc_ci, bootstrap_mean_ci, per_user_hits, top_k,
                             top_k_hits)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(3000) < 0.3).astype(np.float32)
    s = np.round(rng.normal(size=3000) + y, 1)  # rounding makes many ties
    auc = AUCUtils()
    for a in range(0, 3000, 512):  # streamed in batches
        auc.add(y[a:a + 512], s[a:a + 512])
    assert auc.cal() == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc.n == 3000 and auc.positives == int(y.sum())


def test_one_class_window_is_defined():
    auc = AUCUtils()
    assert auc.cal() == 0.5 and auc.one_class  # empty
    auc.add(np.ones(10), np.arange(10), loss_sum=2.0)
    assert auc.cal() == 0.5 and auc.one_class
    assert "one class" in auc.calc_str() and auc.loss() == pytest.approx(0.2)
    auc.add(np.zeros(1), np.array([100.0]))
    assert not auc.one_class and auc.cal() == 0.0
    auc.reset()
    assert auc.n == 0 and auc.loss() == 0.0


def test_calc_str_reports_auc_loss_and_counts():
    auc = AUCUtils()
    auc.add([1, 0, 1, 0], [0.9, 0.1, 0.2, 0.3], loss_sum=1.0)
    assert auc.calc_str() == "auc=0.7500 loss=0.2500 n=4 (pos 2 / neg 2)"


def test_auc_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ"):
        AUCUtils().add([1, 0], [0.5])
    with pytest.raises(ValueError, match="shape"):
        auc_exact(np.ones(2), np.ones(3))


def test_top_k_and_hits():
    s = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, -np.inf, 0.2, 0.3]])
    np.testing.assert_array_equal(top_k(s, 2), [[1, 3], [0, 3]])
    np.testing.assert_array_equal(top_k_hits(s, np.array([2, 1]), 3), [True, False])  # -inf never a hit
    np.testing.assert_array_equal(top_k_hits(s, np.array([0, 2]), 2), [False, False])
    top = np.array([[1, 3], [0, 3]])
    hit, rec = per_user_hits(top, np.array([0, 0, 1]), np.array([3, 2, -1]), 2)
    np.testing.assert_array_equal(hit, [1.0, 0.0])
    np.testing.assert_array_equal(rec, [0.5, 0.0])


def test_bootstrap_intervals_cover_the_estimate():
    rng = np.random.default_rng(0)
    v = (rng.random(500) < 0.25).astype(float)
    m, lo, hi = bootstrap_mean_ci(v, seed=1)
    assert lo < m < hi and 0.03 < hi - lo < 0.12
    users = rng.integers(0, 200, 2000)
    y = (rng.random(2000) < 0.5).astype(float)
    s = y + rng.normal(size=2000)
    auc, lo, hi = bootstrap_auc_ci(users, y, s, n_boot=200, seed=1)
    assert auc == pytest.approx(roc_auc_score(y, s)) and lo < auc < hi
