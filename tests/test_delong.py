"""Fast DeLong (Sun & Xu 2014) against a slow O(n1·n0) implementation of DeLong (1988)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from scfm_audit.stats._delong import delong_auroc_var, delong_test


def _slow_delong(y: np.ndarray, scores: np.ndarray):
    """DeLong et al. (1988) from the definition: ψ over all positive × negative pairs."""
    y = np.asarray(y, dtype=bool)
    s = np.atleast_2d(np.asarray(scores, dtype=float).T).T  # (n, k)
    aucs, v10s, v01s = [], [], []
    for j in range(s.shape[1]):
        x, z = s[y, j], s[~y, j]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    v10, v01 = np.array(v10s).T, np.array(v01s).T
    n1, n0 = v10.shape[0], v01.shape[0]
    s10 = np.atleast_2d(np.cov(v10, rowvar=False))
    s01 = np.atleast_2d(np.cov(v01, rowvar=False))
    return np.array(aucs), s10 / n1 + s01 / n0


def _case(seed: int, n: int = 300, levels: int = 8):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    latent = rng.normal(size=n) + 0.8 * y
    a = np.round(latent + rng.normal(scale=0.7, size=n), 1)  # correlated scores, with ties
    b = np.floor((latent + rng.normal(scale=1.2, size=n)) * levels / 4)
    return y, a, b


@pytest.mark.parametrize("seed", range(6))
def test_fast_delong_matches_slow_reference(seed: int) -> None:
    y, a, b = _case(seed)
    aucs, cov = _slow_delong(y, np.column_stack([a, b]))
    res = delong_test(y, a, b)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res.auc_b == pytest.approx(aucs[1], abs=1e-12)
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert res.se == pytest.approx(np.sqrt(var_diff), rel=1e-10)
    z = (aucs[0] - aucs[1]) / np.sqrt(var_diff)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    half = norm.ppf(0.975) * np.sqrt(var_diff)
    assert res.ci_low == pytest.approx(res.delta - half)
    assert res.ci_high == pytest.approx(res.delta + half)
    # single-AUROC variance and 2-D covariance
    assert delong_auroc_var(y, a) == pytest.approx(cov[0, 0], rel=1e-10)
    np.testing.assert_allclose(delong_auroc_var(y, np.column_stack([a, b])), cov, rtol=1e-10)


def test_one_sided_alternatives() -> None:
    y, a, b = _case(10)
    two = delong_test(y, a, b)
    g = delong_test(y, a, b, alternative="greater")
    le = delong_test(y, a, b, alternative="less")
    assert g.p == pytest.approx(norm.sf(two.z))
    assert le.p == pytest.approx(norm.cdf(two.z))
    assert g.p + le.p == pytest.approx(1.0)
    swapped = delong_test(y, b, a)
    assert swapped.delta == pytest.approx(-two.delta) and swapped.p == pytest.approx(two.p)


def test_variance_of_one_auroc_matches_simulation() -> None:
    """The DeLong variance estimates the sampling variance of the AUROC."""
    rng = np.random.default_rng(0)
    aucs, variances = [], []
    for _ in range(300):
        y = np.r_[np.ones(40, bool), np.zeros(60, bool)]
        s = rng.normal(size=100) + 1.0 * y
        aucs.append(roc_auc_score(y, s))
        variances.append(delong_auroc_var(y, s))
    assert np.mean(variances) == pytest.approx(np.var(aucs, ddof=1), rel=0.2)


def test_null_calibration_of_delong_test() -> None:
    """Two exchangeable noisy versions of one signal: p-values roughly uniform."""
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(200):
        y = rng.random(200) < 0.4
        latent = rng.normal(size=200) + 0.7 * y
        a = latent + rng.normal(size=200)
        b = latent + rng.normal(size=200)
        ps.append(delong_test(y, a, b).p)
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10


def test_degenerate_cases() -> None:
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    same = delong_test(y, s, s)
    assert same.delta == 0 and same.se == 0 and same.p == 1.0 and same.z == 0.0
    # perfect vs all-tied: components constant, se = 0 but AUROCs differ -> undefined
    res = delong_test(y, s, np.ones(5))
    assert res.delta == pytest.approx(0.5) and res.se == 0 and np.isnan(res.p)
    one_pos = delong_test([1, 0, 0, 0], [1.0, 2, 3, 4], [4.0, 3, 2, 1])
    assert np.isnan(one_pos.p) and one_pos.n_pos == 1
    assert np.isnan(delong_auroc_var([1, 0, 0], [1.0, 2.0, 3.0]))


def test_nan_policy_omit_keeps_pairs() -> None:
    y, a, b = _case(3, n=100)
    a = a.copy()
    a[:5] = np.nan
    keep = ~np.isnan(a)
    ref = delong_test(y[keep], a[keep], b[keep])
    res = delong_test(y, a, b, nan_policy="omit")
    assert res.p == pytest.approx(ref.p) and res.n_pos + res.n_neg == keep.sum()
    with pytest.raises(ValueError, match="NaN"):
        delong_test(y, a, b, nan_policy="raise")
    with pytest.raises(ValueError, match="equal length"):
        delong_test(y, a, b[:-1])
