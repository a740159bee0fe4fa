"""Analysis 2 — ``layer_organisation`` (family A): is protein–protein structure recovered in
early layers and transcriptional regulation in late ones?

For each dataset × layered edge source (attention) × pair (undirected PPI-type reference,
directed TF-regulation reference): per-layer AUROC of both references (two-way vertex
bootstrap CIs, the degree-permutation null of ``edge_recovery``), and the depth trend of
their difference ``d_L = AUROC_PPI(L) − AUROC_TF(L)``.

The trend test (verdict): the OLS slope of ``d_L`` on the layer index, with a vertex
bootstrap that resamples genes once per draw and applies the same gene multiplicities to
every layer and both references (pair weight ``w_s · w_t``), so the dependence among
edges sharing a gene and among layers sharing the genes is kept. H0: slope = 0 (the
PPI-versus-regulation preference does not change with depth); the two-sided bootstrap
p-value is ``2 · min(P*(slope ≤ 0), P*(slope ≥ 0))`` (test inversion of the percentile
interval). The claim "PPI early, regulation late" is a negative slope. A permutation test
over layers (the paper's "Spearman trend across depth") is reported as descriptive: it
assumes layers are exchangeable, which adjacent layers of a residual stream are not, and
with few layers its floor is above any usable α.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    Unit,
    register_analysis,
    source_label,
)
from scfm_audit.analyses.grn_recovery import describe_recovery
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.evaluate._recovery import (
    _SortedScores,
    candidate_pairs,
    edge_recovery,
    pair_scores,
)


class LayerOrganisationParams(AnalysisParams):
    datasets: list[str] | None = Field(None, description="datasets (default: all)")
    edges: list[str] | None = Field(None, description="layered edge sources (default: all)")
    ppi_references: list[str] | None = Field(
        None, description="undirected (PPI-type) references (default: every undirected one)"
    )
    tf_references: list[str] | None = Field(
        None, description="directed (TF-regulation) references (default: every directed one)"
    )
    n_boot: int = Field(1000, ge=50, description="vertex-bootstrap draws for CIs and the trend")
    n_perm: int = Field(999, ge=19, description="degree-permutation draws per layer")
    score_transform: str = Field("abs", pattern="^(abs|raw)$", description="'abs' or 'raw'")
    min_positives: int = Field(5, ge=1, description="fewer reference edges: not evaluated")


def _slope(d: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """OLS slope of ``d`` (…, L) on ``layers`` (L,)."""
    x = layers - layers.mean()
    return (d - d.mean(axis=-1, keepdims=True)) @ x / (x @ x)


def depth_trend(
    scores: list[EdgeScores],
    ppi_pairs,
    tf_pairs,
    *,
    n_boot: int,
    seed: int,
    transform: str = "abs",
) -> dict:
    """Per-layer AUROC difference (PPI − TF) and its depth trend with a joint vertex
    bootstrap (see the module docstring). ``scores``: one EdgeScores per layer (same
    genes). Returns ``layers``, ``d`` (L,), ``slope``, ``slope_ci`` (95%), ``p`` (two-sided
    bootstrap), ``spearman`` (ρ of d with depth), ``p_layer_permutation`` (exact over all
    orderings when L ≤ 8, else 20,000 random ones; two-sided, descriptive), its ``p_floor``.
    """
    layers = np.array([s.layer for s in scores], dtype=float)
    n = len(scores[0].genes)
    srt = {}
    for key, pairs in (("ppi", ppi_pairs), ("tf", tf_pairs)):
        srt[key] = [
            (_SortedScores(pair_scores(s, pairs, transform=transform), pairs.label), pairs)
            for s in scores
        ]

    def aurocs(w: np.ndarray) -> np.ndarray:  # w (b, n) -> (b, 2, L)
        out = []
        for key in ("ppi", "tf"):
            cols = []
            for ss, pairs in srt[key]:
                W = np.take(w, pairs.source[ss.order], axis=1) * np.take(
                    w, pairs.target[ss.order], axis=1
                )
                cols.append(ss.weighted_auroc(W, counts=True))  # multiplicities
            out.append(np.stack(cols, axis=1))
        return np.stack(out, axis=1)

    a = aurocs(np.ones((1, n)))[0]
    d = a[0] - a[1]
    slope = float(_slope(d, layers))
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_boot, 50):
        b = min(50, n_boot - start)
        w = rng.multinomial(n, np.full(n, 1 / n), size=b).astype(float)
        ab = aurocs(w)
        chunks.append(_slope(ab[:, 0] - ab[:, 1], layers))
    boot = np.concatenate(chunks)
    boot = boot[np.isfinite(boot)]
    nan = math.nan
    # test inversion: P*(slope ≤ 0) is the one-sided p of "slope > 0"; never reported as 0
    one = 1 / len(boot) if len(boot) else nan
    p_greater = max(float((boot <= 0).mean()), one) if len(boot) else nan
    p_less = max(float((boot >= 0).mean()), one) if len(boot) else nan
    p = min(1.0, 2 * min(p_greater, p_less)) if len(boot) else nan
    p_floor = 2 * one
    lo, hi = np.quantile(boot, [0.025, 0.975]) if len(boot) else (math.nan, math.nan)

    from scipy.stats import spearmanr

    rho = float(spearmanr(layers, d).statistic) if len(layers) > 2 else math.nan
    L = len(layers)
    if L <= 8:
        perms = np.array(list(itertools.permutations(range(L))))
    else:
        perms = np.array([rng.permutation(L) for _ in range(20_000)])
    null = _permuted_spearman(layers, d, perms) if L > 2 else np.empty(0)
    g: float
    le: float
    if len(null):
        g = (np.sum(null >= rho - 1e-12)) / len(null)
        le = (np.sum(null <= rho + 1e-12)) / len(null)
        p_perm = min(1.0, 2 * min(g, le))
        perm_floor = 2 / len(null)
    else:
        g = le = p_perm = perm_floor = math.nan
    return {
        "layers": layers,
        "auroc_ppi": a[0],
        "auroc_tf": a[1],
        "d": d,
        "slope": slope,
        "slope_ci": (float(lo), float(hi)),
        "p": float(p),
        "p_greater": float(p_greater),
        "p_less": float(p_less),
        "p_floor": float(p_floor),
        "spearman": rho,
        "p_layer_permutation": float(p_perm),
        "p_layer_permutation_greater": float(g),
        "p_layer_permutation_less": float(le),
        "p_layer_permutation_floor": float(perm_floor),
    }


def _permuted_spearman(x: np.ndarray, y: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Spearman's ρ of ``x`` with ``y[perm]`` for every row of ``perms``, at once: the
    ranks of ``y`` permuted are the permuted ranks, so each ρ is the Pearson correlation of
    two rank vectors (NaN when either is constant, as scipy gives)."""
    from scipy.stats import rankdata

    rx = rankdata(x)
    ry = rankdata(y)[perms]  # (P, L)
    dx = rx - rx.mean()
    dy = ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho: np.ndarray = (dy @ dx) / np.sqrt((dy * dy).sum(1) * (dx @ dx))
    return rho


def trend_results(t: dict, *, n_layers: int, n_boot: int, n: int):
    """The two tests of one :func:`depth_trend`: the slope's joint vertex bootstrap (the
    claim) and the layer-order permutation of Spearman's ρ (descriptive)."""
    from scfm_audit.stats._tests import StatTestResult

    slope = StatTestResult(
        statistic=t["slope"],
        p=t["p"],
        effect=t["slope"],
        n=n,
        test=f"OLS slope over {n_layers} layers, joint vertex bootstrap ({n_boot} draws, "
        "two-sided)",
        statistic_name="slope of ΔAUROC per layer",
        effect_name="slope of ΔAUROC per layer",
        alternative="two-sided",
        ci_low=t["slope_ci"][0],
        ci_high=t["slope_ci"][1],
        p_greater=t["p_greater"],
        p_less=t["p_less"],
        p_floor=t["p_floor"],
        h0="the slope of the PPI − TF AUROC difference on layer depth is 0 (genes resampled "
        "jointly for every layer and both references)",
        null_name="vertex_bootstrap",
    )
    rho = StatTestResult(
        statistic=t["spearman"],
        p=t["p_layer_permutation"],
        effect=t["spearman"],
        n=n,
        test=f"Spearman ρ over {n_layers} layers, permutation of layer order",
        statistic_name="Spearman ρ",
        effect_name="Spearman ρ",
        alternative="two-sided",
        p_greater=t["p_layer_permutation_greater"],
        p_less=t["p_layer_permutation_less"],
        p_floor=t["p_layer_permutation_floor"],
        h0="layers exchangeable (no depth order); ignores that adjacent layers are correlated",
        null_name="layer_permutation",
    )
    return slope, rho


def _demo(*, quick: bool, models: bool) -> dict:
    return {
        "layer_organisation": {
            "datasets": ["sim"],
            "ppi_references": ["sim_ppi"],
            "tf_references": ["sim_grn"],
            "n_boot": 200 if quick else 500,
        }
    }


@register_analysis(
    "layer_organisation",
    description="per-layer recovery of PPI-type versus TF-regulation references and the test "
    "of the depth trend 'PPI early, regulation late' (joint vertex bootstrap)",
    params=LayerOrganisationParams,
    version="1.0",
    category="A. Does attention encode biology?",
    reference="Layer-specific structure: PPI early, regulation late",
    demo=_demo,
    claims=(
        (
            "<source>: <PPI reference> recovered early, <TF reference> late",
            "OLS slope of AUROC(PPI) − AUROC(TF) on layer depth, joint vertex bootstrap of genes (H0: slope 0), two-sided; claimed side: negative",
        ),
    ),
)
def run_layer_organisation(ctx: AnalysisContext, p: LayerOrganisationParams) -> AnalysisResult:
    from scfm_audit.plotting import metric_by_layer_figure

    datasets = p.datasets or ctx.dataset_names()
    refs = {name: ctx.reference(name) for name in ctx.reference_names()}
    ppi_refs = p.ppi_references or [n for n, r in refs.items() if not r.directed]
    tf_refs = p.tf_references or [n for n, r in refs.items() if r.directed]
    rows, trend_rows, notes, figures = [], [], [], {}
    if not ppi_refs or not tf_refs:
        notes.append(
            "layer_organisation needs an undirected (PPI-type) and a directed (TF) reference; "
            f"this run has undirected {ppi_refs or 'none'} and directed {tf_refs or 'none'}."
        )
    for ds in datasets:
        for en in p.edges or ctx.edge_names():
            pooled = [s for s in ctx.edge_scores(en, ds) if s.head is None and s.layer is not None]
            if len(pooled) < 3:
                if pooled:
                    notes.append(f"{ds}/{en}: {len(pooled)} layers; a depth trend needs ≥ 3.")
                continue
            pooled.sort(key=lambda s: s.layer or 0)  # all layered (filtered above)
            genes = pooled[0].genes
            coexpr = _coexpression_levels(ctx, ds, genes)
            for ppi_name, tf_name in itertools.product(ppi_refs, tf_refs):
                ppi = candidate_pairs(genes, refs[ppi_name])
                tf = candidate_pairs(genes, refs[tf_name])
                if min(ppi.n_pos, tf.n_pos) < p.min_positives:
                    notes.append(
                        f"{ds}/{en}: {ppi_name} has {ppi.n_pos} and {tf_name} {tf.n_pos} edges "
                        f"among the scored genes (< {p.min_positives}); not evaluated."
                    )
                    continue
                for es in ctx.progress(pooled, description=f"{en}: {ppi_name} vs {tf_name}"):
                    for ref_name, pairs in ((ppi_name, ppi), (tf_name, tf)):
                        r = edge_recovery(
                            es,
                            pairs,
                            n_boot=200,
                            n_perm=p.n_perm,
                            n_perm_max=0,
                            transform=p.score_transform,
                            seed=ctx.seed_for(ds, ref_name, es.label),
                        )
                        rows.append(
                            {
                                "dataset": ds,
                                "edges": en,
                                "model": es.model,
                                "layer": es.layer,
                                "reference": ref_name,
                                "kind": "PPI" if ref_name == ppi_name else "TF regulation",
                                **{k: v for k, v in r.items() if not k.startswith("null_")},
                            }
                        )
                        describe_recovery(ctx, es, ds, ref_name, r)
                t = depth_trend(
                    pooled,
                    ppi,
                    tf,
                    n_boot=p.n_boot,
                    seed=ctx.seed_for(ds, en, ppi_name, tf_name),
                    transform=p.score_transform,
                )
                model = pooled[0].model
                slope, rho = trend_results(t, n_layers=len(pooled), n_boot=p.n_boot, n=len(genes))
                unit = Unit(ds, model, f"{ppi_name} vs {tf_name}", pooled[0].method)
                ctx.claim(
                    slope,
                    unit,
                    claim=f"{source_label(pooled[0])}: {ppi_name} recovered early, {tf_name} late",
                    hypothesis=f"{en}: AUROC({ppi_name}) − AUROC({tf_name}) changes with depth",
                    direction="less",
                    layer_choice=f"all {len(pooled)} layers (trend)",
                )
                ctx.describe(
                    rho,
                    unit,
                    hypothesis=f"{en}: AUROC({ppi_name}) − AUROC({tf_name}) is monotone in depth",
                )
                trend_rows.append(
                    {
                        "dataset": ds,
                        "edges": en,
                        "model": model,
                        "ppi_reference": ppi_name,
                        "tf_reference": tf_name,
                        "n_layers": len(pooled),
                        "slope": t["slope"],
                        "slope_ci_low": t["slope_ci"][0],
                        "slope_ci_high": t["slope_ci"][1],
                        "p": t["p"],
                        "spearman": t["spearman"],
                        "p_layer_permutation": t["p_layer_permutation"],
                    }
                )
                sub = pd.DataFrame(
                    [
                        r
                        for r in rows
                        if r["dataset"] == ds
                        and r["edges"] == en
                        and r["reference"] in (ppi_name, tf_name)
                    ]
                )
                sub["curve"] = sub["reference"] + " (" + sub["kind"] + ")"
                fig = metric_by_layer_figure(
                    sub,
                    x="layer",
                    y="auroc",
                    hue="curve",
                    ci=("auroc_ci_low", "auroc_ci_high"),
                    chance=0.5,
                    title=f"{en} on {ds}: PPI vs TF recovery by layer "
                    f"(slope of difference {t['slope']:+.3f}/layer, p = {t['p']:.2g})",
                )
                ax = fig.axes[0]
                shown = [n for n in (ppi_name, tf_name) if n in coexpr]
                for i, name in enumerate(shown):
                    ax.axhline(
                        coexpr[name],
                        color=("0.3", "0.6")[i],
                        linestyle="--",
                        linewidth=1,
                        label=f"co-expression, {name} ({coexpr[name]:.3f})",
                    )
                if shown:
                    ax.legend(fontsize=7, loc="best")
                figures[f"layers_{ds}_{en}_{ppi_name}_{tf_name}"] = fig
    table = pd.DataFrame(rows)
    trends = pd.DataFrame(trend_rows)
    summary = (
        "; ".join(
            f"{r.edges} on {r.dataset}: slope of AUROC({r.ppi_reference}) − "
            f"AUROC({r.tf_reference}) {r.slope:+.3f} per layer "
            f"[{r.slope_ci_low:+.3f}, {r.slope_ci_high:+.3f}], p = {r.p:.2g}"
            for r in trends.itertuples()
        )
        if len(trends)
        else "No layered edge source could be evaluated (see notes)."
    )
    tables = {"by_layer": table, "trend": trends} if len(table) else {}
    return AnalysisResult(tables=tables, figures=figures, summary=summary, notes=notes)


def _coexpression_levels(ctx, ds: str, genes) -> dict[str, float]:
    """AUROC of the run's first co-expression source per reference on the same genes, for
    the figure's horizontal reference lines (empty when the run has none)."""
    from scfm_audit.evaluate._recovery import auroc_from_ranks, nan_lowest_ranks

    for en in ctx.edge_names():
        sets = ctx.edge_scores(en, ds)
        if not sets or sets[0].layer is not None or sets[0].method not in ("spearman", "pearson"):
            continue
        es = sets[0].subset(pd.Index(genes).intersection(sets[0].genes, sort=False))
        out = {}
        for name in ctx.reference_names():
            pairs = candidate_pairs(es.genes, ctx.reference(name))
            if pairs.n_pos and len(pairs) > pairs.n_pos:
                s = pair_scores(es, pairs)
                out[name] = auroc_from_ranks(nan_lowest_ranks(s), pairs.label)
        return out
    return {}


# ---------------------------------------------------------------------------- calibration
# Layered score sets built from one simulation's |Spearman| (so layers share the data's
# co-expression), rank-normal per layer plus layer-specific noise; two hub-structured
# references (undirected "PPI", directed "TF") placed independently on the genes. Null:
# no reference signal at any layer. Planted: PPI edges shifted by β·(1 − depth) and TF
# edges by β·depth (depth 0 … 1), i.e. a negative slope of the difference.

_N_LAYERS = 6


def _layered_scores(seed: int, beta: float, n_genes: int = 150):
    from scipy.stats import norm

    from scfm_audit.analyses.grn_recovery import _calibration_scores
    from scfm_audit.data._hub_reference import hub_reference, place_reference
    from scfm_audit.evaluate._recovery import nan_lowest_ranks

    _, es = _calibration_scores(n_genes, seed, gene_level_predictability=0.0)
    genes = es.genes
    ppi = place_reference(
        hub_reference(n_genes, seed=seed + 1, directed=False), genes, seed=seed + 2
    )
    tf = place_reference(hub_reference(n_genes, seed=seed + 3, directed=True), genes, seed=seed + 4)
    d = np.abs(es.dense())
    n = len(genes)
    base = norm.ppf((nan_lowest_ranks(d.ravel()) - 0.5) / d.size).reshape(n, n)
    pp, tp = candidate_pairs(genes, ppi), candidate_pairs(genes, tf)
    rng = np.random.default_rng(seed + 5)
    layers = []
    for ell in range(_N_LAYERS):
        depth = ell / (_N_LAYERS - 1)
        m = base + rng.normal(scale=0.5, size=(n, n))
        m[pp.source[pp.label], pp.target[pp.label]] += beta * (1 - depth)
        m[pp.target[pp.label], pp.source[pp.label]] += beta * (1 - depth)
        m[tp.source[tp.label], tp.target[tp.label]] += beta * depth
        layers.append(EdgeScores(m, genes, method="layers", layer=ell))
    return layers, pp, tp


def _calibration_replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome

    layers, pp, tp = _layered_scores(seed, sc.params["beta"])
    t = depth_trend(layers, pp, tp, n_boot=200, seed=seed, transform="raw")
    slope, _ = trend_results(t, n_layers=len(layers), n_boot=200, n=len(layers[0].genes))
    return ReplicateOutcome.of(slope, extra={"p_layer_permutation": t["p_layer_permutation"]})


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import Scenario, register_calibration

    scenarios = [
        Scenario(
            "hub_null_layers",
            "null",
            f"{_N_LAYERS} layers sharing one simulation's co-expression plus layer noise; "
            "hub-structured PPI and TF references placed independently (no depth trend)",
            truth=0.0,
            params={"beta": 0.0},
        ),
        *[
            Scenario(
                f"planted_trend_{beta}",
                "planted",
                f"PPI edges shifted by {beta}·(1 − depth), TF edges by {beta}·depth "
                "(rank-normal scores)",
                strength=beta,
                params={"beta": beta},
            )
            for beta in (0.15, 0.4)
        ],
    ]
    register_calibration("layer_organisation", scenarios, claimed="less")(_calibration_replicate)


_register_calibration()
