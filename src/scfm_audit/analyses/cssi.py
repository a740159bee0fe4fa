"""Analysis 13 — ``cssi``: Cell-State Stratified Interpretability.

Cells are stratified (Leiden on a kNN graph, k = 15, of the model's own cell embeddings
for attention — the paper's design — or of HVG PCA for model-free scores; k-means; or the
dataset's ``cell_state`` annotation), edges are scored within every stratum and
aggregated: CSSI-mean = Σ (n_k / N) · score_k, CSSI-max = the per-stratum score of largest
magnitude. Strata below ``min_stratum_size`` cells are dropped and reported. Attention is
extracted in **one pass** over the cells with per-stratum accumulators
(:class:`~scfm_audit.edges._attention.GroupedAttentionAccumulator`); co-expression is
recomputed per stratum on the same cells.

Selection is declared, not searched: the verdict rests on ``variant`` (CSSI-mean by
default) at the configured stratification, on ``verdict_metric`` (AUROC by default), and
on the layer chosen by ``verdict_layer`` (fixed a priori, or "best" with p × number of
layers — Bonferroni). CSSI-max, the K scan (k-means, K = 2 … 20) and the other metric are
descriptive only.

Tests
-----
* claim — CSSI with the configured strata against CSSI with RANDOM strata of the same
  sizes (cells assigned to strata at random with the observed stratum sizes,
  ``n_null_strata`` seeded draws, re-scored through the same per-stratum path — one
  grouped accumulator pass for attention — and averaged into one comparator score set).
  Paired permutation over source genes (``evaluate._cssi.paired_comparison``). H0: the
  CSSI rankings with the configured strata and with random strata of the same sizes are
  exchangeable within every source gene (stratifying by these strata ranks reference edges
  no better and no worse than stratifying at random). Two-sided; floor 2/(n_perm + 1)
  (raised when few source genes give few distinct swaps); effect = metric(CSSI) −
  metric(random-strata CSSI) with a two-way vertex-bootstrap CI. So "yes" means
  "stratifying by these strata helps", not "any stratification helps" (random strata of
  the same sizes score like pooled scoring, a little noisier).
  Why not a Monte-Carlo p over the random-strata draws alone: that null conditions on the
  reference, and its draws barely move (random strata ≈ pooled), so any informative
  stratification would "beat" it even against a reference placed at random (a hub null);
  the paired source-gene swap keeps the reference's dependence in the test.
  Limitation: the control separates "these strata" from "any strata", not "cell states"
  from other structure a data-driven clustering finds: on homogeneous cells with
  co-expression modules, k-means / Leiden strata condition on the module factors and can
  genuinely improve GRN recovery; that gain is real and is not cell-state specificity.
  Use ``strata: annotation`` for a claim about annotated cell states.
* descriptive — CSSI versus pooled scoring (the same paired permutation, B = pooled, at
  most 199 draws: floor 0.01).
* descriptive — the observed improvement over pooled among the random-strata draws'
  improvements (one-sided Monte-Carlo p, floor 1/(n_null_strata + 1); H0: the strata are a
  random partition given the reference). Their mean is the "no inflation" check (≤ 0).
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
    UnitParams,
    choose_layer,
    register_analysis,
    source_label,
)
from scfm_audit.analyses._strata import StrataSource
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.evaluate._cssi import (
    cssi_aggregate,
    enforce_min_size,
    hvg_pca,
    paired_comparison,
    random_strata,
    recovery_metrics,
    stratify,
)
from scfm_audit.evaluate._recovery import candidate_pairs, pair_scores

H0_PAIRED = (
    "CSSI and pooled rankings exchangeable within every source gene (CSSI ranks reference "
    "edges no better and no worse than pooled scoring)"
)
H0_SHUFFLE = "strata carry no information about edges beyond their sizes (labels shuffled)"
H0_RANDOM = (
    "CSSI rankings with these strata and with random strata of the same sizes exchangeable "
    "within every source gene (stratifying by these strata ranks reference edges no better "
    "and no worse than stratifying at random)"
)
SCORERS = ("coexpression", "attention")
#: draws of the descriptive CSSI-vs-pooled permutation (the claim's test uses ``n_perm``):
#: a floor of 0.01 is enough for a descriptive test and keeps CSSI's cost near what it was
N_PERM_DESCRIPTIVE = 199


class CSSIParams(UnitParams, LayerClaimParams):
    edges: list[str] | None = Field(
        None, description="edge sources (default: all co-expression and attention sources)"
    )
    strata: Literal["leiden", "kmeans", "annotation"] = Field(
        "leiden",
        description="primary stratification: Leiden on a kNN graph of the model's cell "
        "embeddings (model-free sources: HVG PCA), k-means on the same, or the dataset's "
        "cell_state annotation",
    )
    n_clusters: int = Field(6, ge=2, description="K of the primary k-means stratification")
    resolution: float = Field(1.0, gt=0, description="Leiden resolution")
    n_neighbors: int = Field(15, ge=2, description="k of the kNN graph")
    min_stratum_size: int = Field(30, ge=2, description="smaller strata are dropped (reported)")
    variant: Literal["mean", "max"] = Field(
        "mean", description="pre-declared primary aggregate behind the verdict"
    )
    verdict_metric: Literal["auroc", "f1"] = Field(
        "auroc", description="metric of the verdict test (the other is reported with its CI)"
    )
    k_scan: list[int] = Field(
        [2, 3, 4, 6, 8, 12, 16, 20], description="K of the descriptive k-means scan"
    )
    n_null_strata: int = Field(
        9,
        ge=0,
        description="random stratifications with the observed stratum sizes (shuffled "
        "labels): averaged into the comparator of the claim (CSSI vs random strata); also a "
        "descriptive Monte-Carlo test (floor 1/(n + 1)); 0: the claim is n/a",
    )
    n_perm: int = Field(999, ge=19, description="draws of the paired permutation test")
    n_boot: int = Field(500, ge=10, description="vertex-bootstrap draws for the CIs")
    n_hvg: int = Field(2000, ge=10, description="HVGs of the PCA representation")
    batch_size: int = Field(32, ge=1, description="cells per forward pass (embeddings)")


def _demo(*, quick: bool, models: bool) -> dict:
    return {
        "cssi": {
            "datasets": ["sim"],
            "references": ["sim_grn"],
            "k_scan": [2, 4, 8],
            "n_null_strata": 3,
            "n_boot": 200 if quick else 500,
        }
    }


@register_analysis(
    "cssi",
    description="Cell-state stratified scoring (Leiden on the model's cell embeddings, "
    "k-means or annotation): CSSI-mean (pre-declared) and CSSI-max versus pooled scoring, "
    "AUROC and top-K F1, paired gene-level permutation test with vertex-bootstrap CIs, "
    "K scan and shuffled-label null stratifications",
    params=CSSIParams,
    version="1.0",
    category="D. Scaling and CSSI",
    reference="Catalogue 13; paper: CSSI (kNN k = 15, Leiden 1.0, max / prevalence-weighted mean)",
    quick={
        "datasets": ["sim"],
        "strata": "kmeans",
        "n_clusters": 3,
        "k_scan": [2, 4],
        "n_null_strata": 2,
        "n_perm": 49,
        "n_boot": 20,
    },
    demo=_demo,
    claims=(
        (
            "CSSI strata beat random strata of the same sizes (<source>, <reference>)",
            "paired permutation over source genes of Δmetric between CSSI with these strata and with random strata of the observed sizes (H0: the two rankings exchangeable within every source gene), two-sided; one layer; CSSI vs pooled is descriptive",
        ),
    ),
)
def run_cssi(ctx: AnalysisContext, p: CSSIParams) -> AnalysisResult:
    datasets = p.datasets_in(ctx)
    edge_names = p.edges_in(ctx)
    rows, scan_rows, null_rows, strata_rows = [], [], [], []
    notes, figures = [], {}
    for ds in datasets:
        for en in edge_names:
            pooled = [s for s in ctx.edge_scores(en, ds) if s.head is None]
            if not pooled:
                continue
            src = StrataSource(ctx, p, ds, en, pooled)
            if src.scorer not in SCORERS:
                notes.append(
                    f"{ds}/{en}: scorer '{src.scorer}' is not stratified (only {SCORERS})."
                )
                continue
            refs = p.evaluable(ctx, src.genes, where=f"{ds}/{en}", notes=notes)
            if not refs:
                continue
            raw, how = src.labels(p.strata)
            labels, tab = enforce_min_size(raw, p.min_stratum_size)
            strata_rows += [
                {"dataset": ds, "edges": en, "strata": how, **r} for r in tab.to_dict("records")
            ]
            n_kept = int(tab["kept"].sum())
            if tab["kept"].lt(True).any():
                notes.append(
                    f"{ds}/{en}: {int((~tab['kept']).sum())} strata below {p.min_stratum_size} "
                    f"cells dropped ({int((labels < 0).sum())} cells); {n_kept} kept."
                )
            if n_kept < 2:
                notes.append(
                    f"{ds}/{en}: fewer than 2 strata of ≥ {p.min_stratum_size} cells "
                    f"({how}); CSSI equals pooled scoring, not tested."
                )
                continue
            # -- null stratifications: shuffled labels, sizes kept
            draws = random_strata(labels, p.n_null_strata, ctx.rng(ds, en, "null_strata"))
            # -- K scan (descriptive)
            scan_labels = {}
            n_cells = src.adata.n_obs
            for K in p.k_scan:
                if K * p.min_stratum_size > n_cells:
                    continue
                lab_k, _ = enforce_min_size(src.labels("kmeans", K)[0], p.min_stratum_size)
                if lab_k.max() >= 1:
                    scan_labels[K] = lab_k
            # every stratification scored at once (attention: one pass for all of them)
            variants = (
                [("mean", "max")]
                + [(p.variant,)] * len(draws)
                + [("mean", "max")] * len(scan_labels)
            )
            scored = src.aggregated_many([labels, *draws, *scan_labels.values()], variants)
            primary, nulls = scored[0], scored[1 : 1 + len(draws)]
            scans = {
                K: (int(lab.max()) + 1, agg)
                for (K, lab), agg in zip(scan_labels.items(), scored[1 + len(draws) :], strict=True)
            }
            for ref_name, pairs in refs.items():
                items = []
                for base in pooled:
                    L = base.layer
                    b = pair_scores(base, pairs)
                    m_pool = recovery_metrics(b, pairs)
                    row = {
                        "dataset": ds,
                        "reference": ref_name,
                        "edges": en,
                        "source": base.method + (f"[{base.model}]" if base.model else ""),
                        "layer": L,
                        "strata": how,
                        "n_strata": n_kept,
                        "n_cells": int((labels >= 0).sum()),
                        "n_pos": pairs.n_pos,
                        "pooled_auroc": m_pool["auroc"],
                        "pooled_f1": m_pool["f1"],
                    }
                    by_variant: dict[str, np.ndarray] = {}
                    for v in ("mean", "max"):
                        a = pair_scores(primary[(L, v)], pairs)
                        m = recovery_metrics(a, pairs)
                        row[f"cssi_{v}_auroc"], row[f"cssi_{v}_f1"] = m["auroc"], m["f1"]
                        by_variant[v] = a
                    a_primary = by_variant[p.variant]
                    seed = ctx.seed_for(ds, en, ref_name, L)
                    for metric in ("auroc", "f1"):
                        is_v = metric == p.verdict_metric
                        c = paired_comparison(
                            a_primary,
                            b,
                            pairs,
                            metric=metric,
                            n_perm=min(p.n_perm, N_PERM_DESCRIPTIVE) if is_v else 0,
                            n_boot=p.n_boot,
                            seed=seed,
                        )
                        for k in ("diff", "ratio"):
                            row[f"{metric}_{k}"] = c[k]
                            row[f"{metric}_{k}_ci_low"] = c[f"{k}_ci_low"]
                            row[f"{metric}_{k}_ci_high"] = c[f"{k}_ci_high"]
                        if is_v:
                            comp = c
                    # null stratifications
                    null_d = []
                    for i, nd in enumerate(nulls):
                        mn = recovery_metrics(pair_scores(nd[(L, p.variant)], pairs), pairs)
                        d = mn[p.verdict_metric] - m_pool[p.verdict_metric]
                        null_d.append(d)
                        null_rows.append(
                            {
                                "dataset": ds,
                                "reference": ref_name,
                                "edges": en,
                                "layer": L,
                                "draw": i,
                                "auroc": mn["auroc"],
                                "f1": mn["f1"],
                                "auroc_diff": mn["auroc"] - m_pool["auroc"],
                                "f1_ratio": mn["f1"] / m_pool["f1"] if m_pool["f1"] else np.nan,
                            }
                        )
                    row["null_mean_diff"] = float(np.mean(null_d)) if null_d else np.nan
                    res = comparison_result(p, row, comp, how, n=pairs.n_pos)
                    unit = Unit(ds, base.model, ref_name, f"cssi_{p.variant}:{base.label}", L)
                    ctx.describe(
                        res,
                        unit,
                        hypothesis=_hypothesis(p, base.label, ref_name),
                        extra={"n_strata": row["n_strata"], "strata": how},
                    )
                    # the claim: these strata against random strata of the same sizes
                    res_rand = None
                    if nulls:
                        rnd = random_strata_scores(nulls, L, p.variant, base)
                        b_rand = pair_scores(rnd, pairs)
                        m_rand = recovery_metrics(b_rand, pairs)
                        cr = paired_comparison(
                            a_primary,
                            b_rand,
                            pairs,
                            metric=p.verdict_metric,
                            n_perm=p.n_perm,
                            n_boot=p.n_boot,
                            seed=ctx.seed_for(ds, en, ref_name, L, "random_strata"),
                        )
                        row["random_auroc"], row["random_f1"] = m_rand["auroc"], m_rand["f1"]
                        k = "diff" if p.verdict_metric == "auroc" else "ratio"
                        row["vs_random"] = cr[k]
                        row["vs_random_ci_low"] = cr[f"{k}_ci_low"]
                        row["vs_random_ci_high"] = cr[f"{k}_ci_high"]
                        row["vs_random_p"] = cr["p"]
                        res_rand = random_strata_result(
                            p, cr, how, n=pairs.n_pos, n_draws=len(nulls)
                        )
                    if null_d:
                        _describe_shuffle(
                            ctx,
                            p,
                            unit,
                            comp["diff"],
                            np.array(null_d),
                            base,
                            ref_name,
                            n=pairs.n_pos,
                        )
                    rows.append(row)
                    items.append((base, res_rand))
                    for K, (k_kept, agg) in scans.items():
                        for v in ("mean", "max"):
                            m = recovery_metrics(pair_scores(agg[(L, v)], pairs), pairs)
                            for metric in ("auroc", "f1"):
                                scan_rows.append(
                                    {
                                        "dataset": ds,
                                        "reference": ref_name,
                                        "edges": en,
                                        "layer": L,
                                        "K": K,
                                        "n_strata": k_kept,
                                        "series": f"CSSI-{v} {metric.upper()}",
                                        "metric": metric,
                                        "variant": v,
                                        "value": m[metric],
                                        "pooled": m_pool[metric],
                                    }
                                )
                _claim(ctx, p, items, ds, ref_name)
    table = pd.DataFrame(rows)
    scan = pd.DataFrame(scan_rows)
    from scfm_audit.plotting import cssi_figures

    figures.update(cssi_figures(table, scan, variant=p.variant))
    tables = {"cssi": table, "strata": pd.DataFrame(strata_rows)}
    if len(scan):
        tables["k_scan"] = scan
    if null_rows:
        tables["null_strata"] = pd.DataFrame(null_rows)
    if table.empty:
        notes.append("No edge source could be evaluated with CSSI (see the other notes).")
        tables = {"cssi": pd.DataFrame({"note": ["nothing evaluated"]})}
    return AnalysisResult(tables=tables, figures=figures, summary=_summary(table, p), notes=notes)


def _effect(p: CSSIParams, row: dict) -> tuple[str, float, float, float, float]:
    """(name, value, CI low, CI high, null value) of the verdict's effect."""
    if p.verdict_metric == "auroc":
        k, nv, name = "auroc_diff", 0.0, "ΔAUROC (CSSI − pooled)"
    else:
        k, nv, name = "f1_ratio", 1.0, "top-K F1 ratio (CSSI / pooled)"
    return name, row[k], row[f"{k}_ci_low"], row[f"{k}_ci_high"], nv


def comparison_result(p: CSSIParams, row: dict, comp: dict, how: str, *, n: int):
    """The paired permutation over source genes (CSSI vs pooled) as a typed result: the
    effect (ΔAUROC, or the F1 ratio against 1) with its CI, the tails of the tested
    difference, the floor."""
    from scfm_audit.stats._tests import StatTestResult

    name, eff, lo, hi, nv = _effect(p, row)
    return StatTestResult(
        statistic=comp["diff"],
        p=comp["p"],
        effect=eff,
        n=n,
        test=f"paired permutation over source genes ({comp['n_perm']} draws, two-sided), "
        f"{p.verdict_metric.upper()}; strata: {how}",
        statistic_name=f"Δ{p.verdict_metric.upper()}",
        effect_name=name,
        alternative="two-sided",
        ci_low=lo,
        ci_high=hi,
        p_greater=comp["p_greater"],
        p_less=comp["p_less"],
        null_value=nv,
        p_floor=comp["p_floor"],
        h0=H0_PAIRED,
        null_name="paired_source_permutation",
    )


def random_strata_scores(nulls: list[dict], layer, variant: str, base: EdgeScores) -> EdgeScores:
    """The comparator of the claim: the CSSI aggregates of the random-strata draws averaged
    (pair by pair, over the draws that scored the pair) into one score set."""
    import warnings

    S = np.stack([nd[(layer, variant)].dense() for nd in nulls])
    with warnings.catch_warnings():  # a pair no draw scored stays NaN (lowest rank)
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(S, axis=0)
    return EdgeScores(
        m, base.genes, method=f"cssi_{variant}_random", layer=layer, directed=base.directed
    )


def random_strata_result(p: CSSIParams, comp: dict, how: str, *, n: int, n_draws: int):
    """The claim's test as a typed result: the paired permutation over source genes of CSSI
    with the configured strata against CSSI with random strata of the same sizes (the mean
    of ``n_draws`` random stratifications): effect ΔAUROC (or the F1 ratio against 1) with
    its vertex-bootstrap CI, both tails, the floor."""
    from scfm_audit.stats._tests import StatTestResult

    M = p.verdict_metric.upper()
    if p.verdict_metric == "auroc":
        k, nv, name = "diff", 0.0, "ΔAUROC (CSSI − random-strata CSSI)"
    else:
        k, nv, name = "ratio", 1.0, "top-K F1 ratio (CSSI / random-strata CSSI)"
    return StatTestResult(
        statistic=comp["diff"],
        p=comp["p"],
        effect=comp[k],
        n=n,
        test=f"paired permutation over source genes ({comp['n_perm']} draws, two-sided), "
        f"{M}; strata: {how} vs random strata of the same sizes (mean of {n_draws} draws)",
        statistic_name=f"Δ{M}",
        effect_name=name,
        alternative="two-sided",
        ci_low=comp[f"{k}_ci_low"],
        ci_high=comp[f"{k}_ci_high"],
        p_greater=comp["p_greater"],
        p_less=comp["p_less"],
        null_value=nv,
        p_floor=comp["p_floor"],
        h0=H0_RANDOM,
        null_name="paired_source_permutation_vs_random_strata",
    )


def _hypothesis(p: CSSIParams, label: str, ref_name: str) -> str:
    return f"CSSI-{p.variant} of {label} ranks {ref_name} edges differently from pooled scoring"


def _describe_shuffle(ctx, p, unit, obs: float, null: np.ndarray, base, ref_name, *, n):
    from scfm_audit.stats._montecarlo import attainable_floor
    from scfm_audit.stats._tests import StatTestResult

    M = p.verdict_metric.upper()
    pg = float((1 + np.sum(null >= obs)) / (len(null) + 1))
    res = StatTestResult(
        obs,
        pg,
        obs,
        n,
        f"label shuffle of the strata ({len(null)} draws, one-sided)",
        f"Δ{M}",
        f"Δ{M} (CSSI − pooled)",
        "greater",
        p_greater=pg,
        null_value=float(np.mean(null)),
        p_floor=attainable_floor(null, "greater"),
        h0=H0_SHUFFLE,
        null_name="strata_label_shuffle",
    )
    ctx.describe(
        res,
        unit,
        hypothesis=f"CSSI-{p.variant} of {base.label} beats shuffled-label strata on {ref_name}",
    )


def _claim(ctx, p: CSSIParams, items: list, ds: str, ref_name: str) -> None:
    base0 = items[0][0]
    claim = f"CSSI strata beat random strata of the same sizes ({source_label(base0)}, {ref_name})"
    hyp = (
        f"CSSI-{p.variant} of {{}} with its strata ranks {ref_name} edges better than with "
        "random strata of the same sizes (stratifying by these strata helps, not any "
        "stratification)"
    )
    if any(r is None for _, r in items):
        unit = Unit(ds, base0.model, ref_name, f"cssi_{p.variant}:{base0.label}", None)
        ctx.not_assessable(
            unit,
            claim=claim,
            test="paired permutation vs random strata",
            reason="n_null_strata = 0: no random strata to compare with",
        )
        return
    if base0.layer is None:
        i, res, why = 0, items[0][1], ""
    else:
        items = sorted(items, key=lambda x: x[0].layer)
        i, res, why = choose_layer([(b.layer, r) for b, r in items], p.verdict_layer)
    base = items[i][0]
    unit = Unit(ds, base.model, ref_name, f"cssi_{p.variant}:{base.label}", base.layer)
    ctx.claim(
        res,
        unit,
        claim=claim,
        layer_choice=why,
        hypothesis=hyp.format(f"{base.method} (selected layer)"),
    )


def _summary(table: pd.DataFrame, p: CSSIParams) -> str:
    if table.empty:
        return "No edge source could be evaluated with CSSI (see notes)."
    parts = []
    for r in table.sort_values("auroc_diff", ascending=False).head(6).itertuples():
        lay = f"/L{int(r.layer)}" if pd.notna(r.layer) else ""
        parts.append(
            f"{r.source}{lay} vs {r.reference} on {r.dataset}: AUROC {r.pooled_auroc:.3f} → "
            f"{getattr(r, f'cssi_{p.variant}_auroc'):.3f}, F1 {r.pooled_f1:.3f} → "
            f"{getattr(r, f'cssi_{p.variant}_f1'):.3f} ({r.n_strata} strata)"
            + (
                f"; random strata of the same sizes: AUROC {r.random_auroc:.3f}"
                if pd.notna(getattr(r, "random_auroc", np.nan))
                else ""
            )
        )
    return (
        f"CSSI-{p.variant} against pooled scoring: " + "; ".join(parts) + ". The claim "
        "compares the strata with random strata of the same sizes, so that 'yes' means "
        "stratifying by these strata helps, not any stratification."
    )


# ---------------------------------------------------------------------------- calibration
# Calibrated on co-expression edges (|Spearman|) for speed: the stratification, the
# aggregation, the random-strata control and the paired test are the same code for
# attention (only the per-stratum scores come from a grouped attention pass instead).
# Strata: k-means (K = 4) on HVG PCA; the control: the mean of 5 random stratifications of
# the same sizes (the analysis' default is 9). The claim's test: CSSI vs random strata.
# Null scenarios (the strata rank reference edges no better than random strata):
# * a heavy-tailed hub reference placed at random on 6 heterogeneous states (the strata
#   are informative about the cells, not about the reference);
# * homogeneous control cells WITH co-expression modules (1 state, 1 donor), the planted
#   GRN, and random strata as the strata (CSSI's gain over pooled scoring on such data is
#   what "any stratification" would give if it helped; here it must give no claim).
# Planted: the simulator's GRN with state-specific edges (80 % of edges active in a subset
# of states) at two strengths of heterogeneity (state-program SD 1 and 2).
_CAL_SIM: dict[str, Any] = dict(n_cells=300, n_genes=80, n_tfs=8, n_perturbations=2)
_CAL_RANDOM_DRAWS = 5
_HET = dict(n_states=6, state_program_strength=2.0, state_specificity=0.8)
_HOM = dict(n_states=1, n_donors=1, state_specificity=0.0, control_fraction=0.95)


def _cal_scenarios():
    from scfm_audit.analyses._calibration import Scenario

    out = [
        Scenario(
            "hub_null_heterogeneous",
            "null",
            "hub reference placed at random on 6 heterogeneous states, k-means strata",
            truth=0.0,
            params={"sim": _HET, "hub": True, "strata": "kmeans"},
        ),
        Scenario(
            "modules_homogeneous_random_strata",
            "null",
            "planted GRN on homogeneous control cells with co-expression modules (1 state, "
            "1 donor); the strata are random",
            truth=0.0,
            params={"sim": _HOM, "hub": False, "strata": "random"},
        ),
    ]
    for s in (1.0, 2.0):
        out.append(
            Scenario(
                f"planted_state_edges_{s:g}",
                "planted",
                f"planted GRN, 6 states with state-specific edges, state-program SD {s:g}, "
                "k-means strata",
                strength=s,
                params={
                    "sim": {**_HET, "state_program_strength": s},
                    "hub": False,
                    "strata": "kmeans",
                },
            )
        )
    return out


def _cssi_mean(ad, labels: np.ndarray, genes) -> EdgeScores:
    from scfm_audit.edges._coexpression import coexpression

    K = int(labels.max()) + 1
    mats = [coexpression(ad[labels == k]).scores for k in range(K)]
    m = cssi_aggregate(mats, np.bincount(labels[labels >= 0], minlength=K), variant="mean")
    return EdgeScores(m, genes, method="cssi_mean", directed=False)


def _cal_replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.data._hub_reference import hub_reference, place_reference
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._coexpression import coexpression

    bench = simulate_perturbseq(**_CAL_SIM, **sc.params["sim"], seed=seed)
    ad, genes = bench.adata, bench.adata.var_names
    if sc.params["sim"].get("n_states") == 1:  # control cells only: no perturbation arms
        ad = ad[ad.obs["perturbation"].eq("non-targeting").to_numpy()].copy()
    if sc.params["hub"]:
        ref = place_reference(
            hub_reference(len(genes), seed=seed + 1, directed=True), genes, seed=seed + 2
        )
    else:
        ref = bench.grn
    pairs = candidate_pairs(genes, ref)
    rng = np.random.default_rng(seed + 3)
    if sc.params["strata"] == "random":
        raw = rng.integers(0, 4, ad.n_obs)
    else:
        raw = stratify(hvg_pca(ad, seed=seed), method="kmeans", n_clusters=4, seed=seed)
    labels, _ = enforce_min_size(raw, 20)
    draws = random_strata(labels, _CAL_RANDOM_DRAWS, rng)
    nulls = [{(None, "mean"): _cssi_mean(ad, d, genes)} for d in draws]
    cssi = _cssi_mean(ad, labels, genes)
    a = pair_scores(cssi, pairs)
    b = pair_scores(random_strata_scores(nulls, None, "mean", cssi), pairs)
    c = paired_comparison(a, b, pairs, metric="auroc", n_perm=199, n_boot=100, seed=seed)
    pooled = paired_comparison(
        a,
        pair_scores(coexpression(ad), pairs),
        pairs,
        metric="auroc",
        n_perm=199,
        n_boot=10,
        seed=seed,
    )
    res = random_strata_result(
        CSSIParams(),
        c,
        "k-means (K = 4)" if sc.params["strata"] == "kmeans" else "random",
        n=pairs.n_pos,
        n_draws=_CAL_RANDOM_DRAWS,
    )
    return ReplicateOutcome.of(
        res, extra={"p_vs_pooled": pooled["p"], "diff_vs_pooled": pooled["diff"]}
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("cssi", _cal_scenarios())(_cal_replicate)


_register_calibration()
