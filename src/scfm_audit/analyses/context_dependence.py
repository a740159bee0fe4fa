"""Analysis 9 — ``context_dependence``: do the perturbation-prediction results hold across
contexts?

A context is a (dataset, arm): datasets (cell types, screens) and, within a dataset with
a modality column, its CRISPRi and CRISPRa arms. Per context and attention source, the
per-perturbation AUROCs of :mod:`~scfm_audit.analyses.perturbation_prediction` (same
scorers, same responder definition, one attention layer per source: fixed a priori with
``verdict_layer``, or "best" by attention's mean AUROC pooled over contexts with p × the
number of layers).

Tests (perturbations are the units):

* interaction — does the attention–correlation gap (per perturbation: AUROC_attention −
  AUROC_co-expression) depend on the context? Two contexts: Wilcoxon signed-rank of the
  paired gap differences over the perturbations both contexts share when they are the
  two arms of one dataset (the same perturbed genes: a paired design), otherwise
  Mann–Whitney U; more than two contexts: Friedman over the perturbations all contexts
  share when paired (all contexts of one dataset, or ``pairing: paired``; perturbations
  are the blocks), otherwise Kruskal–Wallis. H0: the gap has the same distribution in
  every context (paired: within each perturbation, the contexts' gaps are
  exchangeable). Effect: the range (max − min) of the contexts' mean gaps, with a
  percentile bootstrap CI resampling perturbations within each context (≥ 0; a claim
  without a direction). One context: n/a with the reason.
* gene-level dominance per context — ΔAUROC = pre-declared baseline (``verdict_baseline``)
  − attention per context (Wilcoxon over perturbations, bootstrap CI; descriptive) and the
  claim "gene-level baselines beat attention in every context": intersection–union over
  contexts (p = max p when the baseline leads everywhere, else Bonferroni over the
  contexts where attention leads).

Incremental value per context is left to ``incremental_value``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from scfm_audit.analyses._contract import (
    AnalysisResult,
    Verdict,
    bonferroni,
    register_analysis,
    select_layer,
    source_label,
)
from scfm_audit.analyses.perturbation_prediction import (
    BASELINES,
    WILCOXON_H0,
    ScorerParams,
    attention_sources,
    auroc_wide,
    comparison_fields,
    prediction_data,
)
from scfm_audit.evaluate._perturbation import combine_intersection_union, paired_comparison

INTERACTION_H0 = (
    "the per-perturbation attention − co-expression AUROC gap has the same distribution in "
    "every context (perturbations independent within a context)"
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
        description="paired: over the perturbations all contexts share (Wilcoxon for two "
        "contexts, Friedman for more); unpaired: Mann-Whitney / Kruskal-Wallis; 'auto': "
        "paired when all contexts are arms of one dataset",
    )
    min_perturbations: int = Field(
        5, ge=2, description="contexts with fewer evaluable perturbations are left out"
    )


def gap_interaction(gaps: dict[str, pd.Series], *, paired: bool, n_boot: int, seed: int) -> dict:
    """Test of "the gap depends on the context" (see the module docstring). ``gaps``:
    context → per-perturbation gap (indexed by perturbation, NaN dropped). Returns test,
    statistic, p, effect (range of mean gaps) with its bootstrap CI, n."""
    gaps = {k: v.dropna() for k, v in gaps.items()}
    names = list(gaps)
    means = np.array([gaps[k].mean() for k in names])
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, len(names)))
    for j, k in enumerate(names):
        v = gaps[k].to_numpy(float)
        boot[:, j] = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    rang = boot.max(axis=1) - boot.min(axis=1)
    out = {
        "effect": float(means.max() - means.min()),
        "ci_low": float(np.quantile(rang, 0.025)),
        "ci_high": float(np.quantile(rang, 0.975)),
        "n": int(sum(len(v) for v in gaps.values())),
    }

    def result(test: str, name: str, stat: float, p: float, n: int | None = None) -> dict:
        return {**out, "test": test, "statistic_name": name, "statistic": stat, "p": p,
                "n": out["n"] if n is None else n}  # fmt: skip

    if paired:  # perturbations are the blocks: a perturbation's own difficulty cancels
        shared = gaps[names[0]].index
        for k in names[1:]:
            shared = shared.intersection(gaps[k].index)
        block = np.column_stack([gaps[k][shared].to_numpy(float) for k in names])
        two = len(names) == 2
        test, name = ("Wilcoxon signed-rank", "W") if two else ("Friedman chi-square", "chi-square")
        if len(shared) < 2 or not (block != block[:, :1]).any():
            return result(f"{test} (paired)", name, math.nan, math.nan, len(shared))
        if two:
            r = stats.wilcoxon(block[:, 0] - block[:, 1])
            test = f"{test} of paired gap differences"
        else:
            r = stats.friedmanchisquare(*block.T)
            test = f"{test} over shared perturbations"
        return result(test, name, float(r.statistic), float(r.pvalue), len(shared))
    if len(names) == 2:
        r = stats.mannwhitneyu(gaps[names[0]], gaps[names[1]], alternative="two-sided")
        return result("Mann-Whitney U", "U", float(r.statistic), float(r.pvalue))
    r = stats.kruskal(*[gaps[k] for k in names])
    return result("Kruskal-Wallis H", "H", float(r.statistic), float(r.pvalue))


@register_analysis(
    "context_dependence",
    description="Perturbation prediction across contexts (datasets, CRISPRi/CRISPRa arms): "
    "interaction test for the attention–co-expression gap, and gene-level dominance per "
    "context (bootstrap CIs, intersection-union over contexts)",
    params=ContextParams,
    version="1.0",
    category="B. Does it predict causal effects?",
    reference="Catalogue 9; preprint: K562, RPE1, Adamson, Shifrut, Tian contexts",
)
def run_context_dependence(ctx, p: ContextParams) -> AnalysisResult:
    from scfm_audit.plotting import distribution_figure

    notes: list[str] = []
    per_rows, ctx_rows, verdicts = [], [], []
    datasets = p.datasets or ctx.dataset_names()
    if not attention_sources(ctx, p.attention):
        notes.append(
            "No attention edge source configured (an edge source with a model); nothing to evaluate."
        )
    sources = attention_sources(ctx, p.attention)
    for en in sources:
        contexts = {}  # name -> (dataset, arm, wide, PredictionData)
        who, model = en, None
        for ds in datasets:
            d = prediction_data(
                ctx, ds, en, p, coexpression=p.coexpression,
                allow_different_cells=p.allow_different_cells, reference=None,
                score_transform=p.score_transform, notes=notes,
            )  # fmt: skip
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
        dom_claim = f"gene-level baseline ({p.verdict_baseline}) beats {who} in every context"
        gap_claim = f"the {who} − co-expression gap depends on the context"
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
            for claim, null, name, method in (
                (dom_claim, WILCOXON_H0, "intersection_union_wilcoxon",
                 f"{p.verdict_baseline} − attention"),
                (gap_claim, INTERACTION_H0, "context_interaction", "attention − co-expression gap"),
            ):  # fmt: skip
                rec = ctx.add_test(
                    hypothesis=claim,
                    test="not computed: fewer than two contexts",
                    null=null,
                    null_name=name,
                    p=float("nan"),
                    model=model,
                    family="confirmatory",
                    method=method,
                    direction="greater",
                )
                verdicts.append(Verdict(claim, rec, model, None, reason=reason))
            if not contexts:
                continue
        layers = next(iter(contexts.values()))[3].attention_layers
        col, layer, mult, why = _layer(contexts, layers, p.verdict_layer)
        gaps, doms = {}, []
        for name, (ds, arm, wide, d) in contexts.items():
            att = wide[col].to_numpy(float)
            seed = ctx.seed_for(en, ds, arm, "context")
            c = paired_comparison(
                wide[p.verdict_baseline].to_numpy(float), att, n_boot=p.n_boot, seed=seed
            )
            doms.append(c)
            rec = ctx.add_test(
                hypothesis=f"{p.verdict_baseline} beats {who} at predicting responders in {name}",
                test=f"Wilcoxon signed-rank over perturbations (two-sided); {why}",
                null=WILCOXON_H0,
                null_name="wilcoxon_signed_rank",
                p=c.p,
                family="descriptive",
                model=model,
                dataset=ds,
                method=f"{p.verdict_baseline} − attention",
                layer=layer,
                extra={"arm": arm, "context": name},
                **comparison_fields(c),
            )
            row = {"edges": en, "context": name, "dataset": ds, "arm": arm, "layer": layer,
                   "n_perturbations": len(wide), "auroc_attention": float(np.nanmean(att)),
                   f"auroc_{p.verdict_baseline}": c.mean_a, "dominance_delta": c.mean_delta,
                   "dominance_ci_low": c.ci_low, "dominance_ci_high": c.ci_high,
                   "dominance_p": rec.p}  # fmt: skip
            if d.coexpression is not None:
                gap = pd.Series(att - wide[d.coexpression].to_numpy(float), index=wide.index)
                gaps[name] = gap
                row.update(auroc_coexpression=float(wide[d.coexpression].mean()),
                           mean_gap=float(gap.mean()))  # fmt: skip
                per_rows.extend(
                    {"edges": en, "context": name, "perturbation": k, "gap": v}
                    for k, v in gap.items()
                )
            ctx_rows.append(row)
        if len(contexts) < 2:
            continue
        # claim 1: gene-level dominance in every context (intersection-union)
        pd_, i = combine_intersection_union(doms)
        c = doms[max(i, 0)]
        rec = ctx.add_test(
            hypothesis=f"{p.verdict_baseline} beats {who} at predicting responders in every "
            f"context ({', '.join(contexts)})",
            test="Wilcoxon signed-rank over perturbations per context, intersection-union "
            f"over {len(doms)} contexts; {why}",
            null=WILCOXON_H0 + " in at least one context",
            null_name="intersection_union_wilcoxon",
            p=bonferroni(pd_, mult),
            family="confirmatory",
            model=model,
            method=f"{p.verdict_baseline} − attention",
            layer=layer,
            extra={"contexts": list(contexts), "layer_choice": why},
            **{
                **comparison_fields(c),
                "effect_name": "mean ΔAUROC (reported context)",
                "n": sum(x.n for x in doms),
            },
        )
        verdicts.append(Verdict(dom_claim, rec, model, None, direction="greater", layer_choice=why))
        # claim 2: the attention - co-expression gap depends on the context
        claim = gap_claim
        reason = ""
        if len(gaps) < 2:
            reason = (
                f"only {len(gaps)} context(s) with a co-expression comparison "
                f"({', '.join(gaps) or 'none'}): an interaction needs two or more"
            )
        if reason:
            notes.append(f"{en}: {reason}.")
            rec = ctx.add_test(
                hypothesis=claim, test="context interaction of the gap", null=INTERACTION_H0,
                null_name="context_interaction", p=float("nan"), model=model,
                method="attention − co-expression gap", direction="greater",
            )  # fmt: skip
            verdicts.append(Verdict(claim, rec, model, None, reason=reason))
            continue
        names = list(gaps)
        same_ds = len({contexts[k][0] for k in names}) == 1
        paired = p.pairing == "paired" or (p.pairing == "auto" and same_ds)
        r = gap_interaction(
            gaps, paired=paired, n_boot=p.n_boot, seed=ctx.seed_for(en, "interaction")
        )
        rec = ctx.add_test(
            hypothesis=claim + f" ({', '.join(names)})",
            test=f"{r['test']} over perturbations; {why}",
            null=INTERACTION_H0,
            null_name="context_interaction",
            p=bonferroni(r["p"], mult),
            statistic_name=r["statistic_name"],
            statistic=r["statistic"],
            effect_name="range of mean gaps (ΔAUROC)",
            effect=r["effect"],
            ci_low=r["ci_low"],
            ci_high=r["ci_high"],
            null_value=0.0,
            n=r["n"],
            direction="greater",
            family="confirmatory",
            model=model,
            method="attention − co-expression gap",
            layer=layer,
            extra={"contexts": names, "paired": paired, "layer_choice": why},
        )
        verdicts.append(Verdict(claim, rec, model, None, direction="greater", layer_choice=why))
    tables = {
        k: v
        for k, v in {"contexts": pd.DataFrame(ctx_rows), "gaps": pd.DataFrame(per_rows)}.items()
        if not v.empty
    }
    figures = {}
    if per_rows:
        g = pd.DataFrame(per_rows)
        figures["gap_by_context"] = distribution_figure(
            g, group="context", value="gap", col="edges", chance=0.0,
            title="AUROC(attention) − AUROC(co-expression) per perturbation, by context",
            ylabel="ΔAUROC (attention − co-expression)",
        )  # fmt: skip
    if not ctx_rows:
        notes.append("No context had enough evaluable perturbations (see notes).")
    summary = "; ".join(
        f"{r['edges']} in {r['context']}: {p.verdict_baseline} − attention "
        f"{r['dominance_delta']:+.3f} [{r['dominance_ci_low']:+.3f}, "
        f"{r['dominance_ci_high']:+.3f}]"
        + (f", attention − co-expression {r['mean_gap']:+.3f}" if "mean_gap" in r else "")
        for r in ctx_rows
    )
    return AnalysisResult(
        tables=tables,
        figures=figures,
        summary=(summary + ".") if summary else "No context could be evaluated (see notes).",
        verdicts=verdicts,
        notes=notes,
    )


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
# The interaction test on synthetic scorers over a simulated two-arm screen (CRISPRi and
# CRISPRa, the same perturbed genes: the paired design). Nulls: in both arms attention
# and co-expression are the same signal plus independent noise of equal SD (the gap is
# symmetric about 0 everywhere); the hub null concentrates responders on hub TFs'
# targets. Planted: in CRISPRi attention is less noisy than co-expression (σ 0.5 vs s),
# in CRISPRa both have SD s: the gap differs by a planted margin, at two strengths.


def _context_scenarios():
    from scfm_audit.analyses._calibration import Scenario
    from scfm_audit.analyses.perturbation_prediction import CAL_HUB

    both = {"modality": "both"}
    out = [
        Scenario("context_exchangeable_null", "null",
                 "two arms; attention and co-expression exchangeable in both",
                 params={"sim": both, "sd": {"CRISPRi": (1.5, 1.5), "CRISPRa": (1.5, 1.5)}}),
        Scenario("context_hub_null", "null",
                 "two arms, responders concentrated on 12 hub TFs' targets; exchangeable",
                 params={"sim": {**both, **CAL_HUB},
                         "sd": {"CRISPRi": (1.5, 1.5), "CRISPRa": (1.5, 1.5)}}),
    ]  # fmt: skip
    for s in (2.0, 4.0):
        out.append(
            Scenario(f"context_planted_gap_{s:g}", "planted",
                     f"CRISPRi: attention SD 0.5, co-expression SD {s:g}; CRISPRa: both {s:g}",
                     strength=s,
                     params={"sim": both, "sd": {"CRISPRi": (0.5, s), "CRISPRa": (s, s)}})
        )  # fmt: skip
    return out


def _context_replicate(sc, seed: int, *, n_boot: int = 400):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.analyses.perturbation_prediction import calibration_screen
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
            {"attention": sig + sa * rng.normal(size=len(sig)),
             "coexpression": sig + sb * rng.normal(size=len(sig))},
        )  # fmt: skip
        w = m.pivot(index="perturbation", columns="scorer", values="auroc").dropna()
        gaps[arm] = w["attention"] - w["coexpression"]
    r = gap_interaction(gaps, paired=True, n_boot=n_boot, seed=seed)
    return ReplicateOutcome(
        p=r["p"], estimate=r["effect"], ci_low=r["ci_low"], ci_high=r["ci_high"], null_value=0.0
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("context_dependence", _context_scenarios())(_context_replicate)


_register_calibration()
