"""Shared plumbing of ``attention_vs_coexpression`` and ``gene_level_null``: the cells an
edge source was computed on, gene statistics on those cells, score matrices built from
candidate-pair vectors, and the stated layer choice behind a scorecard answer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scfm_audit.analyses._contract import AnalysisContext
from scfm_audit.evaluate._recovery import CandidatePairs


def edge_cells(ctx: AnalysisContext, edges: str, dataset: str) -> np.ndarray:
    """Obs positions an edge source uses (controls or all cells, subsampled with the run
    seed)."""
    return np.asarray(ctx.edge_cells(edges, dataset))


def same_cells(ctx: AnalysisContext, a: str, b: str, dataset: str) -> str | None:
    """None when edge sources ``a`` and ``b`` were computed on the same cells of
    ``dataset`` (their cell sets compared), else the reason they were not."""
    ca, cb = edge_cells(ctx, a, dataset), edge_cells(ctx, b, dataset)
    if len(ca) == len(cb) and np.array_equal(ca, cb):
        return None
    shared = len(np.intersect1d(ca, cb))
    return (
        f"{a} uses {len(ca)} cells and {b} {len(cb)} ({shared} shared): give both edge "
        "sources the same 'cells' and 'max_cells' so they use the same cells"
    )


def gene_stats(ctx: Any, edges: str, dataset: str) -> pd.DataFrame:
    """Gene statistics (mean and variance of log1p-normalised expression, detection) on
    the cells edge source ``edges`` used (all cells of the dataset if unknown)."""
    from scfm_audit.edges._gene_level import gene_statistics

    adata = ctx.dataset(dataset)
    cells = edge_cells(ctx, edges, dataset)
    return gene_statistics(adata[cells], counts=ctx.dataset_spec(dataset).counts)


def scores_from_pairs(values: np.ndarray, pairs: CandidatePairs, method: str):
    """An :class:`EdgeScores` holding ``values`` on the candidate pairs (NaN elsewhere;
    undirected pairs written both ways), so recovery kernels can evaluate a pair vector."""
    from scfm_audit.edges._scores import EdgeScores

    n = len(pairs.genes)
    m = np.full((n, n), np.nan)
    m[pairs.source, pairs.target] = values
    if not pairs.directed:
        m[pairs.target, pairs.source] = values
    return EdgeScores(m, pairs.genes, method=method, directed=pairs.directed)


def pooled_sets(score_sets: list) -> list:
    """Head-pooled score sets (per layer, or the single unlayered one)."""
    return [s for s in score_sets if s.head is None]


# ---------------------------------------------------------------- shared calibration data
def calibration_setting(sc_params: dict, seed: int) -> dict:
    """One simulated data set for the calibrations of ``attention_vs_coexpression`` and
    ``gene_level_null``: a simulation (500 cells) with its own co-expression, its gene
    statistics, a reference (``reference``: "hub" = heavy-tailed network placed at random,
    independently of the data; "grn" = the simulator's planted GRN, which co-expression
    recovers) and a synthetic "attention" score vector on the candidate pairs
    (``attention``):

    * ``"coexpression"`` — |Spearman| itself (+ optional ``noise``);
    * ``"monotone"`` — a monotone transform of |Spearman| plus noise (``noise`` SD in
      rank-normal units): nothing beyond co-expression;
    * ``"gene_level"`` — a function of the genes' mean and detection only, plus noise;
    * ``"planted"`` — rank-normal |Spearman| plus a shift ``strength`` on reference edges
      (signal beyond co-expression and gene-level statistics).

    Returns dict with ``pairs``, ``stats``, ``coexp`` (|Spearman| per pair) and ``attn``.
    """
    from scfm_audit.data._hub_reference import hub_reference, place_reference
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._coexpression import coexpression
    from scfm_audit.edges._gene_level import gene_statistics
    from scfm_audit.evaluate._pairwise import rank_normal
    from scfm_audit.evaluate._recovery import candidate_pairs, pair_scores

    n = sc_params.get("n_genes", 150)
    ref_kind = sc_params.get("reference", "hub")
    sim = dict(
        n_cells=500,
        n_genes=n,
        n_tfs=max(2, n // 10),
        n_perturbations=2,
        regulation_strength=1.0 if ref_kind == "grn" else 0.0,
        gene_level_predictability=sc_params.get("gene_level_predictability", 0.0),
    )
    bench = simulate_perturbseq(**sim, seed=seed)
    coexp = coexpression(bench.adata, method="spearman")
    stats = gene_statistics(bench.adata)
    if ref_kind == "grn":
        ref = bench.grn
    else:
        template = hub_reference(n, seed=seed + 1, directed=sc_params.get("directed", True))
        ref = place_reference(template, coexp.genes, seed=seed + 2)
    pairs = candidate_pairs(coexp.genes, ref)
    c = pair_scores(coexp, pairs, transform="abs")
    rng = np.random.default_rng(seed + 3)
    noise = sc_params.get("noise", 1.0) * rng.normal(size=len(pairs))
    kind = sc_params["attention"]
    if kind == "coexpression":
        attn = rank_normal(c) + noise
    elif kind == "monotone":
        attn = np.exp(2 * rank_normal(c)) + np.exp(2) * noise / 4  # convex, heteroscedastic
    elif kind == "gene_level":
        v = stats.reindex(pairs.genes)
        m, d = v["mean"].to_numpy(), v["detection"].to_numpy()
        attn = m[pairs.source] * m[pairs.target] + d[pairs.target] + 0.3 * noise
    elif kind == "planted":
        attn = rank_normal(c) + noise + sc_params["strength"] * pairs.label
    else:
        raise ValueError(f"unknown synthetic attention {kind!r}")
    return {"pairs": pairs, "stats": stats, "coexp": c, "attn": attn, "ref": ref}
