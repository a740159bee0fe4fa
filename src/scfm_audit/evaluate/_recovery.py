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

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.edges._scores import EdgeScores


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
    return s


def nan_lowest_ranks(s: np.ndarray) -> np.ndarray:
    """Average ranks with NaN placed below every real value (ties among NaN)."""
    s = np.where(np.isnan(s), -np.inf, s)
    return rankdata(s)


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
        dist[a : a + b] = sorted_.weighted_auroc(w[:, src] * w[:, tgt])
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

    def weighted_auroc(self, W: np.ndarray) -> np.ndarray:
        """AUROC with case weights ``W`` ``(b, n)`` given in sorted order: Σ over
        positive–negative pairs of ``W_i W_j`` (½ on tied scores) over ``ΣW_pos · ΣW_neg``."""
        gp = np.add.reduceat(W * self.pos, self.starts, axis=1)
        gn = np.add.reduceat(W * (1 - self.pos), self.starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        with np.errstate(invalid="ignore", divide="ignore"):
            return (gp * (below + 0.5 * gn)).sum(1) / (gp.sum(1) * gn.sum(1))


def weighted_auroc(scores: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` with case weights, for each row of ``weights`` ``(b, n)`` (or
    ``(n,)``): equal to the AUROC of the data with case ``i`` repeated ``weights[i]`` times.
    NaN scores rank lowest; ties count ½."""
    srt = _SortedScores(np.asarray(scores, float), np.asarray(label, bool))
    W = np.atleast_2d(np.asarray(weights, float))[:, srt.order]
    out = srt.weighted_auroc(W)
    return out if np.ndim(weights) == 2 else out[0]
