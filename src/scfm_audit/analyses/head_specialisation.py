"""Analysis 3 — ``head_specialisation`` (family A): which heads recover a reference beyond
its structure — the candidate "regulatory heads" that head ablation will read.

For each dataset × per-head edge source × reference: every head's AUROC with a vertex
bootstrap CI and the degree-permutation null of ``edge_recovery`` (H0: the reference's
genes are exchangeable with data genes of the same role and degree), drawn adaptively so
that a strong head is not lost to the permutation floor; each head's test is descriptive.

The null keeps the hubs, so its centre is not AUROC 0.5: a head is judged against its own
null's mean, never against 0.5 (a head at AUROC 0.70 whose null is centred at 0.745
anti-recovers).

* Candidate heads: BH over the heads of that (source, dataset, reference) of each head's
  one-sided p of recovering (``p_greater``; ``q_heads``), heads with ``q_heads < fdr``
  that lie above their null's centre (``selected_by = "FDR"``). When none passes, the
  stated fallback is the ``fallback_k`` heads of largest null-standardised AUROC among
  those above their null's centre, so that an ablation still has a pre-declared set; a
  head below its null's centre is never selected.
* Claim "regulatory heads found" — H0 (global): no head recovers the reference beyond
  its structure. Test: the smallest one-sided p of recovering over the H heads × H
  (Bonferroni, valid under any dependence among heads; one-sided, so one anti-recovering
  head cannot turn the answer into "opposite"); effect: that head's AUROC against its
  null's centre. Floor: the heads' smallest attainable one-sided p × H.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    Unit,
    best_of,
    evaluable_pairs,
    register_analysis,
    source_label,
)
from scfm_audit.evaluate._recovery import candidate_pairs, edge_recovery, recovery_result
from scfm_audit.stats._fdr import bh_fdr
from scfm_audit.stats._tests import StatTestResult


class HeadSpecialisationParams(AnalysisParams):
    datasets: list[str] | None = Field(None, description="datasets (default: all)")
    references: list[str] | None = Field(None, description="references (default: all)")
    edges: list[str] | None = Field(None, description="per-head edge sources (default: all)")
    fdr: float = Field(0.05, gt=0, lt=1, description="BH level over the heads of one source")
    fallback_k: int = Field(
        5, ge=1, description="heads taken by null-standardised AUROC when none passes FDR"
    )
    n_boot: int = Field(200, ge=20, description="vertex-bootstrap draws per head")
    n_perm: int = Field(999, ge=19, description="first-stage degree-permutation draws per head")
    n_perm_max: int = Field(
        9_999, ge=0, description="draws up to this many while a head's p < 0.05 (0 = none)"
    )
    score_transform: str = Field("abs", pattern="^(abs|raw)$", description="'abs' or 'raw'")
    min_positives: int = Field(5, ge=1, description="fewer reference edges: not evaluated")


def select_heads(table: pd.DataFrame, *, fdr: float, fallback_k: int) -> pd.DataFrame:
    """The candidate regulatory heads of one (source, dataset, reference) ``table`` of
    heads (columns ``layer, head, auroc, p_greater, auroc_null_mean, auroc_null_sd``):
    BH over its heads' one-sided p of recovering (``q_heads``); heads with ``q_heads <
    fdr`` above their null's centre, else the fallback: the ``fallback_k`` heads of
    largest null-standardised AUROC (``z``) among those above their null's centre. A head
    below its null's centre is never selected. Returns ``table`` with ``z``, ``q_heads``,
    ``selected`` and ``selected_by``."""
    t = table.copy()
    d = t["auroc"] - t["auroc_null_mean"]
    sd = t["auroc_null_sd"].where(t["auroc_null_sd"] > 0)
    t["z"] = d / sd
    t["q_heads"] = bh_fdr(t["p_greater"].to_numpy(dtype=float))
    above = (d > 0).to_numpy()
    sig = (t["q_heads"] < fdr).to_numpy() & above
    t["selected"] = sig
    t["selected_by"] = np.where(sig, "FDR", "")
    if not sig.any():
        top = t["z"].where(above).rank(ascending=False, method="first") <= fallback_k
        t.loc[top, "selected"] = True
        t.loc[top, "selected_by"] = f"fallback: top-{fallback_k} null-standardised AUROC"
    return t


def head_recovery_table(
    ctx, heads, pairs, ds: str, en: str, ref_name: str, p, *, register: bool = False
) -> tuple[pd.DataFrame, list[StatTestResult]]:
    """Every head's recovery of ``pairs`` (``edge_recovery``: AUROC, vertex-bootstrap CI,
    degree-permutation tails and null centre) as one row per head — the table
    :func:`select_heads` reads — and the heads' typed results. ``p`` supplies
    ``n_boot``, ``n_perm``, ``n_perm_max`` and ``score_transform``; ``register``: also
    record each head's test as descriptive (this analysis does; head ablation recomputes
    the table without recording, so it does not depend on run order)."""
    part, results = [], []
    for es in ctx.progress(heads, description=f"{en} heads vs {ref_name}"):
        r = edge_recovery(
            es,
            pairs,
            n_boot=p.n_boot,
            n_perm=p.n_perm,
            n_perm_max=p.n_perm_max,
            transform=p.score_transform,
            seed=ctx.seed_for(ds, ref_name, es.label),
        )
        res = recovery_result(r)
        results.append(res)
        if register:
            ctx.describe(
                res,
                Unit.of(es, ds, ref_name),
                hypothesis=f"{es.label} ranks {ref_name} edges apart from non-edges",
            )
        part.append(
            {
                "dataset": ds,
                "edges": en,
                "model": es.model,
                "reference": ref_name,
                "layer": es.layer,
                "head": es.head,
                **{k: v for k, v in r.items() if not k.startswith("null_")},
                "p_greater": res.p_greater,
                "p_less": res.p_less,
                "auroc_null_mean": res.null_value,
                "auroc_null_sd": res.null_scale,
            }
        )
    return pd.DataFrame(part), results


def regulatory_heads(
    ctx,
    heads,
    ds: str,
    en: str,
    references: list[str] | None,
    *,
    top_auroc: bool,
    k: int,
    fdr: float,
    n_perm: int,
    n_perm_max: int,
    min_positives: int,
    notes: list,
) -> tuple[pd.DataFrame, str] | None:
    """The regulatory heads of one per-head source ``heads`` on ``ds`` as head ablation
    selects them (recomputed, not recorded): the first evaluable reference among
    ``references`` (default: all); :func:`select_heads`, or with ``top_auroc`` the top
    ``k`` heads by recovery AUROC among those above their null's centre. Returns the
    head table (``selected``, ``selected_by``) and the reference, or None."""
    hp = HeadSpecialisationParams(
        n_boot=20, n_perm=n_perm, n_perm_max=n_perm_max, fdr=fdr, fallback_k=k
    )
    for ref_name in references or ctx.reference_names():
        where = f"head_ablation {ds}/{en}/{ref_name}"
        pairs = evaluable_pairs(
            heads[0].genes,
            ctx.reference(ref_name),
            min_positives=min_positives,
            where=where,
            notes=notes,
        )
        if pairs is None:
            continue
        t, _ = head_recovery_table(ctx, heads, pairs, ds, en, ref_name, hp)
        t = select_heads(t, fdr=fdr, fallback_k=k)
        if top_auroc:  # the paper's ranking, among heads above their null's centre only
            above = t["auroc"] > t["auroc_null_mean"]
            top = t["auroc"].where(above).rank(ascending=False, method="first") <= k
            t["selected"] = top
            t["selected_by"] = np.where(top, f"top-{k} AUROC above its null centre", "")
        return t, ref_name
    return None


def best_head(results: list[StatTestResult]) -> tuple[int, StatTestResult, str]:
    """:func:`best_of` over the heads on the recovering side. A head that could not be
    tested (NaN floor) gets floor 1 first: ``best_of`` takes the builtin ``min`` of the
    floors, which returns NaN when the first one is NaN (and then floor 1, n/a)."""
    from dataclasses import replace

    safe = [replace(r, p_floor=1.0) if math.isnan(r.p_floor) else r for r in results]
    return best_of(safe, claimed="greater", what="head")


def claim_some_head(ctx, results: list[StatTestResult], heads, ds: str, ref_name: str):
    """The claim "regulatory heads found" (see the module docstring): :func:`best_of`
    over the heads' one-sided p of recovering, recorded with ``ctx.claim``."""
    i, best, why = best_head(results)
    es = heads[i]
    return ctx.claim(
        best,
        Unit.of(es, ds, ref_name),
        claim=f"{source_label(es)}: regulatory heads found for {ref_name}",
        hypothesis=f"some head of {es.method} recovers {ref_name} beyond its structure",
        direction="greater",
        layer_choice=f"head {es.layer}.{es.head} ({why})",
    )


def _demo(*, quick: bool, models: bool) -> dict:
    return {
        "head_specialisation": {
            "datasets": ["sim"],
            "references": ["sim_grn", "sim_ppi"],
            "n_boot": 50 if quick else 200,
        }
    }


@register_analysis(
    "head_specialisation",
    description="per-head recovery against a structure-preserving null; heads significant "
    "after FDR are the candidate regulatory heads (table read by head ablation)",
    params=HeadSpecialisationParams,
    version="2.0",
    category="A. Does attention encode biology?",
    reference="Candidate regulatory heads",
    demo=_demo,
    claims=(
        (
            "<source>: regulatory heads found for <reference>",
            "smallest one-sided degree-permutation p over heads × number of heads (H0: no head recovers the reference beyond its structure); one-sided: opposite not tested",
        ),
    ),
)
def run_head_specialisation(ctx: AnalysisContext, p: HeadSpecialisationParams) -> AnalysisResult:
    from scfm_audit.plotting import head_heatmap

    rows, selections, figures = [], [], {}
    notes: list[str] = []
    references = p.references if p.references is not None else ctx.reference_names()
    any_heads = False
    for ds in p.datasets or ctx.dataset_names():
        for en in p.edges or ctx.edge_names():
            heads = [s for s in ctx.edge_scores(en, ds) if s.head is not None]
            any_heads |= bool(heads)
            for ref_name in references if heads else []:
                pairs = evaluable_pairs(
                    heads[0].genes,
                    ctx.reference(ref_name),
                    min_positives=p.min_positives,
                    where=f"{ds}/{en}/{ref_name}",
                    notes=notes,
                )
                if pairs is None:
                    continue
                t, results = head_recovery_table(
                    ctx, heads, pairs, ds, en, ref_name, p, register=True
                )
                t = select_heads(t, fdr=p.fdr, fallback_k=p.fallback_k)
                rows.append(t)
                selections.append(t[t["selected"]])
                claim_some_head(ctx, results, heads, ds, ref_name)
                figures[f"heads_{ds}_{en}_{ref_name}"] = _heatmap(head_heatmap, t, en, ds, ref_name)
    if not any_heads:
        notes.append("No per-head edge source: set per_head: true on an attention source.")
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    chosen = pd.concat(selections, ignore_index=True) if selections else pd.DataFrame()
    keep = [
        "dataset",
        "edges",
        "model",
        "reference",
        "layer",
        "head",
        "auroc",
        "auroc_ci_low",
        "auroc_ci_high",
        "auroc_null_mean",
        "z",
        "p",
        "p_greater",
        "q_heads",
        "selected_by",
    ]
    return AnalysisResult(
        tables={"heads": table, "regulatory_heads": chosen[keep]} if len(table) else {},
        figures=figures,
        summary=_summary(table, chosen, p),
        notes=notes,
    )


def _summary(table: pd.DataFrame, chosen: pd.DataFrame, p) -> str:
    if not len(table):
        return "No per-head edge source could be evaluated (see notes)."
    n_groups = table.groupby(["dataset", "edges", "reference"]).ngroups
    n_fdr = int((chosen["selected_by"] == "FDR").sum()) if len(chosen) else 0
    n_fallback = (
        int(
            chosen.groupby(["dataset", "edges", "reference"])["selected_by"]
            .apply(lambda x: (x != "FDR").all())
            .sum()
        )
        if len(chosen)
        else 0
    )
    n_none = n_groups - (
        chosen.groupby(["dataset", "edges", "reference"]).ngroups if len(chosen) else 0
    )
    return (
        f"{len(table)} head × reference tests; {n_fdr} heads pass BH at {p.fdr} (one-sided, "
        f"against each head's own null centre). In {n_fallback} of {n_groups} source × "
        f"reference groups no head passed and the fallback rule (top-{p.fallback_k} "
        f"null-standardised AUROC above the null's centre) chose the heads; in {n_none} no "
        "head lay above its null's centre, so none was selected. The regulatory_heads table "
        "is what head ablation reads."
    )


def _heatmap(head_heatmap, t: pd.DataFrame, en: str, ds: str, ref_name: str):
    fig = head_heatmap(
        t,
        value="auroc",
        layer="layer",
        head="head",
        title=f"{en}: per-head {ref_name} AUROC ({ds}); ● selected",
    )
    ax = fig.axes[0]
    layers = sorted(t["layer"].unique())
    heads = sorted(t["head"].unique())
    for r in t[t["selected"]].itertuples():
        ax.plot(
            heads.index(r.head),
            layers.index(r.layer),
            marker="o" if r.selected_by == "FDR" else "x",
            color="black",
            markersize=5,
            linestyle="none",
        )
    return fig


# ---------------------------------------------------------------------------- calibration
# Per-head score sets from one simulation's |Spearman| plus head-specific noise, with a
# hub-structured reference placed independently. Null: no head carries the reference.
# Planted: one of the heads has its reference edges shifted to an expected AUROC of 0.6 /
# 0.7 (rank-normal scores), the others carry nothing.

_HEADS = 8


def _head_scores(seed: int, auroc: float | None, n_genes: int = 150):
    from scipy.stats import norm

    from scfm_audit.analyses.grn_recovery import _calibration_scores
    from scfm_audit.data._hub_reference import hub_reference, place_reference
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.evaluate._recovery import nan_lowest_ranks

    _, es = _calibration_scores(n_genes, seed, gene_level_predictability=0.0)
    genes = es.genes
    ref = place_reference(hub_reference(n_genes, seed=seed + 1), genes, seed=seed + 2)
    pairs = candidate_pairs(genes, ref)
    d = np.abs(es.dense())
    n = len(genes)
    base = norm.ppf((nan_lowest_ranks(d.ravel()) - 0.5) / d.size).reshape(n, n)
    rng = np.random.default_rng(seed + 3)
    out = []
    for h in range(_HEADS):
        m = (base + rng.normal(size=(n, n))) / np.sqrt(2)
        if auroc is not None and h == 0:
            m[pairs.source[pairs.label], pairs.target[pairs.label]] += np.sqrt(2) * norm.ppf(auroc)
        out.append(EdgeScores(m, genes, method="heads", layer=h // 4, head=h % 4))
    return out, pairs


def _calibration_replicate(sc, seed: int):
    """The claim's own computation (:func:`recovery_result` per head, :func:`best_of`):
    the outcome carries its p, the best head's AUROC and that head's null centre."""
    heads, pairs = _head_scores(seed, sc.params.get("auroc"))
    results = [
        recovery_result(
            edge_recovery(
                es, pairs, n_boot=20, n_perm=199, n_perm_max=1999, transform="raw", seed=seed
            )
        )
        for es in heads
    ]
    return outcome(best_head(results)[1])


def outcome(r: StatTestResult):
    """A calibration :class:`ReplicateOutcome` from the claim's typed result: its p, the
    estimate with its CI, and the null's own centre (its side is the tested side)."""
    from scfm_audit.analyses._calibration import ReplicateOutcome

    return ReplicateOutcome(
        p=r.p, estimate=r.effect, ci_low=r.ci_low, ci_high=r.ci_high, null_value=r.null_value
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import Scenario, register_calibration

    register_calibration(
        "head_specialisation",
        [
            Scenario(
                "hub_null_heads",
                "null",
                f"{_HEADS} heads = one simulation's co-expression plus head noise; "
                "hub-structured reference placed independently",
                params={},
            ),
            *[
                Scenario(
                    f"planted_head_auroc_{a}",
                    "planted",
                    f"one of {_HEADS} heads with its reference edges shifted to AUROC {a}",
                    strength=a,
                    params={"auroc": a},
                )
                for a in (0.6, 0.7)
            ],
        ],
    )(_calibration_replicate)


_register_calibration()
