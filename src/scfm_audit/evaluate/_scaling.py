"""Kernels of the ``scaling`` analysis: recovery versus the number of cells.

* :func:`nested_stratified_order` — one random order of the cells in which every prefix
  keeps the state proportions (within ±1 cell per state): grid points are prefixes, so the
  subsets of one repeat are nested and stratified.
* :func:`grid_buckets` — each position of that order mapped to its smallest grid bucket
  (the groups of a one-pass :class:`~scfm_audit.edges._attention.GroupedAttentionAccumulator`
  whose ``cumulative()`` gives every nested subset).
* :func:`fit_curves` — least-squares fits (``scipy.optimize.curve_fit``) of the saturating
  exponential ``a − b·exp(−n/c)``, the logarithmic ``a + b·log n``, the linear ``a + b·n``
  and the power law ``a·n^b`` to a recovery curve, with R² and the Gaussian AIC
  ``m·log(RSS/m) + 2k`` (m grid points, k curve parameters; the common σ term is omitted,
  so AICs compare across the four models of one curve only).
* :func:`decline_test` — is the metric at grid point ``i`` different from that at grid
  point ``j`` (fixed pair), averaged over repeats? Vertex bootstrap over genes (genes
  resampled within their reference role; pair weight ``w_s · w_t``; the *same* gene
  weights for every repeat and both grid points), so the dependence among edges sharing a
  gene is kept. H0: the difference is 0; two-sided bootstrap p
  ``2 · min(P*(D ≤ 0), P*(D ≥ 0))`` (test inversion of the percentile interval), floor
  ``2 / n_boot``. The repeats are *not* treated as independent: they are nested subsamples
  of one dataset and share cells; the bootstrap conditions on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from scfm_audit.evaluate._recovery import (
    CandidatePairs,
    _SortedScores,
    counts_top_k_f1,
    gene_roles,
)

Metric = Literal["auroc", "f1"]

__all__ = ["CURVES", "decline_test", "fit_curves", "grid_buckets", "nested_stratified_order"]


# -- nested, stratified subsamples ---------------------------------------------------------------
def nested_stratified_order(states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(states))`` whose every prefix holds each state in
    proportion (±1 cell): the cells of each state are shuffled, the r-th cell of a state of
    size n_s gets the key (r + ½)/n_s (plus a random tie-break), and cells are sorted by key.
    """
    states = pd.factorize(np.asarray(states))[0]
    key = np.empty(len(states))
    for s in np.unique(states):
        idx = np.flatnonzero(states == s)
        idx = idx[rng.permutation(len(idx))]
        key[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    tie = rng.random(len(states))
    return np.lexsort((tie, key))


def grid_buckets(grid: Sequence[int], n: int | None = None) -> np.ndarray:
    """Bucket of each of the first ``n`` (default ``max(grid)``) positions of an order: the
    index of the smallest grid point whose prefix contains it (grid sorted, increasing)."""
    g = np.asarray(grid, dtype=np.int64)
    if len(g) == 0 or np.any(np.diff(g) <= 0) or g[0] < 1:
        raise ValueError(f"grid must be increasing positive integers, got {list(grid)}.")
    n = int(g[-1]) if n is None else int(n)
    return np.searchsorted(g, np.arange(n), side="right")


# -- curve fits ------------------------------------------------------------------------------------
def _sat(n: NDArray[np.float64], a: float, b: float, c: float) -> NDArray[np.float64]:
    return a - b * np.exp(-n / c)


def _log(n: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    return a + b * np.log(n)


def _lin(n: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    return a + b * n


def _pow(n: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    return a * np.power(n, b)


CURVES: dict[str, tuple[Callable[..., NDArray[np.float64]], tuple[str, ...], str]] = {
    "saturating_exponential": (_sat, ("a", "b", "c"), "a − b·exp(−n/c)"),
    "logarithmic": (_log, ("a", "b"), "a + b·log n"),
    "linear": (_lin, ("a", "b"), "a + b·n"),
    "power": (_pow, ("a", "b"), "a·n^b"),
}


#: a starting point and the bounds of scipy's curve_fit
_Start = tuple[list[float], tuple[Any, Any]]


def _start(name: str, n: np.ndarray, y: np.ndarray) -> _Start:
    if name == "saturating_exponential":
        return [y.max(), y.max() - y.min() + 1e-3, np.median(n)], (
            [-np.inf, -np.inf, 1e-3 * n.min()],
            [np.inf, np.inf, 1e3 * n.max()],
        )
    if name == "power":
        pos = y > 0
        if pos.sum() >= 2:
            b, la = np.polyfit(np.log(n[pos]), np.log(y[pos]), 1)
            return [math.exp(la), b], (-np.inf, np.inf)
        return [y.mean() or 1e-3, 0.0], (-np.inf, np.inf)
    return [y.mean(), 0.0], (-np.inf, np.inf)


def fit_curves(n: ArrayLike, y: ArrayLike) -> pd.DataFrame:
    """Fit the four :data:`CURVES` to points (n, y) (NaN y dropped). One row per model:
    ``model, formula, params`` (dict), the parameters as columns, ``rss, r2, aic, k, m``
    (k parameters, m points) and ``best`` (lowest AIC). A model with m ≤ k points or a
    failed fit gets NaN."""
    from scipy.optimize import curve_fit

    n_all, y_all = np.asarray(n, float), np.asarray(y, float)
    ok = np.isfinite(y_all) & np.isfinite(n_all) & (n_all > 0)
    x: NDArray[np.float64] = n_all[ok]
    v: NDArray[np.float64] = y_all[ok]
    m = len(v)
    tss = float(((v - v.mean()) ** 2).sum()) if m else math.nan
    rows = []
    for name, (fn, pnames, formula) in CURVES.items():
        k = len(pnames)
        row: dict[str, Any] = {"model": name, "formula": formula, "k": k, "m": m, "rss": math.nan}
        row.update(dict.fromkeys(pnames, math.nan))
        if m > k:
            p0, bounds = _start(name, x, v)
            try:
                with np.errstate(all="ignore"):
                    par, _ = curve_fit(fn, x, v, p0=p0, bounds=bounds, maxfev=20000)
                rss = float(((fn(x, *par) - v) ** 2).sum())
                if np.isfinite(rss):
                    row.update(dict(zip(pnames, map(float, par), strict=True)), rss=rss)
            except (RuntimeError, ValueError):
                pass
        rss = row["rss"]
        row["r2"] = 1 - rss / tss if tss > 0 else math.nan
        row["aic"] = m * math.log(max(rss, 1e-300) / m) + 2 * k if np.isfinite(rss) else math.nan
        row["params"] = {p: row[p] for p in pnames}
        rows.append(row)
    out = pd.DataFrame(rows)
    aic = out["aic"].to_numpy(float)
    out["best"] = False
    if np.isfinite(aic).any():
        out.loc[int(np.nanargmin(aic)), "best"] = True
    return out


def predict(model: str, params: dict[str, float], n: np.ndarray) -> np.ndarray:
    """The fitted curve ``model`` with ``params`` at ``n``."""
    fn, pnames, _ = CURVES[model]
    return fn(np.asarray(n, float), *[params[p] for p in pnames])


# -- the decline test --------------------------------------------------------------------------------
class _Scored:
    """Candidate-pair scores sorted once, for weighted AUROC / top-K F1."""

    def __init__(self, s: np.ndarray, label: np.ndarray):
        s = np.asarray(s, float)
        self.label = np.asarray(label, bool)
        self.srt = _SortedScores(s, self.label)
        self.order = np.argsort(-np.where(np.isnan(s), -np.inf, s), kind="stable")
        self.p_at = np.flatnonzero(self.label[self.order])

    def metric(self, metric: Metric, W: np.ndarray) -> np.ndarray:
        """``metric`` for each row of bootstrap multiplicities ``W`` (whole numbers)."""
        if metric == "auroc":
            return self.srt.weighted_auroc(np.take(W, self.srt.order, axis=1), counts=True)
        return counts_top_k_f1(np.take(W, self.order, axis=1), self.p_at)


def decline_test(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    pairs: CandidatePairs,
    *,
    metric: Metric = "f1",
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Difference of ``metric`` between two fixed grid points, averaged over repeats:
    ``first[r]`` and ``second[r]`` are repeat r's candidate-pair scores at the two points.

    Output: ``metric_first, metric_second`` (means over repeats), ``diff`` (first −
    second), its 95% vertex-bootstrap CI ``ci_low, ci_high``, the two-sided bootstrap ``p``
    (H0: diff = 0; see the module docstring) with its one-sided tails ``p_greater`` /
    ``p_less``, ``p_floor``, ``n_boot``.
    """
    if len(first) != len(second) or not len(first):
        raise ValueError("first and second need the same, non-zero number of repeats.")
    label = pairs.label
    a = [_Scored(s, label) for s in first]
    b = [_Scored(s, label) for s in second]
    one = np.ones((1, len(label)))
    ma = float(np.mean([x.metric(metric, one)[0] for x in a]))
    mb = float(np.mean([x.metric(metric, one)[0] for x in b]))
    rng = np.random.default_rng(seed)
    role = gene_roles(pairs, match="role")
    strata = [np.flatnonzero(role == r) for r in np.unique(role)]
    ng = len(pairs.genes)
    d = np.empty(n_boot)
    step = max(1, (1 << 21) // max(len(label), 1))
    for s0 in range(0, n_boot, step):
        k = min(step, n_boot - s0)
        w = np.zeros((k, ng))
        for idx in strata:
            w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=k)
        W = np.take(w, pairs.source, axis=1) * np.take(w, pairs.target, axis=1)
        da = np.mean([x.metric(metric, W) for x in a], axis=0)
        db = np.mean([x.metric(metric, W) for x in b], axis=0)
        d[s0 : s0 + k] = da - db
    d = d[np.isfinite(d)]
    out = {"metric_first": ma, "metric_second": mb, "diff": ma - mb, "n_boot": int(n_boot)}
    if len(d):
        one_draw = 1 / len(d)  # a bootstrap p is never reported as 0
        out["p_greater"] = float(max((d <= 0).mean(), one_draw))
        out["p_less"] = float(max((d >= 0).mean(), one_draw))
        out["p"] = min(1.0, 2 * min(out["p_greater"], out["p_less"]))
        out["p_floor"] = 2 * one_draw
        out["ci_low"], out["ci_high"] = map(float, np.quantile(d, [0.025, 0.975]))
    else:
        out.update(
            p=math.nan,
            p_floor=math.nan,
            p_greater=math.nan,
            p_less=math.nan,
            ci_low=math.nan,
            ci_high=math.nan,
        )
    return out
