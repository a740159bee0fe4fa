"""Analysis 18 — ``detectability``: how many cells must an audit have before a "no
evidence" means anything?

Per dataset × edge source (× layer) × reference of the run, from the run's own data:

* the per-cell noise of the edge scores, by split halves (``n_splits`` random halves of
  the source's cells, re-scored through the same per-stratum path CSSI uses — one grouped
  accumulator pass for attention): noise variance ∝ 1/cells, and its ratio ``v`` to the
  true scores' spread (:func:`~scfm_audit.evaluate._detectability.noise_from_halves`);
* how the recovery test's null treats this reference: its spread against Hanley–McNeil's
  (the design effect of edges sharing hub genes, from the run's own degree-permutation
  null draws) and the share of an effect the null's centre keeps (``retention``:
  :func:`~scfm_audit.evaluate._detectability.null_structure`);
* the closed form (:mod:`scfm_audit.evaluate._detectability`: binormal attenuation by cell
  noise, Hanley–McNeil SE × √deff, BH over ``n_claims`` claims approximated by α/m for one
  true claim among m): the **detectable effect** at this run's size — the smallest
  ΔAUROC (noiseless, and as the run's estimate would show it) found with ``power`` — and
  the cells needed for the pre-declared ``effect``.

Table ``detectability`` is what the scorecard reads: a "no evidence" for a source whose
true effect may lie below ``detectable_delta`` says little. Figure: phase diagram per
dataset × source × reference (cells × ΔAUROC, closed-form power contours as lines,
simulated power — planted scores with this run's noise on this reference's candidate
pairs, tested by the real recovery test — as points).

Claims: none. Detectability is a planning quantity computed from the design; it tests no
hypothesis about the model. Each row is recorded as a descriptive entry with NaN p and
the reason, so that the numbers reach the test registry and the report.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisResult,
    Unit,
    UnitParams,
    register_analysis,
)
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.evaluate._detectability import (
    cells_needed,
    detectable_effect,
    hanley_mcneil_var,
    noise_from_halves,
    null_structure,
    power_at_cells,
    simulate_power,
)
from scfm_audit.evaluate._recovery import edge_recovery, pair_scores

SCORERS = ("coexpression", "attention")
H0 = "none: a planning quantity (closed-form power of the recovery test), no hypothesis tested"
METHOD = (
    "closed form: binormal attenuation by per-cell noise (split halves), Hanley–McNeil SE × "
    "√(design effect of the degree-permutation null), null retention, BH as α/m"
)


class DetectabilityParams(UnitParams):
    effect: float = Field(
        0.05, gt=0, lt=0.5, description="pre-declared ΔAUROC (noiseless) for 'cells needed'"
    )
    power: float = Field(0.8, gt=0, lt=1, description="target power")
    alpha: float = Field(0.05, gt=0, lt=1, description="FDR level of the run's claims")
    n_claims: int = Field(
        20,
        ge=1,
        description="claims in the run's BH family: a claim counts when p ≤ α/n_claims (BH "
        "with one true claim among them; conservative when several are true)",
    )
    n_splits: int = Field(3, ge=1, description="random split halves for the noise estimate")
    n_perm: int = Field(199, ge=19, description="degree-permutation draws (the null's spread)")
    n_sim: int = Field(
        20, ge=0, description="replicates per simulated point of the phase diagram (0: none)"
    )
    sim_effects: list[float] = Field(
        [0.05, 0.1], description="ΔAUROC of the simulated points (noiseless)"
    )
    sim_cells: list[float] = Field(
        [0.25, 1.0, 4.0], description="cells of the simulated points, as multiples of the run's"
    )
    simulate: Literal["first", "all"] = Field(
        "first",
        description="phase diagrams with simulated points: the first edge source of each "
        "dataset × reference (the others: closed-form lines only), or all",
    )


def _quick(**kw) -> dict:
    return {
        "datasets": ["sim"],
        "n_splits": 1,
        "n_perm": 49,
        "n_sim": 4,
        "sim_effects": [0.1],
        "sim_cells": [1.0],
        **kw,
    }


def _demo(*, quick: bool = False, models: bool = False) -> dict | None:
    return {
        "detectability": {
            "datasets": ["sim"],
            "references": ["sim_grn"],
            "n_splits": 1,
            "n_sim": 10,
            "sim_effects": [0.1],
        }
    }


@register_analysis(
    "detectability",
    description="Cells needed before 'no evidence' means anything: per-cell noise of the edge "
    "scores (split halves), closed-form power of the recovery test after BH (Hanley–McNeil × "
    "design effect, binormal attenuation), detectable ΔAUROC at this run's size, cells needed "
    "for a pre-declared effect; phase diagram checked against simulation",
    params=DetectabilityParams,
    version="1.0",
    category="E. Quality control",
    reference="Catalogue 18; Hanley & McNeil (1982); BH threshold α·k/m with k = 1",
    quick=_quick(),
    demo=_demo,
    no_claims="a planning quantity (closed-form power checked against simulation): it "
    "answers how many cells an audit needs, not a claim about a model",
)
def run_detectability(ctx: AnalysisContext, p: DetectabilityParams) -> AnalysisResult:
    from scfm_audit.analyses._strata import StrataSource
    from scfm_audit.analyses.cssi import CSSIParams

    rows, phase_rows, sim_rows, notes = [], [], [], []
    simulated: set[tuple[str, str]] = set()
    for ds in p.datasets_in(ctx):
        for en in p.edges_in(ctx):
            pooled = [s for s in ctx.edge_scores(en, ds) if s.head is None]
            if not pooled:
                continue
            src = StrataSource(ctx, CSSIParams(), ds, en, pooled)
            if src.scorer not in SCORERS:
                notes.append(
                    f"{ds}/{en}: scorer '{src.scorer}' has no per-cell noise to "
                    f"estimate (only {SCORERS})."
                )
                continue
            refs = p.evaluable(ctx, src.genes, where=f"{ds}/{en}", notes=notes)
            if not refs:
                continue
            n = int(src.adata.n_obs)
            if n < 4:
                notes.append(f"{ds}/{en}: {n} cells, too few to split in halves.")
                continue
            halves = []  # per split: {layer: (half a, half b)}
            for h in range(p.n_splits):
                lab = np.zeros(n, dtype=np.int64)
                lab[ctx.rng(ds, en, "halves", h).permutation(n)[: n // 2]] = 1
                per, _ = src.stratum_scores(lab)
                halves.append({L: mats for L, mats in per.items() if len(mats) == 2})
            for ref_name, pairs in refs.items():
                ns = null_structure(
                    pairs, n_draws=max(1000, p.n_perm), seed=ctx.seed_for(ds, ref_name)
                )
                n1, n0 = pairs.n_pos, len(pairs) - pairs.n_pos
                last = None
                for base in pooled:
                    row = _row(ctx, p, ds, en, ref_name, base, pairs, halves, ns, n, n1, n0)
                    if row is None:
                        notes.append(
                            f"{ds}/{en}/{ref_name}: layer {base.layer}: the halves "
                            "could not be scored."
                        )
                        continue
                    rows.append(row)
                    _describe(ctx, p, row, base, ds, ref_name)
                    last = row
                if last is None:
                    continue
                phase_rows += _phase_grid(p, last)
                v = last["noise_ratio"]
                first = (ds, ref_name) not in simulated
                if p.n_sim and math.isfinite(v) and (first or p.simulate == "all"):
                    simulated.add((ds, ref_name))
                    sim = simulate_power(
                        pairs,
                        deltas=list(p.sim_effects),
                        cells=[max(2.0, c * n) for c in p.sim_cells],
                        noise_ratio=v,
                        n_rep=p.n_sim,
                        alpha=p.alpha,
                        n_claims=p.n_claims,
                        n_perm=99,  # extended while p < 0.05: the floor must reach α/m
                        n_perm_max=max(999, math.ceil(4 * p.n_claims / p.alpha)),
                        seed=ctx.seed_for(ds, en, ref_name, "simulation"),
                    )
                    sim_rows += [
                        {
                            "dataset": ds,
                            "edges": en,
                            "reference": ref_name,
                            "layer": last["layer"],
                            **r,
                        }
                        for r in sim.to_dict("records")
                    ]
    table = pd.DataFrame(rows)
    if table.empty:
        notes.append("No edge source could be evaluated (see the other notes).")
        return AnalysisResult(
            tables={"detectability": pd.DataFrame({"note": ["nothing evaluated"]})},
            notes=notes,
        )
    tables = {"detectability": table, "phase": pd.DataFrame(phase_rows)}
    if sim_rows:
        tables["simulation"] = pd.DataFrame(sim_rows)
    figures = _figures(tables["phase"], tables.get("simulation"), table, p)
    notes.append(
        "Detectability makes no claim: it is a planning quantity. BH over the run's claims "
        f"is approximated by α/m with m = n_claims = {p.n_claims} (one true claim among m)."
    )
    return AnalysisResult(tables=tables, figures=figures, summary=_summary(table, p), notes=notes)


def _row(ctx, p, ds, en, ref_name, base: EdgeScores, pairs, halves, ns, n, n1, n0):
    L = base.layer
    full = pair_scores(base, pairs)
    est = []
    for split in halves:
        if L not in split:
            continue
        a, b = (
            pair_scores(
                EdgeScores(m, base.genes, method=base.method, layer=L, directed=base.directed),
                pairs,
            )
            for m in split[L]
        )
        est.append(noise_from_halves(full, a, b, pairs.label, n))
    if not est:
        return None
    sig2 = float(np.nanmean([e["noise_var"] for e in est]))
    tau2 = float(np.nanmean([e["signal_var"] for e in est]))
    v = sig2 / tau2 if tau2 > 0 else math.inf
    rec = edge_recovery(
        base, pairs, n_boot=1, n_perm=p.n_perm, n_perm_max=0, seed=ctx.seed_for(ds, en, ref_name, L)
    )
    se0 = math.sqrt(hanley_mcneil_var(0.5, n1, n0))
    sd = rec["auroc_null_sd"]
    deff = (sd / se0) ** 2 if np.isfinite(sd) and sd > 0 else ns["design_effect"]
    kw = dict(
        alpha=p.alpha,
        n_claims=p.n_claims,
        design_effect=deff,
        retention=ns["retention"],
        retention_sd=ns["retention_sd"],
    )
    d_n, d_inf = detectable_effect(n1, n0, power=p.power, n_cells=n, noise_ratio=v, **kw)
    return {
        "dataset": ds,
        "edges": en,
        "source": base.method + (f"[{base.model}]" if base.model else ""),
        "layer": L,
        "reference": ref_name,
        "n_cells": n,
        "n_pos": n1,
        "n_neg": n0,
        "noise_var_per_cell": sig2,
        "signal_var": tau2,
        "noise_ratio": v,
        "reliability": tau2 / (tau2 + sig2 / n) if tau2 > 0 else 0.0,
        "design_effect": deff,
        "null_retention": ns["retention"],
        "null_retention_sd": ns["retention_sd"],
        "observed_auroc": rec["auroc"],
        "null_centre": rec["auroc_null_mean"],
        "detectable_delta": d_inf,
        "detectable_delta_at_n": d_n,
        "effect": p.effect,
        "power_at_effect": power_at_cells(p.effect, n, noise_ratio=v, n_pos=n1, n_neg=n0, **kw)
        if math.isfinite(v)
        else 0.0,
        "cells_needed": cells_needed(
            p.effect, noise_ratio=v, n_pos=n1, n_neg=n0, power=p.power, **kw
        ),
        "power": p.power,
        "alpha": p.alpha,
        "n_claims": p.n_claims,
    }


def _describe(ctx, p, row: dict, base: EdgeScores, ds: str, ref_name: str) -> None:
    from scfm_audit.stats._tests import StatTestResult

    nan = math.nan
    res = StatTestResult(
        statistic=row["detectable_delta"],
        p=nan,
        effect=row["detectable_delta"],
        n=row["n_pos"],
        test=METHOD,
        statistic_name="detectable ΔAUROC",
        effect_name=f"smallest ΔAUROC (noiseless) found with power {p.power:g} at "
        f"{row['n_cells']} cells",
        alternative="two-sided",
        null_value=0.0,
        p_floor=nan,
        h0=H0,
        null_name="none (power calculation)",
        reason="planning quantity: no hypothesis tested",
    )
    ctx.describe(
        res,
        Unit.of(base, ds, ref_name),
        hypothesis=f"{base.label} on {ref_name}: detectable ΔAUROC at {row['n_cells']} cells",
        extra={
            k: row[k]
            for k in (
                "detectable_delta_at_n",
                "cells_needed",
                "noise_ratio",
                "design_effect",
                "null_retention",
                "power_at_effect",
            )
        },
    )


def _phase_grid(p: DetectabilityParams, row: dict) -> list[dict]:
    n, v = row["n_cells"], row["noise_ratio"]
    kw = dict(
        noise_ratio=v,
        n_pos=row["n_pos"],
        n_neg=row["n_neg"],
        alpha=p.alpha,
        n_claims=p.n_claims,
        design_effect=row["design_effect"],
        retention=row["null_retention"],
        retention_sd=row["null_retention_sd"],
    )
    out: list[dict[str, Any]] = []
    if not math.isfinite(v):
        return out
    cells = np.unique(np.geomspace(max(2.0, n / 16), n * 64, 33).round())
    for c in cells:
        for d in np.linspace(0.01, 0.3, 30):
            out.append(
                {
                    "dataset": row["dataset"],
                    "edges": row["edges"],
                    "reference": row["reference"],
                    "layer": row["layer"],
                    "n_cells": c,
                    "delta": float(d),
                    "power": power_at_cells(float(d), c, **kw),
                }
            )
    return out


def _figures(phase: pd.DataFrame, sim: pd.DataFrame | None, table: pd.DataFrame, p) -> dict:
    from matplotlib.figure import Figure

    figs: dict[str, Figure] = {}
    if phase.empty:
        return figs
    for (ds, en, ref), sub in phase.groupby(["dataset", "edges", "reference"]):
        cells = np.sort(sub["n_cells"].unique())
        deltas = np.sort(sub["delta"].unique())
        Z = sub.pivot_table(index="delta", columns="n_cells", values="power").loc[deltas, cells]
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.add_subplot()
        levels, colours = [0.2, 0.5, 0.8, 0.95], ["#bbbbbb", "#888888", "#d62728", "#444444"]
        ax.contour(cells, deltas, Z.to_numpy(), levels=levels, colors=colours)
        for lev, col in zip(levels, colours, strict=True):  # legend entries of the lines
            ax.plot([], [], color=col, label=f"closed-form power {lev:g}")
        t = table[(table["dataset"] == ds) & (table["edges"] == en) & (table["reference"] == ref)]
        r = t.iloc[-1]
        ax.axvline(r["n_cells"], color="#1f77b4", lw=1, ls="--")
        ax.text(r["n_cells"], deltas[-1], " this run", color="#1f77b4", fontsize=8, va="top")
        if np.isfinite(r["detectable_delta"]):
            ax.plot(
                [r["n_cells"]],
                [r["detectable_delta"]],
                marker="*",
                ms=12,
                color="#1f77b4",
                label=f"detectable ΔAUROC {r['detectable_delta']:.3f}",
            )
        if sim is not None and len(sim):
            s = sim[(sim["dataset"] == ds) & (sim["edges"] == en) & (sim["reference"] == ref)]
            if len(s):
                sc = ax.scatter(
                    s["n_cells"],
                    s["delta"],
                    c=s["power_sim"],
                    cmap="viridis",
                    vmin=0,
                    vmax=1,
                    s=60,
                    edgecolors="k",
                    zorder=3,
                    label="simulated power (real recovery test)",
                )
                for x, y, pw in zip(s["n_cells"], s["delta"], s["power_sim"], strict=True):
                    ax.annotate(
                        f"{pw:.2f}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7
                    )
                fig.colorbar(sc, ax=ax, label="simulated power")
        ax.set_xscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel("ΔAUROC (noiseless effect)")
        lay = f" L{int(r['layer'])}" if pd.notna(r["layer"]) else ""
        ax.set_title(
            f"Detectability: {en}{lay} on {ref} ({ds}); α/m = {p.alpha:g}/{p.n_claims}", fontsize=9
        )
        ax.legend(fontsize=7, loc="upper right")
        figs[f"phase_{ds}_{en}_{ref}"] = fig
    return figs


def _summary(table: pd.DataFrame, p: DetectabilityParams) -> str:
    parts = []
    for r in table.itertuples():
        lay = f"/L{int(r.layer)}" if pd.notna(r.layer) else ""
        det = f"{r.detectable_delta:.3f}" if np.isfinite(r.detectable_delta) else "none < 0.5"
        need = (
            f"{r.cells_needed:,.0f}" if np.isfinite(r.cells_needed) else "∞ (reference too small)"
        )
        parts.append(
            f"{r.source}{lay} vs {r.reference} on {r.dataset} ({r.n_cells} cells): "
            f"detectable ΔAUROC {det}; cells for ΔAUROC {p.effect:g}: {need}"
        )
    return (
        f"With power {p.power:g} at α/m = {p.alpha:g}/{p.n_claims}: "
        + "; ".join(parts[:8])
        + ". A 'no evidence' for an effect below the detectable ΔAUROC says little."
    )


# ---------------------------------------------------------------------------- calibration
# Detectability makes no claim; its calibration checks the closed form it rests on: the
# recovery test it models, on planted binormal scores with the noise of 100 cells (per-cell
# noise ratio 100) on a hub-structured reference (150 genes). Null: ΔAUROC 0 (level);
# planted: ΔAUROC 0.05 and 0.1, whose rejection rate (simulated power, α = 0.05, m = 1) is
# to be compared with the closed-form power in the scenario's description.
_CAL: dict[str, Any] = dict(n_genes=150, n_cells=100, noise_ratio=100.0)


def _cal_pairs(seed: int):
    from scfm_audit.data._hub_reference import hub_reference
    from scfm_audit.evaluate._recovery import candidate_pairs

    ref = hub_reference(int(_CAL["n_genes"]), seed=seed, directed=True)
    return candidate_pairs(pd.Index([f"g{i}" for i in range(_CAL["n_genes"])]), ref)


def _cal_scenarios():
    from scfm_audit.analyses._calibration import Scenario

    pairs = _cal_pairs(0)
    ns = null_structure(pairs, seed=0)
    n1, n0 = pairs.n_pos, len(pairs) - pairs.n_pos
    out = [
        Scenario(
            "hub_null_delta_0",
            "null",
            "hub reference, planted ΔAUROC 0, 100 cells",
            truth=None,
            params={"delta": 0.0},
        )
    ]
    for d in (0.05, 0.1):
        pw = power_at_cells(
            d,
            _CAL["n_cells"],
            noise_ratio=_CAL["noise_ratio"],
            n_pos=n1,
            n_neg=n0,
            design_effect=ns["design_effect"],
            retention=ns["retention"],
            retention_sd=ns["retention_sd"],
        )
        out.append(
            Scenario(
                f"planted_delta_{d:g}",
                "planted",
                f"hub reference, planted ΔAUROC {d:g}, 100 cells (noise ratio 100); the "
                "rate is the simulated power: compare it with the mean of the closed "
                f"form's column power_closed (reference of seed 0: {pw:.2f})",
                strength=d,
                params={"delta": d},
            )
        )
    return out


def _cal_replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.evaluate._detectability import simulated_recovery
    from scfm_audit.evaluate._recovery import recovery_result

    pairs = _cal_pairs(seed)
    rng = np.random.default_rng(seed + 1)
    out = simulated_recovery(
        pairs,
        delta=sc.params["delta"],
        noise_ratio=_CAL["noise_ratio"],
        n_cells=_CAL["n_cells"],
        rng=rng,
        n_perm=199,
        n_boot=100,
    )
    ns = null_structure(pairs, seed=seed)
    pw = power_at_cells(
        sc.params["delta"],
        _CAL["n_cells"],
        noise_ratio=_CAL["noise_ratio"],
        n_pos=pairs.n_pos,
        n_neg=len(pairs) - pairs.n_pos,
        design_effect=ns["design_effect"],
        retention=ns["retention"],
        retention_sd=ns["retention_sd"],
    )
    return ReplicateOutcome.of(recovery_result(out), extra={"power_closed": pw})


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("detectability", _cal_scenarios())(_cal_replicate)


_register_calibration()
