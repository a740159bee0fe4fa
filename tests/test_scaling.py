"""The ``scaling`` analysis: nested stratified subsamples, curve fits, the decline test.

Specifications: every prefix of a repeat's order is nested in the next and keeps the
state proportions within one cell; the four curve fits recover the parameters of
noise-free synthetic curves and AIC picks the generating law; the decline test (vertex
bootstrap, best grid point selected, Bonferroni over grid points) keeps its level on a
hub-structured null and finds a planted decline. (One-pass nested attention accumulation
equals separate passes: ``test_grouped_attention.py::test_nested_subsets_equal_separate_passes``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from scfm_audit.analyses import calibrate
from scfm_audit.evaluate._scaling import (
    fit_curves,
    grid_buckets,
    nested_stratified_order,
    predict,
)


def test_prefixes_are_nested_and_stratified():
    states = np.repeat(["a", "b", "c"], [500, 300, 200])
    rng = np.random.default_rng(0)
    order = nested_stratified_order(states, rng)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation: prefixes nest
    share = {s: np.mean(states == s) for s in "abc"}
    for n in (10, 25, 50, 100, 333, 1000):
        got = states[order[:n]]
        for s in "abc":
            assert abs(np.sum(got == s) - n * share[s]) <= 1.0
    other = nested_stratified_order(states, np.random.default_rng(1))
    assert not np.array_equal(order[:100], other[:100])  # repeats draw other cells
    assert grid_buckets([2, 5, 6]).tolist() == [0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("saturating_exponential", {"a": 0.8, "b": 0.5, "c": 300.0}),
        ("logarithmic", {"a": 0.1, "b": 0.05}),
        ("linear", {"a": 0.2, "b": 1e-4}),
        ("power", {"a": 0.05, "b": 0.3}),
    ],
)
def test_fits_recover_known_curves(model, params):
    n = np.array([25, 50, 100, 200, 500, 1000, 2000], float)
    y = predict(model, params, n)
    fits = fit_curves(n, y).set_index("model")
    for k, v in params.items():
        assert fits.loc[model, k] == pytest.approx(v, rel=1e-3)
    assert fits.loc[model, "r2"] == pytest.approx(1.0, abs=1e-9)
    noisy = y + np.random.default_rng(0).normal(scale=1e-3 * np.ptp(y), size=len(y))
    assert fit_curves(n, noisy).set_index("model")["aic"].idxmin() == model


def test_too_few_points_give_nan_not_errors():
    fits = fit_curves([10, 20, 40], [0.1, 0.2, np.nan]).set_index("model")
    assert np.isnan(fits.loc["saturating_exponential", "r2"])  # 2 points, 3 parameters


@pytest.mark.slow
def test_decline_test_keeps_level_on_hub_null_and_finds_planted_decline():
    null, _ = calibrate("scaling", n_replicates=40, scenarios=["hub_null_homogeneous"])
    assert null.loc[0, "rejections"] <= 4  # ≤ 10 % of 40 (nominal 5 %)
    planted, _ = calibrate("scaling", n_replicates=10, scenarios=["planted_decline_1"])
    assert planted.loc[0, "rate"] >= 0.8 and planted.loc[0, "mean_estimate"] > 0
