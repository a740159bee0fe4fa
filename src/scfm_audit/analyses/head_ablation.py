"""Analysis 10 — ``head_ablation`` (family C): does the model use its "regulatory heads"?

Heads. Per dataset × model, the regulatory heads are recomputed here with
``head_specialisation``'s own kernel (:func:`head_recovery_table` + :func:`select_heads`
on the model's per-head attention source and one reference), so the result does not
depend on run order: heads with BH q < ``selection_fdr`` and AUROC > 0.5, else the
fallback top-``selection_k`` by AUROC (``selection: head_specialisation``), or always the
top-``selection_k`` by per-head recovery AUROC (``selection: top_auroc``). The rule that
chose them is in the ``heads`` table. (The permutation seeds are this analysis' own, so a
head at the FDR boundary can fall on the other side than in ``head_specialisation``.)

Conditions, per channel — ``zero`` (head masking), ``uniform`` (pattern 1/n over the real
keys, values kept), ``mean`` (the head's mean output over reference control cells,
disjoint from the readout cells): the regulatory set; top-k and bottom-k by recovery
AUROC for k in ``ks`` (k below the number of heads); random sets of the regulatory set's
size (``n_random`` in the verdict channel, ``n_random_other`` in the others; seeded;
``random_sets: any`` draws uniformly among all heads, ``layer_matched`` keeps the number
of heads per layer; when at most ``n_random`` other sets exist, every one of them — the
exact permutation test, whose smallest two-sided p, 2 / number of sets, is stated); entropy-matched random sets (each regulatory head replaced by one of
the ``entropy_pool`` heads closest to it in mean attention entropy); every head of a full
layer (the layer holding most regulatory heads). MLP zeroing of ``mlp_layers`` (default:
the last layer — the readout layer — and layer 0 as an early control).

Readouts, each downstream of the intervention, order made explicit per condition
(:func:`check_intervention_order`):

(a) masked loss on control cells not used for the mean reference (scGPT masked-value
    MSE, Geneformer masked-gene cross-entropy; seeded masks, identical for every
    condition). The model's outputs lie after every layer: every condition can change it.
    Computed with the residual stream cached at each condition's lowest layer.
(b) in-silico perturbation agreement (:func:`_in_silico_readout`, the kernels of
    ``evaluate/_in_silico.py``): the model's own deletion / overexpression of up to
    ``in_silico_perturbations`` perturbed genes on ``in_silico_cells`` control cells per
    arm with the intervention active; per perturbation the AUROC of |predicted shift| for
    the observed responders and the Spearman with the observed profile, against the
    unablated model. The readout is the model's output: every condition can change it.
(c) attention-based perturbation prediction: per perturbation, AUROC of the head-mean
    attention from the perturbed gene at ``prediction_layer`` for its responders
    (``dataset_responders``), with the intervention active; a condition whose every site
    lies at or after that layer's attention pattern is reported as "structurally unable",
    not as "no effect". Conditions: the regulatory set and bottom-k in every channel,
    the full layer and the MLP conditions.

Fidelity: per condition, the hidden-state (last layer) and output cosine distance to the
baseline over the readout cells — a condition with fidelity ~0 did not change the model.

Statistics. Per condition: effect = mean loss change over cells with a percentile
bootstrap CI over cells; for the prediction readout, mean ΔAUROC over perturbations with
a bootstrap CI over perturbations (the independent units) and a Wilcoxon signed-rank test
(descriptive). Confirmatory, per model and dataset — "ablating regulatory heads degrades
the model": H0: the regulatory set is exchangeable with random sets of its size (verdict
channel); statistic D = mean masked-loss increase; two-sided rank p against the
``n_random`` random sets (``(1 + #{D_random ≥ D}) / (1 + n)``, doubled smaller tail);
effect: D's quantile among the random sets (0.5 under H0) with a bootstrap CI over cells
(the excess D − mean D_random is in the test's extra and the ``set_tests`` table).
"yes": the regulatory heads degrade the model more than random heads; "opposite": less.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import AnalysisResult, Verdict, register_analysis
from scfm_audit.analyses._perturbation_common import ResponderParams, dataset_responders
from scfm_audit.evaluate._ablation import (
    SET_VS_RANDOM_H0,
    Condition,
    all_heads,
    attention_prediction,
    entropy_matched_sets,
    every_head_set,
    head_entropy,
    masked_loss_conditions,
    mean_difference_ci,
    n_head_sets,
    random_head_sets,
    set_vs_random,
)

CHANNEL_NAMES = {
    "zero": "head masking (output zeroed)",
    "uniform": "uniform attention (values kept)",
    "mean": "mean-ablation (reference mean output)",
    "mlp": "MLP output zeroed",
}
CHANGE_H0 = (
    "the condition leaves the readout unchanged: per-unit differences to the baseline "
    "are symmetric about 0 (Wilcoxon signed-rank; descriptive)"
)


class HeadAblationParams(ResponderParams):
    datasets: list[str] | None = Field(None, description="datasets (default: all)")
    models: list[str] | None = Field(
        None, description="models (default: every model with a per-head attention source)"
    )
    edges: list[str] | None = Field(
        None, description="per-head attention sources the heads are selected on (default: all)"
    )
    reference: str | None = Field(
        None, description="reference the heads are selected on (default: first evaluable)"
    )
    selection: Literal["head_specialisation", "top_auroc"] = Field(
        "head_specialisation",
        description="regulatory heads: head_specialisation's rule (FDR, else top-k AUROC) "
        "or always the top selection_k heads by recovery AUROC",
    )
    selection_k: int = Field(5, ge=1, description="top-k of the fallback / top_auroc rule")
    selection_fdr: float = Field(0.05, gt=0, lt=1, description="BH level over heads")
    selection_n_perm: int = Field(999, ge=19, description="degree-permutation draws per head")
    selection_n_perm_max: int = Field(
        9_999, ge=0, description="draws up to this many while a head's p < 0.05"
    )
    min_positives: int = Field(5, ge=1, description="fewer reference edges: not evaluated")
    ks: list[int] = Field([5, 10, 20], description="top-k / bottom-k sizes (capped below H)")
    channels: list[Literal["zero", "uniform", "mean"]] = Field(
        ["zero", "uniform", "mean"], description="head-ablation channels"
    )
    verdict_channel: Literal["zero", "uniform", "mean"] = Field(
        "zero", description="channel of the confirmatory claim (pre-declared)"
    )
    n_random: int = Field(
        50,
        ge=19,
        description="random head sets in the verdict channel (every other set when fewer "
        "distinct sets exist: the exact permutation test)",
    )
    n_random_other: int = Field(19, ge=0, description="random sets in the other channels")
    random_sets: Literal["any", "layer_matched"] = Field(
        "any",
        description="'any': random heads of all layers; 'layer_matched': as many per layer "
        "as the regulatory set",
    )
    n_entropy_matched: int = Field(5, ge=0, description="entropy-matched random sets")
    entropy_pool: int = Field(3, ge=1, description="nearest heads by entropy to draw from")
    mlp_layers: list[int] | None = Field(
        None, description="MLP layers zeroed one at a time (default: last and 0)"
    )
    n_cells: int = Field(24, ge=4, description="control cells for the masked-loss readout")
    n_reference_cells: int = Field(
        32, ge=2, description="other control cells: head means (mean channel) and entropy"
    )
    mask_ratio: float = Field(0.15, gt=0, lt=1, description="masked share of gene tokens")
    batch_size: int = Field(16, ge=1, description="cells per forward pass")
    n_boot: int = Field(1000, ge=50, description="bootstrap draws (cells / perturbations)")
    in_silico: bool = Field(True, description="run readout (b) when responders exist")
    in_silico_cells: int = Field(16, ge=2, description="control cells per arm for readout (b)")
    in_silico_perturbations: int = Field(
        8, ge=2, description="perturbed genes per arm for readout (b) (seeded subsample)"
    )
    prediction: bool = Field(True, description="run readout (c) when responders exist")
    prediction_layer: int = Field(-1, description="layer whose attention predicts responders")
    prediction_cells: int = Field(64, ge=4, description="control cells for readout (c)")


def _heads_str(heads) -> str:
    return ", ".join(f"L{L}H{h}" for L, h in heads)


@register_analysis(
    "head_ablation",
    description="ablate the regulatory heads (zero / uniform / mean, and MLP zeroing) and "
    "measure masked loss and attention-based perturbation prediction against random and "
    "entropy-matched head sets of equal size, with fidelity",
    params=HeadAblationParams,
    version="1.0",
    category="C. Does the model use those heads?",
    reference="Catalogue 10; paper: head ablation, three intervention channels",
)
def run_head_ablation(ctx, p: HeadAblationParams) -> AnalysisResult:
    if p.verdict_channel not in p.channels:
        raise ValueError(
            f"verdict_channel {p.verdict_channel!r} is not among channels {p.channels}; "
            "add it to channels."
        )
    unknown = sorted(set(p.models or []) - set(ctx.model_names()))
    if unknown:
        raise ValueError(
            f"head_ablation: models {unknown} are not in the config's models "
            f"({', '.join(ctx.model_names()) or 'none'}); fix the models list."
        )
    notes: list[str] = []
    tables: dict[str, list[pd.DataFrame]] = {}
    figures, verdicts = {}, []
    wanted = set(p.models) if p.models is not None else None
    for ds in p.datasets or ctx.dataset_names():
        sources = _per_head_sources(ctx, ds, p.edges)
        models = sorted({m for m in sources if wanted is None or m in wanted})
        if not sources:
            notes.append(f"{ds}: no per-head attention source (set per_head: true).")
        for mname in models:
            en, heads_es = sources[mname]
            part = _one_model(ctx, p, ds, mname, en, heads_es, notes)
            if part is None:
                continue
            for k, t in part["tables"].items():
                tables.setdefault(k, []).append(t)
            figures.update(part["figures"])
            verdicts += part["verdicts"]
    out = {k: pd.concat(v, ignore_index=True) for k, v in tables.items() if v}
    out = {k: t for k, t in out.items() if len(t)}
    return AnalysisResult(
        tables=out, figures=figures, summary=_summary(out), verdicts=verdicts, notes=notes
    )


def _per_head_sources(ctx, ds: str, edges) -> dict[str, tuple[str, list]]:
    """model → (edge source, its per-head EdgeScores on ``ds``) — the first source per
    model among ``edges`` (default: all sources) that has per-head scores."""
    out: dict[str, tuple[str, list]] = {}
    for en in edges or ctx.edge_names():
        heads = [s for s in ctx.edge_scores(en, ds) if s.head is not None and s.model]
        for m in sorted({s.model for s in heads}):
            out.setdefault(m, (en, [s for s in heads if s.model == m]))
    return out


def _select(ctx, p, ds, en, heads_es, notes) -> tuple[pd.DataFrame, str] | None:
    """The per-head recovery table with ``selected`` / ``selected_by`` and the reference."""
    from scfm_audit.analyses._contract import evaluable_pairs
    from scfm_audit.analyses.head_specialisation import (
        HeadSpecialisationParams,
        head_recovery_table,
        select_heads,
    )

    refs = [p.reference] if p.reference is not None else ctx.reference_names()
    hp = HeadSpecialisationParams(
        n_boot=20,  # CIs of the selection table only; the selection reads AUROC and p
        n_perm=p.selection_n_perm,
        n_perm_max=p.selection_n_perm_max,
        fdr=p.selection_fdr,
        fallback_k=p.selection_k,
    )
    for ref_name in refs:
        pairs = evaluable_pairs(
            heads_es[0].genes,
            ctx.reference(ref_name),
            min_positives=p.min_positives,
            where=f"head_ablation {ds}/{en}/{ref_name}",
            notes=notes,
        )
        if pairs is None:
            continue
        t = head_recovery_table(ctx, heads_es, pairs, ds, en, ref_name, hp)
        if p.selection == "top_auroc":
            t["q_heads"] = np.nan
            top = t["auroc"].rank(ascending=False, method="first") <= p.selection_k
            t["selected"] = top
            t["selected_by"] = np.where(top, f"top-{p.selection_k} AUROC", "")
        else:
            t = select_heads(t, fdr=p.selection_fdr, fallback_k=p.selection_k)
        return t, ref_name
    return None


def _cells(ctx, ds: str, n: int, m: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Seeded disjoint samples of ``n`` readout and ``m`` reference cells, from the
    controls when the dataset has perturbations."""
    adata = ctx.dataset(ds)
    spec = ctx.dataset_spec(ds)
    pool = np.arange(adata.n_obs)
    what = "all cells"
    if getattr(spec, "perturbation", None) and spec.perturbation in adata.obs:
        ctrl = spec.control if isinstance(spec.control, tuple | list) else (spec.control,)
        is_ctrl = adata.obs[spec.perturbation].astype(str).isin([str(c) for c in ctrl])
        if is_ctrl.sum() >= 4:
            pool, what = np.flatnonzero(is_ctrl.to_numpy()), "control cells"
    perm = ctx.rng(ds, "cells").permutation(pool)
    n_read = min(n, max(2, len(perm) // 2))
    return np.sort(perm[:n_read]), np.sort(perm[n_read : n_read + m]), what


def _one_model(ctx, p, ds, mname, en, heads_es, notes) -> dict | None:
    from scfm_audit.models._interventions import check_intervention_order, compute_head_means
    from scfm_audit.models._masked import masked_inputs, masked_objective
    from scfm_audit.plotting import ablation_figure

    sel = _select(ctx, p, ds, en, heads_es, notes)
    if sel is None:
        notes.append(
            f"{ds}/{mname}: no reference has enough edges among the scored genes to select "
            "regulatory heads; head ablation not run for this model."
        )
        return None
    table, ref_name = sel
    adapter = ctx.model(mname)
    adata = ctx.dataset(ds)
    H = adapter.n_layers * adapter.n_heads
    universe = all_heads(adapter.n_layers, adapter.n_heads)
    table = table.assign(layer=table["layer"].astype(int), head=table["head"].astype(int))
    ranked = table.sort_values(["auroc", "layer", "head"], ascending=[False, True, True])
    order = [(int(r.layer), int(r.head)) for r in ranked.itertuples()]
    regulatory = tuple(sorted(h for h, s in zip(order, ranked["selected"]) if s))
    rule = str(ranked.loc[ranked["selected"], "selected_by"].iloc[0])
    m = len(regulatory)
    read_cells, ref_cells, cell_kind = _cells(ctx, ds, p.n_cells, p.n_reference_cells)
    objective = masked_objective(adapter)
    if objective == "masked-gene cross-entropy" and getattr(adapter, "_mlm_head", 1) is None:
        notes.append(f"{mname}: no masked-LM head, so no masked-gene readout; not run.")
        return None

    def batches(cells, masked: bool):
        out = []
        for i, start in enumerate(range(0, len(cells), p.batch_size)):
            b = adapter.tokenize(adata, cells[start : start + p.batch_size])
            if masked:
                b = masked_inputs(
                    adapter, b, ratio=p.mask_ratio, seed=ctx.seed_for(ds, mname, "mask", i)
                )
            out.append(b)
        return out

    masked = batches(read_cells, True)
    ref_batches = batches(ref_cells, False) if len(ref_cells) else batches(read_cells, False)
    means = compute_head_means(adapter, ref_batches) if "mean" in p.channels else None
    entropy = head_entropy(adapter, ref_batches)

    # -- conditions ---------------------------------------------------------------------
    conds: list[Condition] = []
    for ch in p.channels:
        conds.append(Condition("regulatory", ch, regulatory, label=f"regulatory ({rule})"))
        for k in sorted(set(p.ks)):
            if k >= H:
                continue
            conds.append(Condition("top-k", ch, tuple(sorted(order[:k])), label=f"top-{k}"))
            conds.append(Condition("bottom-k", ch, tuple(sorted(order[-k:])), label=f"bottom-{k}"))
    skipped_k = sorted(k for k in set(p.ks) if k >= H)
    if skipped_k:
        notes.append(
            f"{mname}: k = {skipped_k} ≥ its {H} heads — top-k would be every head, with no "
            "random set to compare; those conditions are not run."
        )
    rng = ctx.rng(ds, mname, "random sets")
    match = regulatory if p.random_sets == "layer_matched" else None
    n_distinct = n_head_sets(universe, m, layer_matched=match)
    exhaustive = n_distinct - 1 <= p.n_random
    if n_distinct <= 1:
        notes.append(f"{mname}: no other head set of size {m} exists; no random-set test.")
        rand_sets = []
    elif exhaustive:  # the whole support: the rank test is the exact permutation test
        rand_sets = every_head_set(universe, m, rng, layer_matched=match, exclude=regulatory)
        floor = 2.0 / n_distinct
        notes.append(
            f"{ds}/{mname}: only {n_distinct} distinct {m}-head sets exist, so every other "
            f"one is compared (exact permutation test); the smallest attainable two-sided p "
            f"is {floor:.3g}" + (" — this test cannot reach 0.05." if floor > 0.05 else ".")
        )
    else:
        rand_sets = random_head_sets(universe, m, p.n_random, rng, layer_matched=match)
    for ch in p.channels:
        n = p.n_random if ch == p.verdict_channel else min(p.n_random_other, len(rand_sets))
        for i, s in enumerate(rand_sets[:n]):
            conds.append(Condition("random-k", ch, s, draw=i, label=f"random-{m}"))
    em_sets = entropy_matched_sets(
        entropy, regulatory, p.n_entropy_matched, ctx.rng(ds, mname, "entropy"),
        n_near=p.entropy_pool,
    )  # fmt: skip
    for i, s in enumerate(em_sets):
        conds.append(
            Condition("entropy-matched", p.verdict_channel, s, draw=i, label="entropy-matched")
        )
    full_layer = int(pd.Series([L for L, _ in regulatory]).mode().min())
    for ch in p.channels:
        layer_heads = tuple((full_layer, h) for h in range(adapter.n_heads))
        conds.append(Condition("full-layer", ch, layer_heads, label=f"layer {full_layer}"))
    mlp_layers = p.mlp_layers if p.mlp_layers is not None else [adapter.n_layers - 1, 0]
    for L in dict.fromkeys(int(x) % adapter.n_layers for x in mlp_layers):
        role = "readout layer" if L == adapter.n_layers - 1 else ("early" if L == 0 else "")
        label = f"MLP {L}" + (f" ({role})" if role else "")
        conds.append(Condition("mlp", "mlp", layers=(L,), label=label))

    res = masked_loss_conditions(adapter, masked, conds, head_means=means)
    extra = {"analysis_cells": cell_kind, "objective": objective}

    # -- per-condition table (a) ---------------------------------------------------------
    rows = []
    for i, c in enumerate(conds):
        iv = c.intervention(adapter, means)
        order_msg = check_intervention_order(adapter, iv, None).message
        d, lo, hi = mean_difference_ci(
            res.loss[i], res.baseline, n_boot=p.n_boot, seed=ctx.seed_for(ds, mname, c.name)
        )
        rows.append(
            {
                "dataset": ds, "model": mname, "edges": en, "reference": ref_name,
                "readout": f"(a) {objective}", "condition": c.name, "kind": c.kind,
                "channel": c.channel, "size": c.size, "draw": c.draw,
                "heads": _heads_str(c.heads) if c.heads else "",
                "mlp_layers": ",".join(map(str, c.layers)), "start_layer": c.start_layer,
                "baseline": float(np.nanmean(res.baseline)), "change": d,
                "ci_low": lo, "ci_high": hi, "n_cells": int(np.isfinite(res.loss[i]).sum()),
                "fidelity_hidden": float(np.mean(res.hidden[i])),
                "fidelity_output": float(np.mean(res.output[i])),
                "frac_cells_changed": float(np.mean(res.hidden[i] > 1e-6)),
                "order": order_msg, "structurally_unable": False,
            }
        )  # fmt: skip
    cond_table = pd.DataFrame(rows)

    # -- tests ----------------------------------------------------------------------------
    def idx(kind, ch):
        return [i for i, c in enumerate(conds) if c.kind == kind and c.channel == ch]

    verdicts, summary_rows = [], []
    claim = f"{mname}: ablating regulatory heads degrades the model"
    for ch in p.channels:
        reg_i = idx("regulatory", ch)[0]
        rnd = idx("random-k", ch)
        if not rnd:
            continue
        r = set_vs_random(
            res.loss[reg_i], res.loss[rnd], res.baseline,
            n_boot=p.n_boot, seed=ctx.seed_for(ds, mname, "verdict", ch),
        )  # fmt: skip
        confirm = ch == p.verdict_channel
        # every other set compared: the exact permutation test (no Monte-Carlo floor)
        exact = exhaustive and len(rnd) == len(rand_sets)
        why = (
            f"exact test over all {len(rnd) + 1} {m}-head sets: the smallest attainable "
            f"two-sided p is {2 / (len(rnd) + 1):.3g}"
            if exact
            else ""
        )
        rec = ctx.add_test(
            hypothesis=f"ablating the regulatory heads of {mname} ({_heads_str(regulatory)}; "
            f"{CHANNEL_NAMES[ch]}) raises the masked loss more than random sets of {m} heads",
            test=f"rank of the regulatory set's mean masked-loss increase among {len(rnd)} "
            + ("(all other) " if exact else "")
            + f"random {m}-head sets ({p.random_sets}); two-sided",
            null=SET_VS_RANDOM_H0,
            null_name="random_head_sets",
            p=r["p"], p_floor=float("nan") if exact else min(1.0, 2.0 / (1 + len(rnd))),
            statistic_name="mean masked-loss increase", statistic=r["degradation"],
            effect_name="quantile of the increase among random sets", effect=r["quantile"],
            null_value=0.5, ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n_cells"],
            direction="two-sided", family="confirmatory" if confirm else "descriptive",
            model=mname, dataset=ds, reference=ref_name, method=f"{en} ({ch})",
            extra={"channel": ch, "n_random": len(rnd), "heads": _heads_str(regulatory),
                   "selected_by": rule, "excess_over_random_mean": r["excess"],
                   "random_mean": r["random_mean"], **extra},
        )  # fmt: skip
        summary_rows.append({"dataset": ds, "model": mname, "channel": ch, "set": "regulatory",
                             "against": f"random-{m}", **r})  # fmt: skip
        if confirm:
            verdicts.append(
                Verdict(
                    claim,
                    rec,
                    mname,
                    ds,
                    direction="greater",
                    layer_choice=f"heads {_heads_str(regulatory)} ({rule} on {ref_name}); "
                    f"{CHANNEL_NAMES[ch]}; vs {len(rnd)} random {m}-head sets",
                    reason=why,
                )
            )
    if not verdicts:  # no other head set of the regulatory set's size exists
        why = f"every one of the {H} heads is regulatory: no head set to compare with"
        rec = ctx.add_test(
            hypothesis=f"ablating the regulatory heads of {mname} raises the masked loss "
            f"more than random sets of {m} heads",
            test="rank among random head sets of equal size (none exists)",
            null=SET_VS_RANDOM_H0, null_name="random_head_sets", p=float("nan"),
            null_value=0.5, direction="two-sided", family="confirmatory", model=mname,
            dataset=ds, reference=ref_name, method=f"{en} ({p.verdict_channel})",
            extra={"reason": why, **extra},
        )  # fmt: skip
        verdicts.append(
            Verdict(
                claim,
                rec,
                mname,
                ds,
                direction="greater",
                reason=why,
            )
        )
    em = idx("entropy-matched", p.verdict_channel)
    if len(em) >= 1:
        reg_i = idx("regulatory", p.verdict_channel)[0]
        r = set_vs_random(res.loss[reg_i], res.loss[em], res.baseline)
        ctx.add_test(
            hypothesis=f"ablating the regulatory heads of {mname} raises the masked loss "
            "more than entropy-matched head sets",
            test=f"rank among {len(em)} entropy-matched sets; two-sided",
            null="the regulatory set is exchangeable with head sets of matched mean "
            "attention entropy (rank p; descriptive)",
            null_name="entropy_matched_sets", p=r["p"],
            p_floor=min(1.0, 2.0 / (1 + len(em))),
            statistic_name="mean masked-loss increase", statistic=r["degradation"],
            effect_name="quantile of the increase among matched sets", effect=r["quantile"],
            null_value=0.5, n=r["n_cells"], direction="two-sided", family="descriptive",
            model=mname, dataset=ds, reference=ref_name, method=f"{en} ({p.verdict_channel})",
            extra={"n_matched": len(em), **extra},
        )  # fmt: skip
        summary_rows.append({"dataset": ds, "model": mname, "channel": p.verdict_channel,
                             "set": "regulatory", "against": "entropy-matched", **r})  # fmt: skip
    for i, c in enumerate(conds):
        if c.kind in ("random-k", "entropy-matched"):
            continue
        _change_test(ctx, res.loss[i], res.baseline, cond_table.iloc[i], extra, ref_name)

    # -- readouts (b) and (c) ----------------------------------------------------------------
    pred_table = isp_table = None
    picked = _readout_conditions(conds)
    if p.in_silico:
        isp_table = _in_silico_readout(ctx, p, ds, mname, adapter, picked, means, ref_name)
        if isp_table is None:
            notes.append(f"{ds}/{mname}: no perturbations with responders: readout (b) not run.")
    if p.prediction:
        pred_table = _prediction_readout(ctx, p, ds, mname, adapter, conds, means, ref_name)
        if pred_table is None:
            notes.append(f"{ds}/{mname}: no perturbations with responders: readout (c) not run.")

    # -- figure -------------------------------------------------------------------------------
    rnd_rows = cond_table[cond_table["kind"] == "random-k"]
    marks = cond_table[cond_table["kind"].isin(["regulatory", "top-k", "full-layer", "mlp"])]
    marks = marks[marks["kind"] != "top-k"].copy() if m in p.ks else marks.copy()
    marks["label"] = marks["condition"].where(marks["kind"] != "mlp", "MLP zeroed")
    fig = ablation_figure(
        rnd_rows.rename(columns={"change": "value"})[["channel", "value"]],
        marks.rename(columns={"change": "value"})[["channel", "label", "value"]],
        title=f"{mname} on {ds}: masked-loss increase vs random {m}-head sets",
        ylabel=f"{objective} increase",
    )
    heads_t = table.assign(model=mname, dataset=ds)
    heads_t["entropy"] = [float(entropy.loc[(int(a), int(b))]) for a, b in
                          zip(heads_t["layer"], heads_t["head"])]  # fmt: skip
    passes = pd.DataFrame(
        [{"dataset": ds, "model": mname, "conditions": len(conds),
          "layer_passes_cached": res.layer_passes, "layer_passes_full": res.full_passes,
          "saved": 1 - res.layer_passes / max(res.full_passes, 1)}]
    )  # fmt: skip
    tables = {
        "conditions": cond_table[cond_table["kind"] != "random-k"],
        "random_sets": rnd_rows,
        "set_tests": pd.DataFrame(summary_rows),
        "heads": heads_t,
        "cost": passes,
    }
    if pred_table is not None:
        tables["prediction"] = pred_table
    if isp_table is not None:
        tables["in_silico"] = isp_table
    return {
        "tables": tables,
        "figures": {f"ablation_{ds}_{mname}": fig},
        "verdicts": verdicts,
    }


def _change_test(ctx, loss, base, row, extra, ref_name) -> None:
    from scipy.stats import wilcoxon

    d = np.asarray(loss, float) - np.asarray(base, float)
    d = d[np.isfinite(d)]
    pval = float("nan")
    if d.size >= 2 and np.any(d != 0):
        pval = float(wilcoxon(d, zero_method="zsplit").pvalue)
    ctx.add_test(
        hypothesis=f"{row['condition']} ({CHANNEL_NAMES[row['channel']]}) changes the masked "
        f"loss of {row['model']}",
        test="Wilcoxon signed-rank over cells of the per-cell loss change (two-sided)",
        null=CHANGE_H0, null_name="no_change", p=pval,
        statistic_name="mean loss change", statistic=row["change"],
        effect_name="mean loss change", effect=row["change"], null_value=0.0,
        ci_low=row["ci_low"], ci_high=row["ci_high"], n=int(d.size), direction="two-sided",
        family="descriptive", model=row["model"], dataset=row["dataset"],
        reference=ref_name, method=f"{row['edges']} ({row['channel']})",
        extra={"condition": row["condition"], "fidelity_hidden": row["fidelity_hidden"],
               **extra},
    )  # fmt: skip


def _readout_conditions(conds: list[Condition]) -> list[Condition]:
    """The conditions readouts (b) and (c) run: the regulatory set in every channel, the
    smallest bottom-k, the full layer and the MLP conditions."""
    picked = [c for c in conds if c.kind in ("regulatory", "bottom-k", "full-layer", "mlp")]
    k_min = min((c.size for c in picked if c.kind == "bottom-k"), default=0)
    return [c for c in picked if c.kind != "bottom-k" or c.size == k_min]


def _change_row(alt: np.ndarray, base: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Mean change over perturbations with its bootstrap CI and a Wilcoxon p."""
    from scipy.stats import wilcoxon

    d, lo, hi = mean_difference_ci(alt, base, n_boot=n_boot, seed=seed)
    ok = np.isfinite(alt) & np.isfinite(base)
    diff = alt[ok] - base[ok]
    pval = (
        float(wilcoxon(diff, zero_method="zsplit").pvalue)
        if diff.size >= 2 and np.any(diff != 0)
        else float("nan")
    )
    return {
        "baseline": float(np.mean(base[ok])) if ok.any() else float("nan"),
        "ablated": float(np.mean(alt[ok])) if ok.any() else float("nan"),
        "change": d, "ci_low": lo, "ci_high": hi, "n_perturbations": int(ok.sum()), "p": pval,
    }  # fmt: skip


def _in_silico_readout(ctx, p, ds, mname, adapter, picked, means, ref_name):
    """Readout (b): the model's own in-silico perturbation (``evaluate/_in_silico``:
    delete for CRISPRi / no modality, overexpress for CRISPRa) of up to
    ``in_silico_perturbations`` perturbed genes per arm on ``in_silico_cells`` control
    cells, with each condition's intervention active during both the baseline and the
    perturbed passes; per perturbation the AUROC of |predicted shift| for its observed
    responders and the Spearman with the observed profile (``cross_scores``, diagonal),
    compared with the unablated model. The readout is the model's output: every
    condition lies upstream of it."""
    from scfm_audit.analyses.in_silico_perturbation import InSilicoParams
    from scfm_audit.data._dataset import control_mask
    from scfm_audit.evaluate._in_silico import cross_scores, in_silico_effects, perturbable
    from scfm_audit.models._interventions import check_intervention_order

    spec = ctx.dataset_spec(ds)
    adata = ctx.dataset(ds)
    if not getattr(spec, "perturbation", None) or spec.perturbation not in adata.obs:
        return None
    de = dataset_responders(ctx, ds, p)
    if not len(de) or not de["responder"].any():
        return None
    modes = InSilicoParams().arm_modes
    ctrl = control_mask(adata, spec)
    has_arm = spec.modality is not None and spec.modality in adata.obs
    arm_col = adata.obs[spec.modality].astype(str).to_numpy() if has_arm else None
    jobs = []  # (arm, mode, cells, perturbations)
    for arm in sorted(pd.unique(de["arm"].astype(str))):
        pool = np.flatnonzero(ctrl & (arm_col == arm)) if has_arm else np.flatnonzero(ctrl)
        labels = sorted(pd.unique(de.loc[de["arm"] == arm, "perturbation"].astype(str)))
        ok, _ = perturbable(adapter, adata, labels)
        if arm not in modes or not pool.size or not ok:
            continue
        rng = ctx.rng(ds, mname, arm, "in silico")
        cells = np.sort(rng.choice(pool, min(p.in_silico_cells, pool.size), replace=False))
        if len(ok) > p.in_silico_perturbations:
            ok = sorted(rng.choice(ok, p.in_silico_perturbations, replace=False).tolist())
        jobs.append((arm, modes[arm], cells, ok))
    if not jobs:
        return None

    def effects(iv) -> pd.DataFrame:
        parts = []
        for arm, mode, cells, ok in jobs:
            sub = adata[cells].to_memory() if adata.isbacked else adata[cells].copy()
            with iv if iv is not None else contextlib.nullcontext():
                eff = in_silico_effects(
                    adapter, sub, spec, perturbations=ok, cells=np.arange(sub.n_obs),
                    mode=mode, batch_size=p.batch_size,
                )  # fmt: skip
            parts.append(eff.assign(arm=arm))
        out = pd.concat(parts, ignore_index=True)
        out.attrs.update(parts[0].attrs)
        return out

    base_eff = effects(None)
    signed = bool(base_eff.attrs.get("signed"))
    base = cross_scores(base_eff, de, signed=signed)
    rows = []
    for c in picked:
        iv = c.intervention(adapter, means)
        order = check_intervention_order(adapter, iv, None)
        alt = cross_scores(effects(iv), de, signed=signed)
        units = base.units[["arm", "perturbation"]].astype(str).agg("/".join, axis=1)
        alt_units = alt.units[["arm", "perturbation"]].astype(str).agg("/".join, axis=1)
        for stat in ("auroc", "spearman"):
            b = pd.Series(base.diagonal(stat), index=units.to_numpy())
            a = pd.Series(alt.diagonal(stat), index=alt_units.to_numpy()).reindex(b.index)
            r = _change_row(
                a.to_numpy(float), b.to_numpy(float), n_boot=p.n_boot,
                seed=ctx.seed_for(ds, mname, "isp", c.name, stat),
            )  # fmt: skip
            rows.append(
                {"dataset": ds, "model": mname, "reference": ref_name,
                 "readout": f"(b) in-silico {stat} with observed effects "
                 f"({base_eff.attrs.get('readout')} readout)", "statistic": stat,
                 "condition": c.name, "kind": c.kind, "channel": c.channel, "size": c.size,
                 "order": order.message, "structurally_unable": not order.can_affect, **r}
            )  # fmt: skip
            ctx.add_test(
                hypothesis=f"{c.name} ({CHANNEL_NAMES[c.channel]}) changes the agreement of "
                f"{mname}'s in-silico perturbations with observed effects ({stat})",
                test="Wilcoxon signed-rank over perturbations of the per-perturbation change "
                "(two-sided)",
                null=CHANGE_H0, null_name="no_change", p=r["p"],
                statistic_name=f"mean Δ{stat}", statistic=r["change"],
                effect_name=f"mean Δ{stat}", effect=r["change"], null_value=0.0,
                ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n_perturbations"],
                direction="two-sided", family="descriptive", model=mname, dataset=ds,
                reference=ref_name, method=f"in silico ({c.channel})",
                extra={"condition": c.name, "statistic": stat},
            )  # fmt: skip
    return pd.DataFrame(rows)


def _prediction_readout(ctx, p, ds, mname, adapter, conds, means, ref_name):
    """Readout (c): attention-based perturbation prediction at ``prediction_layer``."""
    from scipy.stats import wilcoxon

    from scfm_audit.models._interventions import check_intervention_order

    spec = ctx.dataset_spec(ds)
    adata = ctx.dataset(ds)
    if not getattr(spec, "perturbation", None) or spec.perturbation not in adata.obs:
        return None
    resp = dataset_responders(ctx, ds, p)
    resp = resp[resp["perturbation"].astype(str).isin(adata.var_names)]
    if not len(resp) or not resp["responder"].any():
        return None
    targets = pd.Series(
        resp["perturbation"].astype(str).unique(), index=resp["perturbation"].astype(str).unique()
    )
    resp = resp.assign(perturbation=resp["perturbation"].astype(str))
    R = int(p.prediction_layer) % adapter.n_layers
    cells, _, _ = _cells(ctx, ds, p.prediction_cells, 0)
    kw = dict(cells=cells, layer=R, targets=targets, responders=resp, batch_size=p.batch_size)
    base = attention_prediction(adapter, adata, **kw)
    picked = _readout_conditions(conds)
    rows = []
    for c in picked:
        iv = c.intervention(adapter, means)
        order = check_intervention_order(adapter, iv, R, readout_site="attn.pattern")
        row = {
            "dataset": ds, "model": mname, "reference": ref_name,
            "readout": f"(c) attention AUROC for responders, layer {R}",
            "condition": c.name, "kind": c.kind, "channel": c.channel, "size": c.size,
            "order": order.message, "structurally_unable": not order.can_affect,
            "same_site": bool(order.same_site),
        }  # fmt: skip
        if not order.can_affect and not order.same_site:
            rows.append({**row, "auroc_baseline": float(np.nanmean(base["auroc"]))})
            continue
        alt = attention_prediction(adapter, adata, intervention=iv, **kw)
        a, b = alt["auroc"].to_numpy(float), base["auroc"].to_numpy(float)
        d, lo, hi = mean_difference_ci(
            a, b, n_boot=p.n_boot, seed=ctx.seed_for(ds, mname, "pred", c.name)
        )
        ok = np.isfinite(a) & np.isfinite(b)
        diff = a[ok] - b[ok]
        pval = (
            float(wilcoxon(diff, zero_method="zsplit").pvalue)
            if diff.size >= 2 and np.any(diff != 0)
            else float("nan")
        )
        row.update(
            auroc_baseline=float(np.mean(b[ok])) if ok.any() else float("nan"),
            auroc=float(np.mean(a[ok])) if ok.any() else float("nan"),
            change=d, ci_low=lo, ci_high=hi, n_perturbations=int(ok.sum()), p=pval,
        )  # fmt: skip
        ctx.add_test(
            hypothesis=f"{c.name} ({CHANNEL_NAMES[c.channel]}) changes {mname}'s attention-"
            f"based prediction of responders at layer {R}",
            test="Wilcoxon signed-rank over perturbations of the per-perturbation AUROC "
            "change (two-sided)" + ("; same-site: a change by construction" if
                                    order.same_site and not order.upstream else ""),
            null=CHANGE_H0, null_name="no_change", p=pval,
            statistic_name="mean ΔAUROC", statistic=d, effect_name="mean ΔAUROC", effect=d,
            null_value=0.0, ci_low=lo, ci_high=hi, n=int(ok.sum()), direction="two-sided",
            family="descriptive", model=mname, dataset=ds, reference=ref_name,
            method=f"attention layer {R} ({c.channel})", layer=R,
            extra={"condition": c.name},
        )  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(tables: dict[str, pd.DataFrame]) -> str:
    t = tables.get("set_tests")
    if t is None or not len(t):
        return "No model could be ablated (see notes)."
    parts = []
    for r in t.itertuples():
        parts.append(
            f"{r.model} on {r.dataset} ({r.channel}): regulatory heads raise the masked loss "
            f"by {r.degradation:.4g} vs {r.random_mean:.4g} for {r.against} "
            f"(quantile {r.quantile:.2f}, p = {r.p:.3g})"
        )
    c = tables.get("cost")
    tail = ""
    if c is not None and len(c):
        tail = (
            f" Residual caching ran {int(c['layer_passes_cached'].sum())} layer passes instead "
            f"of {int(c['layer_passes_full'].sum())}."
        )
    return "; ".join(parts) + "." + tail


# ---------------------------------------------------------------------------- calibration
# The verdict test (:func:`set_vs_random`) on synthetic per-head degradations with hub-like
# heterogeneity: each of 16 heads has a heavy-tailed effect e_h (a few heads matter a lot);
# ablating a set S raises cell c's loss by Σ_{h∈S} e_h · u_c + noise (u_c a cell's
# sensitivity). Null: the "regulatory" set is a random set drawn by the same rule as the
# random sets (exchangeable: exact type-I error). Planted: the regulatory set's heads get
# their effects raised by `shift` (in units of the median effect), at two strengths.
_CAL_HEADS = [(L, h) for L in range(4) for h in range(4)]


def _synthetic_losses(seed: int, shift: float, *, n_cells: int = 32, n_random: int = 50,
                      size: int = 5):  # fmt: skip
    rng = np.random.default_rng(seed)
    H = len(_CAL_HEADS)
    effect = rng.lognormal(0.0, 1.2, H) * 0.01  # hub-like: a few heads dominate
    sets = random_head_sets(_CAL_HEADS, size, n_random + 1, rng)
    chosen = [(_CAL_HEADS.index(h)) for h in sets[0]]
    effect[chosen] += shift * np.median(effect)
    base = rng.gamma(4.0, 0.25, n_cells)
    u = rng.lognormal(0.0, 0.3, n_cells)

    def loss(s):
        e = sum(effect[_CAL_HEADS.index(h)] for h in s)
        return base + e * u + rng.normal(0, 0.01, n_cells)

    return loss(sets[0]), np.array([loss(s) for s in sets[1:]]), base


def _calibration_replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome

    if sc.params.get("tiny_model"):
        return _tiny_model_replicate(seed)
    ls, lr, base = _synthetic_losses(seed, sc.params.get("shift", 0.0))
    r = set_vs_random(ls, lr, base)
    return ReplicateOutcome(p=r["p"], estimate=r["quantile"], null_value=0.5)


def _tiny_model_replicate(seed: int, n_random: int = 99):
    """A null on a real (tiny, random-weight) scGPT: the "regulatory" heads are a random
    set, ablated and compared with the analysis' own condition runner and test.
    ``n_random`` = 99: the smallest two-sided p is 0.02, so the test can reject at 0.05
    (with 19 sets it never could: its smallest p would be 0.1)."""
    import tempfile

    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.models._masked import masked_inputs
    from scfm_audit.models._scgpt import ScGPTAdapter

    bench = simulate_perturbseq(n_cells=60, n_genes=80, n_tfs=6, n_perturbations=2, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scgpt_checkpoint(tmp + "/m", list(bench.adata.var_names), n_layers=2,
                                      n_heads=4, seed=seed % 1000)  # fmt: skip
        model = ScGPTAdapter.load(path, device="cpu")
    rng = np.random.default_rng(seed)
    heads = all_heads(model.n_layers, model.n_heads)
    sets = random_head_sets(heads, 3, n_random + 1, rng)
    cells = rng.choice(bench.adata.n_obs, 16, replace=False)
    mb = masked_inputs(model, model.tokenize(bench.adata, cells), ratio=0.3, seed=seed)
    conds = [Condition("random-k", "zero", s, draw=i) for i, s in enumerate(sets)]
    res = masked_loss_conditions(model, [mb], conds)
    r = set_vs_random(res.loss[0], res.loss[1:], res.baseline)
    return ReplicateOutcome(p=r["p"], estimate=r["quantile"], null_value=0.5)


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import Scenario, register_calibration

    register_calibration(
        "head_ablation",
        [
            Scenario(
                "hub_null_random_regulatory_set",
                "null",
                "16 heads with heavy-tailed (hub-like) ablation effects; the regulatory set "
                "is a random 5-head set, exchangeable with the 50 random sets",
                truth=None,
                params={"shift": 0.0},
            ),
            Scenario(
                "null_tiny_scgpt_random_set",
                "null",
                "tiny random-weight scGPT (2 layers × 4 heads): a random 3-head set against "
                "99 random sets, masked-value MSE",
                params={"tiny_model": True},
            ),
            *[
                Scenario(
                    f"planted_regulatory_shift_{s}",
                    "planted",
                    f"as the hub null, the regulatory heads' effects raised by {s} × the "
                    "median head effect",
                    strength=s,
                    params={"shift": s},
                )
                for s in (3.0, 8.0)
            ],
        ],
    )(_calibration_replicate)


_register_calibration()
