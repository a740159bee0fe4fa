"""Bootstrap CIs and permutation tests: exactness against references and calibration."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from scfm_audit.stats._metrics import auroc
from scfm_audit.stats._resampling import (
    bootstrap_ci,
    empirical_p,
    label_permutation_auroc,
    permutation_test,
)

# ---------------------------------------------------------------------------- empirical p


def test_empirical_p_hand_values() -> None:
    null = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert empirical_p(0.4, null) == pytest.approx((1 + 2) / 6)  # 0.4 and 0.5 >= 0.4
    assert empirical_p(0.4, null, alternative="less") == pytest.approx((1 + 4) / 6)
    assert empirical_p(0.4, null, alternative="two-sided") == pytest.approx(2 * 3 / 6)
    assert empirical_p(0.9, null) == pytest.approx(1 / 6)  # never 0
    assert empirical_p(0.0, null, alternative="two-sided") == pytest.approx(2 / 6)
    assert empirical_p(0.3, null, alternative="two-sided") == 1.0  # capped
    # equal up to rounding counts as "at least as extreme"
    assert empirical_p(0.1 + 0.2, np.array([0.3])) == 1.0
    assert empirical_p(0.3, np.array([0.1 + 0.2]), alternative="less") == 1.0


def test_empirical_p_nan_vector_and_validation() -> None:
    null = np.array([1.0, np.nan, 3.0])
    assert empirical_p(2.0, null) == pytest.approx((1 + 1) / (1 + 2))
    assert np.isnan(empirical_p(np.nan, null))
    obs = np.array([0.0, 10.0])
    nul = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(empirical_p(obs, nul), [1.0, 0.25])
    with pytest.raises(ValueError, match="shape"):
        empirical_p(obs, np.ones(3))
    with pytest.raises(ValueError, match="alternative"):
        empirical_p(1.0, null, alternative="bigger")  # type: ignore[arg-type]


# ------------------------------------------------------------------ label permutation


def _brute_force_null(y, s, n_perm, seed):
    """Reference: the same draws, AUROC recomputed from scratch with permuted labels."""
    rng = np.random.default_rng(seed)
    n, n1 = len(y), int(np.sum(y))
    small_is_pos = n1 <= n - n1
    m = n1 if small_is_pos else n - n1
    out = []
    for _ in range(n_perm):
        idx = rng.choice(n, size=m, replace=False)
        lab = np.zeros(n, dtype=bool)
        lab[idx] = True
        out.append(auroc(lab if small_is_pos else ~lab, s))
    return np.array(out)


@pytest.mark.parametrize("frac", [0.1, 0.8])
def test_label_permutation_null_is_exact_auroc(frac: float) -> None:
    rng = np.random.default_rng(1)
    y = rng.random(60) < frac
    s = np.round(rng.normal(size=60) + y, 1)  # ties
    res = label_permutation_auroc(y, s, n_perm=50, seed=9)
    assert res.observed == auroc(y, s)
    np.testing.assert_allclose(res.null, _brute_force_null(y, s, 50, 9), rtol=0, atol=1e-14)
    assert res.p == pytest.approx(empirical_p(res.observed, res.null))


def test_label_permutation_2d_shares_permutations() -> None:
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.2
    s = rng.integers(0, 10, size=(300, 3)).astype(float) + y[:, None] * [0.0, 1.0, 3.0]
    res = label_permutation_auroc(y, s, n_perm=200, seed=4)
    assert res.null.shape == (200, 3) and res.p.shape == (3,)
    for j in range(3):
        one = label_permutation_auroc(y, s[:, j], n_perm=200, seed=4)
        np.testing.assert_array_equal(res.null[:, j], one.null)
        assert res.p[j] == one.p and res.observed[j] == one.observed
    assert res.p[2] == pytest.approx(1 / 201)  # strong signal: nothing in the null beats it
    assert abs(res.null.mean() - 0.5) < 0.01


def test_label_permutation_alternatives_and_degenerate() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) - 2.0 * y  # positives score LOWER
    assert label_permutation_auroc(y, s, n_perm=99, seed=0).p > 0.9
    assert label_permutation_auroc(y, s, n_perm=99, seed=0, alternative="less").p == 0.01
    assert label_permutation_auroc(y, s, n_perm=99, seed=0, alternative="two-sided").p == 0.02
    res = label_permutation_auroc(np.zeros(10), rng.normal(size=10), n_perm=5, seed=0)
    assert np.isnan(res.observed) and np.isnan(res.p) and res.null.shape == (5,)
    with pytest.raises(TypeError, match="seed"):
        label_permutation_auroc(y, s, n_perm=5, seed=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_perm"):
        label_permutation_auroc(y, s, n_perm=0, seed=0)


def test_label_permutation_calibrated_under_null() -> None:
    """Random scores vs random labels: p-values ~ Uniform (valid, not anti-conservative)."""
    rng = np.random.default_rng(2024)
    ps = []
    for _ in range(200):
        y = rng.random(150) < 0.2
        s = np.round(rng.normal(size=150), 1)
        ps.append(label_permutation_auroc(y, s, n_perm=199, seed=rng).p)
    ps = np.array(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.001
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10


# ---------------------------------------------------------------------- permutation test


def test_permutation_test_two_sample() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 1.0, 30)
    y = rng.normal(0.0, 1.0, 25)

    def diff(a, b):
        return float(np.mean(a) - np.mean(b))

    res = permutation_test(diff, x, y, n_perm=2000, seed=1, alternative="greater")
    assert res.observed == pytest.approx(diff(x, y))
    assert res.p < 0.01 and abs(res.null.mean()) < 0.05
    ref = stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a, axis) - np.mean(b, axis),
        n_resamples=2000,
        alternative="two-sided",
        rng=0,
    )
    ours = permutation_test(diff, x, y, n_perm=2000, seed=1, alternative="two-sided")
    assert ours.p == pytest.approx(ref.pvalue, abs=0.01)
    again = permutation_test(diff, x, y, n_perm=2000, seed=1, alternative="greater")
    np.testing.assert_array_equal(again.null, res.null)
    assert np.isfinite(res.z) and res.z > 2


def test_permutation_test_calibrated_and_nan_draws() -> None:
    rng = np.random.default_rng(8)
    ps = [
        permutation_test(
            lambda a, b: float(np.median(a) - np.median(b)),
            rng.normal(size=12),
            rng.normal(size=15),
            n_perm=99,
            seed=rng,
        ).p
        for _ in range(150)
    ]
    assert stats.kstest(ps, "uniform").pvalue > 0.001

    def stat(a, b):
        return np.nan if a[0] > 1.5 else float(a.mean() - b.mean())

    res = permutation_test(stat, np.arange(5.0), np.arange(5.0), n_perm=200, seed=0)
    assert res.n_skipped == int(np.isnan(res.null).sum()) > 0


# ------------------------------------------------------------------------------ bootstrap


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_matches_scipy_exactly(method: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.exponential(size=40)
    ours = bootstrap_ci(np.mean, x, n_boot=2000, seed=np.random.default_rng(123), method=method)
    ref = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=2000,
        rng=np.random.default_rng(123),
        method="BCa" if method == "bca" else "percentile",
    )
    np.testing.assert_allclose(ours.distribution, ref.bootstrap_distribution, rtol=1e-13)
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert ours.se == pytest.approx(ref.standard_error, rel=1e-12)
    assert ours.estimate == pytest.approx(x.mean())


def test_bootstrap_paired_arrays_match_scipy_bca() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=35)
    b = a + rng.normal(size=35)

    def corr(u, v, axis=-1):
        return stats.pearsonr(u, v, axis=axis).statistic

    ours = bootstrap_ci(lambda u, v: float(corr(u, v)), a, b, n_boot=999, seed=7, method="bca")
    ref = stats.bootstrap(
        (a, b), corr, paired=True, vectorized=True, n_resamples=999, rng=7, method="BCa"
    )
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, rel=1e-10)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, rel=1e-10)


def test_cluster_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 6, 20)
    groups = np.repeat(np.array([f"g{i:02d}" for i in range(20)]), sizes)
    perm = rng.permutation(groups.size)  # rows of a group need not be contiguous
    groups = groups[perm]
    row_id = np.arange(groups.size)
    seen = []

    def check(ids, g):
        # every drawn group appears with all its rows, a whole number of times
        for name in np.unique(g):
            counts = np.bincount(ids[g == name], minlength=groups.size)[groups == name]
            assert (counts == counts[0]).all() and counts[0] >= 1
        seen.append(len(np.unique(g)))
        return float(len(ids))

    res = bootstrap_ci(check, row_id, groups, n_boot=50, seed=3, groups=groups)
    assert res.n_units == 20 and res.n_skipped == 0
    assert max(seen) <= 20


def test_cluster_bootstrap_equals_bootstrap_of_group_means_for_equal_groups() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(15, 4))  # 15 groups of 4 rows
    x = values.ravel()
    groups = np.repeat(np.arange(15), 4)
    a = bootstrap_ci(np.mean, x, n_boot=300, seed=11, groups=groups)
    b = bootstrap_ci(np.mean, values.mean(axis=1), n_boot=300, seed=11)
    np.testing.assert_allclose(a.distribution, b.distribution, rtol=1e-12)
    c = bootstrap_ci(np.mean, x, n_boot=300, seed=11, groups=groups, method="bca")
    d = bootstrap_ci(np.mean, values.mean(axis=1), n_boot=300, seed=11, method="bca")
    assert c.ci_low == pytest.approx(d.ci_low) and c.ci_high == pytest.approx(d.ci_high)


def test_bootstrap_skips_degenerate_draws() -> None:
    rng = np.random.default_rng(5)
    y = np.zeros(30, dtype=bool)
    y[:2] = True  # resamples often miss both positives
    s = rng.normal(size=30) + y
    with pytest.warns(RuntimeWarning, match="skipped"):
        res = bootstrap_ci(auroc, y, s, n_boot=400, seed=0)
    # reference count of one-class resamples from the same draws
    idx = np.random.default_rng(0).integers(0, 30, (400, 30))
    one_class = int((~y[idx].any(axis=1)).sum())
    assert res.n_skipped == one_class > 0
    assert res.distribution.shape == (400 - one_class,)
    assert res.ci_low <= res.estimate <= res.ci_high


def test_bootstrap_edge_cases() -> None:
    x = np.arange(10.0)
    res = bootstrap_ci(lambda v: np.nan, x, n_boot=10, seed=0)
    assert np.isnan(res.estimate) and np.isnan(res.ci_low) and res.distribution.size == 0
    with pytest.warns(RuntimeWarning, match="BCa"):
        res = bootstrap_ci(np.mean, np.ones(10), n_boot=50, seed=0, method="bca")
    assert np.isnan(res.ci_low)
    a = bootstrap_ci(np.mean, x, n_boot=100, seed=1)
    b = bootstrap_ci(np.mean, x, n_boot=100, seed=1)
    c = bootstrap_ci(np.mean, x, n_boot=100, seed=2)
    np.testing.assert_array_equal(a.distribution, b.distribution)
    assert not np.array_equal(a.distribution, c.distribution)
    with pytest.raises(TypeError, match="seed"):
        bootstrap_ci(np.mean, x, seed=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(np.mean, x, x[:5], seed=0)
    with pytest.raises(ValueError, match="ci"):
        bootstrap_ci(np.mean, x, seed=0, ci=95)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(np.mean, x, seed=0, groups=np.arange(3))
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(np.mean, x, seed=0, method="basic")  # type: ignore[arg-type]


def test_bootstrap_coverage_of_a_mean() -> None:
    """Percentile and BCa intervals of a normal mean cover ~95% (n = 40)."""
    rng = np.random.default_rng(6)
    cover = {"percentile": 0, "bca": 0}
    reps = 150
    for _ in range(reps):
        x = rng.normal(size=40)
        for method in cover:
            r = bootstrap_ci(np.mean, x, n_boot=400, seed=rng, method=method)
            cover[method] += r.ci_low <= 0.0 <= r.ci_high
    for method, hits in cover.items():
        assert 0.88 <= hits / reps <= 0.99, (method, hits / reps)


def test_no_warning_when_nothing_skipped() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bootstrap_ci(np.mean, np.arange(20.0), n_boot=50, seed=0, method="bca")
