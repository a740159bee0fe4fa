"""Analysis 14 — ``cross_context_consistency``: do an edge source's scores agree across
contexts?

Contexts (``contexts``): the run's **datasets** (the source's pooled scores of each, over
the genes they share), and within a dataset its **cell states** (the dataset's
``cell_state`` annotation), **donors** (its ``batch`` column) or **perturbation arms** (its
``modality`` column): the source is re-scored on the cells of each level among its own
cells (levels with fewer than ``min_context_cells`` are dropped) — attention in one pass
with per-context accumulators, the mechanism CSSI's strata use
(:class:`~scfm_audit.analyses._edge_source.SubsetScores`), model-free sources recomputed
per context. Attention is scored per layer, heads pooled.

For every pair of contexts, over every pair of the shared genes
(:mod:`~scfm_audit.evaluate._agreement`; ranked by |score| by default): Spearman's ρ, the
top-k Jaccard and the sign agreement among the two top-k sets (NaN for scores without
sign), each with its vertex-bootstrap CI (ρ, Jaccard) and its level under the gene-level
null below. Figure: the matrix of pairwise top-k Jaccard (null level in brackets).

Null: matched relabelling that keeps every context's own gene-level structure
----------------------------------------------------------------------------
Contexts share expressed genes and hubs, so their top edges overlap and their ranks
correlate although no *pair* agrees beyond its genes. The first context is held fixed
and every other context's genes are relabelled among genes of the same gene-level
structure *in that context*: equal degree in its top-k graph (sign: and equal number of
negative top-k edges; ρ: strength within ``rank_tolerance`` standard errors) and
expression on its own cells (log mean, log variance) within ``expression_tolerance`` SDs
(``match``). H0: within those classes each context's genes are exchangeable — the
contexts agree no more than their gene-level structure makes them. Not a plain shuffle
of pairs, which calls every source with hubs consistent.

Tests
-----
* claim "edges of M agree across <contexts> beyond gene-level structure" — one per
  source and context family (and dataset, within a dataset): the mean over context pairs
  of the top-k Jaccard against the matched relabelling, two-sided staged
  Monte-Carlo p (``n_perm``, extended to ``n_perm_max`` for the claim's layer); effect =
  the mean Jaccard, its null centre the relabelled mean. Layered sources: the layer fixed
  by ``verdict_layer`` or the best (largest null-standardised effect, p × layers).
* descriptive, per layer: the same for the mean Jaccard (``n_perm`` draws), the mean ρ
  and the mean sign agreement (``n_perm_descriptive`` draws). The ρ null keeps its level
  on additive hub structure and over-rejects when gene effects multiply (see the
  calibration): descriptive only.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisResult,
    LayerClaimParams,
    Unit,
    register_analysis,
    select_layer,
    source_label,
)
from scfm_audit.analyses._edge_source import SubsetScores, edge_setup
from scfm_audit.analyses.stability import (
    AgreementParams,
    SourceParams,
    relabelling_h0,
    relabelling_result,
)
from scfm_audit.evaluate._agreement import (
    ScoreSet,
    bootstrap_agreement,
    percentile_ci,
    relabelling_test,
    resolve_k,
    universe,
)

FAMILIES = {
    "datasets": "datasets",
    "cell_state": "cell states",
    "donor": "donors",
    "modality": "perturbation arms",
}
#: the dataset spec attribute naming the obs column of each within-dataset family
_COLUMN = {"cell_state": "cell_state", "donor": "batch", "modality": "modality"}
EFFECT = {
    "jaccard": "mean top-k Jaccard",
    "spearman": "mean Spearman ρ",
    "sign": "mean sign agreement (top-k union)",
}


class ConsistencyParams(SourceParams, AgreementParams, LayerClaimParams):
    contexts: list[Literal["datasets", "cell_state", "donor", "modality"]] = Field(
        ["datasets", "cell_state"],
        description="context families: the run's datasets; within a dataset its cell_state, "
        "donor (batch column) or modality levels",
    )
    within_datasets: list[str] | None = Field(
        None,
        description="datasets whose cell states / donors / arms are compared (default: all "
        "of datasets)",
    )
    min_context_cells: int = Field(
        50, ge=5, description="a within-dataset context needs this many of the source's cells"
    )
    max_contexts: int = Field(8, ge=2, description="the largest contexts kept per family")
    min_genes: int = Field(10, ge=3, description="fewer shared genes: not evaluated")


@register_analysis(
    "cross_context_consistency",
    description="agreement of an edge source's scores across datasets, cell states, donors "
    "or perturbation arms: Spearman, top-k Jaccard and sign agreement per context pair with "
    "vertex-bootstrap CIs, each against a relabelling that keeps every context's own "
    "gene-level structure; matrix of pairwise agreement",
    params=ConsistencyParams,
    version="1.0",
    category="E. Quality control",
    reference="Catalogue 14 (Spearman, top-k Jaccard, permutation null)",
    quick={"n_perm": 99, "n_perm_max": 0, "n_boot": 20, "min_context_cells": 20},
    # the datasets family reuses the pooled scores; cell states cost one pass per model.
    # The demo's claims sit at the floor of 9,999 relabellings; 1,999 (floor 0.001) still
    # reach α among its claims. Descriptive: ρ and sign nulls of 99 draws, ρ on 20,000 of
    # the 89,700 pairs, 100 bootstrap draws for the CIs.
    demo=lambda quick=False, models=True: {
        "cross_context_consistency": {
            "datasets": ["sim", "sim_crispra"],
            "within_datasets": ["sim"],
            "contexts": ["datasets", "cell_state"],
            "n_boot": 100,
            "n_perm_max": 1999,
            "n_perm_descriptive": 99,
            "max_pairs": 20_000,
        }
    },
    claims=(
        (
            "edges of <source> agree across <contexts> beyond gene-level structure",
            "mean top-k Jaccard over context pairs, against relabellings of each context's genes "
            "that keep top-k degree and expression within 1 SD (H0: contexts agree only as much "
            "as their own gene-level structure implies), two-sided Monte-Carlo; layer a priori "
            "or best × layers",
        ),
    ),
)
def run_consistency(ctx: AnalysisContext, p: ConsistencyParams) -> AnalysisResult:
    out: dict[str, list[Any]] = {"pairs": [], "summary": [], "contexts": []}
    notes: list[str] = []
    figures: dict = {}
    for family in dict.fromkeys(p.contexts):
        for job in _jobs(ctx, p, family, notes):
            try:
                _evaluate(ctx, p, job, out, figures)
            except ValueError as err:  # e.g. APC of a context without a finite mean
                notes.append(f"{job['where']}: not evaluated ({err}).")
    notes.append(
        "Reference-free: every pair of the genes the contexts share is a candidate edge "
        f"(top-k = {p.top_k:g} {'of the pairs' if p.top_k < 1 else 'edges'}, ranked by "
        f"{'|score|' if p.transform == 'abs' else 'score'})."
    )
    if not out["summary"]:
        notes.append("No context family had two contexts to compare (see the other notes).")
        return AnalysisResult(
            tables={"consistency": pd.DataFrame({"note": ["nothing evaluated"]})}, notes=notes
        )
    summary = pd.DataFrame(out["summary"])
    return AnalysisResult(
        tables={
            "consistency": summary,
            "pairs": pd.DataFrame(out["pairs"]),
            "contexts": pd.DataFrame(out["contexts"]),
        },
        figures=figures,
        summary=_summary(summary),
        notes=notes,
    )


def _jobs(ctx, p: ConsistencyParams, family: str, notes: list):
    """Yield one job per comparable set of contexts: {family, dataset, edges, where,
    names, n_cells, sets: {(method, layer): [EdgeScores per context]}, covariates}."""
    datasets = p.datasets_in(ctx)
    if family == "datasets":
        if len(datasets) < 2:
            notes.append("datasets: the run has one dataset here; nothing to compare.")
            return
        for en in p.edges_in(ctx):
            per = {ds: [s for s in ctx.edge_scores(en, ds) if s.head is None] for ds in datasets}
            per = {ds: v for ds, v in per.items() if v}
            if len(per) < 2:
                continue
            names = list(per)
            shared = pd.Index(per[names[0]][0].genes)
            for ds in names[1:]:
                shared = shared.intersection(per[ds][0].genes, sort=False)
            where = f"datasets/{en}"
            if len(shared) < p.min_genes:
                notes.append(f"{where}: {len(shared)} shared genes (< {p.min_genes}).")
                continue
            keys = [(s.method, s.layer) for s in per[names[0]]]
            sets = {}
            for key in keys:
                got = [
                    next((s for s in per[ds] if (s.method, s.layer) == key), None) for ds in names
                ]
                found = [g for g in got if g is not None]
                if len(found) == len(got):
                    sets[key] = [g.subset(shared) for g in found]
            n_cells = [int(per[ds][0].n_cells) for ds in names]
            cov = [
                _dataset_covariates(ctx, en, ds, shared) if p.match != "structure" else None
                for ds in names
            ]
            yield {
                "family": family,
                "dataset": None,
                "edges": en,
                "where": where,
                "names": names,
                "n_cells": n_cells,
                "sets": sets,
                "covariates": cov,
            }
        return
    within = p.within_datasets or datasets
    unknown = [ds for ds in within if ds not in ctx.dataset_names()]
    if unknown:
        notes.append(f"within_datasets {unknown} are not datasets of this run; skipped.")
    for ds in (d for d in within if d not in unknown):
        spec = ctx.dataset_spec(ds) if hasattr(ctx, "dataset_spec") else None
        col = getattr(spec, _COLUMN[family], None)
        obs = ctx.dataset(ds).obs
        if col is None or col not in obs:
            notes.append(
                f"{ds}: no {FAMILIES[family]} column ({_COLUMN[family]}); "
                f"{family} contexts skipped."
            )
            continue
        for en in p.edges_in(ctx):
            pooled = [s for s in ctx.edge_scores(en, ds) if s.head is None]
            if not pooled:
                continue
            where = f"{ds}/{en} by {col}"
            cells = edge_setup(ctx, en, ds)[3]
            values = obs[col].iloc[cells].astype(str).to_numpy()
            levels, counts = np.unique(values, return_counts=True)
            big = [
                (c, lv) for lv, c in zip(levels, counts, strict=True) if c >= p.min_context_cells
            ]
            big = sorted(big, key=lambda x: (-x[0], x[1]))[: p.max_contexts]
            dropped = len(levels) - len(big)
            if dropped:
                notes.append(
                    f"{where}: {dropped} of {len(levels)} levels dropped (fewer than "
                    f"{p.min_context_cells} cells, or beyond the {p.max_contexts} "
                    "largest)."
                )
            if len(big) < 2:
                notes.append(
                    f"{where}: fewer than 2 contexts with ≥ {p.min_context_cells} "
                    "cells; not evaluated."
                )
                continue
            names = sorted(lv for _, lv in big)
            code = {lv: i for i, lv in enumerate(names)}
            labels = np.array([code.get(v, -1) for v in values], dtype=np.int64)
            sub = SubsetScores(ctx, en, ds, labels, pooled=pooled)
            per_level = [sub.scores([i]) for i in range(len(names))]
            sets = {
                (s.method, s.layer): [pc[(s.method, s.layer)] for pc in per_level]
                for s in pooled
                if all((s.method, s.layer) in pc for pc in per_level)
            }
            yield {
                "family": family,
                "dataset": ds,
                "edges": en,
                "where": where,
                "names": names,
                "n_cells": [sub.n_cells([i]) for i in range(len(names))],
                "sets": sets,
                "covariates": [
                    sub.covariates([i]) if p.match != "structure" else None
                    for i in range(len(names))
                ],
            }


def _dataset_covariates(ctx, en: str, ds: str, genes) -> np.ndarray:
    """Expression covariates of ``genes`` over the cells source ``en`` uses in ``ds``."""
    from scfm_audit.evaluate._agreement import expression_covariates

    cells = edge_setup(ctx, en, ds)[3]
    sub = ctx.dataset(ds)[cells]
    sub = sub.to_memory() if getattr(sub, "isbacked", False) else sub
    spec = ctx.dataset_spec(ds) if hasattr(ctx, "dataset_spec") else None
    return expression_covariates(sub, genes=genes, counts=getattr(spec, "counts", "X") or "X")


def _evaluate(ctx, p: ConsistencyParams, job: dict, out: dict, figures: dict) -> None:
    fam, ds, en, names = job["family"], job["dataset"], job["edges"], job["names"]
    out["contexts"] += [
        {"family": fam, "dataset": ds, "edges": en, "context": nm, "n_cells": nc}
        for nm, nc in zip(names, job["n_cells"], strict=True)
    ]
    if not job["sets"]:
        return
    first = next(iter(job["sets"].values()))
    genes = first[0].genes
    directed = any(es.directed for es in first)
    key0 = (fam, ds, en)
    u = universe(
        len(genes), directed=directed, max_pairs=p.max_pairs, seed=ctx.seed_for(*key0, "pairs")
    )
    k = resolve_k(p.top_k, u.size)
    matched = p.match
    results: dict = {}
    pair_rows = []
    for key, per_ctx in job["sets"].items():
        base = per_ctx[0]
        sets = [p.score_set(es, u, k, c) for es, c in zip(per_ctx, job["covariates"], strict=True)]
        seed = ctx.seed_for(*key0, key)
        boot = bootstrap_agreement(
            sets, metrics=("spearman", "jaccard"), n_boot=p.n_boot, seed=seed
        )
        tests = {}
        signed = all(s.has_sign for s in sets)
        for j, metric in enumerate(("jaccard", "spearman", "sign")):
            if metric == "sign" and not signed:
                continue
            stages = p.stages(False) if metric == "jaccard" else (p.n_perm_descriptive,)
            t = relabelling_test(sets, metric, stages=stages, seed=seed + j)
            ci = percentile_ci(boot[metric].mean(axis=1)) if metric in boot else (np.nan, np.nan)
            res = relabelling_result(
                t,
                metric,
                matched,
                effect_name=EFFECT[metric],
                h0=_h0(matched, metric),
                n=u.size if metric != "spearman" else len(u.sub),
                ci=ci,
                what=f" over {len(t.pairs)} context pairs",
            )
            tests[metric] = (t, res)
            ctx.describe(
                res,
                _unit(job, base),
                hypothesis=_hypothesis(job, base, metric),
                extra={"contexts": ", ".join(names), "k": k},
            )
        results[key] = (sets, tests["jaccard"][1], seed, matched)
        t_j = tests["jaccard"][0]
        for i, (a, b) in enumerate(t_j.pairs):
            row = {
                "family": fam,
                "dataset": ds,
                "edges": en,
                "source": base.label,
                "method": key[0],
                "layer": key[1],
                "context_a": names[a],
                "context_b": names[b],
                "n_cells_a": job["n_cells"][a],
                "n_cells_b": job["n_cells"][b],
                "k": k,
            }
            for metric in ("jaccard", "spearman", "sign"):
                if metric not in tests:
                    row[metric] = row[f"{metric}_null"] = np.nan
                    continue
                t = tests[metric][0]
                row[metric] = float(t.per_pair[i])
                row[f"{metric}_null"] = (
                    float(np.nanmean(t.null_per_pair[:, i])) if len(t.null_per_pair) else np.nan
                )
                if metric in boot:
                    row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_ci(
                        boot[metric][:, i]
                    )
            pair_rows.append(row)
        srow = {
            "family": fam,
            "dataset": ds,
            "edges": en,
            "source": base.label,
            "method": key[0],
            "model": base.model,
            "layer": key[1],
            "n_contexts": len(names),
            "contexts": ", ".join(names),
            "n_genes": len(genes),
            "k": k,
            "matched_on": matched,
        }
        for metric, (_, res) in tests.items():
            srow.update(
                {
                    f"{metric}_mean": res.effect,
                    f"{metric}_ci_low": res.ci_low,
                    f"{metric}_ci_high": res.ci_high,
                    f"{metric}_null": res.null_value,
                    f"{metric}_p": res.p,
                }
            )
        out["summary"].append(srow)
    out["pairs"] += pair_rows
    _claims(ctx, p, job, results)
    figures.update(_figure(pd.DataFrame(pair_rows), job))


def _h0(matching: str, metric: str) -> str:
    return relabelling_h0(metric, matching, whose="every context's", given="the first context")


def _unit(job: dict, es) -> Unit:
    # a claim across datasets names them all (the standards matrix counts it in each)
    ds = job["dataset"] if job["family"] != "datasets" else ", ".join(job["names"])
    return Unit(ds, es.model, None, f"consistency[{job['family']}]:{es.label}", es.layer)


def _across(job: dict) -> str:
    if job["family"] == "datasets":
        return f"datasets ({', '.join(job['names'])})"
    return f"{FAMILIES[job['family']]} of {job['dataset']}"


def _hypothesis(job: dict, es, metric: str) -> str:
    return f"{EFFECT[metric]} of {es.label} across {_across(job)} exceeds its gene-level structure"


def _claims(ctx, p: ConsistencyParams, job: dict, results: dict) -> None:
    """One claim per method of the source: the mean top-k Jaccard at the layer fixed a
    priori or the best (× layers), that layer's test re-run with the extended stages."""
    for method in dict.fromkeys(k[0] for k in results):
        keys = sorted(
            (k for k in results if k[0] == method), key=lambda k: -1 if k[1] is None else k[1]
        )
        base0 = job["sets"][keys[0]][0]
        if keys[0][1] is None:
            i, mult, why = 0, 1, ""
        else:
            i, mult, why = select_layer(
                [k[1] for k in keys],
                [results[k][1].standardised for k in keys],
                p.verdict_layer,
                what="null-standardised mean top-k Jaccard",
            )
        key = keys[i]
        sets, res, seed, matched = results[key]
        if len(p.stages(True)) > 1:
            t = relabelling_test(sets, "jaccard", stages=p.stages(True), seed=seed)
            res = relabelling_result(
                t,
                "jaccard",
                matched,
                effect_name=EFFECT["jaccard"],
                h0=res.h0,
                n=res.n,
                ci=(res.ci_low, res.ci_high),
                what=f" over {len(t.pairs)} context pairs",
            )
        if mult > 1:
            res = res.times(mult, why=why)
        es = job["sets"][key][0]
        ctx.claim(
            res,
            _unit(job, es),
            claim=f"edges of {source_label(base0)} agree across {_across(job)} beyond "
            "gene-level structure",
            layer_choice=why,
            hypothesis=_hypothesis(job, es, "jaccard"),
            extra={"contexts": ", ".join(job["names"])},
        )


def _figure(pairs: pd.DataFrame, job: dict) -> dict:
    from scfm_audit.plotting import agreement_heatmap

    if pairs.empty:
        return {}
    sub = pairs.copy()
    panel = None
    if sub["layer"].notna().any():
        ls = sorted(sub["layer"].dropna().unique())
        sub = sub[sub["layer"].isin({ls[0], ls[len(ls) // 2], ls[-1]})]
        sub["panel"] = [f"{m} L{int(L)}" for m, L in zip(sub["method"], sub["layer"])]
        panel = "panel"
    elif sub["method"].nunique() > 1:
        sub["panel"] = sub["method"]
        panel = "panel"
    where = job["dataset"] or "all"
    name = f"consistency_{job['family']}_{where}_{job['edges']}"
    title = f"{job['edges']}: top-k Jaccard across {_across(job)}"
    return {name: agreement_heatmap(sub, contexts=job["names"], panel=panel, title=title)}


def _summary(summary: pd.DataFrame) -> str:
    parts = []
    for r in summary.head(8).itertuples():
        lay = f"/L{int(r.layer)}" if pd.notna(r.layer) else ""
        where = "datasets" if r.family == "datasets" else f"{FAMILIES[r.family]} of {r.dataset}"
        parts.append(
            f"{r.edges}{lay} across {where} ({r.n_contexts}): Jaccard {r.jaccard_mean:.2f} "
            f"[{r.jaccard_ci_low:.2f}, {r.jaccard_ci_high:.2f}] vs gene-level "
            f"{r.jaccard_null:.2f}, ρ {r.spearman_mean:.2f}"
        )
    more = f"; … ({len(summary) - 8} more rows in the table)" if len(summary) > 8 else ""
    return "Mean pairwise agreement: " + "; ".join(parts) + more + "."


# ---------------------------------------------------------------------------- calibration
# Score-level simulations (``stability.hub_scores``): three contexts with heavy-tailed
# gene effects that differ between contexts (each θ_c = θ·exp(N(0, 0.3²))) and independent
# pair noise. Nulls: additive and multiplicative hub effects (β = 0); and on cells:
# co-expression in the two halves of simulated control cells of a screen without
# modules or regulation, compared as two contexts. Planted: a pair signal shared by the
# contexts at β = 0.5 and 1 on additive hubs. The ρ and sign tests' p (and the plain
# edge shuffle's) are reported beside the claim's.
CAL_CONTEXTS = 3


def _cal_replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.analyses.stability import CAL_GENES, CAL_TOP, edge_shuffle_p, hub_scores

    if sc.params.get("cells"):
        from scfm_audit.analyses.stability import _cal_cells

        mats, directed, covs = _cal_cells(sc, seed)
    else:
        covs = [None] * CAL_CONTEXTS
        rng = np.random.default_rng(seed)
        directed = sc.params["form"] == "sink"
        mats = hub_scores(
            CAL_GENES,
            rng,
            form=sc.params["form"],
            beta=sc.params["beta"],
            n_sets=CAL_CONTEXTS,
            directed=directed,
            context_sd=0.3,
        )
    u = universe(mats[0].shape[0], directed=directed)
    k = resolve_k(CAL_TOP, u.size)
    # as the analysis: degree and expression; score-level simulations have no expression
    matched = "both" if sc.params.get("cells") else "structure"
    sets = [ScoreSet(M, u, k=k, covariates=c) for M, c in zip(mats, covs, strict=True)]
    t = relabelling_test(sets, "jaccard", stages=(999,), seed=seed)
    res = relabelling_result(
        t, "jaccard", matched, effect_name=EFFECT["jaccard"], h0=_h0(matched, "jaccard"), n=u.size
    )
    extra = {
        "p_rank_matched": relabelling_test(sets, "spearman", stages=(199,), seed=seed + 1).mc.p,
        "p_sign_matched": relabelling_test(sets, "sign", stages=(199,), seed=seed + 2).mc.p,
        "p_edge_shuffle": edge_shuffle_p(sets[0], sets[1]),
        "null_jaccard": res.null_value,
    }
    return ReplicateOutcome.of(res, extra=extra)


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import Scenario, register_calibration

    scenarios = [
        Scenario(
            "hub_null_additive_contexts",
            "null",
            f"{CAL_CONTEXTS} contexts, additive "
            "LogNormal hub effects (each context its own, correlated), independent pair "
            "noise",
            params={"form": "additive", "beta": 0.0},
        ),
        Scenario(
            "hub_null_multiplicative_contexts",
            "null",
            f"{CAL_CONTEXTS} contexts, multiplicative hub effects, independent pair noise",
            params={"form": "multiplicative", "beta": 0.0},
        ),
        Scenario(
            "hub_null_sinks_directed_contexts",
            "null",
            f"{CAL_CONTEXTS} contexts, directed attention-like sinks, independent pair noise",
            params={"form": "sink", "beta": 0.0},
        ),
        Scenario(
            "null_cells_two_contexts",
            "null",
            "co-expression in two sets of simulated control cells without modules or regulation",
            params={"cells": True, "module_strength": 0.0},
        ),
        *[
            Scenario(
                f"planted_shared_edges_contexts_{b:g}",
                "planted",
                f"additive hubs plus a pair signal β = {b:g} shared by the contexts (noise SD 1)",
                strength=b,
                params={"form": "additive", "beta": b},
            )
            for b in (0.5, 1.0)
        ],
    ]
    register_calibration("cross_context_consistency", scenarios)(_cal_replicate)


_register_calibration()
