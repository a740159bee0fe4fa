"""Thin, documented wrappers of the classical tests the framework uses.

Each test returns a :class:`StatTestResult` (statistic, p, effect with its name, n, and a CI
when one is defined), ready for the run's test registry via
:meth:`StatTestResult.registry_fields`. The computations are scipy's / statsmodels'; this
module fixes the conventions (which effect size, NaN handling, small-sample behaviour).

NaN handling: observations with a NaN are dropped (pairs for paired tests, rows for the
correlation tests) and ``n`` counts what was used. When a test cannot be computed (too few
observations, no variation) the result has NaN statistic and p instead of raising, so an
analysis over many strata keeps going; the registry keeps NaN p with NaN q.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from scfm_audit.stats._resampling import Seed, _rng

Alternative = Literal["two-sided", "greater", "less"]

__all__ = [
    "StatTestResult",
    "cohens_d",
    "fisher_exact",
    "mann_whitney",
    "paired_wilcoxon",
    "partial_spearman",
    "sign_test",
    "spearman_trend",
    "welch_t",
]


@dataclass(frozen=True)
class StatTestResult:
    """The typed result of one test: everything the claim path needs to answer with it.

    ``statistic`` (named ``statistic_name``), raw ``p`` for ``alternative`` and both
    one-sided tails ``p_greater`` / ``p_less`` of the same statistic (NaN where the test
    has none); ``effect`` on its natural scale (named ``effect_name``) with an optional CI
    and ``null_value``, the centre of the effect under H0 (0 for a difference or a
    correlation, 0.5 for a proportion under p0 = 0.5, the permutation null's mean for a
    Monte-Carlo test). ``p_floor``: the smallest p this test can give for these sample
    sizes (exact tests: the p of the most extreme data; Monte-Carlo: its staged floor,
    raised when the null has an atom at its extreme; 0 for a continuous test).
    ``null_scale``: spread of the effect under H0 where known (Monte-Carlo: the null's
    standard deviation), for null-standardised comparisons. ``h0`` the null hypothesis in
    words, ``null_name`` a short name of the null model, ``reason`` why a NaN p could not
    be computed. ``n`` the number of observations (pairs, cells, items) used.

    The tested side (:attr:`side`) is read from the tails, never from an estimate the
    test did not test (a signed-rank test's side is not the sign of the mean).
    """

    statistic: float
    p: float
    effect: float
    n: int
    test: str
    statistic_name: str
    effect_name: str
    alternative: str
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_greater: float = math.nan
    p_less: float = math.nan
    null_value: float = 0.0
    p_floor: float = 0.0
    null_scale: float = math.nan
    h0: str = ""
    null_name: str = ""
    reason: str = ""

    @property
    def side(self) -> str:
        """ "greater", "less" or "none": the side the tested statistic lies on, from its
        one-sided tails when both exist, else the effect against ``null_value``."""
        return tested_side(self.p_greater, self.p_less, self.effect, self.null_value)

    @property
    def standardised(self) -> float:
        """``(effect − null_value) / null_scale`` (the raw difference when no scale)."""
        d = self.effect - self.null_value
        scale = self.null_scale
        return d / scale if math.isfinite(scale) and scale > 0 else d

    def one_sided(self, direction: str) -> float:
        """The one-sided p for ``direction`` ("greater"/"less"): its tail when the test
        computed it; from a two-sided p, half of it on the tested side (1 − half
        otherwise)."""
        tail = self.p_greater if direction == "greater" else self.p_less
        if not math.isnan(tail):
            return tail
        if self.alternative == direction:
            return self.p
        if self.alternative == "two-sided" and not math.isnan(self.p):
            return self.p / 2 if self.side == direction else 1 - self.p / 2
        return math.nan

    def times(self, k: int, *, why: str = "") -> StatTestResult:
        """Bonferroni for a selection among ``k``: p, tails and floor × k (capped at 1)."""
        from dataclasses import replace

        def b(x: float) -> float:
            return x if math.isnan(x) else min(1.0, x * k)

        return replace(
            self,
            p=b(self.p),
            p_greater=b(self.p_greater),
            p_less=b(self.p_less),
            p_floor=b(self.p_floor),
            test=f"{self.test}; {why}" if why else self.test,
        )

    def registry_fields(self) -> dict[str, Any]:
        """The fields of a :class:`scfm_audit.stats._registry.TestRecord` this result fills."""
        return {
            "test": self.test,
            "statistic_name": self.statistic_name,
            "statistic": self.statistic,
            "effect_name": self.effect_name,
            "effect": self.effect,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "null_value": self.null_value,
            "p": self.p,
            "p_greater": self.p_greater,
            "p_less": self.p_less,
            "p_floor": self.p_floor,
            "null_scale": self.null_scale,
            "n": self.n,
            "direction": self.alternative,
            "null": self.h0,
            "null_name": self.null_name,
        }


def tested_side(p_greater: float, p_less: float, effect: float, null_value: float) -> str:
    """The side a test's statistic lies on: the smaller one-sided tail when both are
    known (they are of the statistic tested), else ``effect`` against ``null_value``."""
    if not (math.isnan(p_greater) or math.isnan(p_less)) and p_greater != p_less:
        return "greater" if p_greater < p_less else "less"
    if math.isnan(effect) or math.isnan(null_value) or effect == null_value:
        return "none"
    return "greater" if effect > null_value else "less"


def _tails_of(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[float, float]:
    """``fn(*args, alternative=...)``'s p for "greater" and "less" (scipy results)."""
    return (
        float(fn(*args, alternative="greater", **kw).pvalue),
        float(fn(*args, alternative="less", **kw).pvalue),
    )


def _floor(p_extreme: float, alternative: str) -> float:
    """The attainable p for ``alternative`` given the one-sided p of the most extreme
    data (doubled, capped at 1, for two-sided)."""
    return min(1.0, 2 * p_extreme) if alternative == "two-sided" else p_extreme


def _check_alternative(alternative: str) -> None:
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}."
        )


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}.")
    return a


def _finite(x: ArrayLike, name: str) -> np.ndarray:
    a = _vector(x, name)
    finite: np.ndarray = a[~np.isnan(a)]
    return finite


def _pairs(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {x.shape} and {y.shape}.")
    ok = ~(np.isnan(x) | np.isnan(y))
    return x[ok], y[ok]


# ------------------------------------------------------------------- paired / two-sample


def paired_wilcoxon(
    a: ArrayLike,
    b: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox",
) -> StatTestResult:
    """Wilcoxon signed-rank test on paired samples (e.g. per-perturbation AUROCs of two methods).

    H0: the paired differences ``d = a − b`` are symmetric about 0. Alternative "greater":
    ``a`` tends to exceed ``b``.

    Inputs: ``a``, ``b`` ``(n,)`` paired; pairs with a NaN are dropped; ``zero_method`` as in
    ``scipy.stats.wilcoxon`` ("wilcox": zero differences are discarded).

    Output: ``statistic`` = scipy's (two-sided: ``min(T+, T−)``; one-sided: ``T+``, the sum
    of the ranks of positive differences); ``p`` from scipy (exact for small samples without
    ties / zeros, else normal approximation); ``effect`` = matched-pairs rank-biserial
    correlation ``(T+ − T−) / (T+ + T−)`` over the non-zero differences (Kerby 2014), in
    [−1, 1]; ``n`` = pairs entering the test (non-zero differences for "wilcox").
    """
    _check_alternative(alternative)
    x, y = _pairs(a, b)
    d = x - y
    nz = d[d != 0]
    n_used = nz.size if zero_method == "wilcox" else d.size
    if nz.size == 0:
        return StatTestResult(
            math.nan,
            math.nan,
            math.nan,
            int(n_used),
            "wilcoxon_signed_rank",
            "T",
            "rank_biserial",
            alternative,
            p_floor=1.0,
            h0="paired differences symmetric about 0",
            reason="every paired difference is zero",
        )
    res = stats.wilcoxon(x, y, zero_method=zero_method, alternative=alternative)
    pg, pl = _tails_of(stats.wilcoxon, x, y, zero_method=zero_method)
    # the most extreme data of these sizes: every difference positive
    extreme = stats.wilcoxon(np.abs(d), zero_method=zero_method, alternative="greater")
    r = stats.rankdata(np.abs(nz))
    t_plus, t_minus = r[nz > 0].sum(), r[nz < 0].sum()
    return StatTestResult(
        statistic=float(res.statistic),
        p=float(res.pvalue),
        effect=float((t_plus - t_minus) / (t_plus + t_minus)),
        n=int(n_used),
        test="wilcoxon_signed_rank",
        statistic_name="T",
        effect_name="rank_biserial",
        alternative=alternative,
        p_greater=pg,
        p_less=pl,
        p_floor=_floor(float(extreme.pvalue), alternative),
        h0="paired differences symmetric about 0",
    )


def welch_t(
    a: ArrayLike,
    b: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    ci: float = 0.95,
) -> StatTestResult:
    """Welch's two-sample t-test (unequal variances).

    H0: ``mean(a) = mean(b)``. Alternative "greater": ``mean(a) > mean(b)``.

    Inputs: ``a`` ``(n_a,)``, ``b`` ``(n_b,)`` independent samples (NaNs dropped); ``ci``.

    Output: ``statistic`` = Welch t; ``p`` from the t distribution with Welch–Satterthwaite
    degrees of freedom; ``effect`` = ``mean(a) − mean(b)`` with its Welch CI (one-sided for
    a one-sided alternative, as scipy reports it); ``n = n_a + n_b``. NaN when a sample has
    fewer than two observations.
    """
    _check_alternative(alternative)
    x, y = _finite(a, "a"), _finite(b, "b")
    n = int(x.size + y.size)
    if x.size < 2 or y.size < 2:
        return StatTestResult(
            math.nan, math.nan, math.nan, n, "welch_t", "t", "mean_difference", alternative
        )
    res = stats.ttest_ind(x, y, equal_var=False, alternative=alternative)
    pg, pl = _tails_of(stats.ttest_ind, x, y, equal_var=False)
    interval = res.confidence_interval(confidence_level=ci)
    return StatTestResult(
        statistic=float(res.statistic),
        p=float(res.pvalue),
        effect=float(x.mean() - y.mean()),
        n=n,
        test="welch_t",
        statistic_name="t",
        effect_name="mean_difference",
        alternative=alternative,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        p_greater=pg,
        p_less=pl,
        h0="equal means",
    )


def mann_whitney(
    a: ArrayLike,
    b: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    method: Literal["auto", "asymptotic", "exact"] = "auto",
) -> StatTestResult:
    """Mann–Whitney U (Wilcoxon rank-sum) test.

    H0: ``a`` and ``b`` come from the same distribution (``P(A > B) = P(A < B)``).
    Alternative "greater": values of ``a`` tend to be larger.

    Inputs: ``a`` ``(n_a,)``, ``b`` ``(n_b,)`` (NaNs dropped); ``method`` as in
    ``scipy.stats.mannwhitneyu`` (exact for small samples without ties, else normal with
    tie and continuity corrections).

    Output: ``statistic`` = ``U_a`` (pairs with ``a > b`` plus half the ties);
    ``effect`` = rank-biserial correlation ``2 U_a / (n_a n_b) − 1`` in [−1, 1]
    (= 2·AUROC − 1 for ``a`` = positives' scores); ``n = n_a + n_b``.
    """
    _check_alternative(alternative)
    x, y = _finite(a, "a"), _finite(b, "b")
    n = int(x.size + y.size)
    if x.size == 0 or y.size == 0:
        return StatTestResult(
            math.nan, math.nan, math.nan, n, "mann_whitney_u", "U", "rank_biserial", alternative
        )
    res = stats.mannwhitneyu(x, y, alternative=alternative, method=method)
    pg, pl = _tails_of(stats.mannwhitneyu, x, y, method=method)
    # the most extreme data of these sizes: every value of a above every value of b
    extreme = stats.mannwhitneyu(
        np.arange(x.size) + y.size, np.arange(y.size), alternative="greater", method=method
    )
    u = float(res.statistic)
    return StatTestResult(
        statistic=u,
        p=float(res.pvalue),
        effect=2.0 * u / (x.size * y.size) - 1.0,
        n=n,
        test="mann_whitney_u",
        statistic_name="U",
        effect_name="rank_biserial",
        alternative=alternative,
        p_greater=pg,
        p_less=pl,
        p_floor=_floor(float(extreme.pvalue), alternative),
        h0="P(A > B) = P(A < B)",
    )


def sign_test(
    n_pos: int,
    n: int,
    *,
    p0: float = 0.5,
    alternative: Alternative = "two-sided",
    ci: float = 0.95,
) -> StatTestResult:
    """Sign (exact binomial) test.

    H0: each of the ``n`` trials is a success with probability ``p0`` (0.5: a positive and
    a negative sign are equally likely; ties should be removed beforehand). Alternative
    "greater": the success probability exceeds ``p0``.

    Inputs: ``n_pos`` successes (e.g. perturbations where method A beats method B) out of
    ``n``; ``p0``; ``ci``.

    Output: ``statistic = n_pos``; exact binomial ``p`` (``scipy.stats.binomtest``, two-sided
    by the method of small p-values); ``effect = n_pos / n`` with its Clopper–Pearson CI.
    NaN when ``n = 0``.
    """
    _check_alternative(alternative)
    if n < 0 or not 0 <= n_pos <= max(n, 0):
        raise ValueError(f"need 0 <= n_pos <= n, got n_pos={n_pos}, n={n}.")
    if n == 0:
        return StatTestResult(
            float(n_pos),
            math.nan,
            math.nan,
            0,
            "sign_test",
            "n_pos",
            "proportion",
            alternative,
            null_value=p0,
            reason="no trials",
        )
    res = stats.binomtest(int(n_pos), int(n), p=p0, alternative=alternative)
    pg = float(stats.binomtest(int(n_pos), int(n), p=p0, alternative="greater").pvalue)
    pl = float(stats.binomtest(int(n_pos), int(n), p=p0, alternative="less").pvalue)
    ends = [stats.binomtest(k, int(n), p=p0, alternative=alternative).pvalue for k in (0, n)]
    interval = res.proportion_ci(confidence_level=ci, method="exact")
    return StatTestResult(
        statistic=float(n_pos),
        p=float(res.pvalue),
        effect=n_pos / n,
        n=int(n),
        test="sign_test",
        statistic_name="n_pos",
        effect_name="proportion",
        alternative=alternative,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        p_greater=pg,
        p_less=pl,
        null_value=p0,
        p_floor=float(min(ends)),
        h0=f"success probability {p0}",
    )


def cohens_d(a: ArrayLike, b: ArrayLike, *, paired: bool = False) -> float:
    """Cohen's d (standardised mean difference; an effect size, not a test).

    Inputs: ``a``, ``b`` ``(n,)``; NaNs dropped (pairwise when ``paired``).

    Output: unpaired: ``(mean(a) − mean(b)) / s_pooled`` with
    ``s_pooled² = ((n_a − 1) s_a² + (n_b − 1) s_b²) / (n_a + n_b − 2)``; paired: ``d_z =
    mean(a − b) / sd(a − b)`` (ddof = 1). No small-sample (Hedges) correction. NaN with too
    few observations or zero spread and zero difference; ±inf with zero spread and a
    non-zero difference.
    """
    if paired:
        x, y = _pairs(a, b)
        d = x - y
        if d.size < 2:
            return math.nan
        mean, sd = d.mean(), d.std(ddof=1)
    else:
        x, y = _finite(a, "a"), _finite(b, "b")
        if x.size < 2 or y.size < 2:
            return math.nan
        mean = x.mean() - y.mean()
        pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (
            x.size + y.size - 2
        )
        sd = math.sqrt(pooled)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(mean) / np.float64(sd))


# ---------------------------------------------------------------------- associations


def spearman_trend(
    x: ArrayLike,
    y: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    n_perm: int | None = None,
    seed: Seed | None = None,
) -> StatTestResult:
    """Spearman rank correlation as a monotone-trend test (e.g. recovery across layers).

    H0: no monotone association between ``x`` and ``y`` (ρ = 0; for the permutation version,
    the pairing of ``x`` and ``y`` is exchangeable). Alternative "greater": increasing trend.

    Inputs: ``x``, ``y`` ``(n,)`` (pairs with a NaN dropped; ties get average ranks);
    ``n_perm`` optional: if given, the p-value is a permutation p over the pairings
    (``scipy.stats.permutation_test``, exact enumeration when ``n! <= n_perm``; requires
    ``seed``), otherwise scipy's t-distribution approximation, which is rough for small
    ``n`` (e.g. 12 layers).

    Output: ``statistic = effect = ρ``; ``p``; ``n`` pairs. NaN when ``n < 3`` or a variable
    is constant.
    """
    _check_alternative(alternative)
    xv, yv = _pairs(x, y)
    n = int(xv.size)
    if n < 3 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return StatTestResult(
            math.nan, math.nan, math.nan, n, "spearman", "rho", "rho", alternative
        )
    res = stats.spearmanr(xv, yv, alternative=alternative)
    rho, p = float(res.statistic), float(res.pvalue)
    pg, pl = _tails_of(stats.spearmanr, xv, yv)
    p_floor = 0.0
    if n_perm is not None:
        if seed is None:
            raise ValueError("spearman_trend with n_perm needs an explicit seed.")
        ry = stats.rankdata(yv)

        def rho_of(xs: np.ndarray) -> float:
            return float(stats.pearsonr(stats.rankdata(xs), ry).statistic)

        def perm_p(alt: str) -> float:
            return float(
                stats.permutation_test(
                    (xv,),
                    rho_of,
                    permutation_type="pairings",
                    n_resamples=int(n_perm),
                    alternative=alt,
                    vectorized=False,
                    rng=_rng(seed),
                ).pvalue
            )

        p, pg, pl = perm_p(alternative), perm_p("greater"), perm_p("less")
        # exact enumeration: 1/n! (ties raise it); Monte-Carlo: 1/(B+1)
        n_orders = math.factorial(n) if n <= 20 else math.inf
        one = 1 / n_orders if n_orders <= n_perm else 1 / (n_perm + 1)
        p_floor = _floor(one, alternative)
    return StatTestResult(
        statistic=rho,
        p=p,
        effect=rho,
        n=n,
        test="spearman" if n_perm is None else "spearman_permutation",
        statistic_name="rho",
        effect_name="rho",
        alternative=alternative,
        p_greater=pg,
        p_less=pl,
        p_floor=p_floor,
        h0="no monotone association (rho = 0)",
    )


def partial_spearman(
    x: ArrayLike,
    y: ArrayLike,
    covariates: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
) -> StatTestResult:
    """Partial Spearman correlation of ``x`` and ``y`` given ``covariates``.

    H0: ``x`` and ``y`` are not associated once the (rank-linear) effect of the covariates
    is removed (partial ρ = 0). Alternative "greater": positive partial association.

    Method: ``x``, ``y`` and every covariate are rank-transformed (average ranks); the
    ranked ``x`` and ``y`` are residualised on an intercept and the ranked covariates by
    least squares; the partial correlation ``r`` is the Pearson correlation of the
    residuals. ``t = r · sqrt(df / (1 − r²))`` with ``df = n − 2 − c`` (``c`` covariates),
    referred to Student's t: the same t as the coefficient of ranked ``x`` in the OLS
    regression of ranked ``y`` on ranked ``x`` and covariates (exact for Pearson partial
    correlation under normality; an approximation on ranks, like Spearman's own test).

    Inputs: ``x``, ``y`` ``(n,)``; ``covariates`` ``(n,)`` or ``(n, c)``; rows with a NaN
    anywhere are dropped.

    Output: ``statistic = t``; ``effect = r``; ``p``; ``n`` rows used. NaN when
    ``df < 1`` or a residual has no variance.
    """
    _check_alternative(alternative)
    xv, yv = _vector(x, "x"), _vector(y, "y")
    z = np.asarray(covariates, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] != xv.shape[0] or yv.shape != xv.shape:
        raise ValueError(
            f"x {xv.shape}, y {yv.shape} and covariates {z.shape} must have the same rows."
        )
    ok = ~(np.isnan(xv) | np.isnan(yv) | np.isnan(z).any(axis=1))
    xv, yv, z = xv[ok], yv[ok], z[ok]
    n, c = xv.size, z.shape[1]
    df = n - 2 - c
    nan_result = StatTestResult(
        math.nan, math.nan, math.nan, int(n), "partial_spearman", "t", "partial_rho", alternative
    )
    if df < 1:
        return nan_result
    design = np.column_stack([np.ones(n), stats.rankdata(z, axis=0)])
    ranked = np.column_stack([stats.rankdata(xv), stats.rankdata(yv)])
    coef, *_ = np.linalg.lstsq(design, ranked, rcond=None)
    res = ranked - design @ coef
    scale = np.linalg.norm(ranked - ranked.mean(axis=0), axis=0)
    sx, sy = np.linalg.norm(res, axis=0)
    if not (sx > 1e-10 * scale[0] and sy > 1e-10 * scale[1]):
        return nan_result  # x or y is (rank-)collinear with the covariates
    r = float(np.clip(res[:, 0] @ res[:, 1] / (sx * sy), -1.0, 1.0))
    t = math.copysign(math.inf, r) if abs(r) == 1.0 else r * math.sqrt(df / (1.0 - r * r))
    dist = stats.t(df)
    pg, pl = float(dist.sf(t)), float(dist.cdf(t))
    p = {"two-sided": min(1.0, float(2.0 * dist.sf(abs(t)))), "greater": pg, "less": pl}[
        alternative
    ]
    return StatTestResult(
        statistic=float(t),
        p=p,
        effect=r,
        n=int(n),
        test="partial_spearman",
        statistic_name="t",
        effect_name="partial_rho",
        alternative=alternative,
        p_greater=pg,
        p_less=pl,
        h0="no partial association given the covariates",
    )


def fisher_exact(
    table: ArrayLike,
    *,
    alternative: Alternative = "two-sided",
    ci: float = 0.95,
) -> StatTestResult:
    """Fisher's exact test of a 2×2 table.

    H0: rows and columns are independent (odds ratio 1), conditional on the margins.
    Alternative "greater": odds ratio > 1 (``table[0, 0]`` over-represented).

    Inputs: ``table`` 2×2 counts ``[[a, b], [c, d]]`` (e.g. rows: in reference / not,
    columns: top-k / not); ``ci``.

    Output: ``statistic`` = sample odds ratio ``a·d / (b·c)`` (scipy's statistic; may be 0
    or inf); ``p`` exact (``scipy.stats.fisher_exact``); ``effect`` = conditional maximum
    likelihood odds ratio with its exact CI (``scipy.stats.contingency.odds_ratio``,
    kind "conditional", the estimate consistent with Fisher's test); ``n`` = total count.
    """
    _check_alternative(alternative)
    tab = np.asarray(table)
    if tab.shape != (2, 2):
        raise ValueError(f"table must be 2×2, got shape {tab.shape}.")
    if (tab < 0).any() or not np.all(np.equal(np.mod(tab, 1), 0)):
        raise ValueError("table must hold non-negative integer counts.")
    tab = tab.astype(np.int64)
    res = stats.fisher_exact(tab, alternative=alternative)
    pg = float(stats.fisher_exact(tab, alternative="greater").pvalue)
    pl = float(stats.fisher_exact(tab, alternative="less").pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        orr = stats.contingency.odds_ratio(tab, kind="conditional")
        interval = orr.confidence_interval(confidence_level=ci, alternative=alternative)
    return StatTestResult(
        statistic=float(res.statistic),
        p=float(res.pvalue),
        effect=float(orr.statistic),
        n=int(tab.sum()),
        test="fisher_exact",
        statistic_name="sample_odds_ratio",
        effect_name="conditional_odds_ratio",
        alternative=alternative,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        p_greater=pg,
        p_less=pl,
        null_value=1.0,
        h0="independence (odds ratio 1) given the margins",
    )
