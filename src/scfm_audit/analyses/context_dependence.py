"""Analysis 9 — ``context_dependence``: do the perturbation-prediction results hold across
contexts?

A context is a (dataset, arm): datasets (cell types, screens) and, within a dataset with
a modality column, its CRISPRi and CRISPRa arms. Per context and attention source, the
per-perturbation AUROCs of :mod:`~scfm_audit.analyses.perturbation_prediction` (same
scorers, same responder definition, one attention layer per source: fixed a priori with
``verdict_layer``, or "best" by attention's mean AUROC pooled over contexts with p × the
number of layers).

Tests (perturbations are the units; each claim is ``ctx.claim`` of one typed test):

* interaction (claim) — does the attention–correlation gap (per perturbation:
  AUROC_attention − AUROC_co-expression) depend on the context? H0: within each
  perturbation the contexts' gaps are exchangeable (the context labels can be permuted
  within a perturbation). Exact within-block permutation test
  (:func:`~scfm_audit.stats._paired.within_block_permutation`, Monte-Carlo with
  ``n_perm`` draws, extended ×10 while p < 0.05): perturbations matched by perturbed gene
  are the blocks (``pairing: auto``: the arms of one dataset, and other datasets where the
  same gene is perturbed; a perturbation seen in one context keeps its context, so
  contexts sharing no perturbation add no permutations); ``paired``: only the
  perturbations every context shares; ``unpaired``: one block (every gap exchangeable:
  independent perturbations in every context). Gaps are centred on their perturbation's
  mean (its difficulty cancels); with two contexts it is the sign-flip test of the paired
  gap differences over the perturbations both hold (valid whatever the two arms'
  spreads). Statistic and effect: the range (max − min) of the contexts' mean centred
  gaps (= the range of their mean gaps when every context has every perturbation),
  one-sided (large ranges);
  its CI inverts the same test, ``[max(0, R − c), R + c]`` with ``c`` the permutation
  null's 95% quantile of the range, so it excludes 0 exactly when the test rejects. One
  context: n/a with the reason.
* gene-level dominance per context — the pre-declared baseline (``verdict_baseline``)
  against attention per context (Wilcoxon signed-rank over perturbations with its
  Hodges–Lehmann ΔAUROC; descriptive) and the claim "gene-level baselines beat attention
  in every context": intersection–union over contexts (claimed side: max of the
  one-sided p; other side: Bonferroni), sides from the tests' own tails.

Incremental value per context is left to ``incremental_value``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisResult,
    Unit,
    register_analysis,
    select_layer,
    source_label,
)
from scfm_audit.analyses._perturbation_common import (
    BASELINES,
    WILCOXON_H0,
    ScorerParams,
    attention_sources,
    auroc_wide,
    prediction_data,
)
from scfm_audit.evaluate._perturbation import combine_intersection_union, paired_comparison
from scfm_audit.stats._paired import within_block_permutation
from scfm_audit.stats._tests import StatTestResult

INTERACTION_H0 = (
    "within each perturbation, the attention − co-expression AUROC gaps of the contexts "
    "are exchangeable (the gap does not depend on the context)"
)


class ContextParams(ScorerParams):
    verdict_baseline: Literal["mean", "variance", "detection"] = Field(
        "variance", description="pre-declared gene-level baseline of the dominance claim"
    )
    verdict_layer: int | Literal["best"] = Field(
        -1,
        description="attention layer: an index fixed a priori (default: the last) or "
        "'best' (highest mean AUROC over all contexts, p × layers)",
    )
    pairing: Literal["auto", "paired", "unpaired"] = Field(
        "auto",
        description="blocks of the interaction's permutation test: 'auto' every "
        "perturbation, matched by perturbed gene across contexts; 'paired' only the "
        "perturbations all contexts share; 'unpaired' one block (all gaps exchangeable)",
    )
    n_perm: int = Field(
        999, ge=99, description="Monte-Carlo draws of the interaction test (×10 while p < 0.05)"
    )
    min_perturbations: int = Field(
        5, ge=2, description="contexts with fewer evaluable perturbations are left out"
    )


def gap_interaction(
    gaps: dict[str, pd.Series], *, pairing: str = "auto", seed: int, n_perm: int = 999
) -> StatTestResult:
    """Test of "the gap depends on the context" (see the module docstring). ``gaps``:
    context → per-perturbation gap (indexed by perturbed gene, NaN dropped)."""
    gaps = {k: v.dropna() for k, v in gaps.items()}
    if pairing == "paired":
        shared = gaps[next(iter(gaps))].index
        for v in gaps.values():
            shared = shared.intersection(v.index)
        gaps = {k: v[shared] for k, v in gaps.items()}
    values = np.concatenate([v.to_numpy(float) for v in gaps.values()])
    groups = np.concatenate([[k] * len(v) for k, v in gaps.items()])
    blocks = np.concatenate([v.index.astype(str) for v in gaps.values()])
    if pairing == "unpaired":
        blocks = np.zeros(len(values), dtype=int)
    r = within_block_permutation(
        values, groups, blocks, seed=seed, stages=(n_perm, 10 * (n_perm + 1) - 1), h0=INTERACTION_H0
    )
    design = {
        "auto": "blocks: perturbations matched by gene",
        "paired": "blocks: perturbations every context shares",
        "unpaired": "one block",
    }[pairing]
    return replace(r, test=f"{r.test}; {design}", null_name="context_interaction")


def _demo(*, quick: bool, models: bool) -> dict:
    """Two contexts: the CRISPRi screen the models were trained on and a CRISPRa screen of
    the same network (attention on its controls: ~10 s per model)."""
    return {
        "context_dependence": {
            "datasets": ["sim", "sim_crispra"],
            "coexpression": "spearman_attention_cells",
            "n_boot": 500 if quick else 2000,
        }
    }


@register_analysis(
    "context_dependence",
    description="Perturbation prediction across contexts (datasets, CRISPRi/CRISPRa arms): "
    "within-block permutation test of the attention–co-expression gap's context "
    "dependence, and gene-level dominance per context (signed-rank, intersection-union "
    "over contexts)",
    params=ContextParams,
    version="1.1",
    category="B. Does it predict causal effects?",
    reference="Catalogue 9; preprint: K562, RPE1, Adamson, Shifrut, Tian contexts",
    quick={"n_boot": 100},
    demo=_demo,
    claims=(
        (
            "the <attention> − co-expression gap depends on the context",
            "within-block permutation of context labels (perturbations matched by gene are the blocks; two arms: the sign-flip test) of the range of the contexts' mean gaps, one-sided, with the CI that inverts it",
        ),
        (
            "gene-level baseline beats <attention> in every context",
            "intersection-union of the per-context signed-rank tests",
        ),
    ),
)
def run_context_dependence(ctx: AnalysisContext, p: ContextParams) -> AnalysisResult:
    from scfm_audit.plotting import distribution_figure

    notes: list[str] = []
    per_rows: list[dict[str, Any]] = []
    ctx_rows: list[dict[str, Any]] = []
    sources = attention_sources(ctx, p.attention)
    if not sources:
        notes.append(
            "No attention edge source configured (an edge source with a model); nothing to evaluate."
        )
    for en in sources:
        contexts, who, model = _contexts(ctx, p, en, notes)
        bl = p.verdict_baseline
        dom_claim = f"gene-level baseline ({bl}) beats {who} in every context"
        gap_claim = f"the {who} − co-expression gap depends on the context"
        dom_unit = Unit(None, model, None, f"{bl} − attention")
        gap_unit = Unit(None, model, None, "attention − co-expression gap")
        if len(contexts) < 2:
            # nothing to compare across: both claims are n/a with the reason (one context's
            # dominance is perturbation_prediction's claim, not a context effect)
            reason = (
                f"{len(contexts)} context(s) with ≥ {p.min_perturbations} evaluable "
                f"perturbations ({', '.join(contexts) or 'none'}): a comparison across "
                "contexts needs two or more (one context's baseline-vs-attention comparison "
                "is perturbation_prediction's claim)"
            )
            notes.append(f"{en}: {reason}.")
            ctx.not_assessable(
                dom_unit,
                claim=dom_claim,
                reason=reason,
                h0=WILCOXON_H0,
                test="intersection-union of signed-rank tests over contexts",
            )
            ctx.not_assessable(
                gap_unit,
                claim=gap_claim,
                reason=reason,
                h0=INTERACTION_H0,
                test="within-block permutation over contexts",
            )
            if not contexts:
                continue
        layers = next(iter(contexts.values()))[3].attention_layers
        col, layer, mult, why = _layer(contexts, layers, p.verdict_layer)
        gaps, doms = {}, []
        for name, (ds, arm, wide, d) in contexts.items():
            att = wide[col].to_numpy(float)
            seed = ctx.seed_for(en, ds, arm, "context")
            c = paired_comparison(
                wide[bl].to_numpy(float), att, n_boot=p.n_boot, seed=seed, h0=WILCOXON_H0
            )
            doms.append(c.result)
            ctx.describe(
                c.result,
                Unit(ds, model, None, f"{bl} − attention", layer),
                hypothesis=f"{bl} beats {who} at predicting responders in {name}",
                extra={"arm": arm, "context": name, "mean_delta": c.mean_delta},
            )
            row = {
                "edges": en,
                "context": name,
                "dataset": ds,
                "arm": arm,
                "layer": layer,
                "n_perturbations": len(wide),
                "auroc_attention": float(np.nanmean(att)),
                f"auroc_{bl}": c.mean_a,
                "dominance_delta": c.mean_delta,
                "dominance_ci_low": c.ci_low,
                "dominance_ci_high": c.ci_high,
                "dominance_hodges_lehmann": c.hodges_lehmann,
                "dominance_hl_ci_low": c.hl_ci_low,
                "dominance_hl_ci_high": c.hl_ci_high,
                "dominance_p": c.p,
            }
            if d.coexpression is not None:
                gap = pd.Series(att - wide[d.coexpression].to_numpy(float), index=wide.index)
                gaps[name] = gap
                row.update(
                    auroc_coexpression=float(wide[d.coexpression].mean()),
                    mean_gap=float(gap.mean()),
                )
                per_rows.extend(
                    {"edges": en, "context": name, "perturbation": k, "gap": v}
                    for k, v in gap.items()
                )
            ctx_rows.append(row)
        if len(contexts) < 2:
            continue
        # claim 1: gene-level dominance in every context (intersection-union)
        res, i = combine_intersection_union(doms)
        ctx.claim(
            res.times(mult, why=why),
            replace(dom_unit, layer=layer),
            claim=dom_claim,
            hypothesis=f"{bl} beats {who} at predicting responders in every context "
            f"({', '.join(contexts)})",
            direction="greater",
            layer_choice=why,
            extra={"contexts": list(contexts), "reported_context": list(contexts)[i]},
        )
        # claim 2: the attention - co-expression gap depends on the context
        if len(gaps) < 2:
            reason = (
                f"only {len(gaps)} context(s) with a co-expression comparison "
                f"({', '.join(gaps) or 'none'}): an interaction needs two or more"
            )
            notes.append(f"{en}: {reason}.")
            ctx.not_assessable(
                gap_unit,
                claim=gap_claim,
                reason=reason,
                h0=INTERACTION_H0,
                test="within-block permutation over contexts",
            )
            continue
        r = gap_interaction(
            gaps, pairing=p.pairing, seed=ctx.seed_for(en, "interaction"), n_perm=p.n_perm
        )
        ctx.claim(
            r.times(mult, why=why),
            replace(gap_unit, layer=layer),
            claim=gap_claim,
            hypothesis=f"{gap_claim} ({', '.join(gaps)})",
            direction="greater",
            layer_choice=why,
            extra={
                "contexts": list(gaps),
                "pairing": p.pairing,
                "mean_gaps": [float(g.mean()) for g in gaps.values()],
            },
        )
    tables = {
        k: v
        for k, v in {"contexts": pd.DataFrame(ctx_rows), "gaps": pd.DataFrame(per_rows)}.items()
        if not v.empty
    }
    figures = {}
    if per_rows:
        g = pd.DataFrame(per_rows)
        figures["gap_by_context"] = distribution_figure(
            g,
            group="context",
            value="gap",
            col="edges",
            chance=0.0,
            title="AUROC(attention) − AUROC(co-expression) per perturbation, by context",
            ylabel="ΔAUROC (attention − co-expression)",
        )
    if not ctx_rows:
        notes.append("No context had enough evaluable perturbations (see notes).")
    summary = "; ".join(
        f"{r['edges']} in {r['context']}: {p.verdict_baseline} − attention "
        f"{r['dominance_hodges_lehmann']:+.3f} [{r['dominance_hl_ci_low']:+.3f}, "
        f"{r['dominance_hl_ci_high']:+.3f}] (Hodges–Lehmann)"
        + (f", attention − co-expression {r['mean_gap']:+.3f} (mean)" if "mean_gap" in r else "")
        for r in ctx_rows
    )
    return AnalysisResult(
        tables=tables,
        figures=figures,
        summary=(summary + ".") if summary else "No context could be evaluated (see notes).",
        notes=notes,
    )


def _contexts(ctx, p: ContextParams, en: str, notes: list[str]):
    """The contexts of source ``en``: name → (dataset, arm, AUROC wide table, data)."""
    contexts, who, model = {}, en, None
    for ds in p.datasets or ctx.dataset_names():
        d = prediction_data(
            ctx,
            ds,
            en,
            p,
            coexpression=p.coexpression,
            allow_different_cells=p.allow_different_cells,
            reference=None,
            score_transform=p.score_transform,
            notes=notes,
        )
        if d is None or d.metrics.empty:
            continue
        who, model = source_label(ctx.edge_scores(en, ds)[0]), d.model
        for arm in sorted(d.metrics["arm"].unique()):
            wide = auroc_wide(d.metrics, arm).dropna(subset=list(BASELINES))
            name = f"{ds} · {arm}"
            if len(wide) < p.min_perturbations:
                notes.append(
                    f"{en}: context {name} has {len(wide)} evaluable perturbations "
                    f"(< {p.min_perturbations}); left out."
                )
                continue
            contexts[name] = (ds, arm, wide, d)
    return contexts, who, model


def _layer(contexts: dict, layers: list, verdict_layer) -> tuple[str, int | None, int, str]:
    """The attention column used in every context: a priori, or the best by attention's
    mean AUROC over all contexts' perturbations (p × layers)."""
    if len(layers) == 1 and layers[0][0] is None:
        return layers[0][1], None, 1, "unlayered source"
    nums = [lay for lay, _ in layers]
    cols = [c for _, c in layers]
    allw = pd.concat([w[cols] for _, _, w, _ in contexts.values()])
    j, mult, why = select_layer(
        nums,
        list(allw.mean(axis=0).to_numpy(float)),
        verdict_layer,
        what="attention's mean AUROC over all contexts",
    )
    return cols[j], nums[j], mult, why


# ---------------------------------------------------------------------------- calibration
# The interaction claim's test on synthetic scorers over a simulated two-arm screen (CRISPRi and
# CRISPRa, the same perturbed genes: the paired design). Nulls: in both arms attention
# and co-expression are the same signal plus independent noise of equal SD (the gap is
# symmetric about 0 everywhere); the hub null concentrates responders on hub TFs'
# targets. Planted: in CRISPRi attention is less noisy than co-expression (σ 0.5 vs s),
# in CRISPRa both have SD s: the gap differs by a planted margin, at two strengths.


def _context_scenarios():
    from scfm_audit.analyses._calibration import Scenario
    from scfm_audit.analyses._perturbation_sim import CAL_HUB

    both = {"modality": "both"}
    out = [
        Scenario(
            "context_exchangeable_null",
            "null",
            "two arms; attention and co-expression exchangeable in both",
            truth=0.0,
            params={"sim": both, "sd": {"CRISPRi": (1.5, 1.5), "CRISPRa": (1.5, 1.5)}},
        ),
        Scenario(
            "context_hub_null",
            "null",
            "two arms, responders concentrated on 12 hub TFs' targets; exchangeable",
            truth=0.0,
            params={
                "sim": {**both, **CAL_HUB},
                "sd": {"CRISPRi": (1.5, 1.5), "CRISPRa": (1.5, 1.5)},
            },
        ),
    ]
    for s in (2.0, 4.0):
        out.append(
            Scenario(
                f"context_planted_gap_{s:g}",
                "planted",
                f"CRISPRi: attention SD 0.5, co-expression SD {s:g}; CRISPRa: both {s:g}",
                strength=s,
                params={"sim": both, "sd": {"CRISPRi": (0.5, s), "CRISPRa": (s, s)}},
            )
        )
    return out


def _context_replicate(sc, seed: int, *, n_perm: int = 999):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.analyses._perturbation_sim import calibration_screen
    from scfm_audit.evaluate._perturbation import ranking_metrics

    rows = calibration_screen(sc.params["sim"], seed)
    rng = np.random.default_rng([seed, 2])
    gaps = {}
    for arm, sub in rows.groupby("arm"):
        sa, sb = sc.params["sd"][arm]
        sig = sub["signal"].to_numpy()
        m = ranking_metrics(
            sub["perturbation"].to_numpy(),
            sub["responder"].to_numpy(),
            {
                "attention": sig + sa * rng.normal(size=len(sig)),
                "coexpression": sig + sb * rng.normal(size=len(sig)),
            },
        )
        w = m.pivot(index="perturbation", columns="scorer", values="auroc").dropna()
        gaps[arm] = w["attention"] - w["coexpression"]
    # the claim's own test and CI (truth 0 under the nulls: the contexts' true range)
    r = gap_interaction(gaps, seed=seed, n_perm=n_perm)
    return ReplicateOutcome(
        p=r.p, estimate=r.effect, ci_low=r.ci_low, ci_high=r.ci_high, null_value=r.null_value
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("context_dependence", _context_scenarios())(_context_replicate)


_register_calibration()
