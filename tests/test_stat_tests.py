"""Wrappers of classical tests: they pass scipy's numbers through and add the right effects."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from scfm_audit.stats._registry import TestRegistry
from scfm_audit.stats._tests import (
    cohens_d,
    fisher_exact,
    mann_whitney,
    paired_wilcoxon,
    partial_spearman,
    sign_test,
    spearman_trend,
    welch_t,
)


def test_paired_wilcoxon_and_rank_biserial() -> None:
    a = np.array([0.81, 0.75, 0.90, 0.66, 0.72, 0.88, 0.79, np.nan])
    b = np.array([0.70, 0.71, 0.80, 0.68, 0.60, 0.70, 0.79, 0.5])
    res = paired_wilcoxon(a, b, alternative="greater")
    ref = stats.wilcoxon(a[:-1], b[:-1], alternative="greater")
    assert res.p == pytest.approx(ref.pvalue) and res.statistic == ref.statistic
    # by hand: nonzero diffs .11 .04 .10 -.02 .12 .18 -> ranks 4 2 3 1 5 6; T+ = 20, T- = 1
    assert res.n == 6
    assert res.effect == pytest.approx((20 - 1) / 21)
    assert paired_wilcoxon(b, a).effect == pytest.approx(-(20 - 1) / 21)
    fields = res.registry_fields()
    assert fields["direction"] == "greater" and fields["effect_name"] == "rank_biserial"
    assert fields["null"] == "paired differences symmetric about 0"
    rec = TestRegistry().add(analysis="x", hypothesis="h", **fields)
    assert rec.p_greater == pytest.approx(ref.pvalue) and rec.p_less > 0.5
    # the attainable floor: every one of the 6 differences positive, exact: 1/2^6
    assert res.p_floor == pytest.approx(1 / 64)
    assert np.isnan(paired_wilcoxon([1.0, 2.0], [1.0, 2.0]).p)


def test_welch_t() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 20), rng.normal(0, 3, 30)
    res = welch_t(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    assert res.effect == pytest.approx(a.mean() - b.mean())
    ci = ref.confidence_interval()
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high))
    assert res.n == 50
    assert np.isnan(welch_t([1.0], b).p)


def test_mann_whitney_effect_is_2auc_minus_1() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    a = np.round(rng.normal(0.5, 1, 25), 1)
    b = np.round(rng.normal(0, 1, 40), 1)
    res = mann_whitney(a, b, alternative="greater")
    ref = stats.mannwhitneyu(a, b, alternative="greater")
    assert res.p == pytest.approx(ref.pvalue) and res.statistic == ref.statistic
    auc = roc_auc_score(np.r_[np.ones(25), np.zeros(40)], np.r_[a, b])
    assert res.effect == pytest.approx(2 * auc - 1)


def test_sign_test() -> None:
    res = sign_test(9, 10, alternative="greater")
    assert res.p == pytest.approx(11 / 1024)  # P(X >= 9), X ~ Bin(10, 1/2)
    assert res.effect == 0.9
    ci = stats.binomtest(9, 10, alternative="greater").proportion_ci(method="exact")
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high))
    assert sign_test(5, 10).p == pytest.approx(1.0)
    assert np.isnan(sign_test(0, 0).p)
    with pytest.raises(ValueError):
        sign_test(11, 10)


def test_cohens_d() -> None:
    a = np.array([2.0, 4.0, 6.0])
    b = np.array([1.0, 2.0, 3.0])
    pooled = np.sqrt((2 * 4.0 + 2 * 1.0) / 4)
    assert cohens_d(a, b) == pytest.approx(2.0 / pooled)
    # paired: d = [1, 2, 3] -> mean 2, sd 1
    assert cohens_d(a, b, paired=True) == pytest.approx(2.0)
    assert np.isnan(cohens_d([1.0], b))
    assert cohens_d([1.0, 1.0], [0.0, 0.0]) == np.inf


def test_spearman_trend() -> None:
    layers = np.arange(12)
    rng = np.random.default_rng(2)
    y = 0.05 * layers + rng.normal(scale=0.1, size=12)
    res = spearman_trend(layers, y, alternative="greater")
    ref = stats.spearmanr(layers, y, alternative="greater")
    assert res.effect == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    perm = spearman_trend(layers, y, alternative="greater", n_perm=2000, seed=0)
    assert perm.effect == res.effect and perm.test == "spearman_permutation"
    assert perm.p == pytest.approx(res.p, abs=0.02)
    # exact enumeration for tiny n: rho = 1 among 4! orderings -> p = 1/24
    exact = spearman_trend([1, 2, 3, 4], [1, 2, 3, 5], alternative="greater", n_perm=100, seed=0)
    assert exact.p == pytest.approx(1 / 24)
    assert np.isnan(spearman_trend([1, 2], [3, 4]).p)
    assert np.isnan(spearman_trend([1, 2, 3], [3, 3, 3]).p)
    with pytest.raises(ValueError, match="seed"):
        spearman_trend(layers, y, n_perm=10)


def test_partial_spearman_vs_ols_reference() -> None:
    """t of the partial correlation = t of ranked x in OLS of ranked y on ranked x + covariates."""
    rng = np.random.default_rng(3)
    n = 120
    z = rng.normal(size=(n, 2))
    x = z[:, 0] + rng.normal(size=n)
    y = 0.3 * x + z[:, 0] - z[:, 1] + rng.normal(size=n)
    res = partial_spearman(x, y, z)
    rx, ry, rz = stats.rankdata(x), stats.rankdata(y), stats.rankdata(z, axis=0)
    fit = sm.OLS(ry, sm.add_constant(np.column_stack([rx, rz]))).fit()
    assert res.statistic == pytest.approx(fit.tvalues[1], rel=1e-9)
    assert res.p == pytest.approx(fit.pvalues[1], rel=1e-9)
    # effect = correlation of residuals (simple reference)
    design = sm.add_constant(rz)
    ex = sm.OLS(rx, design).fit().resid
    ey = sm.OLS(ry, design).fit().resid
    assert res.effect == pytest.approx(np.corrcoef(ex, ey)[0, 1], rel=1e-10)
    greater = partial_spearman(x, y, z, alternative="greater")
    assert greater.p == pytest.approx(res.p / 2)
    # one covariate as 1-D, and a NaN row dropped
    x2 = x.copy()
    x2[0] = np.nan
    one = partial_spearman(x2, y, z[:, 0])
    assert one.n == n - 1
    # x collinear with the covariate -> undefined
    assert np.isnan(partial_spearman(z[:, 0], y, z[:, 0]).p)


def test_fisher_exact() -> None:
    table = np.array([[8, 2], [1, 5]])
    res = fisher_exact(table, alternative="greater")
    ref = stats.fisher_exact(table, alternative="greater")
    assert res.p == pytest.approx(ref.pvalue) and res.statistic == pytest.approx(20.0)
    orr = stats.contingency.odds_ratio(table, kind="conditional")
    assert res.effect == pytest.approx(orr.statistic)
    ci = orr.confidence_interval(alternative="greater")
    assert res.ci_low == pytest.approx(ci.low) and res.n == 16
    with pytest.raises(ValueError, match="2×2"):
        fisher_exact(np.ones((2, 3)))
    with pytest.raises(ValueError, match="counts"):
        fisher_exact([[1, -1], [2, 3]])
