"""Kernels for comparing edge scores on the candidate pairs of a reference beyond what
gene-level statistics and co-expression explain.

* :func:`pair_covariates` — gene-level covariates of every candidate pair (the source's and
  the target's mean, variance and detection; undirected pairs: the smaller and the larger
  value of each statistic, so the covariates do not depend on the arbitrary pair order).
* :func:`residualise` — rank-normal scores residualised on covariates by OLS or by
  cross-fitted gradient boosting, with folds grouped by source gene (the fitted value of a
  pair never uses a pair of its own source gene).
* :func:`paired_vertex_bootstrap` — AUROCs of several scores under the same two-way
  (vertex) bootstrap draws (genes resampled on both sides of every pair), so differences
  are paired and the dependence among pairs sharing a gene is resampled.
* :func:`matched_negatives` — expression-matched negatives: for every positive pair, up to
  ``max_per_positive`` negative candidate pairs whose source and target each match the
  positive's source and target on mean and detection within a relative tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from scfm_audit.evaluate._recovery import (
    CandidatePairs,
    _SortedScores,
    gene_roles,
    nan_lowest_ranks,
)

#: Gene statistics used as covariates and for matching (columns of ``gene_statistics``).
COVARIATE_STATS = ("mean", "variance", "detection")


def pair_covariates(
    stats: pd.DataFrame, pairs: CandidatePairs, *, columns: Sequence[str] = COVARIATE_STATS
) -> np.ndarray:
    """Gene-level covariates of the candidate pairs, ``(len(pairs), 2 · len(columns))``.

    Directed pairs: the source's statistics then the target's. Undirected pairs: the
    per-statistic minimum and maximum over the two genes. ``stats`` is indexed by gene and
    must cover ``pairs.genes``.
    """
    v = stats.reindex(pairs.genes)[list(columns)].to_numpy(float)
    if np.isnan(v).any():
        raise ValueError("gene statistics are missing for some scored genes")
    a, b = v[pairs.source], v[pairs.target]
    if pairs.directed:
        return np.hstack([a, b])
    return np.hstack([np.minimum(a, b), np.maximum(a, b)])


def rank_normal(s: np.ndarray) -> np.ndarray:
    """Rank-normal (van der Waerden) scores; NaN ranks lowest."""
    z: np.ndarray = norm.ppf((nan_lowest_ranks(s) - 0.5) / len(s))
    return z


def residualise(
    scores: np.ndarray,
    X: np.ndarray,
    *,
    method: str = "gbm",
    groups: np.ndarray | None = None,
    n_splits: int = 5,
    seed: int = 0,
    max_iter: int = 100,
) -> np.ndarray:
    """Residuals of rank-normal ``scores`` after regression on covariates ``X``.

    ``method="ols"``: least squares on an intercept and ``X`` (in-sample; a linear fit has
    too few parameters to absorb pair-level signal). ``method="gbm"``: scikit-learn's
    ``HistGradientBoostingRegressor`` cross-fitted over ``GroupKFold(n_splits)`` folds of
    ``groups`` (the source gene of each pair): the fitted value of a pair comes from a model
    that saw no pair of its group, so a pair's own (or its source's) score cannot be
    absorbed into its fit. Output ``(n,)`` residuals (rank-normal score − fit).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import GroupKFold
    from threadpoolctl import threadpool_limits

    z = rank_normal(np.asarray(scores, float))
    X = np.asarray(X, float)
    if method == "ols":
        A = np.column_stack([np.ones(len(z)), X])
        beta, *_ = np.linalg.lstsq(A, z, rcond=None)
        resid: np.ndarray = z - A @ beta
        return resid
    if method != "gbm":
        raise ValueError(f"method must be 'ols' or 'gbm', got {method!r}")
    groups = np.arange(len(z)) if groups is None else np.asarray(groups)
    k = min(n_splits, len(np.unique(groups)))
    if k < 2:
        raise ValueError("cross-fitting needs at least two groups (source genes)")
    fit = np.empty_like(z)
    # one OpenMP thread: on shared CPUs the default thread pool is ~10x slower (spin-waits)
    with threadpool_limits(1, user_api="openmp"):
        for train, test in GroupKFold(n_splits=k).split(X, z, groups):
            m = HistGradientBoostingRegressor(max_iter=max_iter, random_state=seed)
            fit[test] = m.fit(X[train], z[train]).predict(X[test])
    resid = z - fit
    return resid


def paired_vertex_bootstrap(
    scores: dict[str, np.ndarray],
    pairs: CandidatePairs,
    *,
    rows: np.ndarray | None = None,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """AUROC of every score in ``scores`` under the same two-way vertex bootstrap draws.

    Each draw gives every gene a multiplicity (multinomial within its role, as
    :func:`~scfm_audit.evaluate._recovery.vertex_bootstrap_auroc`) and each evaluated pair
    the weight ``w_source · w_target``. ``rows`` (optional, repeats allowed) selects the
    evaluated pairs, e.g. positives with their matched negatives; each score vector is
    given on those rows. Output: DataFrame ``(n_boot, len(scores))`` of AUROCs (NaN where
    a draw has no positive or no negative).
    """
    rows = np.arange(len(pairs)) if rows is None else np.asarray(rows)
    src, tgt, lab = pairs.source[rows], pairs.target[rows], pairs.label[rows]
    role = gene_roles(pairs, match="role")
    n = len(pairs.genes)
    strata = [np.flatnonzero(role == r) for r in np.unique(role)]
    rng = np.random.default_rng(seed)
    sorted_ = {k: _SortedScores(np.asarray(v, float), lab) for k, v in scores.items()}
    out = {k: np.empty(n_boot) for k in scores}
    batch = max(1, (1 << 21) // max(len(rows), 1))
    for a in range(0, n_boot, batch):
        b = min(batch, n_boot - a)
        w = np.zeros((b, n))
        for idx in strata:
            w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=b)
        W = np.take(w, src, axis=1) * np.take(w, tgt, axis=1)
        for k, srt in sorted_.items():
            out[k][a : a + b] = srt.weighted_auroc(np.take(W, srt.order, axis=1), counts=True)
    return pd.DataFrame(out)


def bootstrap_p(draws: np.ndarray, null_value: float = 0.0) -> tuple[float, float]:
    """Two-sided p-value by inverting percentile bootstrap intervals: the smallest α for
    which the (1 − α) percentile interval excludes ``null_value``,
    ``min(1, 2 · min((1 + #{d ≤ v}), (1 + #{d ≥ v})) / (B + 1))``; and its floor
    ``2 / (B + 1)``. H0: the estimand equals ``null_value``."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    lo = (1 + np.sum(d <= null_value)) / (len(d) + 1)
    hi = (1 + np.sum(d >= null_value)) / (len(d) + 1)
    return float(min(1.0, 2 * min(lo, hi))), float(min(1.0, 2 / (len(d) + 1)))


def bootstrap_tails(draws: np.ndarray, null_value: float = 0.0) -> tuple[float, float, float]:
    """One-sided bootstrap p-values by test inversion: ``p_greater`` (H1: estimand >
    ``null_value``) ``= (1 + #{d ≤ v}) / (B + 1)``, ``p_less`` ``= (1 + #{d ≥ v}) / (B + 1)``,
    and their floor ``1 / (B + 1)``; NaN without finite draws. :func:`bootstrap_p` is
    twice the smaller."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    b = len(d) + 1
    return (1 + np.sum(d <= null_value)) / b, (1 + np.sum(d >= null_value)) / b, 1 / b


@dataclass
class MatchedNegatives:
    """Rows of the matched evaluation set (indices into the candidate pairs, positives
    first, negatives may repeat across positives), and the matching counts."""

    rows: np.ndarray
    n_positives: int
    n_matched: int  # positives with at least one matched negative
    n_negatives: int  # negative rows (with repeats)
    tolerance: float
    max_per_positive: int


def matched_negatives(
    pairs: CandidatePairs,
    stats: pd.DataFrame,
    *,
    tolerance: float = 0.2,
    max_per_positive: int = 50,
    seed: int,
) -> MatchedNegatives:
    """Expression-matched negatives for every positive candidate pair.

    A negative candidate pair ``(s', t')`` matches the positive ``(s, t)`` when ``s'`` is
    a candidate source (directed; a reference gene when undirected) whose ``mean`` and
    ``detection`` are each within ``tolerance`` (relative: ``|x' − x| ≤ tolerance · |x|``)
    of ``s``'s, and ``t'`` likewise matches ``t`` (undirected pairs match in either
    orientation). ``s' = s`` is allowed: the same TF's non-targets of matched expression
    are the most natural negatives. Up to ``max_per_positive`` matches are drawn without
    replacement (seeded); positives without any match are dropped. ``stats`` is indexed by
    gene (columns ``mean``, ``detection``).
    """
    v = stats.reindex(pairs.genes)[["mean", "detection"]].to_numpy(float)
    n = len(pairs.genes)
    idx = np.full((n, n), -1, dtype=np.int64)
    idx[pairs.source, pairs.target] = np.arange(len(pairs))
    if not pairs.directed:
        idx[pairs.target, pairs.source] = np.arange(len(pairs))
    src_pool = np.unique(pairs.source if pairs.directed else np.r_[pairs.source, pairs.target])
    tgt_pool = np.unique(pairs.target if pairs.directed else src_pool)
    rng = np.random.default_rng(seed)
    tol = tolerance * np.abs(v)

    def close(g: int, pool: np.ndarray) -> np.ndarray:
        ok = np.all(np.abs(v[pool] - v[g]) <= tol[g] + 1e-12, axis=1)
        return pool[ok]

    pos = np.flatnonzero(pairs.label)
    keep_pos, negs = [], []
    for k in pos:
        s, t = pairs.source[k], pairs.target[k]
        cand = idx[np.ix_(close(s, src_pool), close(t, tgt_pool))].ravel()
        cand = np.unique(cand[cand >= 0])
        cand = cand[~pairs.label[cand]]
        if len(cand) == 0:
            continue
        keep_pos.append(k)
        m = min(max_per_positive, len(cand))
        negs.append(rng.choice(cand, m, replace=False) if m < len(cand) else cand)
    neg = np.concatenate(negs) if negs else np.empty(0, dtype=np.int64)
    rows = np.concatenate([np.asarray(keep_pos, dtype=np.int64), neg])
    return MatchedNegatives(
        rows=rows,
        n_positives=len(pos),
        n_matched=len(keep_pos),
        n_negatives=len(neg),
        tolerance=tolerance,
        max_per_positive=max_per_positive,
    )


__all__ = [
    "COVARIATE_STATS",
    "MatchedNegatives",
    "bootstrap_p",
    "bootstrap_tails",
    "matched_negatives",
    "pair_covariates",
    "paired_vertex_bootstrap",
    "rank_normal",
    "residualise",
]
