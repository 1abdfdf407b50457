"""The popularity prior stays bounded whatever periods its counts name (a 2**62 s event time once asked for 23 TiB)."""

from __future__ import annotations

import logging

import numpy as np

from learner.config import preset
from learner.evaluate import MAX_PERIODS, PeriodPrior, densest_span

CFG = preset("default")  # pop_window 2, pop_smooth 0.1, pop_total_w 0.001
STRAY = 2**62 // (90 * 86400)  # the period of an event at 2**62 s


def test_densest_span_leaves_out_stray_periods():
    assert densest_span(np.array([10, 11, 12]), 4).all()
    assert densest_span(np.array([], np.int64), 4).shape == (0,)
    assert densest_span(np.array([10, 11, STRAY, 12, -STRAY]), 4).tolist() == [True, True, False, True, False]
    # the span with the most entries wins, wherever it is
    assert densest_span(np.array([0, 100, 101, 102]), 4).tolist() == [False, True, True, True]
    top = np.iinfo(np.int64).max
    assert densest_span(np.array([5, 6, top, top - 1]), 4).tolist() == [True, True, False, False]
    assert densest_span(np.array([5, top, top - 1, top - 2]), 4).tolist() == [False, False, True, True]


def test_prior_skips_counts_outside_the_span_and_logs_them(caplog):
    periods, cols, counts = np.array([10, 11, STRAY]), np.array([0, 1, 0]), np.array([3, 2, 7])
    with caplog.at_level(logging.WARNING, logger="learner.evaluate"):
        prior = PeriodPrior(CFG, periods, cols, counts, n_items=2)
    assert prior.skipped == 1 and prior.cum.shape == (3, 2) and (prior.k0, prior.latest) == (10, 11)
    assert f"skipped 1 count(s) of 1 period(s) outside the {MAX_PERIODS} periods around the data [10, 11]" \
        in caplog.text and f"e.g. period {STRAY}" in caplog.text
    # τ(10, i) = log(0.1 + positives of periods 8..12 + 0.001 · all positives): the stray 7 counts nowhere
    np.testing.assert_allclose(prior.tau(np.array([10]))[0], np.log([0.1 + 3 + 0.003, 0.1 + 2 + 0.002]))
    ref = PeriodPrior(CFG, periods[:2], cols[:2], counts[:2], n_items=2)
    assert ref.skipped == 0 and np.array_equal(prior.cum, ref.cum)


def test_tau_of_any_period_is_defined():
    prior = PeriodPrior(CFG, np.array([10, 11]), np.array([0, 1]), np.array([3, 2]), n_items=2)
    i64 = np.iinfo(np.int64)
    far = prior.tau(np.array([i64.max, i64.min, 2**62, -(2**62), 1000, -1000]))
    outside = np.log(0.1 + 0.001 * np.array([3.0, 2.0]))  # no positive within ±2 periods: smooth + total term
    for row in far:
        np.testing.assert_allclose(row, outside)
    np.testing.assert_allclose(prior.tau(np.array([13]))[0], np.log([0.1 + 0.003, 0.1 + 2 + 0.002]))


def test_prior_without_counts():
    prior = PeriodPrior(CFG, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), n_items=3)
    assert prior.skipped == 0
    np.testing.assert_allclose(prior.tau(np.array([5]))[0], np.log([0.1] * 3))
