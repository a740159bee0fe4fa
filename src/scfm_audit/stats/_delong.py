"""DeLong's test for correlated (paired) AUROCs, fast algorithm of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs computed on the
same labelled items from the structural components

- ``V10_i = (1/n0) Σ_j ψ(X_i, Y_j)`` for each positive ``i``,
- ``V01_j = (1/n1) Σ_i ψ(X_i, Y_j)`` for each negative ``j``,

with ``ψ(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise``:
``Cov(AUC) = S10 / n1 + S01 / n0`` where ``S10``, ``S01`` are the sample covariance matrices
(denominator ``n − 1``) of the components. Sun & Xu (2014) obtain the components from
mid-ranks in ``O(n log n)``: with ``T_z`` the mid-rank of an item among all items and
``T_x`` (``T_y``) its mid-rank among the positives (negatives),
``V10_i = (T_z,i − T_x,i) / n0`` and ``V01_j = 1 − (T_z,j − T_y,j) / n1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from scfm_audit.stats._metrics import NanPolicy, _midranks, _prepare

__all__ = ["DeLongResult", "delong_auroc_var", "delong_test"]


def _components(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs ``(k,)`` and structural components ``V10 (n1, k)``, ``V01 (n0, k)``."""
    n1 = int(y.sum())
    n0 = y.shape[0] - n1
    tz = _midranks(s)
    tx = _midranks(s[y])
    ty = _midranks(s[~y])
    v10 = (tz[y] - tx) / n0
    v01 = 1.0 - (tz[~y] - ty) / n1
    auc = (tz[y].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (float(n1) * float(n0))
    return auc, v10, v01


def delong_auroc_var(
    y: ArrayLike, scores: ArrayLike, *, nan_policy: NanPolicy = "lowest"
) -> float | np.ndarray:
    """DeLong estimate of the sampling (co)variance of AUROC(s).

    Inputs: ``y`` binary labels ``(n,)``; ``scores`` ``(n,)`` or ``(n, k)``;
    ``nan_policy`` as in :func:`scfm_audit.stats._metrics.auroc` (``"omit"`` drops rows
    with a NaN in any column).

    Output: the variance of the AUROC (float) for 1-D scores, or the ``(k, k)`` covariance
    matrix of the ``k`` AUROCs for 2-D scores. NaN when there are fewer than two positives
    or two negatives.
    """
    labels, s, is_1d = _prepare(y, scores, nan_policy, omit_2d=True)
    n1 = int(labels.sum())
    n0 = labels.shape[0] - n1
    k = s.shape[1]
    if n1 < 2 or n0 < 2:
        cov = np.full((k, k), np.nan)
    else:
        _, v10, v01 = _components(labels, s)
        cov = (
            np.atleast_2d(np.cov(v10, rowvar=False)) / n1
            + np.atleast_2d(np.cov(v01, rowvar=False)) / n0
        )
    return float(cov[0, 0]) if is_1d else cov


@dataclass(frozen=True)
class DeLongResult:
    """Result of :func:`delong_test`.

    ``auc_a``, ``auc_b``: the two AUROCs; ``delta = auc_a − auc_b``; ``se``: its DeLong
    standard error; ``z = delta / se``; ``p``: normal p-value for ``alternative``;
    ``ci_low``, ``ci_high``: the two-sided Wald interval ``delta ± Φ⁻¹((1 + ci)/2) · se``;
    ``n_pos``, ``n_neg``: class sizes used.
    """

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    alternative: str = "two-sided"
    ci: float = 0.95


def delong_test(
    y: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
    ci: float = 0.95,
    nan_policy: NanPolicy = "lowest",
) -> DeLongResult:
    """DeLong's test comparing two AUROCs computed on the same items (paired).

    H0: the two scores have equal AUROC for these labels, ``AUC_a = AUC_b``. The statistic
    ``z = (AUC_a − AUC_b) / se`` is asymptotically standard normal under H0, with
    ``se² = Var(V10_a − V10_b) / n1 + Var(V01_a − V01_b) / n0`` (the DeLong variance of the
    difference, which accounts for the correlation between the two AUROCs). Alternatives:
    "two-sided" (``AUC_a ≠ AUC_b``), "greater" (``AUC_a > AUC_b``), "less".

    Inputs: ``y`` binary labels ``(n,)``; ``score_a``, ``score_b`` ``(n,)`` each; ``ci``
    level of the interval for the difference; ``nan_policy`` as in
    :func:`scfm_audit.stats._metrics.auroc` (``"omit"`` drops the rows where either
    score is NaN, keeping the pairing).

    Output: :class:`DeLongResult`. NaN statistics when there are fewer than two positives
    or two negatives. When ``se = 0`` (degenerate structural components, e.g. identical
    scores), the normal approximation is undefined: ``z = 0, p = 1`` if the AUROCs are
    equal, otherwise ``z`` and ``p`` are NaN (use a permutation or bootstrap test).
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}."
        )
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}.")
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"score_a and score_b must be 1-D of equal length, got {a.shape} and {b.shape}."
        )
    labels, s, _ = _prepare(y, np.column_stack([a, b]), nan_policy, omit_2d=True)
    n1 = int(labels.sum())
    n0 = labels.shape[0] - n1
    nan = np.nan
    if n1 < 2 or n0 < 2:
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan, nan, n1, n0, alternative, ci)
    auc, v10, v01 = _components(labels, s)
    # variance of the difference from the differenced components (exactly 0 when equal)
    var = np.var(v10[:, 0] - v10[:, 1], ddof=1) / n1 + np.var(v01[:, 0] - v01[:, 1], ddof=1) / n0
    se = float(np.sqrt(var))
    delta = float(auc[0] - auc[1])
    if se > 0:
        z = delta / se
        if alternative == "two-sided":
            p = float(2.0 * norm.sf(abs(z)))
        elif alternative == "greater":
            p = float(norm.sf(z))
        else:
            p = float(norm.cdf(z))
    elif delta == 0:
        z, p = 0.0, 1.0
    else:
        z, p = nan, nan
    half = float(norm.ppf((1.0 + ci) / 2.0)) * se
    return DeLongResult(
        auc_a=float(auc[0]),
        auc_b=float(auc[1]),
        delta=delta,
        se=se,
        z=float(z),
        p=p,
        ci_low=delta - half,
        ci_high=delta + half,
        n_pos=n1,
        n_neg=n0,
        alternative=alternative,
        ci=ci,
    )
