"""Paired and blocked tests whose effect is the statistic they test.

* :func:`signed_rank`: Wilcoxon signed-rank test of paired differences, with the
  Hodges–Lehmann pseudo-median as its effect and the CI from inverting the same test, so
  the estimate's side, its CI and the p never disagree (the mean of skewed differences
  can lie on the other side of 0 than the ranks: 27 small wins against 3 large losses).
* :func:`sign_flip_test`: Monte-Carlo sign-flip permutation test of a mean difference
  (H0: differences symmetric about 0), for when the mean is the estimate shown; its CI is
  the inverted test (mean ± the null's (1 − α) quantile of |mean|).
* :func:`within_block_permutation`: H0: within each block (e.g. a perturbation) the group
  labels (e.g. contexts) are exchangeable. Values are centred on their block's mean (a
  block's own level — a perturbation's difficulty — cancels; a block with one member
  carries no contrast and is left out); statistic: the range of the groups' mean centred
  values (the range of the group means when every block holds every group); labels are
  permuted within blocks, Monte-Carlo via
  :func:`~scfm_audit.stats._montecarlo.adaptive_mc_pvalue`. With two groups it is the
  sign-flip test of the paired differences over the blocks both hold, so it needs only
  their symmetry, not equal spreads in the two groups. CI for the groups' true range
  by inverting the same test: ``[max(0, R − c), R + c]`` with ``c`` the null's (1 − α)
  quantile of the range, which excludes 0 exactly when the test rejects.

Every function returns a :class:`~scfm_audit.stats._tests.StatTestResult` with both tails
and the attainable floor; NaN p (with ``reason``) when there is nothing to test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from scfm_audit.stats._montecarlo import adaptive_mc_pvalue, permute_within_classes
from scfm_audit.stats._resampling import Seed
from scfm_audit.stats._tests import Alternative, StatTestResult, paired_wilcoxon

__all__ = [
    "hodges_lehmann",
    "rank_biserial",
    "sign_flip_test",
    "signed_rank",
    "within_block_permutation",
]

#: largest n for the exact null distribution of the signed-rank statistic in the CI
_EXACT_N = 400


def _signed_rank_lower(n: int, alpha: float) -> int:
    """Largest ``t`` with ``P(T+ ≤ t) ≤ alpha / 2`` under H0 for ``n`` untied non-zero
    differences (exact by recursion up to :data:`_EXACT_N`, normal beyond); −1 if none."""
    m = n * (n + 1) // 2
    if n <= _EXACT_N:
        dist = np.zeros(m + 1)
        dist[0] = 1.0
        for k in range(1, n + 1):  # T+ = Σ k·B_k, B_k ~ Bernoulli(1/2)
            shifted = np.zeros_like(dist)
            shifted[k:] = dist[:-k]
            dist = 0.5 * (dist + shifted)
        cdf = np.cumsum(dist)
        ok = np.flatnonzero(cdf <= alpha / 2 * (1 + 1e-12))
        return int(ok[-1]) if ok.size else -1
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return math.floor(m / 2 + float(stats.norm.ppf(alpha / 2)) * sd - 0.5)


def hodges_lehmann(d: ArrayLike, *, ci: float = 0.95) -> tuple[float, float, float]:
    """Hodges–Lehmann pseudo-median of ``d`` (median of the Walsh averages
    ``(d_i + d_j) / 2``, i ≤ j) and its CI by inverting the two-sided signed-rank test:
    ``[W_(t+1), W_(M−t)]`` of the sorted ``M = n(n+1)/2`` Walsh averages, ``t`` the
    largest with ``P(T+ ≤ t) ≤ (1 − ci)/2`` (exact without ties; NaN bounds when ``n`` is
    too small for any t). NaNs dropped; NaN for an empty input."""
    x = np.asarray(d, float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    i, j = np.triu_indices(n)
    w = np.sort((x[i] + x[j]) / 2.0)
    est = float(np.median(w))
    t = _signed_rank_lower(n, 1 - ci)
    if t < 0:
        return est, math.nan, math.nan
    return est, float(w[t]), float(w[w.size - t - 1])


def signed_rank(
    d: ArrayLike,
    *,
    ci: float = 0.95,
    alternative: Alternative = "two-sided",
    h0: str = "",
    name: str = "Δ",
) -> StatTestResult:
    """Wilcoxon signed-rank test of ``d`` against 0 (scipy's, via
    :func:`~scfm_audit.stats._tests.paired_wilcoxon`: both tails, floor) whose effect is the
    Hodges–Lehmann pseudo-median of ``d`` with the inverted-test CI (see
    :func:`hodges_lehmann`); its sign is the side of the ranks (T+ above its null mean
    exactly when more than half of the Walsh averages are positive)."""
    x = np.asarray(d, float)
    x = x[~np.isnan(x)]
    r = paired_wilcoxon(x, np.zeros_like(x), alternative=alternative)
    est, lo, hi = hodges_lehmann(x, ci=ci)
    return replace(
        r,
        effect=est if not math.isnan(r.p) else math.nan,
        effect_name=f"Hodges–Lehmann {name}",
        ci_low=lo,
        ci_high=hi,
        test="Wilcoxon signed-rank",
        h0=h0 or r.h0,
    )


def rank_biserial(d: ArrayLike) -> float:
    """Matched-pairs rank-biserial correlation of ``d`` (non-zero differences)."""
    x = np.asarray(d, float)
    x = x[~np.isnan(x)]
    return paired_wilcoxon(x, np.zeros_like(x)).effect


def sign_flip_test(
    d: ArrayLike,
    *,
    seed: Seed,
    stages: Sequence[int] = (999, 9_999),
    alternative: Alternative = "two-sided",
    ci: float = 0.95,
    h0: str = "the differences are symmetric about 0",
) -> StatTestResult:
    """Monte-Carlo sign-flip permutation test of the mean of ``d`` (H0: ``d`` symmetric
    about 0): each draw multiplies every difference by an independent random sign.
    Effect: the mean, CI ``mean ± c`` with ``c`` the null's ``ci`` quantile of |mean| (the
    inverted test: it excludes 0 exactly when the two-sided test rejects at 1 − ci)."""
    x = np.asarray(d, float)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0 or not np.any(x != 0):
        nan = math.nan
        return StatTestResult(
            nan,
            nan,
            nan,
            n,
            "sign-flip permutation",
            "mean",
            "mean",
            alternative,
            reason="no non-zero difference",
        )

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        means: np.ndarray = signs @ x / n
        return means

    mc = adaptive_mc_pvalue(
        draw, float(x.mean()), stages=stages, alternative=alternative, seed=seed
    )
    c = float(np.quantile(np.abs(mc.null), ci))
    res = mc.result(
        float(x.mean()),
        test="sign-flip permutation of the mean",
        effect_name="mean",
        h0=h0,
        null_name="sign_flip",
        ci=(float(x.mean()) - c, float(x.mean()) + c),
        n=n,
    )
    return replace(res, null_value=0.0)  # symmetric null: its centre is 0 exactly


def within_block_permutation(
    values: ArrayLike,
    groups: ArrayLike,
    blocks: ArrayLike,
    *,
    seed: Seed,
    stages: Sequence[int] = (999, 9_999),
    ci: float = 0.95,
    h0: str = "within each block the group labels are exchangeable",
) -> StatTestResult:
    """Permutation test of "the groups' means differ" respecting blocks (see the module
    docstring). Inputs: ``values``, ``groups`` (group label of each value), ``blocks``
    (block of each value; one block for all = an ordinary permutation test); NaN values
    dropped, and values alone in their block. Statistic: range (max − min) of the groups'
    mean block-centred values, one-sided ("greater"). Output's ``n``: the values used;
    the test name says how many blocks hold ≥ 2 groups."""
    v = np.asarray(values, float)
    ok = ~np.isnan(v)
    _, b_codes = np.unique(np.asarray(blocks)[ok].astype(str), return_inverse=True)
    size = np.bincount(b_codes)
    keep = size[b_codes] > 1
    ok[ok] = keep
    v = v[ok]
    _, g_codes = np.unique(np.asarray(groups)[ok].astype(str), return_inverse=True)
    _, b_codes = np.unique(np.asarray(blocks)[ok].astype(str), return_inverse=True)
    if v.size:  # centre on the block means: a block's own level cancels
        v = v - (np.bincount(b_codes, weights=v) / np.bincount(b_codes))[b_codes]
    k = int(g_codes.max()) + 1 if g_codes.size else 0
    counts = np.bincount(g_codes, minlength=k).astype(float) if k else np.zeros(0)
    nan = math.nan
    informative = (
        sum(len(np.unique(g_codes[b_codes == b])) > 1 for b in np.unique(b_codes)) if v.size else 0
    )
    test = (
        f"within-block permutation of group labels, block-centred ({informative} blocks "
        "with ≥ 2 groups)"
    )
    if k < 2 or informative == 0:
        why = "no block holds two groups" if informative == 0 else "fewer than two groups"
        return StatTestResult(
            nan,
            nan,
            nan,
            int(v.size),
            test,
            "range of group means",
            "range of group means",
            "greater",
            reason=why,
        )

    def stat(codes: np.ndarray) -> np.ndarray:
        """Range of group means per row of ``codes`` (draws × values)."""
        b = codes.shape[0]
        flat = codes + k * np.arange(b)[:, None]
        sums = np.bincount(flat.ravel(), weights=np.tile(v, b), minlength=b * k)
        means = sums.reshape(b, k) / counts
        spread: np.ndarray = means.max(axis=1) - means.min(axis=1)
        return spread

    observed = float(stat(g_codes[None, :])[0])

    def draw(n_draws: int, rng: np.random.Generator) -> np.ndarray:
        out = []
        for start in range(0, n_draws, 2000):  # bounded memory
            perm = permute_within_classes(b_codes, min(2000, n_draws - start), rng)
            out.append(stat(g_codes[perm]))
        return np.concatenate(out)

    mc = adaptive_mc_pvalue(draw, observed, stages=stages, alternative="greater", seed=seed)
    c = float(np.quantile(mc.null, ci))
    return mc.result(
        observed,
        test=test,
        h0=h0,
        null_name="within_block_permutation",
        effect_name="range of group means (block-centred)",
        ci=(max(0.0, observed - c), observed + c),
        n=int(v.size),
    )
