"""Gene-level baselines: pair scores that know nothing about the pair.

The paper's central negative result is that such scores — built only from per-gene
statistics (mean expression, variance, detection rate = 1 − dropout rate) — rank
perturbation responders and reference edges as well as or better than attention and
co-expression. Every attention claim must therefore beat these baselines. They are
:class:`EdgeScores` like any other scorer's output, so every analysis can consume them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm_audit.edges._coexpression import (
    DEFAULT_ROW_CHUNK,
    Transform,
    _count_matrix,
    _iter_row_blocks,
    _resolve_genes,
    _transform_block,
)
from scfm_audit.edges._registry import register_scorer
from scfm_audit.edges._scores import EdgeScores

if TYPE_CHECKING:
    from scfm_audit.data._network import ReferenceNetwork

#: Columns of :func:`gene_statistics`, usable as gene-level features.
STATISTICS = ("mean", "variance", "detection", "mean_counts")
#: Kinds of gene-level pair scores: ``f(s) · f(t)`` and ``f(t)``.
KINDS = ("product", "target")


def gene_statistics(
    adata: Any,
    *,
    counts: str = "X",
    transform: Transform = "log1p",
    genes: Sequence[str] | pd.Index | None = None,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> pd.DataFrame:
    """Per-gene expression statistics, streamed over cells (works on backed AnnData).

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or in the layer ``counts``.
    counts
        ``"X"`` or a layer name.
    transform
        Scale on which ``mean`` and ``variance`` are computed: ``"log1p"`` (each cell scaled
        to 10,000 total counts, then ``log1p``) or ``"raw"`` (counts as they are).
    genes
        Genes to report, in this order (default: all); missing genes are an error.
    row_chunk
        Cells read at a time.

    Returns
    -------
    DataFrame indexed by gene (index name ``"gene"``) with columns

    - ``mean``: mean of the transformed expression over all cells;
    - ``variance``: its sample variance (``ddof=1``), merged across chunks with Chan's
      pairwise update (no sum-of-squares cancellation);
    - ``detection``: fraction of cells with a count > 0 (= 1 − dropout rate);
    - ``mean_counts``: mean raw count.
    """
    gene_idx, names = _resolve_genes(adata, genes)
    matrix = _count_matrix(adata, counts)
    g = len(gene_idx)
    n_tot = 0
    mean = np.zeros(g)
    m2 = np.zeros(g)
    detected = np.zeros(g)
    count_sum = np.zeros(g)
    for block in _iter_row_blocks(matrix, adata.n_obs, row_chunk):
        raw = sp.csr_matrix(block[:, gene_idx]) if sp.issparse(block) else block[:, gene_idx]
        expr = _transform_block(block, gene_idx, transform)  # CSR, zeros implicit
        n_b = expr.shape[0]
        count_sum += np.asarray(raw.sum(axis=0)).ravel()
        detected += np.asarray((raw > 0).sum(axis=0)).ravel()
        # chunk mean and centred sum of squares, exact for the implicit zeros
        csc = expr.tocsc()
        nnz = np.diff(csc.indptr)
        seg = np.repeat(np.arange(g), nnz)
        mean_b = np.bincount(seg, weights=csc.data, minlength=g) / n_b
        dev = csc.data - mean_b[seg]
        m2_b = np.bincount(seg, weights=dev * dev, minlength=g) + (n_b - nnz) * mean_b**2
        # Chan et al. merge of (n_tot, mean, m2) with (n_b, mean_b, m2_b)
        delta = mean_b - mean
        total = n_tot + n_b
        mean += delta * (n_b / total)
        m2 += m2_b + delta**2 * (n_tot * n_b / total)
        n_tot = total
    if n_tot == 0:
        raise ValueError("The AnnData has no cells; gene statistics need at least one.")
    variance = m2 / (n_tot - 1) if n_tot > 1 else np.full(g, np.nan)
    return pd.DataFrame(
        {
            "mean": mean,
            "variance": variance,
            "detection": detected / n_tot,
            "mean_counts": count_sum / n_tot,
        },
        index=pd.Index(names, name="gene"),
    )


def gene_level_scores(
    adata: Any,
    *,
    features: Sequence[str] = ("mean", "variance", "detection"),
    reference: ReferenceNetwork | None = None,
    genes: Sequence[str] | pd.Index | None = None,
    kinds: Sequence[str] = KINDS,
    counts: str = "X",
    transform: Transform = "log1p",
    statistics: pd.DataFrame | None = None,
    dtype: np.dtype | type = np.float32,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> list[EdgeScores]:
    """Gene-level pair baselines: edge scores built from per-gene statistics only.

    For every feature ``f`` in ``features`` (columns of :func:`gene_statistics`):

    - ``gene_level_<f>`` (kind ``"product"``): ``scores[s, t] = f(s) · f(t)`` — high when
      both genes are, e.g., highly expressed; symmetric (``directed=False``).
    - ``target_<f>`` (kind ``"target"``): ``scores[s, t] = f(t)`` — the candidate-gene-only
      baseline the paper uses for perturbation prediction (ranks the candidate targets of
      any source by their own statistic); ``directed=True``.

    and, when ``reference`` is given:

    - ``tf_outdegree``: ``scores[s, t] =`` out-degree of ``s`` in the reference (0 for genes
      that are not sources; degree for undirected networks), counted over the whole
      reference as given — restrict it first (``reference.restrict(genes)``) to count only
      scored genes. A negative control: it is constant over targets, so it cannot rank the
      targets of a source, only the sources.

    Parameters
    ----------
    adata
        AnnData with raw counts (``X`` or the layer ``counts``).
    features
        Statistics to turn into scores (subset of ``mean``, ``variance``, ``detection``,
        ``mean_counts``).
    reference
        Optional :class:`ReferenceNetwork` for the ``tf_outdegree`` control.
    genes
        Genes to score, in this order (default: all).
    kinds
        Which of ``"product"`` and ``"target"`` to produce.
    counts, transform, row_chunk
        As in :func:`gene_statistics`.
    statistics
        Precomputed :func:`gene_statistics` table (indexed by gene) to reuse.
    dtype
        Dtype of the dense ``(genes, genes)`` score matrices.

    Returns
    -------
    List of :class:`EdgeScores` (products, then targets, then ``tf_outdegree``), each with
    NaN diagonal, ``n_cells = adata.n_obs``, no coverage (every cell informs every pair) and
    ``params`` naming the feature, kind, transform and counts.
    """
    unknown = [f for f in features if f not in STATISTICS]
    if unknown:
        raise ValueError(f"Unknown gene-level feature(s) {unknown}; choose from {STATISTICS}.")
    bad_kinds = [k for k in kinds if k not in KINDS]
    if bad_kinds:
        raise ValueError(f"Unknown kind(s) {bad_kinds}; choose from {KINDS}.")
    _, names = _resolve_genes(adata, genes)
    if statistics is None:
        statistics = gene_statistics(
            adata, counts=counts, transform=transform, genes=names, row_chunk=row_chunk
        )
    else:
        missing = names.difference(statistics.index)
        if len(missing):
            raise ValueError(f"statistics lacks genes {missing[:10].tolist()}.")
        statistics = statistics.loc[names]
    n_cells = int(adata.n_obs)
    base = {"counts": counts, "transform": transform}
    out: list[EdgeScores] = []
    for kind in (k for k in KINDS if k in kinds):
        for feature in features:
            v = statistics[feature].to_numpy(dtype=np.float64)
            if kind == "product":
                scores, method, directed = np.outer(v, v), f"gene_level_{feature}", False
            else:
                scores, method, directed = np.tile(v, (len(v), 1)), f"target_{feature}", True
            out.append(
                _edge_scores(
                    scores,
                    names,
                    method,
                    n_cells=n_cells,
                    directed=directed,
                    dtype=dtype,
                    params={**base, "feature": feature, "kind": kind},
                )
            )
    if reference is not None:
        degree = reference.out_degree().reindex(names, fill_value=0).to_numpy(np.float64)
        out.append(
            _edge_scores(
                np.repeat(degree[:, None], len(names), axis=1),
                names,
                "tf_outdegree",
                n_cells=n_cells,
                directed=True,
                dtype=dtype,
                params={
                    "reference": reference.name,
                    "reference_directed": reference.directed,
                    "kind": "source",
                },
            )
        )
    return out


def _edge_scores(
    scores: np.ndarray,
    genes: pd.Index,
    method: str,
    *,
    n_cells: int,
    directed: bool,
    dtype: np.dtype | type,
    params: dict[str, Any],
) -> EdgeScores:
    scores = scores.astype(dtype, copy=False)
    np.fill_diagonal(scores, np.nan)
    return EdgeScores(
        scores=scores,
        genes=genes,
        method=method,
        n_cells=n_cells,
        directed=directed,
        params=params,
    )


@register_scorer("gene_level")
def _gene_level_scorer(
    adata: Any, *, genes: Sequence[str] | None = None, seed: int = 0, **params: Any
) -> list[EdgeScores]:
    """Registry entry: :func:`gene_level_scores` (deterministic; ``seed`` is accepted for the
    common scorer signature and unused)."""
    return gene_level_scores(adata, genes=genes, **params)


__all__ = ["KINDS", "STATISTICS", "gene_level_scores", "gene_statistics"]
