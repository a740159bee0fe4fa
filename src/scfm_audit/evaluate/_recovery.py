"""Kernels for recovering a reference network from edge scores.

Candidate universe (stated once, used everywhere):

* directed reference (TF → target): every pair (s, t) with s a reference source present
  among the scored genes, t any scored gene, s ≠ t. Positives: reference edges in that
  set. This is BEELINE's convention: a method is asked to rank all TF → gene pairs.
* undirected reference (PPI): every unordered pair of scored genes that appear in the
  reference; the pair's score is the mean of both directions.

NaN scores (a pair never co-observed) rank below every real score: no evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.stats._metrics import auprc, early_precision_ratio

if TYPE_CHECKING:
    from scfm_audit.stats._tests import StatTestResult

#: ``draw(k, rng)``: ``k`` more draws of a null statistic
NullSampler = Callable[[int, np.random.Generator], np.ndarray]


@dataclass
class CandidatePairs:
    """Candidate pairs as positions into ``EdgeScores.genes`` plus 0/1 labels."""

    source: np.ndarray
    target: np.ndarray
    label: np.ndarray  # bool
    genes: pd.Index
    directed: bool

    @property
    def n_pos(self) -> int:
        return int(self.label.sum())

    def __len__(self) -> int:
        return len(self.label)


def candidate_pairs(genes: pd.Index, reference: ReferenceNetwork) -> CandidatePairs:
    """The candidate universe of ``reference`` over ``genes`` (see module docstring)."""
    genes = pd.Index(genes)
    pos = pd.Series(np.arange(len(genes)), index=genes)
    e = reference.edges
    if reference.directed:
        src_genes = pd.Index(reference.sources).intersection(genes, sort=False)
        s_idx = np.sort(pos[src_genes].to_numpy())
        t_idx = np.arange(len(genes))
        S = np.repeat(s_idx, len(t_idx))
        T = np.tile(t_idx, len(s_idx))
        keep = S != T
        S, T = S[keep], T[keep]
        ok = e["source"].isin(genes) & e["target"].isin(genes)
        es = pos[e.loc[ok, "source"]].to_numpy()
        et = pos[e.loc[ok, "target"]].to_numpy()
        n = len(genes)
        edge_codes = np.unique(es * n + et)
        label = np.isin(S * n + T, edge_codes)
    else:
        node_genes = pd.Index(reference.genes).intersection(genes, sort=False)
        idx = np.sort(pos[node_genes].to_numpy())
        iu, ju = np.triu_indices(len(idx), k=1)
        S, T = idx[iu], idx[ju]
        ok = e["source"].isin(genes) & e["target"].isin(genes)
        a = pos[e.loc[ok, "source"]].to_numpy()
        b = pos[e.loc[ok, "target"]].to_numpy()
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        n = len(genes)
        label = np.isin(S * n + T, np.unique(lo * n + hi))
    return CandidatePairs(S, T, label, genes, reference.directed)


def pair_scores(scores: EdgeScores, pairs: CandidatePairs, *, transform: str = "abs") -> np.ndarray:
    """Scores of the candidate pairs (undirected pairs: mean of both directions).
    ``transform``: "abs" (magnitude: correlations of either sign count), or "raw"."""
    d = scores.dense()
    if not pairs.genes.equals(scores.genes):
        raise ValueError("candidate pairs were built for a different gene index")
    s = d[pairs.source, pairs.target].astype(float)
    if not pairs.directed:
        s = np.nanmean(np.stack([s, d[pairs.target, pairs.source]]), axis=0)
    if transform == "abs":
        s = np.abs(s)
    elif transform != "raw":
        raise ValueError(f"transform must be 'abs' or 'raw', got {transform!r}")
    scored: np.ndarray = s
    return scored


def nan_lowest_ranks(s: np.ndarray) -> np.ndarray:
    """Average ranks with NaN placed below every real value (ties among NaN)."""
    s = np.where(np.isnan(s), -np.inf, s)
    ranks: np.ndarray = rankdata(s)
    return ranks


def auroc_from_ranks(ranks: np.ndarray, label: np.ndarray) -> float:
    n1 = int(label.sum())
    n0 = len(label) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def rank_matrix(ranks: np.ndarray, pairs: CandidatePairs) -> np.ndarray:
    """The candidate pairs' ranks as a ``genes × genes`` matrix (0 outside the universe;
    undirected pairs are written both ways), so that a relabelled reference's rank sum is a
    gather: ``R[π(s), π(t)]``."""
    n = len(pairs.genes)
    R = np.zeros((n, n))
    R[pairs.source, pairs.target] = ranks
    if not pairs.directed:
        R[pairs.target, pairs.source] = ranks
    return R


def gene_roles(pairs: CandidatePairs, *, match: str = "degree") -> np.ndarray:
    """Exchangeability classes of the genes for a node-label permutation null.

    ``match="role"``: genes are exchangeable within their role: directed references —
    candidate sources (rows of the universe) among themselves, every other gene among
    the others; undirected — reference genes among themselves. Relabelling within roles
    keeps the candidate universe and the whole graph (an isomorphic copy).
    ``match="degree"``: additionally within equal degree (directed: equal out- and
    in-degree among the candidate pairs; undirected: equal degree), so every gene keeps
    its own degree too. Output: an integer class per gene of ``pairs.genes``.
    """
    n = len(pairs.genes)
    role = np.zeros(n, dtype=np.int64)
    role[np.unique(pairs.source)] = 1
    if not pairs.directed:
        role[np.unique(pairs.target)] = 1
    if match == "role":
        return role
    if match != "degree":
        raise ValueError(f"match must be 'role' or 'degree', got {match!r}")
    s, t = pairs.source[pairs.label], pairs.target[pairs.label]
    if pairs.directed:
        out_deg = np.bincount(s, minlength=n)
        in_deg = np.bincount(t, minlength=n)
    else:
        out_deg = np.bincount(np.concatenate([s, t]), minlength=n)
        in_deg = np.zeros(n, dtype=np.int64)
    key = np.stack([role, out_deg, in_deg], axis=1)
    return np.unique(key, axis=0, return_inverse=True)[1].ravel()


def relabelled_auroc_null(R: np.ndarray, pairs: CandidatePairs, perms: np.ndarray) -> np.ndarray:
    """AUROC of the reference relabelled by each permutation: ``perms`` ``(B, n)`` from
    :func:`~scfm_audit.stats._montecarlo.permute_within_classes` over :func:`gene_roles`
    (which keeps the candidate universe, so positives and negatives keep their numbers).
    Output ``(B,)``."""
    s, t = pairs.source[pairs.label], pairs.target[pairs.label]
    n1 = pairs.n_pos
    n0 = len(pairs) - n1
    out = np.empty(len(perms))
    step = max(1, (1 << 22) // max(n1, 1))
    for a in range(0, len(perms), step):
        P = perms[a : a + step]
        out[a : a + step] = R[P[:, s], P[:, t]].sum(axis=1)
    return (out - n1 * (n1 + 1) / 2) / (n1 * n0)


def vertex_bootstrap_auroc(
    scores: np.ndarray,
    pairs: CandidatePairs,
    *,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Percentile CI of AUROC under a two-way (vertex) bootstrap that resamples genes on
    both sides of every pair.

    Each draw gives every gene a multiplicity ``w_g`` (multinomial within its role:
    candidate sources, other genes; undirected: reference genes), and pair ``(s, t)``
    the weight ``w_s · w_t``. A gene keeps one multiplicity in both roles, so the
    dependence among pairs sharing a hub TF *or* a hub target is resampled, not only the
    sources' (the source-cluster bootstrap under-covered on hub-structured references).
    The weighted AUROC counts tied scores ½; NaN scores rank lowest.
    Output: ``(low, high, draws)``.
    """
    role = gene_roles(pairs, match="role")
    n = len(pairs.genes)
    strata = [np.flatnonzero(role == r) for r in np.unique(role)]
    rng = np.random.default_rng(seed)
    sorted_ = _SortedScores(scores, pairs.label)
    src, tgt = pairs.source[sorted_.order], pairs.target[sorted_.order]
    dist = np.empty(n_boot)
    batch = max(1, (1 << 22) // max(len(scores), 1))
    for a in range(0, n_boot, batch):
        b = min(batch, n_boot - a)
        w = np.zeros((b, n))
        for idx in strata:
            w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=b)
        W = np.take(w, src, axis=1) * np.take(w, tgt, axis=1)
        dist[a : a + b] = sorted_.weighted_auroc(W, counts=True)
    dist = dist[np.isfinite(dist)]
    if len(dist) == 0:
        return float("nan"), float("nan"), dist
    lo, hi = np.quantile(dist, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi), dist


class _SortedScores:
    """Scores sorted once (NaN lowest) with their tie groups, for many weighted AUROCs."""

    def __init__(self, scores: np.ndarray, label: np.ndarray) -> None:
        s = np.where(np.isnan(scores), -np.inf, scores)
        self.order = np.argsort(s, kind="stable")
        s_sorted = s[self.order]
        self.starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        self.pos = label[self.order].astype(float)
        # for counts: each positive's position, its tie group's [start, end) and how many
        # positives lie before the group's start and before its end
        n = len(s_sorted)
        self.p_at = np.flatnonzero(self.pos > 0)
        group = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1 if n else np.zeros(0)
        ends = np.r_[self.starts[1:], n]
        self.g_start = self.starts[group[self.p_at]] if n else self.p_at
        self.g_end = ends[group[self.p_at]] if n else self.p_at
        self.p_before_start = np.searchsorted(self.p_at, self.g_start)
        self.p_before_end = np.searchsorted(self.p_at, self.g_end)
        # the running weight is needed only just before and at the end of each positive's
        # group, and at the end: segment sums up to those positions, then their running sum
        cuts = np.unique(np.r_[self.g_start[self.g_start > 0] - 1, self.g_end - 1, n - 1])
        cuts = cuts[cuts >= 0].astype(np.int64)
        self.seg_starts = np.r_[0, cuts[:-1] + 1].astype(np.int64)
        self.at_start = np.searchsorted(cuts, self.g_start - 1)
        self.at_end = np.searchsorted(cuts, self.g_end - 1)

    def weighted_auroc(self, W: np.ndarray, *, counts: bool = False) -> np.ndarray:
        """AUROC with case weights ``W`` ``(b, n)`` given in sorted order: Σ over
        positive–negative pairs of ``W_i W_j`` (½ on tied scores) over ``ΣW_pos · ΣW_neg``.

        ``counts``: the weights are whole numbers (bootstrap multiplicities and their
        products). Then every sum is an exact integer or half in float64, and the AUROC is
        read from one running sum and the positives' columns (a third of the passes over
        ``W``) — the same value to the last bit."""
        if counts:
            return self._counts_auroc(W)
        gp = np.add.reduceat(W * self.pos, self.starts, axis=1)
        gn = np.add.reduceat(W * (1 - self.pos), self.starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        with np.errstate(invalid="ignore", divide="ignore"):
            auc: np.ndarray = (gp * (below + 0.5 * gn)).sum(1) / (gp.sum(1) * gn.sum(1))
        return auc

    def _counts_auroc(self, W: np.ndarray) -> np.ndarray:
        W = np.asarray(W, dtype=np.float64)
        b = W.shape[0]
        if len(self.p_at) == 0:
            return np.full(b, np.nan)
        # running weight (inclusive) at the cut positions only
        C = np.cumsum(np.add.reduceat(W, self.seg_starts, axis=1), axis=1)
        Wp = np.take(W, self.p_at, axis=1)
        PC = np.cumsum(Wp, axis=1)  # running positive weight, inclusive

        def at(M: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
            return np.where(j > 0, M[:, np.minimum(k, M.shape[1] - 1)], 0.0)  # 0 before 0

        c0 = at(C, self.g_start, self.at_start)  # weight below the positive's group
        c1 = C[:, self.at_end]  # weight up to the end of its group
        p0 = at(PC, self.p_before_start, self.p_before_start - 1)
        p1 = at(PC, self.p_before_end, self.p_before_end - 1)
        neg_below = c0 - p0  # negatives' weight in the groups below
        neg_tied = (c1 - c0) - (p1 - p0)  # negatives' weight in the positive's own group
        w_pos = PC[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc: np.ndarray = (Wp * (neg_below + 0.5 * neg_tied)).sum(1) / (
                w_pos * (C[:, -1] - w_pos)
            )
        return auc


def counts_top_k_f1(Wo: np.ndarray, p_at: np.ndarray) -> np.ndarray:
    """Top-K F1 for each row of whole-number weights ``Wo`` ``(b, n)`` given in descending
    score order (ties by position), positives at columns ``p_at`` (ascending): the top
    pairs up to weight K = Σ positive weight are called edges. The value of
    ``2 Σ Wo·y·top / (Σ Wo·top + K)`` with ``top = cumsum(Wo) ≤ K``, read from running
    sums (the weights are ≥ 0, so ``top`` is a prefix); every sum is an exact integer."""
    Wo = np.asarray(Wo, dtype=np.float64)
    b = Wo.shape[0]
    C = np.cumsum(Wo, axis=1)
    PC = np.cumsum(Wo[:, p_at], axis=1)
    K = PC[:, -1] if len(p_at) else np.zeros(b)
    rows = np.arange(b)
    t = np.array([np.searchsorted(C[r], K[r], side="right") for r in rows], dtype=np.int64)
    top_w = np.where(t > 0, C[rows, np.maximum(t - 1, 0)], 0.0)
    j = (p_at[None, :] < t[:, None]).sum(1)
    tp = np.where(j > 0, PC[rows, np.maximum(j - 1, 0)], 0.0) if len(p_at) else np.zeros(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1: np.ndarray = 2 * tp / (top_w + K)
    return f1


def weighted_auroc(
    scores: np.ndarray, label: np.ndarray, weights: np.ndarray, *, counts: bool = False
) -> np.ndarray:
    """AUROC of ``scores`` with case weights, for each row of ``weights`` ``(b, n)`` (or
    ``(n,)``): equal to the AUROC of the data with case ``i`` repeated ``weights[i]`` times.
    NaN scores rank lowest; ties count ½. ``counts``: the weights are whole numbers (faster,
    same value)."""
    srt = _SortedScores(np.asarray(scores, float), np.asarray(label, bool))
    W = np.take(np.atleast_2d(np.asarray(weights, float)), srt.order, axis=1)
    out = srt.weighted_auroc(W, counts=counts)
    return out if np.ndim(weights) == 2 else out[0]


# ------------------------------------------------------------------ recovery tests
NullName = Literal["degree_permutation", "node_permutation", "rewiring"]

NULL_H0 = {
    "degree_permutation": "reference genes exchangeable with data genes of the same role and "
    "degree (whole graph relabelled; hubs and every gene's degree kept)",
    "node_permutation": "reference genes exchangeable with data genes of the same role (whole "
    "graph relabelled; hub structure kept)",
    "rewiring": "reference is a uniform draw among networks with its degree sequence "
    "(Curveball rewiring)",
    "label_shuffle": "reference labels exchangeable across candidate pairs (ignores the "
    "dependence among edges sharing a gene)",
}


class RewiredNetworks:
    """Degree-preserving rewirings of the positives of one candidate universe, drawn once
    and shared: the rewired networks depend on the reference and the genes only, never on
    the scores, so every score set on the same ``pairs`` can be tested against the same
    draws (Curveball chains cost far more than reading a score set at them).

    All draws come from one Besag–Clifford hub (parallel Curveball chains): every draw,
    however many stages or score sets ask for them, is exchangeable with the reference
    under H0. ``networks(a, b)`` gives draws ``a … b − 1`` (made on first request):
    directed, flat positions ``source · n + target`` of each draw's edges in an
    ``n × n`` matrix; undirected, its ``(low, high)`` index arrays.
    """

    def __init__(self, pairs: CandidatePairs, seed: int) -> None:
        from scfm_audit.stats._rewire import rewire_labels, rewire_undirected

        self.pairs = pairs
        self.seed = int(seed)
        n = len(pairs.genes)
        src, tgt = pairs.source[pairs.label], pairs.target[pairs.label]
        big = 1 << 40  # the chain is lazy: draws are made only when asked for
        self._stream: Any
        if pairs.directed:
            labs = rewire_labels(src, tgt, n, n, n_draws=big, seed=seed, forbid_self_loops=True)
            self._stream = (np.flatnonzero(lab) for lab in labs)
        else:
            self._stream = rewire_undirected(src, tgt, n, n_draws=big, seed=seed)
        self._draws: list[Any] = []

    def networks(self, a: int, b: int) -> list[Any]:
        from itertools import islice

        if b > len(self._draws):
            self._draws.extend(islice(self._stream, b - len(self._draws)))
        return self._draws[a:b]


def _rewired_auroc_sampler(
    R: np.ndarray, pairs: CandidatePairs, seed: int, shared: RewiredNetworks | None = None
) -> NullSampler:
    """``draw(k, rng)`` giving the AUROCs of ``k`` more degree-preserving rewirings of the
    positives, read from ``shared`` (draws common to every score set on these pairs) or
    from a chain of this score set's own (``seed``)."""
    n1 = pairs.n_pos
    n0 = len(pairs) - n1
    flat = R.ravel()
    at = 0
    own: list[RewiredNetworks] = []

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        nonlocal at
        if shared is None and not own:
            own.append(RewiredNetworks(pairs, seed))  # the chain starts when first asked
        nets = shared if shared is not None else own[0]
        got = nets.networks(at, at + k)
        at += k
        if pairs.directed:
            sums = np.array([flat[idx].sum() for idx in got], dtype=float)
        else:
            sums = np.array([R[lo, hi].sum() for lo, hi in got], dtype=float)
        return (sums - n1 * (n1 + 1) / 2) / (n1 * n0)

    return draw


def _not_assessable(s: np.ndarray, y: np.ndarray) -> str | None:
    finite = np.isfinite(s)
    if not finite[y].any():
        return "no reference edge has a score (e.g. its regulators have zero variance)"
    if np.unique(s[finite]).size < 2:
        return "every scored pair has the same score"
    return None


def edge_recovery(
    scores: EdgeScores,
    pairs: CandidatePairs,
    *,
    n_boot: int = 1000,
    n_perm: int = 999,
    n_perm_max: int = 19_999,
    n_rewire: int = 0,
    null: NullName = "degree_permutation",
    transform: str = "abs",
    seed: int = 0,
    rewired: RewiredNetworks | None = None,
) -> dict[str, Any]:
    """Recovery metrics and null tests of one score set on one candidate universe.

    Returns a dict: ``auroc`` with ``auroc_ci_low/high`` (two-way vertex bootstrap),
    ``auprc``, ``positive_rate``, ``epr``, ``n_candidates``, ``n_positives``,
    ``n_scored`` (non-NaN); the verdict test: ``p`` (two-sided, under ``null``), ``null``
    (its name), ``p_floor`` (smallest p its draws allow), ``p_greater`` / ``p_less`` (its
    one-sided tails), ``n_null_draws``, ``auroc_null_mean`` and ``auroc_null_sd`` (the
    null's centre and spread; :func:`recovery_result` makes the typed result);
    and every null's two-sided p: ``p_degree_permutation``, ``p_node_permutation``,
    ``p_rewire`` (NaN when ``n_rewire`` = 0 and it is not the verdict null),
    ``p_shuffle``; the draws as ``null_<name>``. ``not_assessable`` gives the reason when
    nothing can be tested (then every p is NaN).

    ``rewired``: rewired networks of ``pairs`` shared with other score sets (the rewiring
    null then reads them instead of running a chain of its own from ``seed``).
    """
    from scfm_audit.stats._montecarlo import adaptive_mc_pvalue, permute_within_classes
    from scfm_audit.stats._resampling import label_permutation_auroc

    s = pair_scores(scores, pairs, transform=transform)
    y = pairs.label
    ranks = nan_lowest_ranks(s)
    auc = auroc_from_ranks(ranks, y)
    s_fill = np.where(np.isnan(s), -np.inf, s)
    nan = float("nan")
    out: dict[str, Any] = {
        "auroc": auc,
        "auroc_ci_low": nan,
        "auroc_ci_high": nan,
        "auprc": float(auprc(y, np.where(np.isnan(s), np.nanmin(s) - 1, s)))
        if np.isfinite(s).any()
        else nan,
        "positive_rate": float(y.mean()),
        "epr": float(early_precision_ratio(y, s_fill)),
        "n_candidates": len(y),
        "n_positives": int(y.sum()),
        "n_scored": int((~np.isnan(s)).sum()),
        "p": nan,
        "null": null,
        "p_floor": nan,
        "p_greater": nan,
        "p_less": nan,
        "n_null_draws": 0,
        "auroc_null_mean": nan,
        "auroc_null_sd": nan,
        "p_degree_permutation": nan,
        "p_node_permutation": nan,
        "p_rewire": nan,
        "p_shuffle": nan,
        "not_assessable": _not_assessable(s, y),
    }
    if out["not_assessable"]:
        return out
    lo, hi, _ = vertex_bootstrap_auroc(s, pairs, n_boot=n_boot, seed=seed)
    out.update(auroc_ci_low=lo, auroc_ci_high=hi)
    R = rank_matrix(ranks, pairs)
    perm = label_permutation_auroc(y, s_fill, n_perm=n_perm, seed=seed + 1, alternative="two-sided")
    out["p_shuffle"] = float(perm.p)
    out["null_label_shuffle"] = perm.null

    def relabel(match: str) -> NullSampler:
        classes = gene_roles(pairs, match=match)
        return lambda k, rng: relabelled_auroc_null(
            R, pairs, permute_within_classes(classes, k, rng)
        )

    samplers = {
        "degree_permutation": relabel("degree"),
        "node_permutation": relabel("role"),
        "rewiring": _rewired_auroc_sampler(R, pairs, seed + 5, rewired),
    }
    p_keys = {
        "degree_permutation": "p_degree_permutation",
        "node_permutation": "p_node_permutation",
        "rewiring": "p_rewire",
    }
    for i, (name, sampler) in enumerate(samplers.items()):
        verdict = name == null
        if name == "rewiring" and not verdict and n_rewire == 0:
            continue
        first = n_rewire if name == "rewiring" and n_rewire else n_perm
        stages = (first, max(n_perm_max, first + 1)) if verdict and n_perm_max > first else (first,)
        mc = adaptive_mc_pvalue(sampler, auc, stages=stages, seed=seed + 2 + i)
        out[p_keys[name]] = mc.p
        out[f"null_{name}"] = mc.null
        if verdict:
            out.update(
                p=mc.p,
                p_floor=mc.p_floor,
                p_greater=mc.p_greater,
                p_less=mc.p_less,
                n_null_draws=mc.n_draws,
                auroc_null_mean=float(mc.null.mean()),
                auroc_null_sd=float(mc.null.std()),
            )
    return out


def recovery_result(r: dict[str, Any], *, null: str | None = None) -> StatTestResult:
    """The verdict test of one :func:`edge_recovery` result as a typed
    :class:`~scfm_audit.stats._tests.StatTestResult`: AUROC with its vertex-bootstrap CI
    against the verdict null's own centre (its draws' mean: a null that keeps hubs is not
    centred on 0.5), both Monte-Carlo tails, the attainable floor, the reason when not
    assessable."""
    from scfm_audit.stats._tests import StatTestResult

    null = null or r["null"]
    draws = f"{r['n_null_draws']} draws" if r["n_null_draws"] else "not run"
    return StatTestResult(
        statistic=r["auroc"],
        p=r["p"],
        effect=r["auroc"],
        n=int(r["n_candidates"]),
        test=f"{null.replace('_', ' ')} ({draws}, two-sided)",
        statistic_name="AUROC",
        effect_name="AUROC",
        alternative="two-sided",
        ci_low=r["auroc_ci_low"],
        ci_high=r["auroc_ci_high"],
        p_greater=r["p_greater"],
        p_less=r["p_less"],
        null_value=r["auroc_null_mean"],
        p_floor=r["p_floor"],
        null_scale=r["auroc_null_sd"],
        h0=NULL_H0[null],
        null_name=null,
        reason=r["not_assessable"] or "",
    )
