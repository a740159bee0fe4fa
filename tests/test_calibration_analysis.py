"""calibration (analysis 17): planted miscalibration is found, calibrated probabilities
are not flagged, split-conformal sets cover at the nominal level, and the kernels agree
with their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from scfm_audit.analyses.calibration import assess, distortion
from scfm_audit.evaluate._calibration_metrics import (
    brier_decomposition,
    conformal_sets,
    expected_calibration_error,
    perturbation_splits,
    spiegelhalter_test,
)
from scfm_audit.stats._verdict import answer_result


def _screen(seed: int, n_pert: int = 40, per: int = 60):
    """Scores with a known truth: P(responder | score) = expit(score − 2) for every
    perturbation (exchangeable perturbations)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i}" for i in range(n_pert)], per)
    s = rng.normal(size=len(groups))
    y = rng.random(len(groups)) < expit(s - 2)
    return s, y, groups


def test_splits_are_disjoint_by_perturbation():
    _, _, g = _screen(0)
    sp = perturbation_splits(g, seed=0)
    sets = [set(g[m]) for m in sp.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert sum(m.sum() for m in sp.values()) == len(g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrated_probabilities_are_not_flagged(seed):
    s, y, g = _screen(seed)
    out = assess(s, y, g, seed=seed, n_boot=30)
    res = out["tests"]["isotonic"]
    assert res.p > 0.05
    assert answer_result(res, claimed="greater")[0] != "yes"
    assert out["metrics"]["platt"]["ece"] < 0.05


def test_planted_miscalibration_is_found():
    s, y, g = _screen(4)
    out = assess(s, y, g, seed=4, n_boot=30, distort=distortion(1.5))
    res = out["tests"]["isotonic"]
    assert res.p < 0.01 and answer_result(res, claimed="greater")[0] == "yes"
    assert out["metrics"]["isotonic"]["ece"] > 0.05


def test_spiegelhalter_true_probabilities_keep_their_level():
    """Rejection rate of the clustered test on true probabilities ≈ α (Monte Carlo)."""
    rng = np.random.default_rng(0)
    rej = 0
    for _ in range(200):
        g = np.repeat(np.arange(15), 40)
        p = expit(rng.normal(size=len(g)) - 1.5)
        y = rng.random(len(g)) < p
        rej += spiegelhalter_test(p, y, g).p < 0.05
    assert rej / 200 < 0.09  # binomial upper bound of 0.05 with 200 draws


def test_conformal_coverage_is_nominal():
    """Split conformal with exchangeable rows: coverage within binomial error of 0.9."""
    rng = np.random.default_rng(0)
    p_cal, p_test = rng.random(2000), rng.random(4000)
    y_cal, y_test = rng.random(2000) < p_cal, rng.random(4000) < p_test
    c = conformal_sets(p_cal, y_cal, p_test, y_test, level=0.9)
    se = np.sqrt(0.9 * 0.1 / 4000)
    assert abs(c["coverage"] - 0.9) < 3 * se + 1 / 2001


def test_conformal_coverage_on_held_out_perturbations():
    s, y, g = _screen(5, n_pert=60)
    cov = assess(s, y, g, seed=5, n_boot=0, level=0.9)["conformal"]
    assert abs(cov["coverage"] - 0.9) < 3 * np.sqrt(0.09 / cov["n_test"]) + 0.02


def test_ece_and_brier_definitions():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(
        0.5 * abs(0.5 - 0.1) + 0.5 * abs(1 - 0.9)
    )
    b = brier_decomposition(p, y, bins=10)
    assert b["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # bins hold one value of p each, so the decomposition is exact
    assert b["brier"] == pytest.approx(b["reliability"] - b["resolution"] + b["uncertainty"])
