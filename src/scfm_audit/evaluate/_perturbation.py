"""Kernels of perturbation prediction: how well a score ranks the responders of each
perturbation among its candidate genes, and paired comparisons of two scorers over
perturbations (the independent units of a screen).

Every metric is computed per group (perturbation) in one pass over all rows: rows are
sorted once by (group, score), tie blocks found by index arithmetic, and the per-group
sums gathered with ``np.bincount`` — no Python loop over perturbations. Ties count one
half (AUROC), enter together (AUPRC, as scikit-learn's ``average_precision_score``) and
share the top-k places evenly (recall@k = the expected recall under a random order of the
tied rows). A NaN score ranks below every finite score (a candidate the scorer cannot
score is never ranked on top). A group without a responder or without a non-responder has
no AUROC (NaN) and is counted by :func:`ranking_metrics` as not evaluable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from scfm_audit.stats._resampling import Seed, _rng
from scfm_audit.stats._tests import paired_wilcoxon

__all__ = [
    "PairedComparison",
    "combine_intersection_union",
    "group_ranks",
    "paired_comparison",
    "ranking_metrics",
]

#: k of the top-k recall columns (the paper's)
TOP_K = (10, 50, 100)


def group_ranks(codes: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """Within-group tie structure of one score vector (descending order).

    Inputs: ``codes`` ``(n,)`` integer group of each row; ``score`` ``(n,)`` (NaN lowest).
    Output (all ``(n,)`` in the input order): ``greater`` = rows of the same group with a
    strictly higher score, ``tied`` = rows of the group with the same score (itself
    included), ``midrank`` = ascending mid-rank within the group (1-based, ties averaged).
    """
    s = np.where(np.isnan(score), -np.inf, np.asarray(score, float))
    n = len(s)
    order = np.lexsort((-s, codes))  # by group, then score descending
    g, v = codes[order], s[order]
    new_block = np.ones(n, bool)
    new_block[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    block = np.cumsum(new_block) - 1
    block_start = np.flatnonzero(new_block)
    block_size = np.diff(np.r_[block_start, n])
    new_group = np.ones(n, bool)
    new_group[1:] = g[1:] != g[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    greater = block_start[block] - group_start
    tied = block_size[block]
    size = np.bincount(codes, minlength=int(codes.max()) + 1 if n else 0)[g]
    # descending positions greater+1 … greater+tied  →  ascending mid-rank
    midrank = size - (greater + (tied + 1) / 2.0) + 1
    out = {"greater": np.empty(n, np.int64), "tied": np.empty(n, np.int64)}
    out["greater"][order] = greater
    out["tied"][order] = tied
    out["midrank"] = np.empty(n)
    out["midrank"][order] = midrank
    return out


def _positives_at_or_above(codes: np.ndarray, score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, responders of its group whose score is ≥ the row's score."""
    s = np.where(np.isnan(score), -np.inf, np.asarray(score, float))
    n = len(s)
    order = np.lexsort((-s, codes))
    g, v, yy = codes[order], s[order], y[order].astype(np.int64)
    new_block = np.ones(n, bool)
    new_block[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    block = np.cumsum(new_block) - 1
    block_end = np.r_[np.flatnonzero(new_block)[1:], n] - 1
    new_group = np.ones(n, bool)
    new_group[1:] = g[1:] != g[:-1]
    cum = np.cumsum(yy)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    base = (cum - yy)[group_start]  # responders of earlier groups
    out = np.empty(n, np.int64)
    out[order] = cum[block_end[block]] - base
    return out


def ranking_metrics(
    groups: np.ndarray | pd.Series,
    responder: np.ndarray,
    scores: dict[str, np.ndarray],
    *,
    top_k: tuple[int, ...] = TOP_K,
) -> pd.DataFrame:
    """Per (group, scorer): how well the score ranks the group's responders.

    Inputs: ``groups`` ``(n,)`` the perturbation of each row; ``responder`` ``(n,)`` bool;
    ``scores`` name → ``(n,)`` (higher = more likely a responder; NaN lowest).

    Output: long table, one row per (group, scorer): ``perturbation, scorer, n, n_pos,
    auroc`` (NaN when the group has no responder or no non-responder), ``auprc`` (NaN
    without a responder), ``recall@k`` for each k (responders among the k top-ranked
    candidates / responders; ties share places evenly; NaN without a responder).
    """
    y = np.asarray(responder, bool)
    codes, uniq = pd.factorize(pd.Series(np.asarray(groups)), sort=True)
    codes = codes.astype(np.int64)
    m = len(uniq)
    n_g = np.bincount(codes, minlength=m)
    n_pos = np.bincount(codes, weights=y.astype(float), minlength=m)
    n_neg = n_g - n_pos
    frames = []
    for name, sc in scores.items():
        sc = np.asarray(sc, float)
        if sc.shape != y.shape:
            raise ValueError(f"score {name!r} has shape {sc.shape}; expected {y.shape}.")
        r = group_ranks(codes, sc)
        with np.errstate(invalid="ignore", divide="ignore"):
            rank_sum = np.bincount(codes, weights=np.where(y, r["midrank"], 0.0), minlength=m)
            auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
            auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
            pos_ge = _positives_at_or_above(codes, sc, y)
            prec = pos_ge / (r["greater"] + r["tied"])
            ap = np.bincount(codes, weights=np.where(y, prec, 0.0), minlength=m) / n_pos
            part = {
                "perturbation": np.asarray(uniq),
                "scorer": name,
                "n": n_g,
                "n_pos": n_pos.astype(int),
                "auroc": auc,
                "auprc": np.where(n_pos > 0, ap, np.nan),
            }
            for k in top_k:
                share = np.clip((k - r["greater"]) / r["tied"], 0.0, 1.0)
                hits = np.bincount(codes, weights=np.where(y, share, 0.0), minlength=m)
                part[f"recall@{k}"] = np.where(n_pos > 0, hits / n_pos, np.nan)
        frames.append(pd.DataFrame(part))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class PairedComparison:
    """Scorer ``a`` against scorer ``b`` over perturbations (ΔAUROC = a − b per
    perturbation, perturbations with both AUROCs only).

    ``mean_delta`` with a percentile bootstrap CI over perturbations (``ci_low``,
    ``ci_high``); ``median_delta``; ``n_a_wins`` / ``n``; Wilcoxon signed-rank (two-sided)
    ``p`` with its statistic ``T`` and rank-biserial effect."""

    n: int
    mean_a: float
    mean_b: float
    mean_delta: float
    median_delta: float
    ci_low: float
    ci_high: float
    n_a_wins: int
    p: float
    statistic: float
    rank_biserial: float


def paired_comparison(
    auc_a: np.ndarray, auc_b: np.ndarray, *, n_boot: int, seed: Seed
) -> PairedComparison:
    """Compare two scorers' per-perturbation AUROCs (aligned arrays; NaN pairs dropped).

    Test: Wilcoxon signed-rank, two-sided. H0: the per-perturbation differences
    ``AUROC_a − AUROC_b`` are symmetric about 0 (perturbations independent). The mean
    ΔAUROC gets a percentile bootstrap CI resampling perturbations (the independent
    units: candidate genes within a perturbation share its cells and are not resampled).
    """
    a, b = np.asarray(auc_a, float), np.asarray(auc_b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    d = a - b
    n = len(d)
    nan = float("nan")
    if n == 0:
        return PairedComparison(0, nan, nan, nan, nan, nan, nan, 0, nan, nan, nan)
    w = paired_wilcoxon(a, b)
    rng = _rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = d[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return PairedComparison(
        n=n,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_delta=float(d.mean()),
        median_delta=float(np.median(d)),
        ci_low=float(lo),
        ci_high=float(hi),
        n_a_wins=int((d > 0).sum()),
        p=w.p,
        statistic=w.statistic,
        rank_biserial=w.effect,
    )


def combine_intersection_union(
    comparisons: list[PairedComparison], *, claimed: str = "greater"
) -> tuple[float, int]:
    """One p for "``a`` beats every ``b``" from per-``b`` two-sided tests.

    When every ΔAUROC lies on the claimed side, the intersection–union p = max p (valid
    without correction: the claim needs every component). Otherwise the answer can only
    be "opposite" or "no evidence": p = K · min p over the components on the other side
    (Bonferroni). Returns ``(p, index of the comparison whose mean Δ is reported)``: the
    weakest component on the claimed side, else the strongest on the other side.
    """
    if not comparisons:
        return float("nan"), -1
    sign = 1.0 if claimed == "greater" else -1.0
    d = np.array([c.mean_delta for c in comparisons]) * sign
    p = np.array([c.p for c in comparisons])
    if np.isnan(d).any() or np.isnan(p).any():
        return float("nan"), -1
    if (d > 0).all():
        i = int(np.argmin(d))
        return float(p.max()), i
    k = len(comparisons)
    losers = np.flatnonzero(d <= 0)
    i = int(losers[np.argmin(p[losers])])
    return float(min(1.0, k * p[i])), i
