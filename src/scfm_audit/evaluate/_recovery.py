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


def clustered_auroc_bootstrap(
    scores: np.ndarray,
    label: np.ndarray,
    cluster: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    ci: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Percentile CI of AUROC under a cluster bootstrap (resample whole clusters — e.g.
    all candidate pairs of one TF — with replacement).

    Exact and fast: with cluster multiplicities w, the resampled AUROC is
    ``w_posᵀ M w / (Σ w·n1_c · Σ w·n0_c)`` where ``M[c, d]`` = Σ over positives i in cluster
    c and negatives j in cluster d of H(x_i − x_j) (H = 1, ½ on ties, 0). ``M`` is built
    once by sorting, so each draw is one small matrix–vector product.
    """
    s = np.where(np.isnan(scores), -np.inf, scores)
    codes, cl = np.unique(cluster, return_inverse=True)
    C = len(codes)
    pos_mask = label.astype(bool)
    neg_s, neg_c = s[~pos_mask], cl[~pos_mask]
    pos_s, pos_c = s[pos_mask], cl[pos_mask]
    M = np.zeros((C, C))
    for d in range(C):
        nd = np.sort(neg_s[neg_c == d])
        if len(nd) == 0:
            continue
        below = np.searchsorted(nd, pos_s, side="left")
        tied = np.searchsorted(nd, pos_s, side="right") - below
        np.add.at(M[:, d], pos_c, below + 0.5 * tied)
    n1c = np.bincount(pos_c, minlength=C).astype(float)
    n0c = np.bincount(neg_c, minlength=C).astype(float)
    rng = np.random.default_rng(seed)
    W = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(float)  # (B, C)
    num = np.einsum("bc,cd,bd->b", W, M, W)
    den = (W @ n1c) * (W @ n0c)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = num / den
    dist = dist[np.isfinite(dist)]
    if len(dist) == 0:
        return float("nan"), float("nan"), dist
    a = (1 - ci) / 2
    lo, hi = np.quantile(dist, [a, 1 - a])
    return float(lo), float(hi), dist
