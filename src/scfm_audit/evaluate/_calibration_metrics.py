"""Calibration kernels: are scores, mapped to probabilities, honest probabilities?

Units: rows are (perturbation, candidate) pairs; perturbations are the independent units
(rows of one perturbation share its cells and its regulator), so every split and every
variance here is by perturbation.

* :func:`perturbation_splits` — three disjoint sets of perturbations (scikit-learn's
  ``GroupShuffleSplit`` twice): ``fit`` (the probability maps are fitted here),
  ``calibrate`` (the split-conformal threshold) and ``test`` (everything reported).
* :func:`fit_maps` — Platt (logistic regression on the score) and isotonic
  (``IsotonicRegression``, clipped) maps from score to P(responder).
* :func:`reliability_table`, :func:`expected_calibration_error` — equal-width bins.
* :func:`brier_decomposition` — Brier score (scikit-learn) and Murphy's binned
  decomposition reliability − resolution + uncertainty.
* :func:`spiegelhalter_test` — H0: perfect calibration (E[y | p] = p). Per row two
  terms with mean 0 under H0 whatever the dependence among rows: ``y − p`` (calibration
  in the large) and Spiegelhalter's ``(y − p)(1 − 2p)``, summed per perturbation
  (``S_g``, independent across perturbations); Hotelling's T² of their mean over the G
  test perturbations, ``T² (G − 2) / (2 (G − 1)) ~ F(2, G − 2)``. Spiegelhalter's term
  alone is blind where p ≈ 0.5 (its weight vanishes) and its uncentred sandwich
  ``Σ S / √(Σ S²)`` is bounded by √G; the pair and the centred covariance are not. The
  map was fitted on other perturbations, so its own estimation error is added to the
  covariance (``map_cov``: covariance of the mean sums over maps refitted on
  perturbation-bootstrap resamples of the fit split): the H0 tested is that the
  map-fitting procedure's population map is calibrated on new perturbations, not that
  one finite-sample fit is exact. One-sided on T² ("greater"): large = miscalibration.
* :func:`conformal_sets` — split-conformal classification sets (nonconformity
  ``1 − p̂(true class)``), their empirical coverage and a binomial test against the
  nominal level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from scfm_audit.stats._tests import StatTestResult

#: a fitted calibration map: scores → P(responder)
CalibrationMap = Callable[[ArrayLike], NDArray[np.float64]]


class BrierDecomposition(TypedDict):
    brier: float
    reliability: float
    resolution: float
    uncertainty: float


class ConformalSets(TypedDict):
    threshold: float
    coverage: float
    n_test: int
    n_covered: int
    mean_set_size: float
    empty: float
    both: float
    p_binomial: float


__all__ = [
    "brier_decomposition",
    "conformal_sets",
    "expected_calibration_error",
    "fit_maps",
    "perturbation_splits",
    "reliability_table",
    "spiegelhalter_terms",
    "spiegelhalter_test",
]

SPIEGELHALTER_H0 = (
    "the mapped probabilities are perfectly calibrated on the test perturbations "
    "(E[responder | p] = p); rows of one perturbation may be dependent, perturbations "
    "independent"
)
EPS = 1e-3


def perturbation_splits(
    groups: np.ndarray, *, fractions: tuple[float, float, float] = (0.4, 0.3, 0.3), seed: int
) -> dict[str, np.ndarray]:
    """Boolean row masks ``fit``, ``calibrate``, ``test`` whose perturbations (``groups``)
    are disjoint; ``fractions`` of the perturbations (each split at least one)."""
    from sklearn.model_selection import GroupShuffleSplit

    groups = np.asarray(groups)
    n_g = len(np.unique(groups))
    _f_fit, f_cal, f_test = (x / sum(fractions) for x in fractions)
    n_test = max(1, round(f_test * n_g))
    rest, test = next(
        GroupShuffleSplit(1, test_size=n_test, random_state=seed).split(groups, groups=groups)
    )
    n_cal = max(1, round(f_cal * n_g))
    g_rest = groups[rest]
    a, b = next(
        GroupShuffleSplit(1, test_size=n_cal, random_state=seed + 1).split(g_rest, groups=g_rest)
    )
    out = {k: np.zeros(len(groups), bool) for k in ("fit", "calibrate", "test")}
    out["fit"][rest[a]] = True
    out["calibrate"][rest[b]] = True
    out["test"][test] = True
    return out


def fit_maps(score: np.ndarray, y: np.ndarray) -> dict[str, CalibrationMap]:
    """``{"platt": f, "isotonic": f}``: functions score → P(responder) fitted on
    (``score``, ``y``); outputs clipped to [0.001, 0.999]. Platt: unpenalised logistic
    regression of ``y`` on the score (statsmodels' ``Logit``, Newton; scikit-learn's
    ``LogisticRegression`` gives the same fit but took ~0.15 s per fit on the shared
    CPUs, too slow for the bootstrap refits); isotonic: scikit-learn's
    ``IsotonicRegression`` (increasing, clipped outside the fitted range)."""
    import warnings

    import statsmodels.api as sm
    from scipy.special import expit
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(score, float)
    y = np.asarray(y, int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            beta = (
                sm.Logit(y, sm.add_constant(s, has_constant="add"))
                .fit(disp=0, method="newton", maxiter=50)
                .params
            )
        except Exception:  # perfect separation: fall back to the base rate
            beta = np.array([np.log(y.mean() / (1 - y.mean())), 0.0])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)

    def _platt(x: ArrayLike) -> NDArray[np.float64]:
        p: NDArray[np.float64] = np.clip(
            expit(beta[0] + beta[1] * np.asarray(x, float)), EPS, 1 - EPS
        )
        return p

    def _iso(x: ArrayLike) -> NDArray[np.float64]:
        p: NDArray[np.float64] = np.clip(iso.predict(np.asarray(x, float)), EPS, 1 - EPS)
        return p

    return {"platt": _platt, "isotonic": _iso}


def reliability_table(prob: np.ndarray, y: np.ndarray, *, bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of [0, 1]: ``bin, lower, upper, n, bin_mean`` (mean predicted),
    ``observed`` (responder rate); empty bins have n 0 and NaN means."""
    prob, y = np.asarray(prob, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        pm = np.bincount(idx, weights=prob, minlength=bins) / n
        ob = np.bincount(idx, weights=y, minlength=bins) / n
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "n": n,
            "bin_mean": pm,
            "observed": ob,
        }
    )


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, *, bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N) |observed_b − mean predicted_b| over ``bins`` equal-width bins."""
    t = reliability_table(prob, y, bins=bins)
    t = t[t["n"] > 0]
    return float((t["n"] * (t["observed"] - t["bin_mean"]).abs()).sum() / t["n"].sum())


def brier_decomposition(prob: np.ndarray, y: np.ndarray, *, bins: int = 10) -> BrierDecomposition:
    """Brier score (scikit-learn's ``brier_score_loss``) and Murphy's decomposition over
    ``bins`` equal-width bins: ``reliability`` (Σ n_b (p̄_b − ō_b)² / N, 0 = calibrated),
    ``resolution`` (Σ n_b (ō_b − ō)² / N), ``uncertainty`` (ō (1 − ō)); the binned
    identity Brier ≈ reliability − resolution + uncertainty holds up to the within-bin
    spread of p."""
    from sklearn.metrics import brier_score_loss

    y = np.asarray(y, float)
    t = reliability_table(prob, y, bins=bins)
    t = t[t["n"] > 0]
    N = t["n"].sum()
    o = float(y.mean())
    return {
        "brier": float(brier_score_loss(y, prob)),
        "reliability": float((t["n"] * (t["bin_mean"] - t["observed"]) ** 2).sum() / N),
        "resolution": float((t["n"] * (t["observed"] - o) ** 2).sum() / N),
        "uncertainty": o * (1 - o),
    }


def spiegelhalter_terms(prob: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per perturbation (order of first appearance of ``groups``), the two sums
    ``Σ_{i∈g} (y_i − p_i)`` (calibration in the large, observed − expected) and
    ``Σ_{i∈g} (y_i − p_i)(1 − 2p_i)`` (Spiegelhalter's): shape ``(G, 2)``."""
    p, y = np.asarray(prob, float), np.asarray(y, float)
    g = pd.factorize(np.asarray(groups))[0]
    G = int(g.max()) + 1
    r = y - p
    return np.column_stack(
        [
            np.bincount(g, weights=r, minlength=G),
            np.bincount(g, weights=r * (1 - 2 * p), minlength=G),
        ]
    )


def spiegelhalter_test(
    prob: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    map_cov: np.ndarray | None = None,
    what: str = "",
) -> StatTestResult:
    """Calibration test clustered by perturbation (see the module docstring): Hotelling's
    T² of the per-perturbation sums of :func:`spiegelhalter_terms` (mean 0 under H0),
    covariance = their sample covariance / G (+ ``map_cov``, the map's own estimation
    covariance), ``T² (G − 2) / (2 (G − 1)) ~ F(2, G − 2)``. A typed
    :class:`~scfm_audit.stats._tests.StatTestResult` on T² (one-sided "greater", null
    centre 2, floor 0); ``n`` = test perturbations."""
    from scipy import stats

    from scfm_audit.stats._tests import StatTestResult

    S = spiegelhalter_terms(prob, y, groups) if len(np.asarray(y)) else np.zeros((0, 2))
    G = len(S)
    name = "calibration T² (observed − expected, Spiegelhalter) clustered by perturbation" + (
        f" ({what})" if what else ""
    )
    C = np.cov(S, rowvar=False) / G if G > 2 else np.zeros((2, 2))
    if map_cov is not None:
        C = C + np.asarray(map_cov, float)
    if G < 4 or not np.isfinite(C).all() or np.linalg.det(C) <= 0:
        nan = math.nan
        return StatTestResult(
            nan,
            nan,
            nan,
            G,
            name,
            "T²",
            "T²",
            "greater",
            null_value=2.0,
            h0=SPIEGELHALTER_H0,
            null_name="perfect calibration",
            reason=f"{G} test perturbations (< 4) or singular covariance",
        )
    m = S.mean(0)
    t2 = float(m @ np.linalg.solve(C, m))
    f = t2 * (G - 2) / (2 * (G - 1))
    pg = float(stats.f.sf(f, 2, G - 2))
    z = m / np.sqrt(np.diag(C))
    return StatTestResult(
        statistic=t2,
        p=pg,
        effect=t2,
        n=G,
        test=f"{name}; z(O−E) = {z[0]:+.2f}, z(Spiegelhalter) = {z[1]:+.2f} over {G} "
        f"perturbations, F(2, {G - 2}) reference",
        statistic_name="T²",
        effect_name="calibration T²",
        alternative="greater",
        p_greater=pg,
        p_less=float(stats.f.cdf(f, 2, G - 2)),
        null_value=2.0,
        p_floor=0.0,
        h0=SPIEGELHALTER_H0,
        null_name="perfect calibration (Hotelling over perturbation sums)",
    )


def conformal_sets(
    p_cal: np.ndarray,
    y_cal: np.ndarray,
    p_test: np.ndarray,
    y_test: np.ndarray,
    *,
    level: float = 0.9,
) -> ConformalSets:
    """Split-conformal prediction sets for the binary label: nonconformity
    ``s = 1 − p̂(true class)`` (p̂(1) = p, p̂(0) = 1 − p) on the calibration rows,
    threshold q = the ⌈(n + 1) level⌉-th smallest; a test row's set holds every class
    with nonconformity ≤ q. Returns ``threshold, coverage, n_test, n_covered,
    mean_set_size, empty, both`` and the binomial test (``p_binomial``, two-sided,
    against ``level``; rows treated as independent: descriptive)."""
    from scipy import stats

    s_cal = np.where(np.asarray(y_cal, bool), 1 - p_cal, p_cal)
    n = len(s_cal)
    k = math.ceil((n + 1) * level)
    q = float(np.sort(s_cal)[k - 1]) if k <= n else math.inf
    in1 = (1 - np.asarray(p_test)) <= q
    in0 = np.asarray(p_test) <= q
    yt = np.asarray(y_test, bool)
    covered = np.where(yt, in1, in0)
    m = len(yt)
    c = int(covered.sum())
    return {
        "threshold": q,
        "coverage": c / m if m else math.nan,
        "n_test": m,
        "n_covered": c,
        "mean_set_size": float((in0.astype(int) + in1).mean()) if m else math.nan,
        "empty": float((~in0 & ~in1).mean()) if m else math.nan,
        "both": float((in0 & in1).mean()) if m else math.nan,
        "p_binomial": float(stats.binomtest(c, m, level).pvalue) if m else math.nan,
    }
