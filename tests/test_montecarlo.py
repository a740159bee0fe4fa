"""Staged Monte-Carlo p-values: valid at every level, cheap for weak effects, fine enough
for strong ones."""

from __future__ import annotations

import numpy as np
import pytest

from scfm_audit.stats import adaptive_mc_pvalue


def _normal_draws(k, rng):
    return rng.normal(size=k)


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_staged_p_is_valid_at_every_level(alternative):
    """H0: the observed statistic is one more draw of the null. Then P(p ≤ t) ≤ t for every
    t, although the number of draws depends on the data (binomial bounds, 3000 reps)."""
    rng = np.random.default_rng(0)
    ps = np.array(
        [
            adaptive_mc_pvalue(
                _normal_draws,
                rng.normal(),
                stages=(19, 199),
                extend_below=0.1,
                alternative=alternative,
                seed=i,
            ).p
            for i in range(3000)
        ]
    )
    for t in (0.01, 0.05, 0.1, 0.3, 0.6):
        # upper 99.9% binomial bound of the count under rate t
        bound = t * 3000 + 3.1 * np.sqrt(3000 * t * (1 - t))
        assert (ps <= t).sum() <= bound, (t, (ps <= t).mean())


def test_weak_effect_stops_early_strong_effect_draws_to_the_last_stage():
    weak = adaptive_mc_pvalue(_normal_draws, 0.3, stages=(99, 9_999), seed=0)
    strong = adaptive_mc_pvalue(_normal_draws, 6.0, stages=(99, 9_999), seed=0)
    assert weak.n_draws == 99 and weak.p > 0.05 and not weak.at_floor
    assert strong.n_draws == 9_999 and strong.at_floor
    assert strong.p == pytest.approx(2 / 10_000) == strong.p_floor
    assert strong.p_greater == pytest.approx(1 / 10_000)


def test_first_stage_above_its_floor_threshold_still_extends_when_at_floor():
    """19 two-sided draws cannot go below 0.1; an extreme statistic must still be refined."""
    r = adaptive_mc_pvalue(_normal_draws, 8.0, stages=(19, 1_999), extend_below=0.05, seed=1)
    assert r.n_draws == 1_999


def test_nan_statistic_gives_nan_without_drawing():
    calls = []
    r = adaptive_mc_pvalue(lambda k, rng: calls.append(k) or np.zeros(k), np.nan, seed=0)
    assert np.isnan(r.p) and r.n_draws == 0 and not calls


def test_stages_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        adaptive_mc_pvalue(_normal_draws, 0.0, stages=(100, 50), seed=0)
