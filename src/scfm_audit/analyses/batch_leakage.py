"""Analysis 16 — ``batch_leakage``: do an edge source's edges carry batch / donor?

Per dataset with a batch column (the dataset spec's ``batch``; the simulator's
``donor``) × edge source (head-pooled score sets; a layered source per layer):

1. The source's top ``top_k`` edges by |score| (an undirected source once per pair).
   Per cell (the source's own cells, at most ``max_cells``, seeded), the features are the
   products ``x_s · x_t`` of log-normalised expression (counts / total × 10⁴, log1p) over
   those edges, times the edge's score when ``weight_by_score``.
2. Batch predictability: ``folds``-fold cross-validated balanced accuracy of a ridge
   classifier on standardised features (scikit-learn's ``RidgeClassifier``, computed in
   closed form so that a permutation null of thousands of draws is affordable; see
   :mod:`scfm_audit.evaluate._leakage`). Folds are stratified by stratum and never see
   the batch labels. Chance: the batch labels permuted **within strata** (default: cell
   state), so a batch that merely holds a different mix of cell states is not credited.
   Three feature sets, each with its own permutation test (units: cells):

   * ``edges`` — the edge products (the claim);
   * ``genes`` — the expression of the genes of those edges (descriptive: how much batch
     the same genes carry on their own);
   * ``edges_beyond_genes`` — the edge products residualised on the genes' expression
     (least squares, fitted without labels; descriptive: batch information the edges
     carry that a linear model of the genes does not).

3. Artifact sensitivity per edge (descriptive table and figure): ``|r_full − r_bal| /
   max(|r_full|, 0.01)``, ``r`` the Pearson correlation of the edge's genes over all the
   cells and (mean over ``n_resamples``) over batch-balanced resamples (every batch
   down-sampled to the smallest); edges above ``sensitivity_threshold`` (0.5) flagged.
4. Leave-one-batch-out stability (co-expression sources, which can be re-scored
   cheaply): Jaccard of the top-k of the source re-computed without each batch with the
   full top-k.

Claim (one scorecard line per dataset × source): "<source>'s edges leak batch" —
test: the ``edges`` balanced accuracy against its within-stratum permutation null;
H0: within each stratum the batch labels are exchangeable with respect to the edge
features (the edges carry no batch information beyond cell-state composition);
one-sided, direction "greater" (staged Monte-Carlo p, floor 1/(draws + 1)). A layered
source: the layer of ``verdict_layer`` (a priori, or the largest null-standardised
accuracy with p × layers).

How the scorecard reads it: **"yes" = leakage found** (batch is predictable from the
source's edges beyond chance): the QC standard "no batch leakage" FAILS. "no evidence"
= no leakage detected at this size (the standard passes, with the power caveat of the
detectability analysis); the test is one-sided, so "opposite" cannot occur (an accuracy
below chance is not tested). Edge products are functions of gene expression, so a batch
that shifts gene means leaks into every source's edges; read the claim with the
``genes`` row beside it and the ``edges_beyond_genes`` row for what is specific to the
edges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisResult,
    LayerClaimParams,
    Unit,
    choose_layer,
    register_analysis,
    source_label,
)
from scfm_audit.evaluate._leakage import (
    artifact_sensitivity,
    edge_products,
    jaccard,
    leakage_test,
    residualise,
    top_edges,
)

_SPEC_FIELDS = ("cell_state", "perturbation", "modality", "batch")


class BatchLeakageParams(LayerClaimParams):
    datasets: list[str] | None = Field(None, description="datasets to use (default: all)")
    edges: list[str] | None = Field(None, description="edge sources (default: all)")
    top_k: int = Field(50, ge=2, description="edges per source: the top-k by |score|")
    weight_by_score: bool = Field(False, description="features x_s·x_t times the edge score")
    max_cells: int = Field(1000, ge=20, description="cells of the source used (seeded subsample)")
    strata: str | None = Field(
        "cell_state",
        description="labels are permuted within these strata: a dataset-spec field "
        "(cell_state, perturbation, modality) or an obs column; None: no strata",
    )
    folds: int = Field(5, ge=2, description="cross-validation folds (stratified by stratum)")
    alpha: float = Field(1.0, gt=0, description="ridge penalty of the classifier")
    n_perm: int = Field(999, ge=19, description="permutation draws of every test")
    n_perm_max: int = Field(
        9999, ge=0, description="the claim's null draws up to this many while p < 0.05"
    )
    n_resamples: int = Field(20, ge=1, description="batch-balanced resamples (sensitivity)")
    sensitivity_threshold: float = Field(0.5, gt=0, description="edges above: flagged")
    lobo: bool = Field(True, description="leave-one-batch-out top-k (co-expression sources)")


def _demo(*, quick: bool, models: bool) -> dict:
    """On ``sim`` (three donors, batch_strength 0.1), every source: ~5 s per head-pooled
    score set on 2 CPUs (99 draws, up to 499 for the claim; 400 cells)."""
    return {
        "batch_leakage": {
            "datasets": ["sim"],
            "max_cells": 400,
            "n_perm": 99,
            "n_perm_max": 499,
            "n_resamples": 10,
        }
    }


QUICK = {"max_cells": 200, "n_perm": 49, "n_perm_max": 0, "n_resamples": 3, "top_k": 20}


@register_analysis(
    "batch_leakage",
    description="batch / donor predictability from per-cell edge products of each source's "
    "top-k edges (CV ridge classifier, labels permuted within cell states), against the "
    "same genes' expression; per-edge artifact sensitivity after batch-balanced "
    "resampling; leave-one-batch-out top-k stability",
    params=BatchLeakageParams,
    version="1.0",
    category="E. Quality control",
    reference="SPEC catalogue 16 (batch leakage; artifact sensitivity index)",
    quick=QUICK,
    demo=_demo,
    claims=(
        (
            "<source>'s edges leak batch (<batch column>)",
            "cross-validated balanced accuracy of a ridge classifier on per-cell products of the "
            "source's top-k edges, against batch labels permuted within cell states (H0: within "
            "each cell state, batch exchangeable with respect to the edge features), one-sided "
            "Monte-Carlo; 'yes' = leakage found (the standard 'no batch leakage' fails)",
        ),
    ),
)
def run_batch_leakage(ctx: AnalysisContext, p: BatchLeakageParams) -> AnalysisResult:
    from scfm_audit.plotting import distribution_figure, leakage_figure

    rows: list[dict[str, Any]] = []
    sens_rows: list[pd.DataFrame] = []
    lobo_rows: list[pd.DataFrame] = []
    notes: list[str] = []
    figures: dict[str, Any] = {}
    panels: dict[str, dict] = {}
    for ds in p.datasets or ctx.dataset_names():
        spec = ctx.dataset_spec(ds)
        adata = ctx.dataset(ds)
        edge_names = list(p.edges or ctx.edge_names())
        why = _no_batch(spec, adata)
        if why:
            for en in edge_names:
                ctx.not_assessable(
                    Unit(ds, method=en), claim=f"{en}'s edges leak batch", reason=why
                )
            notes.append(f"{ds}: {why}; batch leakage not assessable.")
            continue
        strata_col = _strata_column(p.strata, spec, adata, notes, ds)
        for en in edge_names:
            sets = [s for s in ctx.edge_scores(en, ds) if s.head is None]
            if not sets:
                notes.append(f"{ds}/{en}: no score sets; not evaluated.")
                continue
            cells = _cells(ctx, en, ds, p.max_cells)
            batch = adata.obs[spec.batch].astype(str).to_numpy()[cells]
            strata = adata.obs[strata_col].astype(str).to_numpy()[cells] if strata_col else None
            claim = f"{source_label(sets[0])}'s edges leak batch ({spec.batch})"
            if len(np.unique(batch)) < 2:
                ctx.not_assessable(
                    Unit.of(sets[0], ds), claim=claim, reason="the source's cells hold one batch"
                )
                continue
            X, var_pos = _expression(ctx, ds, cells)
            per_layer = []
            for es in ctx.progress(sets, description=f"batch leakage {ds}/{en}"):
                out = _one_set(ctx, p, es, ds, X, var_pos, batch, strata)
                if out is None:
                    notes.append(f"{ds}/{es.label}: fewer than 2 of its top edges are measured.")
                    continue
                res, mc, table, sens = out
                rows.extend({**es.meta(), "dataset": ds, "edges": en, **r} for r in table)
                sens_rows.append(sens.assign(dataset=ds, edges=en, label=es.label, layer=es.layer))
                ctx.describe(
                    res,
                    Unit.of(es, ds),
                    hypothesis=f"batch is predictable from {es.label}'s edge products",
                )
                per_layer.append((es, res, mc, table))
            if not per_layer:
                continue
            if per_layer[0][0].layer is None:
                i, res, why_layer = 0, per_layer[0][1], ""
            else:
                i, res, why_layer = choose_layer(
                    [(es.layer or 0, r) for es, r, _, _ in per_layer], p.verdict_layer
                )
                per_layer = sorted(per_layer, key=lambda x: x[0].layer or 0)
            es, _, mc, table = per_layer[i]
            ctx.claim(
                res,
                Unit.of(es, ds),
                claim=claim,
                direction="greater",
                hypothesis=f"batch ({spec.batch}) is predictable from {es.label}'s top-{p.top_k} "
                "edge products beyond within-cell-state chance",
                layer_choice=why_layer,
            )
            _describe_genes(
                ctx,
                p,
                es,
                ds,
                X,
                var_pos,
                batch,
                strata,
                rows,
                en,
                panels,
                (table[0]["balanced_accuracy"], mc.null),
            )
            if p.lobo:
                lobo_rows.extend(_lobo(ctx, p, en, es, ds, notes))
    table = pd.DataFrame(rows)
    sens = pd.concat(sens_rows, ignore_index=True) if sens_rows else pd.DataFrame()
    tables = {"leakage": table}
    if not sens.empty:
        sens["flagged"] = sens["sensitivity"] > p.sensitivity_threshold
        tables["sensitivity"] = sens
        counts = (
            sens.groupby(["dataset", "edges", "label"], dropna=False)
            .agg(
                n_edges=("flagged", "size"),
                n_flagged=("flagged", "sum"),
                median_sensitivity=("sensitivity", "median"),
            )
            .reset_index()
        )
        tables["sensitivity_counts"] = counts
        figures["sensitivity"] = distribution_figure(
            sens,
            group="label",
            value="sensitivity",
            col="dataset",
            chance=p.sensitivity_threshold,
            title=f"artifact sensitivity per edge (dotted: flag threshold "
            f"{p.sensitivity_threshold})",
            ylabel="|r_full − r_balanced| / max(|r_full|, 0.01)",
        )
    if lobo_rows:
        tables["lobo"] = pd.DataFrame(lobo_rows)
    if panels:
        figures["accuracy_vs_null"] = leakage_figure(
            panels,
            title="batch predictability: observed balanced accuracy (dot) against "
            "its within-stratum permutation null",
        )
    if table.empty:
        tables = {"leakage": pd.DataFrame({"note": notes or ["nothing evaluated"]})}
    return AnalysisResult(
        tables=tables, figures=figures, summary=_summary(table, sens), notes=notes
    )


def _no_batch(spec, adata) -> str:
    if spec.batch is None:
        return "the dataset spec names no batch column"
    if spec.batch not in adata.obs:
        return f"batch column {spec.batch!r} is not in obs"
    if adata.obs[spec.batch].nunique() < 2:
        return f"batch column {spec.batch!r} has one value"
    return ""


def _strata_column(strata, spec, adata, notes, ds) -> str | None:
    if strata is None:
        return None
    col = getattr(spec, strata) if strata in _SPEC_FIELDS else strata
    if col is None or col not in adata.obs:
        notes.append(f"{ds}: strata {strata!r} not available; labels permuted over all cells.")
        return None
    return col


def _cells(ctx, en: str, ds: str, max_cells: int) -> np.ndarray:
    cells = np.sort(np.asarray(ctx.edge_cells(en, ds)))
    if len(cells) > max_cells:
        cells = np.sort(ctx.rng(ds, en, "cells").choice(cells, max_cells, replace=False))
    return cells


def _expression(ctx, ds: str, cells: np.ndarray) -> tuple[np.ndarray, pd.Index]:
    """Log-normalised expression of ``cells`` (dense, cells × all genes) and the genes."""
    from scfm_audit.edges._coexpression import _expression_matrix

    adata = ctx.dataset(ds)
    view = adata[cells]
    view = view.to_memory() if getattr(view, "isbacked", False) else view
    spec = ctx.dataset_spec(ds)
    X = _expression_matrix(
        view, counts=spec.counts, transform="log1p", gene_idx=np.arange(view.n_vars)
    )
    return X.toarray(), pd.Index(view.var_names.astype(str))


def _edges_on_data(es, k: int, var: pd.Index) -> pd.DataFrame:
    top = top_edges(es, k)
    top["xs"] = var.get_indexer(top["source"])
    top["xt"] = var.get_indexer(top["target"])
    return top[(top["xs"] >= 0) & (top["xt"] >= 0)].reset_index(drop=True)


def _one_set(ctx, p, es, ds, X, var, batch, strata):
    top = _edges_on_data(es, p.top_k, var)
    if len(top) < 2:
        return None
    w = top["score"].to_numpy(float) if p.weight_by_score else None
    F = edge_products(X, top["xs"].to_numpy(), top["xt"].to_numpy(), w)
    stages = (p.n_perm,) if p.n_perm_max <= p.n_perm else (p.n_perm, p.n_perm_max)
    res, mc = leakage_test(
        F,
        batch,
        strata,
        folds=p.folds,
        alpha=p.alpha,
        stages=stages,
        seed=ctx.seed_for(ds, es.label, "edges"),
        what=f"top-{len(top)} edge products",
    )
    row = _row("edges", res, len(top), len(np.unique(batch)))
    sens = artifact_sensitivity(
        X,
        top["xs"].to_numpy(),
        top["xt"].to_numpy(),
        batch,
        n_resamples=p.n_resamples,
        seed=ctx.seed_for(ds, es.label, "balanced"),
    )
    sens.insert(0, "target", top["target"].to_numpy())
    sens.insert(0, "source", top["source"].to_numpy())
    sens.insert(2, "score", top["score"].to_numpy())
    return res, mc, [row], sens


def _row(features: str, res, n_features: int, n_batches: int) -> dict:
    return {
        "features": features,
        "n_features": n_features,
        "n_cells": res.n,
        "n_batches": n_batches,
        "balanced_accuracy": res.effect,
        "null_mean": res.null_value,
        "null_sd": res.null_scale,
        "p": res.p,
        "p_floor": res.p_floor,
    }


def _describe_genes(ctx, p, es, ds, X, var, batch, strata, rows, en, panels, edges) -> None:
    """Descriptive tests at the claimed layer: the same genes' expression, and the edge
    products residualised on it."""
    top = _edges_on_data(es, p.top_k, var)
    w = top["score"].to_numpy(float) if p.weight_by_score else None
    F = edge_products(X, top["xs"].to_numpy(), top["xt"].to_numpy(), w)
    G = X[:, np.unique(np.r_[top["xs"].to_numpy(), top["xt"].to_numpy()])]
    draws = {"edges": edges}
    nb = len(np.unique(batch))
    for name, feats, hyp in (
        ("genes", G, f"batch is predictable from the expression of {es.label}'s top-edge genes"),
        (
            "edges_beyond_genes",
            residualise(F, G),
            f"batch is predictable from {es.label}'s edge products beyond their genes' "
            "expression (residualised)",
        ),
    ):
        res, m = leakage_test(
            feats,
            batch,
            strata,
            folds=p.folds,
            alpha=p.alpha,
            stages=(p.n_perm,),
            seed=ctx.seed_for(ds, es.label, name),
            what=name.replace("_", " "),
        )
        ctx.describe(res, Unit.of(es, ds), hypothesis=hyp)
        rows.append(
            {**es.meta(), "dataset": ds, "edges": en, **_row(name, res, feats.shape[1], nb)}
        )
        draws[name] = (res.effect, m.null)
    panels[f"{ds}: {es.label}"] = draws


def _lobo(ctx, p, en, es, ds, notes) -> list[dict]:
    """Top-k Jaccard of the source re-scored without each batch (co-expression only)."""
    from scfm_audit.analyses._edge_source import edge_setup
    from scfm_audit.edges._registry import EDGE_SCORERS

    scorer, _, opts, cells = edge_setup(ctx, en, ds)
    if scorer != "coexpression":
        notes.append(f"{ds}/{en}: leave-one-batch-out needs re-scoring ({scorer}); not run.")
        return []
    adata = ctx.dataset(ds)
    spec = ctx.dataset_spec(ds)
    batch = adata.obs[spec.batch].astype(str).to_numpy()
    full = set(zip(*[top_edges(es, p.top_k)[c] for c in ("source", "target")], strict=True))
    out = []
    fn = EDGE_SCORERS.get(scorer)
    for b in np.unique(batch[cells]):
        keep = np.sort(cells[batch[cells] != b])
        if len(keep) < 10:
            continue
        sub = [
            s
            for s in fn(adata[keep], genes=list(es.genes), seed=ctx.seed, **opts)
            if s.head is None and s.layer == es.layer
        ]
        if not sub:
            continue
        t = top_edges(sub[0], p.top_k)
        out.append(
            {
                "dataset": ds,
                "edges": en,
                "label": es.label,
                "left_out": b,
                "n_cells": len(keep),
                "top_k": p.top_k,
                "jaccard": jaccard(full, zip(t["source"], t["target"], strict=True)),
            }
        )
    return out


def _summary(table: pd.DataFrame, sens: pd.DataFrame) -> str:
    if table.empty:
        return "No dataset with a batch column and an edge source could be evaluated."
    e = table[table["features"] == "edges"]
    parts = [
        f"{r.dataset}/{r.label}: balanced accuracy {r.balanced_accuracy:.3f} "
        f"(chance {r.null_mean:.3f}, p {r.p:.3g})"
        for r in e.itertuples()
    ]
    s = "Batch from top-edge products — " + "; ".join(parts[:6]) + "."
    if not sens.empty:
        s += (
            f" {int(sens['flagged'].sum())} of {len(sens)} edges have artifact "
            "sensitivity above the threshold."
        )
    return s


# ---------------------------------------------------------------------------- calibration
# Nulls (batch_strength 0): a hub reference's edges placed at random on the genes; the
# top |Spearman| edges; and donors assigned with cell-state-dependent probabilities (a
# composition difference only: the within-state permutation must not credit it, an
# unstratified one does — reported as p_unstratified). Planted: donor shifts of SD
# 0.1 and 0.3 (log scale), top |Spearman| edges.
# `python benchmarks/calibration.py --analyses batch_leakage --nulls 200 --planted 100`
# (seed 0, 2027 s on 2 shared CPUs; 199 draws per replicate): rejection rate with
# Clopper-Pearson 95 % — hub_null_batch0 0.050 [0.024, 0.090], coexp_null_batch0 0.035
# [0.014, 0.071], composition_null 0.055 [0.028, 0.096] (unstratified permutation: 0.670),
# planted_batch_0.1 0.63 [0.53, 0.72], planted_batch_0.3 1.00 [0.96, 1.00].

CAL_SIM: dict[str, Any] = {
    "n_cells": 500,
    "n_genes": 100,
    "n_tfs": 10,
    "n_perturbations": 4,
    "n_states": 3,
    "state_program_strength": 0.6,
}


def _scenarios():
    from scfm_audit.analyses._calibration import Scenario

    return [
        Scenario(
            "hub_null_batch0",
            "null",
            "batch_strength 0; the 40 edges of a heavy-tailed "
            "hub reference placed at random on the genes",
            params={"bs": 0.0, "hub": True},
        ),
        Scenario(
            "coexp_null_batch0",
            "null",
            "batch_strength 0; top-40 |Spearman| edges",
            params={"bs": 0.0},
        ),
        Scenario(
            "composition_null",
            "null",
            "batch_strength 0; donors assigned with "
            "cell-state-dependent probabilities (composition differs, no batch effect)",
            params={"bs": 0.0, "composition": True},
        ),
        Scenario(
            "planted_batch_0.1",
            "planted",
            "donor shifts N(0, 0.1²) per gene; top-40 |Spearman| edges",
            strength=0.1,
            params={"bs": 0.1},
        ),
        Scenario(
            "planted_batch_0.3",
            "planted",
            "donor shifts N(0, 0.3²) per gene; top-40 |Spearman| edges",
            strength=0.3,
            params={"bs": 0.3},
        ),
    ]


def _replicate(sc, seed: int, *, n_perm: int = 199):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.data._hub_reference import hub_reference, place_reference
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._coexpression import _expression_matrix, coexpression
    from scfm_audit.edges._scores import EdgeScores

    prm = sc.params
    bench = simulate_perturbseq(**CAL_SIM, batch_strength=prm["bs"], seed=seed)
    a = bench.adata
    genes = pd.Index(a.var_names.astype(str))
    X = _expression_matrix(a, counts="X", transform="log1p", gene_idx=np.arange(a.n_vars)).toarray()
    state = a.obs["cell_state"].astype(str).to_numpy()
    batch = a.obs["donor"].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 7])
    if prm.get("composition"):
        states = np.unique(state)
        nd = a.obs["donor"].cat.categories.size
        probs = {s: np.roll([0.6] + [0.4 / (nd - 1)] * (nd - 1), i) for i, s in enumerate(states)}
        batch = np.array([f"donor{rng.choice(nd, p=probs[s])}" for s in state])
    if prm.get("hub"):
        ref = place_reference(hub_reference(len(genes), seed=seed + 1), genes, seed=seed + 2)
        e = ref.edges.head(40)
        m = np.full((len(genes), len(genes)), np.nan)
        m[genes.get_indexer(e["source"]), genes.get_indexer(e["target"])] = 1.0
        es = EdgeScores(m, genes, method="hub")
    else:
        es = coexpression(a, method="spearman")
    top = top_edges(es, 40)
    F = edge_products(X, genes.get_indexer(top["source"]), genes.get_indexer(top["target"]))
    res, _ = leakage_test(F, batch, state, stages=(n_perm,), seed=seed)
    plain, _ = leakage_test(F, batch, None, stages=(n_perm,), seed=seed)
    return ReplicateOutcome.of(res, extra={"p_unstratified": plain.p})


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("batch_leakage", _scenarios())(_replicate)


_register_calibration()
