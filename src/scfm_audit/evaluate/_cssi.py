"""Kernels of Cell-State Stratified Interpretability (CSSI): stratify cells, aggregate
per-stratum edge scores, compare with pooled scoring.

* :func:`hvg_pca` / :func:`stratify` — strata from an annotation, Leiden on a kNN graph
  (k = 15) of a cell representation (the model's cell embeddings, the paper's design; or
  HVG PCA for model-free scores), or k-means; :func:`enforce_min_size` drops strata
  smaller than the minimum (their cells do not contribute) and says which.
* :func:`cssi_aggregate` — CSSI-mean = Σ (n_k / N) · score_k (weights renormalised over
  the strata that scored the pair) and CSSI-max = the score of largest magnitude.
* :func:`top_k_f1` — F1 of the top-K pairs (K = number of reference edges by default:
  then F1 = precision = recall at K). The paper's scaling failure shows in F1, not AUROC.
* :func:`paired_comparison` — does score set A (CSSI) rank the reference edges better
  than B (pooled), on the same candidate pairs? Two gene-level procedures:

  - p-value: paired permutation test. H0: the two score sets' rankings are exchangeable
    within every source gene (the pairs sharing a source are swapped together, so the
    dependence among a hub's edges is kept). Each draw swaps A's and B's (normalised)
    ranks for all candidate pairs of a random half of the source genes and recomputes the
    metric difference; two-sided Monte-Carlo p (floor 2/(n+1)).
  - CI: two-way vertex bootstrap (genes resampled within role, pair weight w_s · w_t, the
    *same* weights for both score sets) of the difference and of the ratio A / B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

from scfm_audit.evaluate._recovery import (
    CandidatePairs,
    auroc_from_ranks,
    counts_top_k_f1,
    gene_roles,
    nan_lowest_ranks,
    weighted_auroc,
)

Metric = Literal["auroc", "f1"]

__all__ = [
    "cssi_aggregate",
    "enforce_min_size",
    "hvg_pca",
    "paired_comparison",
    "random_strata",
    "recovery_metrics",
    "stratify",
    "top_k_f1",
]


# -- strata ------------------------------------------------------------------------------------
def hvg_pca(
    adata: AnnData, *, counts: str = "X", n_top_genes: int = 2000, n_pcs: int = 20, seed: int = 0
) -> np.ndarray:
    """(cells × n_pcs) PCA of log-normalised highly variable genes (scanpy defaults:
    normalise to 10⁴, log1p, Seurat HVGs, scaled to unit variance clipped at 10)."""
    import scanpy as sc

    X = adata.X if counts == "X" else adata.layers[counts]
    tmp = sc.AnnData(X.astype(np.float32) if hasattr(X, "astype") else np.asarray(X, np.float32))
    tmp.var_names = pd.Index(adata.var_names).astype(str)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    if tmp.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, flavor="seurat")
        tmp = tmp[:, tmp.var["highly_variable"].to_numpy()].copy()
    if hasattr(tmp.X, "toarray"):
        tmp.X = tmp.X.toarray()
    sc.pp.scale(tmp, max_value=10)
    n = max(1, min(n_pcs, tmp.n_obs - 1, tmp.n_vars - 1))
    sc.pp.pca(tmp, n_comps=n, random_state=seed)
    return np.asarray(tmp.obsm["X_pca"], dtype=np.float64)


def stratify(
    X: np.ndarray,
    *,
    method: Literal["leiden", "kmeans"] = "leiden",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """Integer stratum labels (0 … K−1) of the rows of ``X`` (cells × features).

    ``"leiden"``: kNN graph (``n_neighbors``, Euclidean, scanpy's UMAP connectivities)
    and Leiden at ``resolution`` (igraph backend, 2 iterations): K follows from the data.
    ``"kmeans"``: scikit-learn k-means with ``n_clusters`` (10 restarts).
    """
    X = np.asarray(X, dtype=np.float64)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        if not n_clusters or n_clusters < 1:
            raise ValueError("k-means strata need n_clusters ≥ 1.")
        from threadpoolctl import threadpool_limits

        k = min(int(n_clusters), len(X))
        # one thread: small inputs, and sklearn's OpenMP pool spins badly on busy machines
        with threadpool_limits(1):
            km: np.ndarray = KMeans(k, n_init=10, random_state=seed).fit_predict(X).astype(np.int64)
        return km
    if method != "leiden":
        raise ValueError(f"method must be 'leiden' or 'kmeans', got {method!r}.")
    import scanpy as sc

    tmp = sc.AnnData(np.zeros((len(X), 1), dtype=np.float32))
    tmp.obsm["X_rep"] = X
    sc.pp.neighbors(
        tmp, n_neighbors=min(n_neighbors, len(X) - 1), use_rep="X_rep", random_state=seed
    )
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    leiden: np.ndarray = tmp.obs["leiden"].astype(int).to_numpy().astype(np.int64)
    return leiden


def enforce_min_size(labels: np.ndarray, min_size: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Relabel strata 0 … K−1 by decreasing size, dropping those with fewer than
    ``min_size`` cells (label −1). Output: labels and a table ``stratum, label, n_cells,
    kept`` (``label`` = the input label)."""
    labels = np.asarray(labels)
    uniq, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    out = np.full(len(labels), -1, dtype=np.int64)
    rows, k = [], 0
    for i in order:
        kept = bool(counts[i] >= min_size)
        if kept:
            out[labels == uniq[i]] = k
        rows.append(
            {
                "stratum": k if kept else -1,
                "label": str(uniq[i]),
                "n_cells": int(counts[i]),
                "kept": kept,
            }
        )
        k += kept
    return out, pd.DataFrame(rows)


def random_strata(labels: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``n_draws`` random stratifications with the sizes of ``labels`` (from
    :func:`enforce_min_size`): the kept cells' labels permuted at random (every stratum keeps
    its number of cells), dropped cells (−1) stay dropped. Output ``(n_draws, n_cells)``:
    the control "any stratification of these sizes" for CSSI."""
    labels = np.asarray(labels)
    keep = np.flatnonzero(labels >= 0)
    out = np.repeat(labels[None, :], n_draws, axis=0)
    for i in range(n_draws):
        out[i, keep] = rng.permutation(labels[keep])
    return out


def cssi_aggregate(
    scores: Sequence[np.ndarray],
    sizes: Sequence[int] | np.ndarray,
    *,
    variant: Literal["mean", "max"],
) -> np.ndarray:
    """Aggregate per-stratum score matrices into one.

    ``"mean"``: Σ_k (n_k / N) · score_k over the strata in which the pair has a score
    (weights renormalised there; NaN where no stratum scored it). ``"max"``: the
    per-stratum score of largest magnitude (CSSI-max = max_k |score_k|, sign kept).
    """
    S = np.stack([np.asarray(s, dtype=np.float64) for s in scores])
    w = np.asarray(sizes, dtype=np.float64)[:, None, None] * np.isfinite(S)
    if variant == "mean":
        tot = w.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (w * np.nan_to_num(S)).sum(0) / tot
        return np.where(tot > 0, out, np.nan)
    if variant == "max":
        mag = np.where(np.isfinite(S), np.abs(S), -np.inf)
        k = mag.argmax(0)
        out = np.take_along_axis(S, k[None], 0)[0]
        return np.where(np.isfinite(mag).any(0), out, np.nan)
    raise ValueError(f"variant must be 'mean' or 'max', got {variant!r}.")


# -- metrics -------------------------------------------------------------------------------
def top_k_f1(scores: np.ndarray, label: np.ndarray, k: int | None = None) -> float:
    """F1 of calling the ``k`` highest-scoring pairs edges (NaN lowest; ties by position).
    ``k`` = number of positives by default (F1 = precision@K = recall@K)."""
    label = np.asarray(label, dtype=bool)
    n_pos = int(label.sum())
    if n_pos == 0:
        return float("nan")
    k = n_pos if k is None else int(k)
    s = np.where(np.isnan(scores), -np.inf, scores)
    top = np.argsort(-s, kind="stable")[:k]
    tp = int(label[top].sum())
    return 2 * tp / (k + n_pos)


def recovery_metrics(scores: np.ndarray, pairs: CandidatePairs) -> dict[str, float]:
    """AUROC and top-K F1 of candidate-pair scores (NaN lowest)."""
    return {
        "auroc": auroc_from_ranks(nan_lowest_ranks(scores), pairs.label),
        "f1": top_k_f1(scores, pairs.label),
    }


def _metric(metric: Metric, scores: np.ndarray, label: np.ndarray) -> float:
    if metric == "auroc":
        return auroc_from_ranks(nan_lowest_ranks(scores), label)
    return top_k_f1(scores, label)


def _auroc_of_codes(codes: np.ndarray, label: np.ndarray, size: int) -> float:
    """AUROC (ties ½) of integer scores in 0 … ``size`` − 1 from their histograms among
    positives and negatives: O(n + size), where ranking costs a sort. The Mann–Whitney
    count is a sum of halves, exact in float64, so this equals
    ``auroc_from_ranks(nan_lowest_ranks(codes), label)`` to the last bit."""
    n1 = int(label.sum())
    n0 = len(label) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    hp = np.bincount(codes[label], minlength=size).astype(np.float64)
    hn = np.bincount(codes[~label], minlength=size).astype(np.float64)
    below = np.cumsum(hn) - hn
    return float((hp * (below + 0.5 * hn)).sum() / (n1 * n0))


def _weighted_f1(scores: np.ndarray, label: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Top-K F1 with bootstrap multiplicities ``W`` (b, n): the top pairs up to weight
    K = Σ W·label (:func:`~scfm_audit.evaluate._recovery.counts_top_k_f1`)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-s, kind="stable")
    return counts_top_k_f1(
        np.take(W, order, axis=1), np.flatnonzero(np.asarray(label, bool)[order])
    )


def _weighted(metric: Metric, scores: np.ndarray, label: np.ndarray, W: np.ndarray) -> np.ndarray:
    if metric == "auroc":
        return weighted_auroc(scores, label, W, counts=True)  # bootstrap multiplicities
    return _weighted_f1(scores, label, W)


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    pairs: CandidatePairs,
    *,
    metric: Metric = "auroc",
    n_perm: int = 999,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Compare candidate-pair scores ``a`` (e.g. CSSI) with ``b`` (pooled) on ``metric``.

    Output: ``metric_a, metric_b, diff`` (a − b), ``ratio`` (a / b), their vertex-bootstrap
    95% CIs (``diff_ci_low/high``, ``ratio_ci_low/high``), ``p`` (two-sided paired
    permutation over source genes, see the module docstring) with its tails ``p_greater``
    / ``p_less``, ``p_floor`` (raised when few source genes give few distinct swaps),
    ``n_perm``.
    """
    label = pairs.label
    ma, mb = _metric(metric, a, label), _metric(metric, b, label)
    out = {"metric_a": ma, "metric_b": mb, "diff": ma - mb}
    out["ratio"] = ma / mb if mb else float("nan")
    rng = np.random.default_rng(seed)
    # -- paired permutation: swap the two rankings for a random half of the source genes
    n = len(label)
    ranks_a, ranks_b = nan_lowest_ranks(a), nan_lowest_ranks(b)
    ra, rb = ranks_a / n, ranks_b / n
    src = np.unique(pairs.source, return_inverse=True)[1]
    n_src = src.max() + 1 if len(src) else 0
    null = np.empty(n_perm)
    if metric == "auroc":  # the mixed rankings' AUROCs by counting, not by sorting
        ca, cb = np.rint(2 * ranks_a).astype(np.int64), np.rint(2 * ranks_b).astype(np.int64)
    for i in range(n_perm):
        flip = (rng.random(n_src) < 0.5)[src]
        if metric == "auroc":
            null[i] = _auroc_of_codes(np.where(flip, cb, ca), label, 2 * n + 1) - (
                _auroc_of_codes(np.where(flip, ca, cb), label, 2 * n + 1)
            )
            continue
        null[i] = _metric(metric, np.where(flip, rb, ra), label) - _metric(
            metric, np.where(flip, ra, rb), label
        )
    obs = _metric(metric, ra, label) - _metric(metric, rb, label)  # = diff up to ties
    nan = float("nan")
    if np.isfinite(obs) and n_perm:
        from scfm_audit.stats._montecarlo import attainable_floor

        ge = float((1 + np.sum(null >= obs - 1e-12)) / (n_perm + 1))
        le = float((1 + np.sum(null <= obs + 1e-12)) / (n_perm + 1))
        out.update(
            p=min(1.0, 2 * min(ge, le)),
            p_greater=ge,
            p_less=le,
            p_floor=attainable_floor(null, "two-sided"),
        )
    else:
        out.update(p=nan, p_greater=nan, p_less=nan, p_floor=nan)
    out["n_perm"] = int(n_perm)
    # -- two-way vertex bootstrap, the same gene weights for both score sets
    role = gene_roles(pairs, match="role")
    strata = [np.flatnonzero(role == r) for r in np.unique(role)]
    ng = len(pairs.genes)
    da, db = np.empty(n_boot), np.empty(n_boot)
    step = max(1, (1 << 22) // max(n, 1))
    for s0 in range(0, n_boot, step):
        k = min(step, n_boot - s0)
        w = np.zeros((k, ng))
        for idx in strata:
            w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=k)
        W = np.take(w, pairs.source, axis=1) * np.take(w, pairs.target, axis=1)
        da[s0 : s0 + k] = _weighted(metric, a, label, W)
        db[s0 : s0 + k] = _weighted(metric, b, label, W)
    ok = np.isfinite(da) & np.isfinite(db)
    for name, v in (
        ("diff", da - db),
        ("ratio", np.divide(da, db, where=db > 0, out=np.full_like(da, np.nan))),
    ):
        v = v[ok & np.isfinite(v)]
        lo, hi = np.quantile(v, [0.025, 0.975]) if len(v) else (np.nan, np.nan)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
    return out
