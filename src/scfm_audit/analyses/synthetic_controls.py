"""Analysis 19 — ``synthetic_controls``: the calibration harness inside an audit.

For every analysis with a registered calibration (see ``_calibration``): replicates of its
null scenarios (type-I error of its verdict test, Clopper–Pearson interval) and of its
planted scenarios (power), and the coverage of its CIs where the truth is known. Two
exact binomial tests per scenario enter the run's registry:

* null scenario — H0: the verdict test's type-I error is at most α (alternative: it
  over-rejects). The claim "over-rejects" should read ``no evidence``.
* planted scenario — H0: the rejection rate in the planted direction is at most α (the
  test has no power). The claim "detects" should read ``yes``.

With the default 40 replicates this is a smoke check (it detects gross miscalibration);
``benchmarks/calibration.py`` runs the full harness (≥ 200 replicates per scenario).
"""

from __future__ import annotations

import pandas as pd
from pydantic import Field

from scfm_audit.analyses._calibration import CALIBRATIONS, EXEMPT, calibrate
from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisParams,
    AnalysisResult,
    Unit,
    register_analysis,
)


class SyntheticControlsParams(AnalysisParams):
    analyses: list[str] | None = Field(
        None, description="analyses to calibrate (default: every calibrated analysis)"
    )
    scenarios: list[str] | None = Field(None, description="scenario names (default: all)")
    n_replicates: int = Field(40, ge=5, description="replicates per scenario")
    alpha: float = Field(0.05, gt=0, lt=1, description="level of each replicate's verdict test")


def _demo(*, quick: bool, models: bool) -> dict:
    """A smoke check inside the audit: one hub-structured null and the strongest planted
    effect per calibrated analysis (``benchmarks/calibration.py`` runs the full table)."""
    return {
        "synthetic_controls": {"n_replicates": 6 if quick else 10, "scenarios": _smoke_scenarios()}
    }


def _smoke_scenarios() -> list[str]:
    """Per calibrated analysis: its first hub-structured null and its strongest planted
    scenario."""
    names = []
    for a in CALIBRATIONS.names():
        if a in EXEMPT:
            continue
        sc = CALIBRATIONS.get(a).scenarios
        names.append(next(s.name for s in sc if s.kind == "null" and "hub" in s.name))
        planted = [s for s in sc if s.kind == "planted" and s.strength is not None]
        names.append(max(planted, key=lambda s: s.strength or 0.0).name)
    return names


@register_analysis(
    "synthetic_controls",
    description="calibration of every analysis on simulated nulls (type-I error) and planted "
    "effects (power), with CI coverage",
    params=SyntheticControlsParams,
    version="1.0",
    category="E. Quality control",
    reference="Calibration on simulated nulls and planted effects",
    quick={"n_replicates": 5, "scenarios": ["hub_null_directed_150", "planted_auroc_0.65"]},
    demo=_demo,
    self_contained=True,
    claims=(
        (
            "<analysis>: type-I error exceeds α on <null scenario> / detects the planted effect in <scenario>",
            "exact one-sided binomial test of the rejection rate against α over simulated replicates",
        ),
    ),
)
def run_synthetic_controls(ctx: AnalysisContext, p: SyntheticControlsParams) -> AnalysisResult:
    from dataclasses import replace

    from scfm_audit.plotting import forest_figure
    from scfm_audit.stats._tests import sign_test

    names = p.analyses or [n for n in CALIBRATIONS.names() if n not in EXEMPT]
    tables, replicates, figures = [], [], {}
    for name in names:
        cal = CALIBRATIONS.get(name)
        scen = [s.name for s in cal.scenarios if p.scenarios is None or s.name in p.scenarios]
        if not scen:
            continue
        df, reps = calibrate(
            name,
            n_replicates=p.n_replicates,
            seed=ctx.seed_for(name),
            alpha=p.alpha,
            scenarios=scen,
            progress=ctx.progress,
        )
        tables.append(df)
        replicates.append(reps)
        for r in df.itertuples():
            null = r.kind == "null"
            res = replace(
                sign_test(int(r.rejections), int(r.n), p0=p.alpha, alternative="greater"),
                test=f"exact binomial, {r.rejections}/{r.n} replicates rejected at "
                f"α = {p.alpha} (one-sided)",
                h0=f"the verdict test rejects at rate ≤ {p.alpha} "
                + ("(keeps its level)" if null else "(no power)"),
                null_name="binomial",
                effect_name="type-I error" if null else "power",
            )
            claim = (
                f"{name}: type-I error exceeds α on {r.scenario}"
                if null
                else f"{name}: detects the planted effect in {r.scenario}"
            )
            ctx.claim(
                res,
                Unit(method=name),
                claim=claim,
                hypothesis=f"{name} {'over-rejects on' if null else 'detects'} {r.scenario}",
                extra={"scenario": r.scenario},
            )
        figures[f"rates_{name}"] = forest_figure(
            df.assign(label=df["scenario"] + " (" + df["kind"] + ")"),
            label="label",
            effect="rate",
            ci_low="rate_low",
            ci_high="rate_high",
            ref=p.alpha,
            hue="kind",
            title=f"{name}: rejection rate per scenario (Clopper–Pearson 95%); α = {p.alpha}",
            xlabel="rejection rate (type-I error on nulls, power on planted effects)",
        )
        cov = df[df["coverage"].notna()]
        if len(cov):
            figures[f"coverage_{name}"] = forest_figure(
                cov,
                label="scenario",
                effect="coverage",
                ci_low="coverage_low",
                ci_high="coverage_high",
                ref=0.95,
                title=f"{name}: coverage of the 95% CI of the true value",
                xlabel="coverage",
            )
    # per-analysis comparison columns are absent elsewhere: align columns, then stack
    cols = list(dict.fromkeys(c for t in tables for c in t.columns))
    table = (
        pd.DataFrame(
            {c: [v for t in tables for v in t.get(c, [float("nan")] * len(t))] for c in cols}
        )
        if tables
        else pd.DataFrame()
    )
    notes = ["Runs on its own simulations; the run's datasets, references and models are not used."]
    if not tables:
        notes.append("No calibrated analysis was selected.")
    summary = (
        "; ".join(
            f"{r.analysis}/{r.scenario}: {'type-I' if r.kind == 'null' else 'power'} "
            f"{r.rejections}/{r.n} [{r.rate_low:.2f}, {r.rate_high:.2f}]"
            for r in table.itertuples()
        )
        if tables
        else "nothing calibrated"
    )
    return AnalysisResult(
        tables={"calibration": table, "replicates": pd.concat(replicates, ignore_index=True)}
        if tables
        else {},
        figures=figures,
        summary=f"Rejection rates at α = {p.alpha} over {p.n_replicates} replicates: {summary}.",
        notes=notes,
    )
