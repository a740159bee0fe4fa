"""stats/_paired: the signed-rank test with its Hodges–Lehmann effect and inverted CI,
the sign-flip test of a mean and the within-block permutation test, each against a plain
reference (scipy, exhaustive enumeration) or a known answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from scfm_audit.stats import (
    hodges_lehmann,
    rank_biserial,
    sign_flip_test,
    signed_rank,
    within_block_permutation,
)


def test_hodges_lehmann_ci_inverts_scipys_exact_signed_rank_test():
    rng = np.random.default_rng(0)
    for n in (6, 9, 15, 30):
        d = rng.normal(0.3, 1.0, n)
        est, lo, hi = hodges_lehmann(d)
        walsh = [(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)]
        assert est == pytest.approx(np.median(walsh))

        def p(mu, d=d):
            return stats.wilcoxon(d - mu, method="exact").pvalue

        eps = 1e-9
        assert p(lo + eps) > 0.05 and p(hi - eps) > 0.05  # inside: not rejected
        assert p(lo - eps) <= 0.05 and p(hi + eps) <= 0.05  # outside: rejected
    assert np.isnan(hodges_lehmann([0.1, 0.2, 0.3])[1])  # n = 3: no 95% interval exists


def test_signed_rank_is_scipys_test_with_the_side_of_the_ranks():
    rng = np.random.default_rng(1)
    d = rng.normal(0.2, 1, 25)
    r = signed_rank(d)
    assert r.p == pytest.approx(stats.wilcoxon(d).pvalue)
    assert r.p_greater == pytest.approx(stats.wilcoxon(d, alternative="greater").pvalue)
    assert r.ci_low <= r.effect <= r.ci_high and r.null_value == 0.0
    rb = rank_biserial(d)
    assert -1 <= rb <= 1 and np.sign(rb) == np.sign(r.effect)


def test_skewed_differences_side_follows_the_ranks_not_the_mean():
    """27 small negative differences, 3 large positive: mean +0.013, ranks say 'less'."""
    d = np.r_[np.linspace(-0.015, -0.005, 27), [0.21, 0.22, 0.23]]
    assert d.mean() == pytest.approx(0.013, abs=0.002)
    r = signed_rank(d)
    assert rank_biserial(d) == pytest.approx(-0.63, abs=0.01)
    assert r.p == pytest.approx(0.003, abs=0.002)
    assert r.side == "less" and r.effect < 0 and r.ci_high < 0


def _exact_sign_flip(d):
    obs = d.mean()
    null = np.array([np.mean(d * s) for s in itertools.product([-1, 1], repeat=len(d))])
    return np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12)


def test_sign_flip_equals_exhaustive_enumeration():
    d = np.array([0.3, -0.1, 0.25, 0.4, -0.05, 0.2, 0.15, 0.1, -0.2, 0.35])
    g, ll = _exact_sign_flip(d)
    r = sign_flip_test(d, seed=0, stages=(20_000,))
    assert r.p_greater == pytest.approx(g, abs=0.006)
    assert r.p_less == pytest.approx(ll, abs=0.006)
    assert r.effect == pytest.approx(d.mean()) and r.null_value == 0.0
    assert r.side == "greater"
    # the CI is the inverted test: it excludes 0 exactly when the two-sided test rejects
    assert (r.ci_low > 0) == (r.p <= 0.05)


def _exact_block(values, groups, blocks):
    """Exhaustive within-block permutation p of the range of group means."""
    values, groups, blocks = map(np.asarray, (values, groups, blocks))
    ub = np.unique(blocks)

    def rng_of(g):
        means = [values[g == k].mean() for k in np.unique(groups)]
        return max(means) - min(means)

    obs = rng_of(groups)
    per_block = [list(itertools.permutations(groups[blocks == b])) for b in ub]
    null = []
    for combo in itertools.product(*per_block):
        g = groups.copy()
        for b, labels in zip(ub, combo, strict=True):
            g[blocks == b] = labels
        null.append(rng_of(g))
    return float(np.mean(np.array(null) >= obs - 1e-12))


def test_within_block_permutation_equals_exhaustive_enumeration():
    rng = np.random.default_rng(3)
    n = 5  # 3 groups in 5 blocks: 6^5 = 7,776 relabellings
    u = rng.normal(0, 1, n)
    vals = np.concatenate([u + rng.normal(0, 0.3, n) + s for s in (0.0, 0.2, 0.5)])
    groups = np.repeat(["a", "b", "c"], n)
    blocks = np.tile([f"P{i}" for i in range(n)], 3)
    want = _exact_block(vals, groups, blocks)
    r = within_block_permutation(vals, groups, blocks, seed=0, stages=(20_000,))
    assert r.p == pytest.approx(want, abs=0.008)
    means = [vals[groups == k].mean() for k in "abc"]
    assert r.effect == pytest.approx(max(means) - min(means))
    assert r.alternative == "greater" and (r.ci_low > 0) == (r.p <= 0.05)


def test_two_groups_within_blocks_is_the_sign_flip_of_the_differences():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 12), rng.normal(0.4, 1, 12)
    r = within_block_permutation(
        np.r_[a, b], np.repeat(["a", "b"], 12), np.tile(np.arange(12), 2), seed=0, stages=(20_000,)
    )
    s = sign_flip_test(a - b, seed=1, stages=(20_000,))
    assert r.p == pytest.approx(s.p, abs=0.01)
    assert r.effect == pytest.approx(abs(s.effect))


def test_within_block_permutation_keeps_its_level_with_block_effects():
    """Per-block difficulty (SD 1) dwarfs the noise: a full permutation would ignore it;
    the within-block test keeps α (the exact test is uniform; here 200 replicates)."""
    ps = []
    for s in range(200):
        rng = np.random.default_rng(100 + s)
        u = rng.normal(0, 1, 15)
        vals = np.concatenate([u + rng.normal(0, 0.1, 15) for _ in range(3)])
        ps.append(
            within_block_permutation(
                vals, np.repeat([0, 1, 2], 15), np.tile(np.arange(15), 3), seed=s, stages=(199,)
            ).p
        )
    k = int(np.sum(np.array(ps) <= 0.05))
    assert stats.binomtest(k, 200, 0.05, alternative="greater").pvalue > 0.01


def test_nothing_to_permute_is_nan_with_a_reason():
    r = within_block_permutation([1.0, 2.0], ["a", "b"], ["x", "y"], seed=0)
    assert np.isnan(r.p) and "no block" in r.reason
    assert np.isnan(sign_flip_test([0.0, 0.0], seed=0).p)
