"""Resampling inference: bootstrap confidence intervals and permutation tests.

Every function takes an explicit ``seed`` (an ``int``, a ``numpy.random.SeedSequence`` or a
``numpy.random.Generator``; ``None`` is refused so that every run is reproducible).

Empirical p-values use the +1 correction (Davison & Hinkley 1997; Phipson & Smyth 2010):
``p = (1 + #{null at least as extreme}) / (1 + n_valid)``, which is never 0 and gives a
valid (slightly conservative) test for any number of permutations. With ``n_perm``
permutations the smallest attainable p is ``1 / (1 + n_perm)``: choose ``n_perm`` large
enough for the multiple-testing family it will enter (with BH over ``m`` tests, a p must be
able to reach ``0.05 / m``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import ndtr, ndtri

from scfm_audit.stats._metrics import NanPolicy, _midranks, _prepare

Alternative = Literal["greater", "less", "two-sided"]
Seed = int | np.random.SeedSequence | np.random.Generator

# Bound on the number of index elements generated / gathered at once.
_CHUNK_ELEMENTS = 1 << 22
# Warn when more than this fraction of bootstrap draws gave NaN.
_SKIP_WARN_FRACTION = 0.10

__all__ = [
    "BootstrapResult",
    "PermutationResult",
    "bootstrap_ci",
    "empirical_p",
    "label_permutation_auroc",
    "permutation_test",
]


def _rng(seed: Seed) -> np.random.Generator:
    """A Generator from an explicit seed; ``None`` (and anything else) is refused."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(
        f"seed must be an int, SeedSequence or numpy Generator (got {seed!r}); an explicit "
        "seed is required so that results are reproducible."
    )


def _check_alternative(alternative: str) -> None:
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}."
        )


# ------------------------------------------------------------------------ empirical p


def empirical_p(
    observed: float | ArrayLike,
    null: ArrayLike,
    *,
    alternative: Alternative = "greater",
) -> float | np.ndarray:
    """Monte-Carlo p-value of ``observed`` against a sample ``null`` of the null distribution.

    Inputs: ``observed`` a scalar, or an array ``(k,)`` of statistics; ``null`` the null
    draws, ``(n,)`` or ``(n, k)`` (draws along axis 0); ``alternative``: "greater" (large
    values are evidence against H0), "less", or "two-sided".

    Output: ``p_greater = (1 + #{null >= observed}) / (1 + n_valid)``,
    ``p_less = (1 + #{null <= observed}) / (1 + n_valid)``, and
    ``p_two-sided = min(1, 2 · min(p_greater, p_less))`` (doubling the smaller tail, as
    ``scipy.stats.permutation_test`` does). Comparisons allow a relative tolerance of
    100 machine epsilons so that a null draw equal to the observed value up to rounding
    counts as "at least as extreme" (as in scipy). NaN null draws are ignored (``n_valid``
    counts the others); a NaN ``observed`` gives NaN.
    """
    _check_alternative(alternative)
    obs = np.asarray(observed, dtype=np.float64)
    nul = np.asarray(null, dtype=np.float64)
    if nul.ndim == 0 or nul.shape[0] == 0:
        raise ValueError("null must contain at least one draw (along axis 0).")
    if nul.shape[1:] != obs.shape:
        raise ValueError(
            f"null has shape {nul.shape}; expected (n_draws,) + observed.shape = "
            f"(n_draws,) + {obs.shape}."
        )
    gamma = np.where(np.isfinite(obs), np.abs(obs) * (100 * np.finfo(np.float64).eps), 0.0)
    valid = ~np.isnan(nul)
    n_valid = valid.sum(axis=0)
    with np.errstate(invalid="ignore"):
        p_greater = (1.0 + (nul >= obs - gamma).sum(axis=0)) / (1.0 + n_valid)
        p_less = (1.0 + (nul <= obs + gamma).sum(axis=0)) / (1.0 + n_valid)
    if alternative == "greater":
        p = p_greater
    elif alternative == "less":
        p = p_less
    else:
        p = np.minimum(1.0, 2.0 * np.minimum(p_greater, p_less))
    p = np.where(np.isnan(obs), np.nan, p)
    return float(p) if p.ndim == 0 else p


# ----------------------------------------------------------------------- permutation


@dataclass(frozen=True)
class PermutationResult:
    """Result of a permutation test.

    ``observed``: the statistic on the data (float, or array ``(k,)``); ``null``: the
    statistic under each permutation (``(n_perm,)`` or ``(n_perm, k)``; NaN draws kept as
    NaN); ``p``: the empirical p-value (see :func:`empirical_p`); ``alternative``;
    ``n_perm``: permutations drawn; ``n_skipped``: permutations whose statistic was NaN
    (excluded from the p-value).
    """

    observed: float | np.ndarray
    null: np.ndarray
    p: float | np.ndarray
    alternative: str
    n_perm: int
    n_skipped: int = 0

    @property
    def z(self) -> float | np.ndarray:
        """Standardised effect ``(observed − mean(null)) / sd(null)`` (NaN if sd is 0)."""
        mean = np.nanmean(self.null, axis=0)
        sd = np.nanstd(self.null, axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.asarray(self.observed) - mean) / np.where(sd > 0, sd, np.nan)
        return float(z) if np.ndim(z) == 0 else z


def label_permutation_auroc(
    y: ArrayLike,
    scores: ArrayLike,
    *,
    n_perm: int = 1000,
    seed: Seed,
    alternative: Alternative = "greater",
    nan_policy: NanPolicy = "lowest",
) -> PermutationResult:
    """Label-permutation test of an AUROC.

    H0: the labels are exchangeable with respect to the scores (the scores carry no
    information about which edges are positive), so every assignment of the ``n1``
    positive labels to the ``n`` edges is equally likely. Alternative "greater" (default):
    positives score higher than under H0 (AUROC above its null distribution, centred on
    0.5).

    Inputs: ``y`` binary labels ``(n,)``; ``scores`` ``(n,)`` or ``(n, k)``; ``n_perm``
    permutations; ``seed``; ``alternative``; ``nan_policy`` as in
    :func:`scfm_audit.stats._metrics.auroc`.

    Algorithm: the scores are ranked once (average ranks); a permutation is a uniformly
    random choice of which ``n1`` positions carry the positive labels (sampled on the
    smaller class and complemented); the permuted AUROC follows from the rank sum of
    those positions. With 2-D scores the same permutations are used for every column
    (so the null keeps the dependence between columns, e.g. for max-statistics). The
    p-value is computed on the exact rank-sum scale (half-integers, exact in float64) with
    the +1 correction of :func:`empirical_p`.

    Output: :class:`PermutationResult` with ``observed`` AUROC(s), ``null`` AUROCs
    ``(n_perm,)`` or ``(n_perm, k)``, and ``p``. If ``y`` has one class, everything is NaN.
    """
    _check_alternative(alternative)
    if isinstance(n_perm, bool) or not isinstance(n_perm, int | np.integer) or n_perm < 1:
        raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}.")
    rng = _rng(seed)
    labels, s, is_1d = _prepare(y, scores, nan_policy)
    n = labels.shape[0]
    k = s.shape[1]
    n1 = int(labels.sum())
    n0 = n - n1

    if n1 == 0 or n0 == 0:
        observed_sum = np.full(k, np.nan)
        null_sum = np.full((n_perm, k), np.nan)
    else:
        observed_sum, null_sum = _rank_sum_null(labels, s, n_perm=int(n_perm), rng=rng)
    p = np.atleast_1d(empirical_p(observed_sum, null_sum, alternative=alternative))
    offset = n1 * (n1 + 1) / 2.0
    denom = float(n1) * float(n0)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (observed_sum - offset) / denom
        null = (null_sum - offset) / denom
    n_skipped = int(n_perm) if (n1 == 0 or n0 == 0) else 0
    if is_1d:
        return PermutationResult(
            observed=float(observed[0]),
            null=null[:, 0],
            p=float(p[0]),
            alternative=alternative,
            n_perm=int(n_perm),
            n_skipped=n_skipped,
        )
    return PermutationResult(
        observed=observed,
        null=null,
        p=p,
        alternative=alternative,
        n_perm=int(n_perm),
        n_skipped=n_skipped,
    )


def _rank_sum_null(
    labels: np.ndarray, s: np.ndarray, *, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Observed positive rank sums ``(k,)`` and their label-permutation null ``(n_perm, k)``."""
    n = labels.shape[0]
    k = s.shape[1]
    n1 = int(labels.sum())
    n0 = n - n1
    ranks = _midranks(s)  # (n, k)
    observed_sum = ranks[labels].sum(axis=0)
    sample_pos = n1 <= n0
    m = n1 if sample_pos else n0
    total = n * (n + 1) / 2.0  # rank total of every column (ties keep it)
    null_sum = np.empty((n_perm, k), dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // (m * k))
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        idx = np.stack([rng.choice(n, size=m, replace=False) for _ in range(b)])
        sums = ranks[idx].sum(axis=1)  # (b, k)
        null_sum[start : start + b] = sums if sample_pos else total - sums
    return observed_sum, null_sum


def permutation_test(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_perm: int = 1000,
    seed: Seed,
    alternative: Alternative = "two-sided",
) -> PermutationResult:
    """Generic two-sample permutation test.

    H0: the observations of ``x`` and ``y`` are exchangeable (drawn from the same
    distribution), so every split of the pooled observations into groups of sizes
    ``len(x)`` and ``len(y)`` is equally likely. The alternative is about the direction of
    ``statistic(x, y)``: "greater" means larger than under H0.

    Inputs: ``statistic(x, y) -> float``; ``x`` ``(n_x, ...)`` and ``y`` ``(n_y, ...)``
    (observations along axis 0; trailing shapes must agree); ``n_perm``; ``seed``;
    ``alternative``.

    Output: :class:`PermutationResult` with the observed statistic, the ``n_perm`` null
    statistics, and the +1-corrected p (:func:`empirical_p`). Permutations whose statistic
    is NaN are counted in ``n_skipped`` and excluded. Random (not exhaustive) permutations
    are used even when the number of distinct splits is small.
    """
    _check_alternative(alternative)
    if isinstance(n_perm, bool) or not isinstance(n_perm, int | np.integer) or n_perm < 1:
        raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}.")
    rng = _rng(seed)
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.ndim == 0 or ya.ndim == 0 or xa.shape[1:] != ya.shape[1:]:
        raise ValueError(
            f"x and y must be arrays of observations along axis 0 with the same trailing "
            f"shape, got {xa.shape} and {ya.shape}."
        )
    pooled = np.concatenate([xa, ya], axis=0)
    nx = xa.shape[0]
    observed = float(statistic(xa, ya))
    null = np.empty(int(n_perm), dtype=np.float64)
    for i in range(int(n_perm)):
        perm = rng.permutation(pooled.shape[0])
        null[i] = float(statistic(pooled[perm[:nx]], pooled[perm[nx:]]))
    n_skipped = int(np.isnan(null).sum())
    return PermutationResult(
        observed=observed,
        null=null,
        p=empirical_p(observed, null, alternative=alternative),
        alternative=alternative,
        n_perm=int(n_perm),
        n_skipped=n_skipped,
    )


# ------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    """Result of :func:`bootstrap_ci`.

    ``estimate``: the statistic on the original data; ``ci_low``, ``ci_high``: the
    two-sided ``ci`` interval; ``se``: the standard deviation (ddof=1) of the valid
    bootstrap draws; ``n_boot``: draws requested; ``distribution``: the valid draws
    (``n_boot − n_skipped`` of them); ``n_skipped``: draws whose statistic was NaN
    (degenerate resample, e.g. one class only); ``ci``; ``method``; ``n_units``: resampling
    units (rows, or groups for a cluster bootstrap).
    """

    estimate: float
    ci_low: float
    ci_high: float
    se: float
    n_boot: int
    distribution: np.ndarray
    n_skipped: int = 0
    ci: float = 0.95
    method: str = "percentile"
    n_units: int = 0


class _Units:
    """Maps resampling units (rows, or groups of rows) to row indices."""

    def __init__(self, n: int, groups: ArrayLike | None) -> None:
        self.n = n
        if groups is None:
            self.count = n
            self._order = None
            return
        g = np.asarray(groups)
        if g.ndim != 1 or g.shape[0] != n:
            raise ValueError(f"groups must be 1-D with one label per row ({n}), got {g.shape}.")
        codes, uniques = pd.factorize(g, sort=True)
        if (codes < 0).any():
            raise ValueError("groups contain missing values (NaN/None); label every row.")
        self.count = len(uniques)
        self._order = np.argsort(codes, kind="stable")
        self._sizes = np.bincount(codes, minlength=self.count)
        self._starts = np.cumsum(self._sizes) - self._sizes

    def rows(self, units: np.ndarray) -> np.ndarray:
        """Row indices of the given units, concatenated in the given order."""
        if self._order is None:
            return units
        sizes = self._sizes[units]
        offsets = np.cumsum(sizes) - sizes
        pos = np.repeat(self._starts[units] - offsets, sizes) + np.arange(sizes.sum())
        rows: np.ndarray = self._order[pos]
        return rows

    def leave_one_out(self, unit: int) -> np.ndarray:
        """Row indices of everything except ``unit`` (original row order)."""
        if self._order is None:
            return np.delete(np.arange(self.n), unit)
        mask = np.ones(self.n, dtype=bool)
        start = self._starts[unit]
        mask[self._order[start : start + self._sizes[unit]]] = False
        return np.flatnonzero(mask)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: Seed,
    groups: ArrayLike | None = None,
    method: Literal["percentile", "bca"] = "percentile",
) -> BootstrapResult:
    """Bootstrap confidence interval of ``statistic(*arrays)``.

    Inputs: ``statistic(*resampled_arrays) -> float``; ``arrays`` one or more arrays with
    the same number of rows (axis 0), resampled together (paired); ``n_boot`` draws;
    ``ci`` the two-sided confidence level; ``seed``; ``groups`` optional group label per row
    for a cluster bootstrap (whole groups are drawn with replacement and their rows
    concatenated, e.g. perturbations, so that within-group dependence is kept); ``method``:

    - ``"percentile"``: the ``(1 − ci)/2`` and ``(1 + ci)/2`` quantiles of the draws
      (linear interpolation);
    - ``"bca"``: bias-corrected and accelerated (Efron & Tibshirani 1993, §14.3): bias
      ``z0 = Φ⁻¹(mid-rank proportion of draws below the estimate)``, acceleration from the
      jackknife (leave one unit out: one row, or one whole group with ``groups``),
      ``a = Σ d³ / (6 (Σ d²)^{3/2})`` with ``d = mean(θ_(·)) − θ_(i)``. This is the same
      computation as ``scipy.stats.bootstrap(method="BCa", paired=True)``. The jackknife
      costs one evaluation of the statistic per unit (rows or groups): with many rows,
      prefer ``groups`` or the percentile method.

    Indices are drawn as ``scipy.stats.bootstrap`` draws them
    (``rng.integers(0, n_units, (n_draws, n_units))``) in chunks of at most 2²² indices, so
    for ``n_boot · n_units ≤ 2²²`` the draws are identical to scipy's for the same Generator
    (the tests check the intervals against scipy this way).

    Draws whose statistic is NaN (a degenerate resample, e.g. only one class for an
    AUROC) are skipped and counted in ``n_skipped``; the interval is then conditional on a
    non-degenerate resample (a ``RuntimeWarning`` is issued when more than 10% are
    skipped). NaN jackknife values are likewise dropped.

    Output: :class:`BootstrapResult`. If the statistic on the original data is NaN, or no
    draw is valid, the estimate / interval are NaN. The BCa interval is NaN (with a
    warning) when it is undefined (all draws on one side of the estimate, or a jackknife
    without variation).
    """
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}.")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    if not arrays:
        raise ValueError("pass at least one data array.")
    arrs = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrs):
        raise ValueError("data arrays must have at least one dimension (rows on axis 0).")
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ValueError(
            f"all arrays must have the same number of rows, got {[a.shape[0] for a in arrs]}."
        )
    if n == 0:
        raise ValueError("cannot bootstrap empty data.")
    rng = _rng(seed)
    units = _Units(n, groups)
    n_boot = int(n_boot)

    def nan_result(dist: np.ndarray, skipped: int, estimate: float) -> BootstrapResult:
        return BootstrapResult(
            estimate=estimate,
            ci_low=np.nan,
            ci_high=np.nan,
            se=np.nan,
            n_boot=n_boot,
            distribution=dist,
            n_skipped=skipped,
            ci=ci,
            method=method,
            n_units=units.count,
        )

    estimate = float(statistic(*arrs))
    if np.isnan(estimate):
        return nan_result(np.empty(0), 0, estimate)

    draws = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // units.count))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, units.count, (b, units.count))
        for i in range(b):
            rows = units.rows(idx[i])
            draws[start + i] = float(statistic(*(a[rows] for a in arrs)))
    ok = ~np.isnan(draws)
    dist = draws[ok]
    skipped = n_boot - dist.shape[0]
    if skipped > _SKIP_WARN_FRACTION * n_boot:
        warnings.warn(
            f"bootstrap: {skipped} of {n_boot} draws gave NaN (degenerate resamples) and were "
            "skipped; the interval is conditional on non-degenerate resamples.",
            RuntimeWarning,
            stacklevel=2,
        )
    if dist.shape[0] == 0:
        return nan_result(dist, skipped, estimate)

    alpha = (1.0 - ci) / 2.0
    if method == "percentile":
        levels = np.array([alpha, 1.0 - alpha])
    else:
        levels = _bca_levels(statistic, arrs, units, dist, estimate, alpha)
    if np.isnan(levels).any():
        warnings.warn(
            "bootstrap: the BCa interval is undefined for these data (degenerate bootstrap "
            "or jackknife distribution); returning NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        ci_low = ci_high = np.nan
    else:
        ci_low, ci_high = np.quantile(dist, levels)
    se = float(np.std(dist, ddof=1)) if dist.shape[0] > 1 else np.nan
    return BootstrapResult(
        estimate=estimate,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        se=se,
        n_boot=n_boot,
        distribution=dist,
        n_skipped=skipped,
        ci=ci,
        method=method,
        n_units=units.count,
    )


def _bca_levels(
    statistic: Callable[..., float],
    arrs: list[np.ndarray],
    units: _Units,
    dist: np.ndarray,
    estimate: float,
    alpha: float,
) -> np.ndarray:
    """Quantile levels of the BCa interval (Efron & Tibshirani 1993, eq. 14.10, 14.15)."""
    prop = ((dist < estimate).sum() + (dist <= estimate).sum()) / (2.0 * dist.shape[0])
    z0 = ndtri(prop)
    jack = np.array(
        [float(statistic(*(a[units.leave_one_out(u)] for a in arrs))) for u in range(units.count)]
    )
    jack = jack[~np.isnan(jack)]
    if jack.shape[0] < 2 or not np.isfinite(z0):
        return np.array([np.nan, np.nan])
    d = jack.mean() - jack
    den = np.sum(d**2)
    if den == 0:
        return np.array([np.nan, np.nan])
    a_hat = np.sum(d**3) / (6.0 * den**1.5)
    z = ndtri(np.array([alpha, 1.0 - alpha]))
    num = z0 + z
    adjusted: np.ndarray = ndtr(z0 + num / (1.0 - a_hat * num))
    return adjusted
