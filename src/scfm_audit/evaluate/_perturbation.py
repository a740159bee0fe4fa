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

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from scfm_audit.stats._paired import rank_biserial, signed_rank
from scfm_audit.stats._resampling import Seed, _rng
from scfm_audit.stats._tests import StatTestResult

__all__ = [
    "PairedComparison",
    "combine_intersection_union",
    "group_ranks",
    "paired_comparison",
    "pooled_delong",
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
    out: dict[str, np.ndarray] = {"greater": np.empty(n, np.int64), "tied": np.empty(n, np.int64)}
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

    The test (``result``): Wilcoxon signed-rank, two-sided, whose effect is the
    Hodges–Lehmann pseudo-median ΔAUROC with the CI from inverting the same test
    (``hodges_lehmann``, ``hl_ci_low``, ``hl_ci_high``): its side is the side of the
    ranks. Described beside it, for tables: ``mean_delta`` with a percentile bootstrap CI
    over perturbations (``ci_low``, ``ci_high``; not what the test tests: skewed
    differences can put the mean on the other side), ``median_delta``, ``n_a_wins`` /
    ``n``, ``p``, the statistic ``T`` and the rank-biserial correlation."""

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
    hodges_lehmann: float = float("nan")
    hl_ci_low: float = float("nan")
    hl_ci_high: float = float("nan")
    result: StatTestResult = field(kw_only=True, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The table columns (everything but the typed result)."""
        return {k: v for k, v in self.__dict__.items() if k != "result"}


def paired_comparison(
    auc_a: np.ndarray, auc_b: np.ndarray, *, n_boot: int, seed: Seed, h0: str = ""
) -> PairedComparison:
    """Compare two scorers' per-perturbation AUROCs (aligned arrays; NaN pairs dropped).

    Test: Wilcoxon signed-rank, two-sided (:func:`~scfm_audit.stats._paired.signed_rank`).
    H0: the per-perturbation differences ``AUROC_a − AUROC_b`` are symmetric about 0
    (perturbations independent). The mean ΔAUROC gets a percentile bootstrap CI
    resampling perturbations (the independent units: candidate genes within a
    perturbation share its cells and are not resampled); description only.
    """
    a, b = np.asarray(auc_a, float), np.asarray(auc_b, float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    d = a - b
    n = len(d)
    nan = float("nan")
    res = signed_rank(d, h0=h0, name="ΔAUROC")
    if n == 0:
        return PairedComparison(0, nan, nan, nan, nan, nan, nan, 0, nan, nan, nan, result=res)
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
        p=res.p,
        statistic=res.statistic,
        rank_biserial=rank_biserial(d),
        hodges_lehmann=res.effect,
        hl_ci_low=res.ci_low,
        hl_ci_high=res.ci_high,
        result=res,
    )


def combine_intersection_union(
    results: list[StatTestResult], *, claimed: str = "greater"
) -> tuple[StatTestResult, int]:
    """One test of "``a`` beats every ``b``" from per-``b`` typed results (e.g. signed-rank
    over perturbations), with sides read from each test's own tails, never from an
    estimate it did not test.

    Claimed side: intersection–union, p = max of the components' one-sided p for the
    claimed side (valid without correction: the claim needs every component). Other side
    ("some ``b`` beats ``a``"): K · min of the components' one-sided p for that side
    (Bonferroni). Two-sided p: twice the smaller of the two (capped at 1). Returns the
    combined result (the reported component's effect and CI) and that component's index:
    the weakest on the claimed side when every component lies on it, else the strongest
    on the other side.
    """
    if not results:
        raise ValueError("combine_intersection_union needs at least one result")
    other = "less" if claimed == "greater" else "greater"
    mine = np.array([r.one_sided(claimed) for r in results], float)
    theirs = np.array([r.one_sided(other) for r in results], float)
    k = len(results)
    if np.isnan(mine).any() or np.isnan(theirs).any():
        bad = int(np.flatnonzero(np.isnan(mine) | np.isnan(theirs))[0])
        return results[bad], bad
    p_mine, p_theirs = float(mine.max()), float(min(1.0, k * theirs.min()))
    sides = [r.side for r in results]
    if all(s == claimed for s in sides):
        i = int(np.argmax(mine))
    else:
        i = int(np.argmin(theirs))
    floors = np.array(
        [r.p_floor / 2 if r.alternative == "two-sided" else r.p_floor for r in results], float
    )
    floor = min(1.0, 2 * min(float(floors.max()), k * float(floors.min())))
    tails = {claimed: p_mine, other: p_theirs}
    return replace(
        results[i],
        p=min(1.0, 2 * min(p_mine, p_theirs)),
        p_greater=tails["greater"],
        p_less=tails["less"],
        p_floor=floor,
        alternative="two-sided",
        test=f"{results[i].test}, intersection-union over {k}",
    ), i


def pooled_delong(
    y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, h0: str
) -> StatTestResult:
    """DeLong's paired test of two scorers' AUROC on pooled (perturbation, candidate) rows
    as a typed result: normal tails of z, effect the pooled ΔAUROC (a − b) with the Wald
    CI. Treats rows as independent (they share perturbations and genes): descriptive."""
    from scipy.stats import norm

    from scfm_audit.stats._delong import delong_test

    dl = delong_test(y, score_a, score_b)
    return StatTestResult(
        dl.z,
        dl.p,
        dl.delta,
        len(y),
        "DeLong paired AUROC test on pooled (perturbation, candidate) rows",
        "z",
        "pooled ΔAUROC",
        dl.alternative,
        dl.ci_low,
        dl.ci_high,
        p_greater=float(norm.sf(dl.z)),
        p_less=float(norm.cdf(dl.z)),
        h0=h0,
        null_name="delong_independent_rows",
    )
