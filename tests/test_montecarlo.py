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
    assert r.n_draws == 1_999 and len(r.null) == 1_999
    assert r.at_floor and r.p == pytest.approx(2 / 2_000) == r.p_floor


def test_nan_statistic_gives_nan_without_drawing():
    calls = []
    r = adaptive_mc_pvalue(lambda k, rng: calls.append(k) or np.zeros(k), np.nan, seed=0)
    assert np.isnan(r.p) and r.n_draws == 0 and not calls
    assert np.isnan(r.p_greater) and np.isnan(r.p_less) and r.null.size == 0
    assert not r.at_floor


def test_stages_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        adaptive_mc_pvalue(_normal_draws, 0.0, stages=(100, 50), seed=0)


@pytest.mark.parametrize("observed", [-1.3, 0.2, 1.7])
def test_p_values_follow_the_definition_on_the_returned_draws(observed):
    """p_greater = (1 + #{null ≥ obs}) / (n + 1), p_less likewise, two-sided = twice the
    smaller tail capped at 1; computed by hand from the draws the result carries."""
    results = {
        alt: adaptive_mc_pvalue(_normal_draws, observed, stages=(99,), alternative=alt, seed=3)
        for alt in ("greater", "less", "two-sided")
    }
    null = results["greater"].null
    assert len(null) == 99
    g = (1 + np.sum(null >= observed)) / 100
    ll = (1 + np.sum(null <= observed)) / 100
    for alt, r in results.items():
        np.testing.assert_array_equal(r.null, null)  # same seed, same draws
        assert r.p_greater == pytest.approx(g) and r.p_less == pytest.approx(ll)
        assert r.alternative == alt and r.n_draws == 99
    assert results["greater"].p == pytest.approx(g)
    assert results["less"].p == pytest.approx(ll)
    assert results["two-sided"].p == pytest.approx(min(1.0, 2 * min(g, ll)))
    assert results["greater"].p_floor == pytest.approx(1 / 100)
    assert results["two-sided"].p_floor == pytest.approx(2 / 100)


def test_stages_draw_only_the_increments_and_stop_above_the_threshold():
    calls: list[int] = []

    def draw(k, rng):
        calls.append(k)
        return rng.normal(size=k)

    adaptive_mc_pvalue(draw, 5.0, stages=(19, 199, 1_999), extend_below=0.1, seed=0)
    assert calls == [19, 180, 1_800]  # extreme: every stage, each drawing the increment
    calls.clear()
    r = adaptive_mc_pvalue(draw, 0.0, stages=(19, 199, 1_999), extend_below=0.1, seed=0)
    assert calls == [19] and r.n_draws == 19 and r.p > 0.1


def test_ties_count_as_extreme_and_nan_draws_are_dropped():
    tied = adaptive_mc_pvalue(lambda k, rng: np.zeros(k), 0.0, stages=(9,), seed=0)
    assert tied.p_greater == 1.0 and tied.p_less == 1.0 and tied.p == 1.0
    # a point-mass null: nothing smaller than 1 is attainable, whatever the draws
    assert tied.p_floor == 1.0 and tied.at_floor

    def some_nan(k, rng):
        x = np.arange(k, dtype=float)
        x[::2] = np.nan  # 5 of 10 draws are NaN: 1, 3, 5, 7, 9 remain
        return x

    r = adaptive_mc_pvalue(some_nan, 6.0, stages=(10,), alternative="greater", seed=0)
    assert r.n_draws == 5
    assert r.p == pytest.approx((1 + 2) / 6)  # 7 and 9 are ≥ 6
    assert r.p_less == pytest.approx((1 + 3) / 6)


def test_seed_reproduces_and_a_new_seed_redraws():
    a = adaptive_mc_pvalue(_normal_draws, 0.5, stages=(49,), seed=7)
    b = adaptive_mc_pvalue(_normal_draws, 0.5, stages=(49,), seed=7)
    c = adaptive_mc_pvalue(_normal_draws, 0.5, stages=(49,), seed=8)
    np.testing.assert_array_equal(a.null, b.null)
    assert a.p == b.p and not np.array_equal(a.null, c.null)
