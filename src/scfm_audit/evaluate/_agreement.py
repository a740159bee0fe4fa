"""Kernels of edge-score agreement between score sets over the same genes: two halves of
the cells (``stability``) or two or more contexts (``cross_context_consistency``).

Universe
--------
Every pair of the genes: ordered pairs ``(i, j)``, ``i ≠ j``, for directed scores
(attention: "i attends to j"), unordered pairs ``i < j`` for undirected ones (the pair's
score is the mean of both directions). A pair is ranked by ``|score|`` (``transform="abs"``,
as the recovery kernels rank edges: a correlation of either sign is an edge) or by the
score itself (``"raw"``). NaN (a pair never co-observed) ranks below every real score and
never enters a top-k set.

Statistics of two score sets ``a`` and ``b``
-------------------------------------------
* ``spearman`` — Pearson correlation of the pairs' NaN-lowest average ranks (Spearman's ρ
  over the universe; over a seeded random subsample of ``max_pairs`` pairs when the
  universe is larger, with ranks taken over the whole universe);
* ``jaccard`` — ``|T_a ∩ T_b| / |T_a ∪ T_b|`` of the top-k sets;
* ``sign`` — among the pairs of ``T_a ∪ T_b``, the share whose raw scores have the same
  non-zero sign (NaN when either set has no negative score: the scores carry no sign).

Null: matched relabelling (why not an edge shuffle)
--------------------------------------------------
Edge scores carry gene-level structure: a highly expressed (or much attended-to) gene has
large scores with most partners in every half and every context, so top-k sets overlap
and ranks correlate although no *pair* is reproduced. Edges sharing a gene are not
exchangeable, and a plain shuffle of pairs would call any source with hubs reproducible.
The null relabels the genes of one score set within classes of genes that have the same
gene-level structure *in that set*, so the relabelled set keeps its hubs where they were
while which partners they pair with is scrambled. H0: within a class, the genes of ``b``
are exchangeable given ``a`` — the sets agree no more than their gene-level structure
makes them. The classes are computed from ``b`` alone and a relabelling within them
leaves them unchanged, so the Monte-Carlo test is a conditional permutation test, exact
when class members share their gene-level parameters. The classes depend on the metric:

* ``jaccard`` — equal degree in ``b``'s top-k graph (directed: equal out- and in-degree):
  the relabelled set keeps ``b``'s top-k degree sequence exactly, every gene its number of
  top edges (:meth:`ScoreSet.classes_for`). Calibrated on additive, multiplicative and
  sink (attention-like) hub structure: it keeps its level on all of them.
* ``sign`` — equal top-k degree and a sign propensity (mean sign of the gene's pairs;
  directed: as source and as target) within ``tolerance`` standard errors: whether a
  pair is positive depends on its genes over all their pairs, not only in the top-k.
* ``spearman`` — equal strength (mean rank-normal score of the gene's pairs; directed: out-
  and in-strength) within ``tolerance`` standard errors of the two genes' strengths
  (:func:`matched_classes`). The whole ranking is far more sensitive to mismatched gene
  effects than a top-k set: this null keeps its level on additive hub structure and
  over-rejects when gene effects multiply (θ_i·θ_j with strongly heavy-tailed θ), so the
  analyses report it as descriptive only.

Expression matching. A top-k degree is a noisy measurement of a gene's propensity for
top edges: where gene-level structure is weak (co-expression of independent genes), genes
of equal degree still differ in expression level and variance, which set how far their
correlations spread, and the degree-matched null alone rejected 5.7 % on one side at a
nominal 2.5 % (300 simulations). With ``covariates`` (log mean and log variance of
expression on the set's own cells, :func:`expression_covariates`) genes must also match
on them, within ``covariate_tolerance`` SDs over genes: 0.7 % at 1 SD with the degree
(1.7 % at 0.5 SD), while expression alone needs 0.15 SD (1 %; 6 % at 1 SD). Degree and
expression together keep the power (98 % for modules of strength 0.3, against 47 % with
expression at 0.15 SD and the degree) and keep a model's hubs of gene identity, which
expression does not show; ``structural=False`` matches on the covariates alone.

Classes of one gene are fixed; when no gene can move the null is a point mass and the
test reports that it cannot reach significance (floor 1) rather than a p-value.

Several sets: the first is held fixed and every other set is relabelled independently
within its own classes, so every pair of sets is compared under a relabelling of at
least one of them (:func:`relabelling_null`). The draws of a pair depend only on the
*relative* relabelling ``r = p_b ∘ p_a⁻¹`` (``b''[x, y] = b[r[x], r[y]]``).

Confidence intervals: vertex bootstrap
-------------------------------------
Genes are resampled with replacement (one multiplicity ``w_g`` per gene, shared by every
set) and each pair weighted ``w_i · w_j``, so the dependence among pairs sharing a gene is
resampled, as :func:`~scfm_audit.evaluate._recovery.vertex_bootstrap_auroc` does for
recovery. Weighted Spearman: weighted Pearson of weighted average ranks; weighted top-k:
the highest-scored pairs up to the same share of the universe's total weight as ``k`` is of
its size (midpoint rule), Jaccard of the weights. Percentile intervals. The bootstrap
conditions on the cells (the split, the contexts' cells): it measures how much the
agreement depends on which genes were measured, not on which cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike
from scipy.special import ndtri

if TYPE_CHECKING:
    from anndata import AnnData

from scfm_audit.evaluate._recovery import nan_lowest_ranks
from scfm_audit.stats._montecarlo import MonteCarloP, adaptive_mc_pvalue, permute_within_classes
from scfm_audit.stats._resampling import Alternative

__all__ = [
    "METRICS",
    "AgreementTest",
    "ScoreSet",
    "Universe",
    "bootstrap_agreement",
    "expression_covariates",
    "matched_classes",
    "pair_metric",
    "percentile_ci",
    "relabelling_null",
    "relabelling_test",
    "resolve_k",
    "universe",
]

METRICS = ("spearman", "jaccard", "sign")
#: elements gathered at once (draws × pairs)
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Universe:
    """The candidate pairs over ``n`` genes: ``src``, ``tgt`` (P,) positions; ``sub`` the
    pairs the rank correlation uses (all, or a seeded subsample of ``max_pairs``)."""

    n: int
    directed: bool
    src: np.ndarray
    tgt: np.ndarray
    sub: np.ndarray

    @property
    def size(self) -> int:
        return len(self.src)

    def total_weight(self, w: np.ndarray) -> np.ndarray:
        """Σ over the universe of ``w_i · w_j`` for each row of gene weights ``w`` (D, n)."""
        s, q = w.sum(1), (w * w).sum(1)
        tot: np.ndarray = s * s - q
        return tot if self.directed else tot / 2


def universe(n: int, *, directed: bool, max_pairs: int | None = None, seed: int = 0) -> Universe:
    """Every ordered (directed) or unordered (undirected) pair of ``n`` genes."""
    if n < 3:
        raise ValueError(f"need at least 3 genes to compare edge scores, got {n}.")
    if directed:
        ii, jj = np.divmod(np.arange(n * n), n)
        keep = ii != jj
        src, tgt = ii[keep], jj[keep]
    else:
        src, tgt = np.triu_indices(n, k=1)
    P = len(src)
    if max_pairs is not None and P > max_pairs:
        sub = np.sort(np.random.default_rng(seed).choice(P, size=int(max_pairs), replace=False))
    else:
        sub = np.arange(P)
    return Universe(n, directed, src.astype(np.int64), tgt.astype(np.int64), sub)


def resolve_k(top_k: float, size: int) -> int:
    """``top_k`` < 1: that share of ``size`` candidate pairs; ≥ 1: that many (at least 1,
    at most ``size``)."""
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    k = round(top_k * size) if top_k < 1 else int(top_k)
    return int(min(max(k, 1), size))


def matched_classes(strength: np.ndarray, tolerance: float | np.ndarray) -> np.ndarray:
    """Classes of genes with the same gene-level structure: greedy, in decreasing order of
    total strength, each not yet assigned gene opens a class and takes every later
    unassigned gene whose strengths (every column of ``strength`` (n, d)) lie within the
    tolerance of its own. ``tolerance``: a number, or one per gene (n,) or per gene and
    column (n, d); two genes are matched within the smaller of their tolerances. Genes
    without a strength (NaN: no scored pair) form one class. A function of the multiset
    of (strength, tolerance) rows, so a relabelling within classes gives the same classes.
    Output: an integer class per gene."""
    s = np.asarray(strength, float)
    if s.ndim == 1:
        s = s[:, None]
    n, d = s.shape
    tol = np.broadcast_to(
        np.asarray(tolerance, float).reshape(-1, 1)
        if np.ndim(tolerance) == 1
        else np.asarray(tolerance, float),
        (n, d),
    )
    out = np.full(n, -1, dtype=np.int64)
    bad = ~(np.isfinite(s).all(axis=1) & np.isfinite(tol).all(axis=1))
    total = np.where(bad, -np.inf, s.sum(1))
    order = np.lexsort((np.arange(n), -total))
    order = order[~bad[order]]
    tot_sorted = total[order]
    c = 0
    for pos, g in enumerate(order):
        if out[g] >= 0:
            continue
        out[g] = c
        # later genes within reach of the total (a necessary condition for every column)
        end = np.searchsorted(-tot_sorted, -(total[g] - tol[g].sum()), side="right")
        cand = order[pos + 1 : end]
        cand = cand[out[cand] < 0]
        if len(cand):
            ok = (np.abs(s[cand] - s[g]) <= np.minimum(tol[cand], tol[g])).all(axis=1)
            out[cand[ok]] = c
        c += 1
    if bad.any():
        out[bad] = c
    return out


class ScoreSet:
    """One score set (a half, a context) over a :class:`Universe`, prepared for many
    agreement statistics: ranks, its top-k, signs, gene strengths and top-k degrees, and
    the matched classes of each metric's null.

    ``matrix`` (n, n) in the universe's gene order; ``k`` the top-k size (fewer when fewer
    pairs have a score); ``transform`` "abs" or "raw"; ``tolerance`` the strength classes'
    width in standard errors of the genes' strengths; ``covariates`` (n, d) optional
    gene-level covariates of this set (e.g. log mean and log variance of expression on its
    cells) on which every null's classes match too, within ``covariate_tolerance`` SDs;
    ``structural``: match on the set's own score structure (top-k degree, strength) as
    well — False matches on the covariates only, for scores that are a function of the
    expression data alone (co-expression); ``head_factor``: the highest-ranked ``head_factor · k`` pairs are kept for the weighted
    top-k of the bootstrap.
    """

    def __init__(
        self,
        matrix: np.ndarray,
        u: Universe,
        *,
        k: int,
        transform: str = "abs",
        tolerance: float = 0.25,
        covariates: np.ndarray | None = None,
        covariate_tolerance: float = 1.0,
        structural: bool = True,
        head_factor: int = 3,
    ) -> None:
        if transform not in ("abs", "raw"):
            raise ValueError(f"transform must be 'abs' or 'raw', got {transform!r}.")
        M = np.asarray(matrix, dtype=np.float64)
        n = u.n
        if M.shape != (n, n):
            raise ValueError(f"score matrix has shape {M.shape}, expected {(n, n)}.")
        self.u = u
        if u.directed:
            raw = M[u.src, u.tgt]
        else:
            both = np.stack([M[u.src, u.tgt], M[u.tgt, u.src]])
            ok = np.isfinite(both)
            cnt = ok.sum(0)
            raw = np.where(cnt > 0, np.where(ok, both, 0).sum(0) / np.maximum(cnt, 1), np.nan)
        self.raw = raw
        v = np.abs(raw) if transform == "abs" else raw.copy()
        v[~np.isfinite(v)] = np.nan
        self.v = v
        finite = np.isfinite(v)
        self.n_scored = int(finite.sum())
        self.ranks = nan_lowest_ranks(v)
        self.R = self._matrix(self.ranks, 0.0)
        order = np.argsort(-np.where(finite, v, -np.inf), kind="stable")
        self.k = int(min(k, self.n_scored))
        self.top = order[: self.k]
        self.mask = self._matrix(np.isin(np.arange(u.size), self.top), False, dtype=bool)
        sg = np.sign(np.where(np.isfinite(raw), raw, 0.0)).astype(np.int8)
        self.has_sign = bool((sg < 0).any() and (sg > 0).any())
        self.S = self._matrix(sg, 0, dtype=np.int8)
        L = min(self.n_scored, max(head_factor * self.k, self.k + 100))
        self.head = order[:L]
        # gene-level structure of the whole ranking: each gene's strength (mean
        # rank-normal score of its pairs; directed: out and in) and its standard error
        z = np.full(u.size, np.nan)
        if self.n_scored:
            z[finite] = ndtri((nan_lowest_ranks(v[finite]) - 0.5) / self.n_scored)
        Z = self._matrix(z, np.nan)
        np.fill_diagonal(Z, np.nan)
        with _quiet():
            cols = [Z] if not u.directed else [Z, Z.T]
            strength = np.column_stack([np.nanmean(c, axis=1) for c in cols])
            se = np.column_stack(
                [np.nanstd(c, axis=1) / np.sqrt(np.maximum(np.isfinite(c).sum(1), 1)) for c in cols]
            )
        self.strength = strength
        self.tolerance = float(tolerance)
        self.strength_se = se
        # gene-level covariates (e.g. expression mean and variance on these cells): genes
        # are matched on them too, within covariate_tolerance SDs (over genes) per column
        self.covariate_classes = np.zeros(n, dtype=np.int64)
        if covariates is not None:
            c = np.asarray(covariates, dtype=np.float64).reshape(n, -1)
            with _quiet():
                sd = np.nanstd(c, axis=0)
            c = (c - np.nanmean(c, axis=0)) / np.where(sd > 0, sd, 1.0)
            self.covariate_classes = matched_classes(c, covariate_tolerance)
        if not structural and covariates is None:
            raise ValueError("structural=False needs covariates to match on.")
        self.structural = bool(structural)
        strength_classes = (
            matched_classes(strength, tolerance * se) if structural else np.zeros(n, np.int64)
        )
        self.rank_classes = _classes_of(np.column_stack([strength_classes, self.covariate_classes]))
        # gene-level structure of the top-k: each gene's degree in the top-k graph (directed:
        # out and in); for signs also its sign propensity over all its pairs (mean sign,
        # directed: as source and as target) within ``tolerance`` standard errors
        s_top, t_top = u.src[self.top], u.tgt[self.top]
        if u.directed:
            deg = [np.bincount(s_top, minlength=n), np.bincount(t_top, minlength=n)]
        else:
            deg = [np.bincount(np.concatenate([s_top, t_top]), minlength=n)]
        self.degree = np.column_stack(deg)
        G = self._matrix(np.where(np.isfinite(raw), np.sign(raw), np.nan), np.nan)
        np.fill_diagonal(G, np.nan)
        with _quiet():
            gcols = [G] if not u.directed else [G, G.T]
            sign_mean = np.column_stack([np.nanmean(c, axis=1) for c in gcols])
            sign_se = np.column_stack(
                [
                    np.nanstd(c, axis=1) / np.sqrt(np.maximum(np.isfinite(c).sum(1), 1))
                    for c in gcols
                ]
            )
        if structural:
            self.top_classes = _classes_of(np.column_stack([self.degree, self.covariate_classes]))
            propensity = matched_classes(sign_mean, tolerance * sign_se)
            self.sign_classes = _classes_of(np.column_stack([self.top_classes, propensity]))
        else:
            self.top_classes = self.sign_classes = self.covariate_classes

    def classes_for(self, metric: str) -> np.ndarray:
        """The matched classes of the null of ``metric``: genes of equal top-k degree
        (``jaccard``; ``sign``: and mean sign within ``tolerance`` standard errors), or of
        strength within ``tolerance`` standard errors (``spearman``); all matched on the
        covariates too when given."""
        if metric == "spearman":
            return self.rank_classes
        return self.sign_classes if metric == "sign" else self.top_classes

    def n_movable(self, metric: str) -> int:
        """Genes a relabelling for ``metric`` can move (in a class of two or more; for
        the top-k metrics, only genes with a top-k edge count)."""
        cls = self.classes_for(metric)
        _, inv, cnt = np.unique(cls, return_inverse=True, return_counts=True)
        movable = cnt[inv] > 1
        if metric != "spearman":
            movable &= self.degree.sum(1) > 0
        return int(movable.sum())

    def _matrix(self, values: np.ndarray, fill: float, dtype: DTypeLike = np.float64) -> np.ndarray:
        n, u = self.u.n, self.u
        out = np.full((n, n), fill, dtype=dtype)
        out[u.src, u.tgt] = values
        if not u.directed:
            out[u.tgt, u.src] = values
        return out


class _quiet:
    """Silence numpy's "Mean of empty slice" / "Degrees of freedom" warnings (genes or
    sets without a scored pair give NaN, which is handled)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def _classes_of(key: np.ndarray) -> np.ndarray:
    """An integer class per row of ``key`` (rows equal ⇔ same class)."""
    return np.unique(key, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _identity(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)[None, :]


def pair_metric(a: ScoreSet, b: ScoreSet, metric: str, r: np.ndarray | None = None) -> np.ndarray:
    """``metric`` of ``a`` against ``b`` relabelled by each row of ``r`` (D, n) —
    ``b''[x, y] = b[r[x], r[y]]`` — or as observed (``r`` None: one value). Output (D,)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    u = a.u
    r = _identity(u.n) if r is None else np.asarray(r, dtype=np.int64)
    D = len(r)
    out = np.empty(D)
    if metric == "spearman":
        s, t = u.src[u.sub], u.tgt[u.sub]
        x = a.ranks[u.sub]
        x = x - x.mean()
        sx = math.sqrt(float(x @ x))
        step = max(1, _CHUNK // max(len(s), 1))
        flat = b.R.ravel()
        for i in range(0, D, step):
            rr = r[i : i + step]
            # b.R[rr[:, s], rr[:, t]] as one flat take (the same values, half the time)
            y = np.take(flat, np.take(rr, s, axis=1) * u.n + np.take(rr, t, axis=1))
            y -= y.mean(1, keepdims=True)
            sy = np.sqrt((y * y).sum(1))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[i : i + step] = (y @ x) / (sx * sy)
        return out
    ka, kb = a.k, b.k
    if ka == 0 or kb == 0:
        return np.full(D, np.nan)
    sa, ta = u.src[a.top], u.tgt[a.top]
    sb, tb = u.src[b.top], u.tgt[b.top]
    step = max(1, _CHUNK // max(ka + kb, 1))
    for i in range(0, D, step):
        rr = r[i : i + step]
        inter = b.mask[rr[:, sa], rr[:, ta]]  # (d, ka): a's top pair in b'''s top
        ov = inter.sum(1)
        if metric == "jaccard":
            out[i : i + step] = ov / (ka + kb - ov)
            continue
        if not (a.has_sign and b.has_sign):
            out[i : i + step] = np.nan
            continue
        sgn_a = a.S[sa, ta][None, :]
        agree_a = (sgn_a == b.S[rr[:, sa], rr[:, ta]]) & (sgn_a != 0)
        q = np.argsort(rr, axis=1)  # r⁻¹: b's top pair (s, t) sits at (q[s], q[t]) in b''
        sgn_b = b.S[sb, tb][None, :]
        agree_b = (a.S[q[:, sb], q[:, tb]] == sgn_b) & (sgn_b != 0)
        agree = agree_a.sum(1) + agree_b.sum(1) - (agree_a & inter).sum(1)
        out[i : i + step] = agree / (ka + kb - ov)
    return out


def _relative(perms: list[np.ndarray | None], ia: int, ib: int, D: int, n: int) -> np.ndarray:
    """``r = p_b ∘ p_a⁻¹`` for each draw (None = identity)."""
    pa, pb = perms[ia], perms[ib]
    if pa is None:
        return np.broadcast_to(_identity(n), (D, n)) if pb is None else pb
    qa = np.argsort(pa, axis=1)
    if pb is None:
        return qa
    return np.take_along_axis(pb, qa, axis=1)


def relabelling_null(
    sets: Sequence[ScoreSet],
    metric: str,
    pairs: Sequence[tuple[int, int]],
    n_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``metric`` of every pair of sets in ``pairs`` under ``n_draws`` matched
    relabellings (the first set fixed, every other relabelled within its own classes).
    Output (n_draws, len(pairs))."""
    n = sets[0].u.n
    perms: list[np.ndarray | None] = [None]
    for s in sets[1:]:
        perms.append(permute_within_classes(s.classes_for(metric), n_draws, rng))
    out = np.empty((n_draws, len(pairs)))
    for j, (ia, ib) in enumerate(pairs):
        out[:, j] = pair_metric(sets[ia], sets[ib], metric, _relative(perms, ia, ib, n_draws, n))
    return out


@dataclass(frozen=True)
class AgreementTest:
    """The relabelling test of the mean of a metric over pairs of sets: ``observed`` (the
    mean), ``per_pair`` observed values, ``null_per_pair`` the draws of every pair (the
    first stage's), and the staged Monte-Carlo p of the mean (``mc``)."""

    metric: str
    pairs: list[tuple[int, int]]
    observed: float
    per_pair: np.ndarray
    null_per_pair: np.ndarray
    mc: MonteCarloP


def relabelling_test(
    sets: Sequence[ScoreSet],
    metric: str,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    stages: Sequence[int] = (999,),
    alternative: Alternative = "two-sided",
    seed: int,
) -> AgreementTest:
    """The mean of ``metric`` over ``pairs`` of sets (default: every pair) and its staged
    Monte-Carlo p-value under the matched relabelling null (see the module docstring).
    NaN observed (e.g. scores without sign) gives NaN p and no draws."""
    pairs = list(pairs) if pairs is not None else _all_pairs(len(sets))
    per = np.array([pair_metric(sets[a], sets[b], metric)[0] for a, b in pairs])
    obs = float(np.mean(per))
    kept: list[np.ndarray] = []

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        d = relabelling_null(sets, metric, pairs, k, rng)
        if not kept:
            kept.append(d)
        means: np.ndarray = d.mean(axis=1)
        return means

    mc = adaptive_mc_pvalue(
        draw, obs, stages=stages, extend_below=0.05, alternative=alternative, seed=seed
    )
    null = kept[0] if kept else np.empty((0, len(pairs)))
    return AgreementTest(metric, pairs, obs, per, null, mc)


def _all_pairs(m: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(m) for b in range(a + 1, m)]


# -- vertex bootstrap ----------------------------------------------------------------------------
class _WeightedRanks:
    """A score vector sorted once with its tie groups, for weighted average ranks."""

    def __init__(self, v: np.ndarray) -> None:
        s = np.where(np.isnan(v), -np.inf, v)
        self.order = np.argsort(s, kind="stable")
        ss = s[self.order]
        self.starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        self.sizes = np.diff(np.r_[self.starts, len(ss)])
        self.ties = len(self.starts) < len(ss)
        self.back = np.argsort(self.order)  # sorted position of each pair

    def ranks(self, W: np.ndarray) -> np.ndarray:
        """Weighted average ranks (D, P) in the original order for pair weights ``W``."""
        Wo = np.take(W, self.order, axis=1)
        # without ties every group is one pair: summing and repeating by group is a copy
        g = np.add.reduceat(Wo, self.starts, axis=1) if self.ties else Wo
        below = np.cumsum(g, axis=1) - g
        per_group = below + (g + 1) / 2
        per_pair = np.repeat(per_group, self.sizes, axis=1) if self.ties else per_group
        out: np.ndarray = np.take(per_pair, self.back, axis=1)  # back to the original order
        return out


def _weighted_corr(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    sw = W.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (W * x).sum(1, keepdims=True) / sw
        my = (W * y).sum(1, keepdims=True) / sw
        dx, dy = x - mx, y - my
        r: np.ndarray = (W * dx * dy).sum(1) / np.sqrt((W * dx * dx).sum(1) * (W * dy * dy).sum(1))
    return r


class _Centred:
    """One set's weighted ranks centred under pair weights ``W``, for the weighted
    correlation with every other set: :func:`_weighted_corr`'s per-set terms computed once
    per set instead of once per pair of sets (the same operations, the same values)."""

    def __init__(self, x: np.ndarray, W: np.ndarray) -> None:
        sw = W.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = (W * x).sum(1, keepdims=True) / sw
        self.d = x - mx
        self.wd = W * self.d
        self.ss = (self.wd * self.d).sum(1)

    def corr(self, other: _Centred) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            r: np.ndarray = (self.wd * other.d).sum(1) / np.sqrt(self.ss * other.ss)
        return r


def _weighted_top(s: ScoreSet, w: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (D, L) of the head pairs and whether each is in the weighted top-k."""
    u = s.u
    wp = w[:, u.src[s.head]] * w[:, u.tgt[s.head]]
    K = (s.k / u.size) * total
    cum = np.cumsum(wp, axis=1) - wp / 2
    return wp, cum <= K[:, None]


def bootstrap_agreement(
    sets: Sequence[ScoreSet],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    metrics: Sequence[str] = ("spearman", "jaccard"),
    n_boot: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Vertex-bootstrap draws of ``metrics`` for every pair in ``pairs`` (default: every
    pair of sets), the same gene multiplicities for every set and pair. Output: metric →
    (n_boot, len(pairs)); the mean over pairs of a row is a draw of the mean."""
    pairs = list(pairs) if pairs is not None else _all_pairs(len(sets))
    u = sets[0].u
    n = u.n
    rng = np.random.default_rng(seed)
    out = {m: np.full((n_boot, len(pairs)), np.nan) for m in metrics}
    used = sorted({i for p in pairs for i in p})
    ranked = {i: _WeightedRanks(sets[i].v[u.sub]) for i in used} if "spearman" in metrics else {}
    if "jaccard" in metrics:
        pos = {}
        for ia, ib in pairs:  # where each of a's head pairs sits in b's head (−1: absent)
            hb = sets[ib].head
            srt = np.argsort(hb)
            loc = np.searchsorted(hb[srt], sets[ia].head)
            loc = np.minimum(loc, len(hb) - 1)
            found = hb[srt][loc] == sets[ia].head if len(hb) else np.zeros(0, bool)
            pos[(ia, ib)] = np.where(found, srt[loc], -1) if len(hb) else loc
    width = len(u.sub) if "spearman" in metrics else max(len(sets[i].head) for i in used)
    step = max(1, _CHUNK // max(width, 1))
    s_sub, t_sub = u.src[u.sub], u.tgt[u.sub]
    for i0 in range(0, n_boot, step):
        d = min(step, n_boot - i0)
        w = rng.multinomial(n, np.full(n, 1 / n), size=d).astype(float)
        if "spearman" in metrics:
            W = w[:, s_sub] * w[:, t_sub]
            cen = {i: _Centred(ranked[i].ranks(W), W) for i in used}
            for j, (ia, ib) in enumerate(pairs):
                out["spearman"][i0 : i0 + d, j] = cen[ia].corr(cen[ib])
            del W, cen
        if "jaccard" in metrics:
            total = u.total_weight(w)
            tops = {i: _weighted_top(sets[i], w, total) for i in used}
            for j, (ia, ib) in enumerate(pairs):
                wa, ina = tops[ia]
                wb, inb = tops[ib]
                p = pos[(ia, ib)]
                both = ina & np.where(p >= 0, inb[:, np.maximum(p, 0)], False)
                inter = (wa * both).sum(1)
                union = (wa * ina).sum(1) + (wb * inb).sum(1) - inter
                with np.errstate(invalid="ignore", divide="ignore"):
                    out["jaccard"][i0 : i0 + d, j] = inter / union
    return out


def expression_covariates(adata: AnnData, *, genes: Iterable[str], counts: str = "X") -> np.ndarray:
    """Gene-level expression covariates of ``genes`` over the cells of ``adata``: log1p of
    the mean and of the variance of log-normalised expression (``gene_statistics``),
    (n, 2) — what the co-expression of two genes depends on besides their pairing."""
    from scfm_audit.edges._gene_level import gene_statistics

    st = gene_statistics(adata, counts=counts, genes=list(genes))
    cov: np.ndarray = np.log1p(st[["mean", "variance"]].to_numpy(dtype=np.float64))
    return cov


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite draws (NaN when there are none)."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
