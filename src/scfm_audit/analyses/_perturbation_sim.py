"""Simulated screens for the calibrations of the perturbation analyses (families B and C):
candidate rows of a :func:`~scfm_audit.data._simulate.simulate_perturbseq` screen with the
shared responder definition, gene-level features on control cells and what a perfect
scorer would know. Not an analysis: the calibrations import it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scfm_audit.analyses._perturbation_common import GENE_FEATURES, ResponderParams

#: simulated screens of the calibration (small: a replicate takes well under a second)
CAL_SIM: dict[str, Any] = {
    "n_cells": 1600,
    "n_genes": 120,
    "n_tfs": 24,
    "n_perturbations": 24,
    "frac_tf_perturbations": 1.0,
    "regulation_strength": 1.5,
    "targets_per_tf": 6.0,
}
CAL_HUB = {
    "n_tfs": 12,
    "n_perturbations": 12,
    "targets_per_tf": 20.0,
    "n_tiers": 2,
    "gene_level_predictability": 1.0,
}


def calibration_screen(
    sim: dict, seed: int, p: ResponderParams | None = None, *, coexpression: bool = False
) -> pd.DataFrame:
    """Candidate rows of a simulated screen (``arm, perturbation, candidate, responder``,
    gene-level features on the arm's controls, ``signal``: rank-normal |true log2FC|, ties
    of zero effect sharing the lowest value; with ``coexpression`` also ``spearman``:
    |Spearman| of perturbed gene and candidate on the arm's control cells)."""
    from scfm_audit.data._dataset import DatasetSpec, control_mask
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._gene_level import gene_statistics
    from scfm_audit.evaluate._de import differential_expression, responder_labels
    from scfm_audit.evaluate._pairwise import rank_normal

    p = p or ResponderParams()
    bench = simulate_perturbseq(**{**CAL_SIM, **sim}, seed=seed)
    spec = DatasetSpec(perturbation="perturbation", control="non-targeting", modality="modality")
    de = responder_labels(
        differential_expression(bench.adata, spec), lfc=p.lfc, fdr=p.fdr, scope=p.fdr_scope
    )
    de = de[de["gene"] != de["perturbation"]]
    truth = bench.true_effects.set_index(["modality", "perturbation", "gene"])["log2fc"]
    key = pd.MultiIndex.from_arrays([de["arm"], de["perturbation"], de["gene"]])
    eff = np.abs(truth.reindex(key).fillna(0.0).to_numpy(float))
    rows = pd.DataFrame(
        {
            "arm": de["arm"].astype(str).to_numpy(),
            "perturbation": de["perturbation"].astype(str).to_numpy(),
            "candidate": de["gene"].astype(str).to_numpy(),
            "responder": de["responder"].to_numpy(bool),
            "signal": rank_normal(eff),
        }
    )
    ctrl = control_mask(bench.adata, spec)
    arm_of = bench.adata.obs["modality"].astype(str).to_numpy()
    for arm in rows["arm"].unique():
        cells = bench.adata[ctrl & (arm_of == arm)]
        st = gene_statistics(cells)
        m = (rows["arm"] == arm).to_numpy()
        for f in GENE_FEATURES:
            rows.loc[m, f] = st[f].reindex(rows.loc[m, "candidate"]).to_numpy(float)
        if coexpression:
            from scfm_audit.edges._coexpression import coexpression as coexp

            co = coexp(cells, method="spearman")
            sub = rows.loc[m]
            v = co.lookup(sub["perturbation"].to_numpy(), sub["candidate"].to_numpy())
            rows.loc[m, "spearman"] = np.abs(v)
    return rows


_CAL_SIM: dict[str, Any] = dict(
    n_cells=2000, n_genes=120, n_tfs=20, n_perturbations=16, frac_tf_perturbations=1.0
)


def calibration_rows(params: dict, seed: int) -> pd.DataFrame:
    """One simulated screen as incremental-value rows: ``arm, perturbation, candidate,
    responder``, the gene features on control cells and an ``edge`` score (``params["edge"]``:
    ``random_hub``, ``candidate_mean``, ``truth`` (with ``strength``) or ``coexpression``)."""
    from scfm_audit.data._dataset import DatasetSpec, control_mask
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._coexpression import coexpression
    from scfm_audit.edges._gene_level import gene_statistics
    from scfm_audit.evaluate._de import differential_expression, responder_labels

    sim = {**_CAL_SIM, **{k: params[k] for k in ("n_cells", "n_genes") if k in params}}
    bench = simulate_perturbseq(
        **sim,
        gene_level_predictability=params.get("gene_level_predictability", 0.0),
        regulation_strength=params.get("regulation_strength", 1.0),
        seed=seed,
    )
    adata = bench.adata
    spec = DatasetSpec(perturbation="perturbation", modality="modality")
    de = responder_labels(differential_expression(adata, spec))
    de = de[de["gene"] != de["perturbation"]]
    ctrl = control_mask(adata, spec)
    stats = gene_statistics(adata[ctrl])
    rows = pd.DataFrame(
        {
            "arm": de["arm"].astype(str).to_numpy(),
            "perturbation": de["perturbation"].astype(str).to_numpy(),
            "candidate": de["gene"].astype(str).to_numpy(),
            "responder": de["responder"].to_numpy(bool),
        }
    )
    for f in GENE_FEATURES:
        rows[f] = stats[f].reindex(rows["candidate"]).to_numpy(float)
    rng = np.random.default_rng([seed, 7])
    noise = rng.normal(size=len(rows))
    kind = params["edge"]
    if kind == "random_hub":
        genes = pd.Index(adata.var_names.astype(str))
        w = rng.pareto(1.3, len(genes)) + 1.0  # heavy-tailed in-weights: hub targets
        hit = np.zeros(len(rows), bool)
        for idx in rows.groupby("perturbation").indices.values():
            cand = rows["candidate"].to_numpy()[idx]
            wc = w[genes.get_indexer(cand)]
            k = min(len(idx), max(1, rng.poisson(10)))
            hit[idx[rng.choice(len(idx), size=k, replace=False, p=wc / wc.sum())]] = True
        rows["edge"] = hit + 0.5 * noise
    elif kind == "candidate_mean":
        m = rows["mean"].to_numpy(float)
        rows["edge"] = (m - m.mean()) / (m.std() + 1e-12) + noise
    elif kind == "truth":
        te = bench.true_effects
        te = te[(te["relation"] != "self") & (te["log2fc"].abs() > 0.1)]
        true = set(zip(te["perturbation"].astype(str), te["gene"].astype(str), strict=True))
        truth = np.array(
            [(a, b) in true for a, b in zip(rows["perturbation"], rows["candidate"], strict=True)]
        )
        rows["edge"] = params["strength"] * truth + noise
    elif kind == "coexpression":
        rho = coexpression(adata[ctrl], method="spearman")
        rows["edge"] = rho.lookup(rows["perturbation"].to_numpy(), rows["candidate"].to_numpy())
    else:
        raise ValueError(f"unknown calibration edge score {kind!r}")
    return rows
