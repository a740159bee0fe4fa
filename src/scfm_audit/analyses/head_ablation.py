"""Analysis 10 — ``head_ablation`` (family C): does the model use its "regulatory heads"?

Heads. Per dataset × model the regulatory heads are recomputed with
``head_specialisation``'s own kernel (:func:`head_recovery_table` + :func:`select_heads`
on the model's per-head attention source and one reference), so the result does not
depend on run order (the permutation seeds are this analysis' own): heads significant on
the recovering side of their own degree-permutation null's centre after BH at
``selection_fdr``, else the top-``selection_k`` by null-standardised AUROC
(``selection: head_specialisation``), or the top-``selection_k`` by recovery AUROC
(``selection: top_auroc``, the paper's ranking). Either way only heads above their null's
centre: an anti-recovering head is never "regulatory". The rule is in the ``heads`` table.

Conditions, per channel — ``zero`` (head masking), ``uniform`` (pattern 1/n over the real
keys, values kept), ``mean`` (the head's mean output over reference control cells,
disjoint from the readout cells): the regulatory set; top-k / bottom-k by recovery AUROC
for k in ``ks`` (below the number of heads); random sets of the regulatory set's size
(``n_random`` in the verdict channel, ``n_random_other`` elsewhere; ``random_sets: any``
or ``layer_matched``; when at most ``n_random`` other sets exist, every one of them: the
exact permutation test); entropy-matched sets; the full layer holding most regulatory
heads; MLP zeroing of ``mlp_layers`` (default: the last layer and layer 0).

Readouts, each downstream of the intervention, order explicit per condition
(:func:`check_intervention_order`): (a) masked loss on control cells (scGPT masked-value
MSE, Geneformer masked-gene cross-entropy; seeded masks identical for every condition;
residual stream cached at each condition's lowest layer); (b) the model's own in-silico
perturbations (``evaluate/_in_silico.py``) against observed effects, with the
intervention active; (c) attention-based responder prediction at ``prediction_layer``
(a condition whose every site lies at or after that layer's pattern is "structurally
unable", not "no effect"). Fidelity: hidden-state and output cosine distance to the
baseline per condition.

Claim, per model and dataset — "ablating regulatory heads degrades the model": H0: the
regulatory set is exchangeable with random sets of its size (verdict channel); statistic
D = mean masked-loss increase, two-sided rank test against the compared sets
(:func:`set_vs_random`); effect: D's quantile among them (0.5 under H0) with a bootstrap
CI over cells. Its attainable floor is stated: exact enumeration of N sets gives at best
2/N two-sided, n random sets 2/(n+1); when the floor cannot reach significance the
answer is n/a with what to change. Every other test (other channels, entropy-matched
sets, each condition's change, readouts (b)/(c): Wilcoxon signed-rank) is descriptive.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._ablation_readouts import (
    CHANNEL_NAMES,
    change,
    in_silico_readout,
    prediction_readout,
    readout_cells,
    readout_conditions,
)
from scfm_audit.analyses._contract import AnalysisContext, AnalysisResult, Unit, register_analysis
from scfm_audit.analyses._perturbation_common import ResponderParams
from scfm_audit.analyses.head_specialisation import regulatory_heads
from scfm_audit.evaluate._ablation import (
    Condition,
    all_heads,
    entropy_matched_sets,
    head_entropy,
    masked_loss_conditions,
    mean_difference_ci,
    random_head_sets,
    random_set_design,
    set_vs_random,
)

ENTROPY_H0 = (
    "the regulatory set is exchangeable with head sets of matched mean attention entropy "
    "(rank p; descriptive)"
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


def _claim_text(model: str | None) -> str:
    return f"{model}: ablating regulatory heads degrades the model"


def _demo(*, quick: bool, models: bool) -> dict | None:
    """Regulatory heads (selected on sim_grn) ablated vs random head sets (~15–35 s of CPU
    per demo model per 50 sets). 199 random sets: the exact test's floor (2/200) can reach
    α among the demo's claims, 50 sets (2/51) cannot. The other channels' comparisons are
    descriptive: 9 random sets each."""
    if not models:
        return None
    return {
        "head_ablation": {
            "datasets": ["sim"],
            "reference": "sim_grn",
            "n_random": 199,
            "n_random_other": 9,
        }
    }


@register_analysis(
    "head_ablation",
    description="ablate the regulatory heads (zero / uniform / mean, and MLP zeroing) and "
    "measure masked loss and attention-based perturbation prediction against random and "
    "entropy-matched head sets of equal size, with fidelity",
    params=HeadAblationParams,
    version="2.0",
    category="C. Does the model use those heads?",
    reference="Catalogue 10; paper: head ablation, three intervention channels",
    quick={
        "ks": [2],
        "channels": ["zero", "mean"],
        "n_random": 19,
        "n_random_other": 0,
        "n_entropy_matched": 2,
        "n_cells": 8,
        "n_reference_cells": 8,
        "n_boot": 50,
        "selection_n_perm": 99,
        "selection_n_perm_max": 0,
        "prediction_cells": 16,
        "in_silico_cells": 8,
        "in_silico_perturbations": 3,
    },
    demo=_demo,
    claims=(
        (
            "<model>: ablating regulatory heads degrades the model",
            "masked-loss increase of the regulatory heads' ablation ranked among random head sets of equal size (exact when few sets exist; a design whose smallest attainable p cannot reach α, e.g. 1 head of 16: 0.125, answers n/a with what to change); regulatory heads lie above their own null's centre",
        ),
    ),
)
def run_head_ablation(ctx: AnalysisContext, p: HeadAblationParams) -> AnalysisResult:
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
    figures = {}
    wanted = set(p.models) if p.models is not None else None
    for ds in p.datasets or ctx.dataset_names():
        sources = _per_head_sources(ctx, ds, p.edges)
        if not sources:
            notes.append(f"{ds}: no per-head attention source (set per_head: true).")
        for mname in sorted(m for m in sources if wanted is None or m in wanted):
            en, heads_es = sources[mname]
            part = _one_model(ctx, p, ds, mname, en, heads_es, notes)
            for k, t in (part or {}).get("tables", {}).items():
                tables.setdefault(k, []).append(t)
            figures.update((part or {}).get("figures", {}))
    out = {k: pd.concat(v, ignore_index=True) for k, v in tables.items() if v}
    out = {k: t for k, t in out.items() if len(t)}
    return AnalysisResult(tables=out, figures=figures, summary=_summary(out), notes=notes)


def _per_head_sources(ctx, ds: str, edges) -> dict[str, tuple[str, list]]:
    """model → (edge source, its per-head EdgeScores on ``ds``) — the first source per
    model among ``edges`` (default: all sources) that has per-head scores."""
    out: dict[str, tuple[str, list]] = {}
    for en in edges or ctx.edge_names():
        heads = [s for s in ctx.edge_scores(en, ds) if s.head is not None and s.model]
        for m in sorted({s.model for s in heads}):
            out.setdefault(m, (en, [s for s in heads if s.model == m]))
    return out


def _not_run(ctx, unit: Unit, notes: list, reason: str) -> None:
    """The claim stays on the scorecard as n/a with ``reason``; the notes say so."""
    notes.append(f"{unit.dataset}/{unit.model}: {reason}; head ablation not run.")
    ctx.not_assessable(unit, claim=_claim_text(unit.model), reason=reason)


def _one_model(ctx, p, ds, mname, en, heads_es, notes) -> dict | None:
    from dataclasses import replace

    from scfm_audit.models._interventions import compute_head_means
    from scfm_audit.models._masked import masked_inputs, masked_objective
    from scfm_audit.plotting import ablation_figure

    unit = Unit(ds, mname, p.reference, f"{en} ({p.verdict_channel})")
    sel = regulatory_heads(
        ctx,
        heads_es,
        ds,
        en,
        [p.reference] if p.reference is not None else None,
        top_auroc=p.selection == "top_auroc",
        k=p.selection_k,
        fdr=p.selection_fdr,
        n_perm=p.selection_n_perm,
        n_perm_max=p.selection_n_perm_max,
        min_positives=p.min_positives,
        notes=notes,
    )
    if sel is None:
        _not_run(
            ctx,
            unit,
            notes,
            "no reference has enough edges among the scored genes to select regulatory heads",
        )
        return None
    table, ref_name = sel
    unit = replace(unit, reference=ref_name)
    if not table["selected"].any():
        _not_run(
            ctx,
            unit,
            notes,
            f"no head of {en} lies above its degree-permutation "
            f"null's centre for {ref_name}: no regulatory head to ablate",
        )
        return None
    adapter = ctx.model(mname)
    adata = ctx.dataset(ds)
    table = table.assign(layer=table["layer"].astype(int), head=table["head"].astype(int))
    ranked = table.sort_values(["auroc", "layer", "head"], ascending=[False, True, True])
    order = [(int(r.layer), int(r.head)) for r in ranked.itertuples()]
    regulatory = tuple(sorted(h for h, s in zip(order, ranked["selected"]) if s))
    rule = str(ranked.loc[ranked["selected"], "selected_by"].iloc[0])
    read_cells, ref_cells, cell_kind = readout_cells(ctx, ds, p.n_cells, p.n_reference_cells)
    objective = masked_objective(adapter)
    if objective == "masked-gene cross-entropy" and getattr(adapter, "_mlm_head", 1) is None:
        _not_run(ctx, unit, notes, "no masked-LM head, so no masked-gene readout")
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
    conds, design = _conditions(ctx, p, ds, mname, adapter, regulatory, order, rule, entropy, notes)
    res = masked_loss_conditions(adapter, masked, conds, head_means=means)
    extra = {"analysis_cells": cell_kind, "objective": objective}
    cond_table = _condition_table(ctx, p, unit, en, adapter, conds, res, means, objective, extra)
    set_rows = _set_tests(ctx, p, unit, en, conds, res, design, regulatory, rule, extra)

    pred_table = isp_table = None
    picked = readout_conditions(conds)
    if p.in_silico:
        isp_table = in_silico_readout(ctx, p, unit, adapter, picked, means)
        if isp_table is None:
            notes.append(f"{ds}/{mname}: no perturbations with responders: readout (b) not run.")
    if p.prediction:
        pred_table = prediction_readout(ctx, p, unit, adapter, picked, means)
        if pred_table is None:
            notes.append(f"{ds}/{mname}: no perturbations with responders: readout (c) not run.")

    m = len(regulatory)
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
    heads_t["entropy"] = [
        float(entropy.loc[(int(a), int(b))]) for a, b in zip(heads_t["layer"], heads_t["head"])
    ]
    passes = pd.DataFrame(
        [
            {
                "dataset": ds,
                "model": mname,
                "conditions": len(conds),
                "layer_passes_cached": res.layer_passes,
                "layer_passes_full": res.full_passes,
                "saved": 1 - res.layer_passes / max(res.full_passes, 1),
            }
        ]
    )
    tables = {
        "conditions": cond_table[cond_table["kind"] != "random-k"],
        "random_sets": rnd_rows,
        "set_tests": pd.DataFrame(set_rows),
        "heads": heads_t,
        "cost": passes,
        "prediction": pred_table,
        "in_silico": isp_table,
    }
    return {
        "tables": {k: v for k, v in tables.items() if v is not None},
        "figures": {f"ablation_{ds}_{mname}": fig},
    }


def _conditions(ctx, p, ds, mname, adapter, regulatory, order, rule, entropy, notes):
    """Every condition (see the module docstring) and the random-set design
    ``(sets, number of distinct sets, exhaustive)``."""
    H = adapter.n_layers * adapter.n_heads
    m = len(regulatory)
    conds: list[Condition] = []
    for ch in p.channels:
        conds.append(Condition("regulatory", ch, regulatory, label=f"regulatory ({rule})"))
        for k in sorted(k for k in set(p.ks) if k < H):
            conds.append(Condition("top-k", ch, tuple(sorted(order[:k])), label=f"top-{k}"))
            conds.append(Condition("bottom-k", ch, tuple(sorted(order[-k:])), label=f"bottom-{k}"))
    skipped_k = sorted(k for k in set(p.ks) if k >= H)
    if skipped_k:
        notes.append(
            f"{mname}: k = {skipped_k} ≥ its {H} heads — top-k would be every head, with no "
            "random set to compare; those conditions are not run."
        )
    design = random_set_design(
        all_heads(adapter.n_layers, adapter.n_heads),
        regulatory,
        p.n_random,
        ctx.rng(ds, mname, "random sets"),
        layer_matched=p.random_sets == "layer_matched",
    )
    rand_sets, n_distinct, exhaustive = design
    if n_distinct <= 1:
        notes.append(f"{mname}: no other head set of size {m} exists; no random-set test.")
    elif exhaustive:
        floor = 2.0 / n_distinct
        notes.append(
            f"{ds}/{mname}: only {n_distinct} distinct {m}-head sets exist, so every other "
            f"one is compared (exact permutation test); the smallest attainable two-sided p "
            f"is {floor:.3g}" + (" — this test cannot reach 0.05." if floor > 0.05 else ".")
        )
    for ch in p.channels:
        n = p.n_random if ch == p.verdict_channel else min(p.n_random_other, len(rand_sets))
        for i, s in enumerate(rand_sets[:n]):
            conds.append(Condition("random-k", ch, s, draw=i, label=f"random-{m}"))
    em_sets = entropy_matched_sets(
        entropy,
        regulatory,
        p.n_entropy_matched,
        ctx.rng(ds, mname, "entropy"),
        n_near=p.entropy_pool,
    )
    for i, s in enumerate(em_sets):
        conds.append(
            Condition("entropy-matched", p.verdict_channel, s, draw=i, label="entropy-matched")
        )
    full_layer = int(pd.Series([L for L, _ in regulatory]).mode().min())
    for ch in p.channels:
        layer_heads = tuple((full_layer, h) for h in range(adapter.n_heads))
        conds.append(Condition("full-layer", ch, layer_heads, label=f"layer {full_layer}"))
    mlp_layers = p.mlp_layers if p.mlp_layers is not None else [adapter.n_layers - 1, 0]
    n = adapter.n_layers
    bad = [x for x in mlp_layers if not -n <= int(x) < n]
    if bad:  # an index is never wrapped onto another layer (9 on 4 layers is not layer 1)
        raise ValueError(
            f"mlp_layers {bad} outside the model's {n} layers (0..{n - 1}, or "
            f"-{n}..-1 from the last); give indices in that range."
        )
    for L in dict.fromkeys(int(x) % n for x in mlp_layers):
        role = "readout layer" if L == adapter.n_layers - 1 else ("early" if L == 0 else "")
        label = f"MLP {L}" + (f" ({role})" if role else "")
        conds.append(Condition("mlp", "mlp", layers=(L,), label=label))
    return conds, design


def _condition_table(ctx, p, unit, en, adapter, conds, res, means, objective, extra):
    """Readout (a) per condition: mean loss change with its bootstrap CI over cells,
    fidelity, order; the change of every non-random condition is tested (descriptive)."""
    from dataclasses import replace

    from scfm_audit.models._interventions import check_intervention_order

    rows = []
    for i, c in enumerate(conds):
        iv = c.intervention(adapter, means)
        row = {
            "dataset": unit.dataset,
            "model": unit.model,
            "edges": en,
            "reference": unit.reference,
            "readout": f"(a) {objective}",
            "condition": c.name,
            "kind": c.kind,
            "channel": c.channel,
            "size": c.size,
            "draw": c.draw,
            "heads": _heads_str(c.heads) if c.heads else "",
            "mlp_layers": ",".join(map(str, c.layers)),
            "start_layer": c.start_layer,
            "baseline": float(np.nanmean(res.baseline)),
            "n_cells": int(np.isfinite(res.loss[i]).sum()),
            "fidelity_hidden": float(np.mean(res.hidden[i])),
            "fidelity_output": float(np.mean(res.output[i])),
            "frac_cells_changed": float(np.mean(res.hidden[i] > 1e-6)),
            "order": check_intervention_order(adapter, iv, None).message,
            "structurally_unable": False,
        }
        seed = ctx.seed_for(unit.dataset, unit.model, c.name)
        if c.kind in ("random-k", "entropy-matched"):
            d, lo, hi = mean_difference_ci(res.loss[i], res.baseline, n_boot=p.n_boot, seed=seed)
            row.update(change=d, ci_low=lo, ci_high=hi)
        else:
            r = change(
                ctx,
                replace(unit, method=f"{en} ({c.channel})"),
                res.loss[i],
                res.baseline,
                n_boot=p.n_boot,
                seed=seed,
                extra={"condition": c.name, **extra, "fidelity_hidden": row["fidelity_hidden"]},
                hypothesis=f"{c.name} ({CHANNEL_NAMES[c.channel]}) changes the masked loss "
                f"of {unit.model}",
            )
            row.update(change=r["change"], ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"])
        rows.append(row)
    return pd.DataFrame(rows)


def _set_tests(ctx, p, unit, en, conds, res, design, regulatory, rule, extra) -> list[dict]:
    """The regulatory set against random sets in every channel (the verdict channel's
    is the claim, the others descriptive) and against entropy-matched sets."""
    from dataclasses import replace

    def idx(kind, ch):
        return [i for i, c in enumerate(conds) if c.kind == kind and c.channel == ch]

    rand_sets, _, exhaustive = design
    m, mname, rows = len(regulatory), unit.model, []
    for ch in p.channels:
        reg_i, rnd = idx("regulatory", ch)[0], idx("random-k", ch)
        if not rnd:
            continue
        against = f"random {m}-head sets ({p.random_sets})"
        r = set_vs_random(
            res.loss[reg_i],
            res.loss[rnd],
            res.baseline,
            n_boot=p.n_boot,
            seed=ctx.seed_for(unit.dataset, mname, "verdict", ch),
            against=against,
            exact=exhaustive and len(rnd) == len(rand_sets),
        )
        u = replace(unit, method=f"{en} ({ch})")
        hyp = (
            f"ablating the regulatory heads of {mname} ({_heads_str(regulatory)}; "
            f"{CHANNEL_NAMES[ch]}) raises the masked loss more than random sets of {m} heads"
        )
        more = {
            "channel": ch,
            "n_random": len(rnd),
            "heads": _heads_str(regulatory),
            "selected_by": rule,
            "excess_over_random_mean": r["excess"],
            "random_mean": r["random_mean"],
            **extra,
        }
        if ch == p.verdict_channel:
            ctx.claim(
                r["result"],
                u,
                claim=_claim_text(mname),
                hypothesis=hyp,
                direction="greater",
                layer_choice=f"heads {_heads_str(regulatory)} ({rule} on {u.reference}); "
                f"{CHANNEL_NAMES[ch]}; vs {len(rnd)} {against}",
                reason=_advice(p, r["p_floor"], m, design, getattr(ctx, "alpha", 0.05)),
                extra=more,
            )
        else:
            ctx.describe(r["result"], u, hypothesis=hyp, extra=more)
        rows.append(
            {
                "dataset": unit.dataset,
                "model": mname,
                "channel": ch,
                "set": "regulatory",
                "against": f"random-{m}",
                **{k: v for k, v in r.items() if k != "result"},
            }
        )
    if not idx("random-k", p.verdict_channel):
        who = (
            f"every one of the {m} heads is regulatory"
            if p.random_sets == "any"
            else f"the {m} regulatory heads fill whole layers (random_sets: layer_matched)"
        )
        ctx.not_assessable(
            replace(unit, method=f"{en} ({p.verdict_channel})"),
            claim=_claim_text(mname),
            reason=f"{who}: no other head set of size {m} to compare with",
        )
    em = idx("entropy-matched", p.verdict_channel)
    if em:
        reg_i = idx("regulatory", p.verdict_channel)[0]
        r = set_vs_random(
            res.loss[reg_i],
            res.loss[em],
            res.baseline,
            against="entropy-matched head sets",
            h0=ENTROPY_H0,
        )
        ctx.describe(
            r["result"],
            replace(unit, method=f"{en} ({p.verdict_channel})"),
            hypothesis=f"ablating the regulatory heads of {mname} raises the masked loss "
            "more than entropy-matched head sets",
            extra={"n_matched": len(em), **extra},
        )
        rows.append(
            {
                "dataset": unit.dataset,
                "model": mname,
                "channel": p.verdict_channel,
                "set": "regulatory",
                "against": "entropy-matched",
                **{k: v for k, v in r.items() if k != "result"},
            }
        )
    return rows


def _advice(p, floor: float, m: int, design, alpha: float) -> str:
    """The design's limit and what lowers it, when its floor is coarse (the claim path
    says whether it can reach significance among the run's claims); worded to hold on
    any answer. Empty when the floor is fine."""
    sets, n_distinct, exhaustive = design
    if not floor > alpha / 5:
        return ""
    if exhaustive:
        how = "select more regulatory heads (selection_k / selection_fdr)"
        if p.random_sets == "layer_matched":
            how = "draw random sets from all layers (random_sets: any) or " + how
        return (
            f"only {n_distinct} distinct {m}-head sets exist: the exact test's smallest "
            f"attainable p is {floor:.2g}; to lower it, {how}"
        )
    return (
        f"{len(sets)} random sets: the smallest attainable p is {floor:.2g}; to lower "
        "it, raise n_random (199 sets: 0.01)"
    )


def _summary(tables: dict[str, pd.DataFrame]) -> str:
    t = tables.get("set_tests")
    if t is None or not len(t):
        return "No model could be ablated (see notes)."
    parts = [
        f"{r.model} on {r.dataset} ({r.channel}): regulatory heads raise the masked loss "
        f"by {r.degradation:.4g} vs {r.random_mean:.4g} for {r.against} "
        f"(quantile {r.quantile:.2f}, p = {r.p:.3g}, smallest attainable {r.p_floor:.2g})"
        for r in t.itertuples()
    ]
    c = tables.get("cost")
    tail = ""
    if c is not None and len(c):
        tail = (
            f" Residual caching ran {int(c['layer_passes_cached'].sum())} layer passes instead "
            f"of {int(c['layer_passes_full'].sum())}."
        )
    return "; ".join(parts) + "." + tail


# ---------------------------------------------------------------------------- calibration
# The claim's test (:func:`set_vs_random` against :func:`random_set_design`'s sets) on
# synthetic per-head degradations with hub-like heterogeneity: each of 16 heads has a
# heavy-tailed effect e_h (a few heads matter a lot); ablating a set S raises cell c's loss
# by Σ_{h∈S} e_h · u_c + noise (u_c a cell's sensitivity). Null: the "regulatory" set is a
# random set of the same rule (exchangeable: exact type-I error). Planted: its heads'
# effects raised by `shift` (in units of the median effect), at two strengths.
_CAL_HEADS = all_heads(4, 4)


def _synthetic_losses(
    seed: int, shift: float, *, size: int = 5, n_random: int = 50, n_cells: int = 32
):
    """(regulatory set's losses, random sets' losses, baseline, exhaustive)."""
    rng = np.random.default_rng(seed)
    effect = rng.lognormal(0.0, 1.2, len(_CAL_HEADS)) * 0.01  # hub-like: a few dominate
    (reg,) = random_head_sets(_CAL_HEADS, size, 1, rng)
    sets, _, exhaustive = random_set_design(_CAL_HEADS, reg, n_random, rng)
    effect[[_CAL_HEADS.index(h) for h in reg]] += shift * np.median(effect)
    base, u = rng.gamma(4.0, 0.25, n_cells), rng.lognormal(0.0, 0.3, n_cells)

    def loss(s):
        e = sum(effect[_CAL_HEADS.index(h)] for h in s)
        return base + e * u + rng.normal(0, 0.01, n_cells)

    return loss(reg), np.array([loss(s) for s in sets]), base, exhaustive


def _calibration_replicate(sc, seed: int):
    from scfm_audit.analyses.head_specialisation import outcome

    if sc.params.get("tiny_model"):
        return _tiny_model_replicate(seed)
    ls, lr, base, exact = _synthetic_losses(
        seed, sc.params.get("shift", 0.0), size=sc.params.get("size", 5)
    )
    return outcome(set_vs_random(ls, lr, base, exact=exact)["result"])


def _tiny_model_replicate(seed: int, n_random: int = 99):
    """A null on a real (tiny, random-weight) scGPT: the "regulatory" heads are a random
    3-head set of 8, against every other one (55 sets: the exact test, smallest p 0.036),
    with the analysis' own condition runner and test."""
    import tempfile

    from scfm_audit.analyses.head_specialisation import outcome
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.models._masked import masked_inputs
    from scfm_audit.models.scgpt import ScGPTAdapter

    bench = simulate_perturbseq(n_cells=60, n_genes=80, n_tfs=6, n_perturbations=2, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scgpt_checkpoint(
            tmp + "/m", list(bench.adata.var_names), n_layers=2, n_heads=4, seed=seed % 1000
        )
        model = ScGPTAdapter.load(path, device="cpu")
    rng = np.random.default_rng(seed)
    heads = all_heads(model.n_layers, model.n_heads)
    (reg,) = random_head_sets(heads, 3, 1, rng)
    sets, _, exact = random_set_design(heads, reg, n_random, rng)
    cells = rng.choice(bench.adata.n_obs, 16, replace=False)
    mb = masked_inputs(model, model.tokenize(bench.adata, cells), ratio=0.3, seed=seed)
    conds = [Condition("random-k", "zero", s, draw=i) for i, s in enumerate([reg, *sets])]
    res = masked_loss_conditions(model, [mb], conds)
    return outcome(set_vs_random(res.loss[0], res.loss[1:], res.baseline, exact=exact)["result"])


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import Scenario, register_calibration

    hub = "16 heads with heavy-tailed (hub-like) ablation effects"
    register_calibration(
        "head_ablation",
        [
            Scenario(
                "hub_null_random_regulatory_set",
                "null",
                f"{hub}; the regulatory set is a "
                "random 5-head set, exchangeable with the 50 random sets",
                params={},
            ),
            Scenario(
                "hub_null_one_head_of_16",
                "null",
                f"{hub}; one regulatory head: the exact "
                "test over 16 sets cannot give p below 0.125 (the claim answers n/a)",
                params={"size": 1},
            ),
            Scenario(
                "null_tiny_scgpt_random_set",
                "null",
                "tiny random-weight scGPT (2 layers × "
                "4 heads): a random 3-head set against the 55 others, masked-value MSE",
                params={"tiny_model": True},
            ),
            *[
                Scenario(
                    f"planted_regulatory_shift_{s}",
                    "planted",
                    f"as the hub null, the "
                    f"regulatory heads' effects raised by {s} × the median head effect",
                    strength=s,
                    params={"shift": s},
                )
                for s in (3.0, 8.0)
            ],
        ],
    )(_calibration_replicate)


_register_calibration()
