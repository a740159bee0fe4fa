"""Analysis 17 — ``calibration``: edge scores as probabilities that a candidate responds.

Per dataset × edge source (head-pooled; a layered source at ``verdict_layer``, fixed a
priori, every layer in the table): the rows are (perturbation, candidate) pairs of the
perturbation analyses (:func:`~scfm_audit.analyses._perturbation_common.candidate_table`:
responders from the shared, cached DE of ``perturbation_responders``; the score is the
edge perturbed gene → candidate, |score| by default). Perturbations are the units: the
rows are split **by perturbation** (``GroupShuffleSplit``) into

* ``fit`` — the probability maps are fitted here: Platt (logistic regression on the
  score) and isotonic regression;
* ``calibrate`` — the split-conformal threshold (nonconformity 1 − p̂(true class));
* ``test`` — everything reported: expected calibration error (``bins`` equal-width
  bins), Brier score with Murphy's decomposition (reliability, resolution, uncertainty),
  the reliability diagram, and the conformal sets' empirical coverage against the
  nominal ``conformal_level`` (binomial test, descriptive: rows of a perturbation are
  dependent).

Claim (one scorecard line per dataset × source): "<source>'s calibrated scores are
miscalibrated on held-out perturbations". Test
(:func:`~scfm_audit.evaluate._calibration_metrics.spiegelhalter_test`): per test
perturbation the sums of ``y − p`` (observed − expected) and Spiegelhalter's
``(y − p)(1 − 2p)`` for the ``verdict_map`` (isotonic by default) probabilities;
Hotelling's T² of their mean over the G test perturbations (perturbations independent,
rows within one perturbation free to be dependent), covariance = sample covariance / G +
the map's own estimation covariance (maps refitted on ``n_boot`` perturbation-bootstrap
resamples of the fit split), ``T² (G − 2) / (2 (G − 1)) ~ F(2, G − 2)``. H0: the
map-fitting procedure gives probabilities that are perfectly calibrated on new
perturbations (E[responder | p] = p); one-sided on T² (direction "greater":
miscalibration in any direction), continuous reference (floor 0). The other map's test
is descriptive.

How the scorecard reads it: the natural test rejects on MIScalibration, so **"yes" =
miscalibrated** (the QC standard "calibrated" FAILS); "no evidence" = no detectable
miscalibration at this number of test perturbations (the standard passes, with the
power caveat); "opposite" cannot occur (one-sided). Too few perturbations for three
splits (``min_perturbations``): n/a with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import (
    AnalysisContext,
    AnalysisResult,
    Unit,
    register_analysis,
    source_label,
)
from scfm_audit.analyses._perturbation_common import ResponderParams, candidate_table
from scfm_audit.evaluate._calibration_metrics import (
    SPIEGELHALTER_H0,
    brier_decomposition,
    conformal_sets,
    expected_calibration_error,
    fit_maps,
    perturbation_splits,
    reliability_table,
    spiegelhalter_terms,
    spiegelhalter_test,
)

MAPS = ("platt", "isotonic")


class CalibrationParams(ResponderParams):
    datasets: list[str] | None = Field(None, description="datasets to use (default: all)")
    edges: list[str] | None = Field(None, description="edge sources (default: all)")
    score_transform: Literal["abs", "raw"] = Field(
        "abs", description="'abs': magnitude of edge scores; 'raw': as is"
    )
    fractions: tuple[float, float, float] = Field(
        (0.4, 0.3, 0.3), description="shares of perturbations: fit / calibrate / test"
    )
    bins: int = Field(10, ge=2, description="equal-width bins of ECE, Brier decomposition")
    conformal_level: float = Field(0.9, gt=0, lt=1, description="nominal conformal coverage")
    verdict_map: Literal["isotonic", "platt"] = Field(
        "isotonic", description="probability map behind the scorecard answer"
    )
    verdict_layer: int = Field(
        -1, description="layer of a layered source behind the claim (index, a priori)"
    )
    n_boot: int = Field(
        200,
        ge=0,
        description="perturbation-bootstrap refits of the maps (their spread "
        "enters the calibration test's variance)",
    )
    min_perturbations: int = Field(
        6, ge=3, description="fewer perturbations with a responder: the claim is n/a"
    )


def _demo(*, quick: bool, models: bool) -> dict:
    """On ``sim``: every source's scores mapped to responder probabilities (~3 s each;
    50 bootstrap refits of the maps)."""
    return {"calibration": {"datasets": ["sim"], "n_boot": 50}}


_TEST = "calibration T² clustered by perturbation"


@register_analysis(
    "calibration",
    description="edge scores mapped to P(candidate responds) with splits by perturbation "
    "(fit / calibrate / test): ECE, Brier decomposition, Platt and isotonic maps, "
    "split-conformal sets with empirical coverage; perturbation-clustered Spiegelhalter "
    "test on held-out perturbations",
    params=CalibrationParams,
    version="1.0",
    category="E. Quality control",
    reference="SPEC catalogue 17 (calibration)",
    quick={"n_boot": 20},
    demo=_demo,
    claims=(
        (
            "<source>'s calibrated scores are miscalibrated on held-out perturbations",
            "Hotelling's T² over held-out perturbations of the per-perturbation calibration "
            "residuals of the isotonic map (observed − expected and Spiegelhalter's term), the "
            "map's own fitting error added by bootstrap refits (H0: the mapping procedure gives "
            "calibrated probabilities on new perturbations), one-sided; 'yes' = miscalibrated",
        ),
    ),
)
def run_calibration(ctx: AnalysisContext, p: CalibrationParams) -> AnalysisResult:
    from scfm_audit.plotting import reliability_figure

    metric_rows, rel_rows, conf_rows, notes, curves = [], [], [], [], {}
    for ds in p.datasets or ctx.dataset_names():
        spec = ctx.dataset_spec(ds)
        for en in p.edges or ctx.edge_names():
            sets = [s for s in ctx.edge_scores(en, ds) if s.head is None]
            if not sets:
                notes.append(f"{ds}/{en}: no score sets; not evaluated.")
                continue
            claim = (
                f"{source_label(sets[0])}'s calibrated scores are miscalibrated on "
                "held-out perturbations"
            )
            if spec.perturbation is None:
                ctx.not_assessable(
                    Unit.of(sets[0], ds),
                    claim=claim,
                    reason="the dataset has no perturbation column",
                    test=_TEST,
                    h0=SPIEGELHALTER_H0,
                )
                notes.append(f"{ds}: no perturbations; calibration not assessable.")
                continue
            cand = candidate_table(ctx, ds, p, edges=[en])
            notes.extend(f"{ds}/{en}: {e}" for e in cand.excluded)
            rows = cand.rows
            layered = sorted({s.layer for s in sets if s.layer is not None})
            claim_layer = layered[p.verdict_layer] if layered else None
            groups = (rows["arm"].astype(str) + ":" + rows["perturbation"].astype(str)).to_numpy()
            for col, info in cand.scores.items():
                es = next(s for s in sets if s.label == info["label"])
                s = rows[col].to_numpy(float)
                s = np.abs(s) if p.score_transform == "abs" else s
                ok = np.isfinite(s)
                y = rows["responder"].to_numpy(bool)
                out = assess(
                    s[ok],
                    y[ok],
                    groups[ok],
                    fractions=p.fractions,
                    bins=p.bins,
                    level=p.conformal_level,
                    n_boot=p.n_boot,
                    seed=ctx.seed_for(ds, en),
                )
                where = {
                    "dataset": ds,
                    "edges": en,
                    **{k: v for k, v in es.meta().items() if k != "dataset"},
                }
                is_claim = es.layer == claim_layer
                if out is None:
                    why = (
                        f"fewer than {p.min_perturbations} perturbations with a responder "
                        "or no responder in a split"
                    )
                    notes.append(f"{ds}/{es.label}: {why}; not evaluated.")
                    if is_claim:
                        ctx.not_assessable(
                            Unit.of(es, ds),
                            claim=claim,
                            reason=why,
                            test=_TEST,
                            h0=SPIEGELHALTER_H0,
                        )
                    continue
                if out["n_perturbations"] < p.min_perturbations:
                    why = (
                        f"{out['n_perturbations']} perturbations with a responder "
                        f"(< {p.min_perturbations})"
                    )
                    notes.append(f"{ds}/{es.label}: {why}; not evaluated.")
                    if is_claim:
                        ctx.not_assessable(
                            Unit.of(es, ds),
                            claim=claim,
                            reason=why,
                            test=_TEST,
                            h0=SPIEGELHALTER_H0,
                        )
                    continue
                for m in MAPS:
                    metric_rows.append({**where, "map": m, **out["metrics"][m]})
                    rel_rows.append(out["reliability"][m].assign(map=m, **where))
                conf_rows.append({**where, **out["conformal"]})
                for m in MAPS:
                    res = out["tests"][m]
                    hyp = (
                        f"{m}-mapped {es.label} probabilities are miscalibrated on "
                        "held-out perturbations"
                    )
                    if is_claim and m == p.verdict_map:
                        why = (
                            (f"layer {es.layer} fixed a priori (verdict_layer: {p.verdict_layer})")
                            if es.layer is not None
                            else ""
                        )
                        ctx.claim(
                            res,
                            Unit.of(es, ds),
                            claim=claim,
                            direction="greater",
                            hypothesis=hyp,
                            layer_choice=why,
                        )
                    else:
                        ctx.describe(res, Unit.of(es, ds), hypothesis=hyp)
                ctx.describe(
                    out["coverage_test"],
                    Unit.of(es, ds),
                    hypothesis=f"split-conformal sets of {es.label} cover at "
                    f"the nominal {p.conformal_level:g}",
                )
                if is_claim:
                    curves[f"{ds}: {es.label}"] = pd.concat(
                        [out["reliability"][m].assign(map=m) for m in MAPS], ignore_index=True
                    )
    metrics = pd.DataFrame(metric_rows)
    tables = {
        "calibration": metrics
        if not metrics.empty
        else pd.DataFrame({"note": notes or ["nothing evaluated"]})
    }
    if rel_rows:
        tables["reliability"] = pd.concat(rel_rows, ignore_index=True)
    if conf_rows:
        tables["conformal"] = pd.DataFrame(conf_rows)
    figures = {}
    if curves:
        figures["reliability"] = reliability_figure(
            curves, title=f"reliability on held-out perturbations ({p.bins} bins)"
        )
    return AnalysisResult(tables=tables, figures=figures, summary=_summary(metrics, p), notes=notes)


def assess(
    score: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    fractions=(0.4, 0.3, 0.3),
    bins: int = 10,
    level: float = 0.9,
    seed: int,
    n_boot: int = 200,
    distort=None,
) -> dict | None:
    """The whole kernel on one score vector: splits by perturbation (``groups``), maps
    fitted on ``fit``, conformal threshold on ``calibrate``, metrics and tests on
    ``test``. Only perturbations with at least one responder enter. ``n_boot``: maps
    refitted on perturbation-bootstrap resamples of the fit split (their spread enters
    the test's variance, see :func:`spiegelhalter_test`). ``distort`` (tests
    and calibration only): a function applied to the mapped test probabilities (a planted
    miscalibration). None when a split has no responder or one class."""
    from scfm_audit.stats._tests import StatTestResult

    y = np.asarray(y, bool)
    groups = np.asarray(groups)
    has = pd.Series(y).groupby(groups).transform("any").to_numpy(bool)
    score, y, groups = np.asarray(score, float)[has], y[has], groups[has]
    G = len(np.unique(groups))
    if G < 3:
        return None
    sp = perturbation_splits(groups, fractions=fractions, seed=seed)
    if any(len(np.unique(y[m])) < 2 for m in sp.values()):
        return None
    maps = fit_maps(score[sp["fit"]], y[sp["fit"]])
    t, c = sp["test"], sp["calibrate"]
    map_var = _map_variance(
        score, y, groups, sp["fit"], t, n_boot=n_boot, seed=seed, distort=distort
    )
    out: dict[str, Any] = {"metrics": {}, "reliability": {}, "tests": {}, "n_perturbations": G}
    for m, f in maps.items():
        pt = f(score[t])
        if distort is not None:
            pt = distort(pt)
        b = brier_decomposition(pt, y[t], bins=bins)
        out["metrics"][m] = {
            "n_test_perturbations": len(np.unique(groups[t])),
            "n_test_rows": int(t.sum()),
            "responder_rate": float(y[t].mean()),
            "ece": expected_calibration_error(pt, y[t], bins=bins),
            **b,
        }
        out["reliability"][m] = reliability_table(pt, y[t], bins=bins)
        out["tests"][m] = spiegelhalter_test(pt, y[t], groups[t], map_cov=map_var[m], what=m)
    f = maps["isotonic"]
    conf = conformal_sets(f(score[c]), y[c], f(score[t]), y[t], level=level)
    out["conformal"] = {"level": level, **conf}
    out["coverage_test"] = StatTestResult(
        statistic=conf["coverage"],
        p=conf["p_binomial"],
        effect=conf["coverage"],
        n=conf["n_test"],
        test="exact binomial test of conformal coverage (rows as independent: descriptive)",
        statistic_name="coverage",
        effect_name="coverage",
        alternative="two-sided",
        null_value=level,
        h0=f"the conformal sets cover the true label with probability {level:g}",
        null_name="binomial at the nominal level",
    )
    return out


def _map_variance(score, y, groups, fit, test, *, n_boot: int, seed: int, distort) -> dict:
    """Per map, the covariance of the mean per-perturbation sums (observed − expected,
    Spiegelhalter's) on the test perturbations over maps refitted
    on ``n_boot`` bootstrap resamples of the fit perturbations (0 when ``n_boot`` is 0)."""
    rng = np.random.default_rng([seed, 11])
    fg = groups[fit]
    ug = np.unique(fg)
    rows_of = {g: np.flatnonzero(fit & (groups == g)) for g in ug}
    means: dict[str, list[np.ndarray]] = {m: [] for m in MAPS}
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[g] for g in rng.choice(ug, len(ug), replace=True)])
        if len(np.unique(y[idx])) < 2:
            continue
        for m, f in fit_maps(score[idx], y[idx]).items():
            pt = f(score[test])
            pt = distort(pt) if distort is not None else pt
            means[m].append(spiegelhalter_terms(pt, y[test], groups[test]).mean(0))
    return {
        m: np.cov(np.array(v), rowvar=False) if len(v) > 2 else np.zeros((2, 2))
        for m, v in means.items()
    }


def _summary(metrics: pd.DataFrame, p: CalibrationParams) -> str:
    if metrics.empty:
        return "No source could be calibrated (see notes)."
    sub = metrics[metrics["map"] == p.verdict_map]
    parts = [
        f"{r.dataset}/{r.label}: ECE {r.ece:.3f}, Brier {r.brier:.3f} "
        f"(reliability {r.reliability:.4f})"
        for r in sub.head(6).itertuples()
    ]
    return (
        f"{p.verdict_map.capitalize()}-mapped probabilities on held-out "
        "perturbations — " + "; ".join(parts) + "."
    )


# ---------------------------------------------------------------------------- calibration
# Simulated screens of perturbation_prediction's calibration: score = rank-normal |true
# log2 FC| + N(0, 1). Nulls: exchangeable perturbations (the isotonic map learned on the
# fit split is calibrated on the test split), and the hub screen (responders concentrated
# on 12 hub TFs' targets among highly expressed genes). Planted: the mapped test
# probabilities distorted by a known monotone map, logit p → logit p + δ (over-
# prediction) with δ = 1 and 2. (A logit scaling γ · logit p, γ = 2 or 3, was found only
# in ~1 of 8 replicates: the test perturbations' responder rates are ~5 %, where the
# scaling moves few expected responders.)
# `python benchmarks/calibration.py --analyses calibration --nulls 200 --planted 100`
# (seed 0, 278 s; 50 bootstrap refits per replicate): rejection rate with Clopper-Pearson
# 95 % — exchangeable null 0.005 [0.000, 0.028] (Platt map: 0.055), hub null 0.005
# [0.000, 0.028] (Platt: 0.005), planted shift 1: 0.49 [0.39, 0.59] (Platt 0.58), shift 2:
# 0.93 [0.86, 0.97] (Platt 0.95). The isotonic claim is conservative: the bootstrap spread
# of an isotonic fit on ~24 perturbations is wide.


#: a larger screen than perturbation_prediction's (60 TF perturbations: ~18 test
#: perturbations); with 24 the map's own uncertainty (fitted on ~10) leaves little power
BIG = {"n_genes": 200, "n_tfs": 60, "n_perturbations": 60}


def _scenarios():
    from scfm_audit.analyses._calibration import Scenario
    from scfm_audit.analyses.perturbation_prediction import CAL_HUB

    out = [
        Scenario(
            "calibration_exchangeable_null",
            "null",
            "score = signal + N(0, 1); isotonic map fitted on other perturbations",
            params={"sim": BIG},
        ),
        Scenario(
            "calibration_hub_null",
            "null",
            "responders concentrated on 12 hub TFs' "
            "targets (highly expressed); score = signal + N(0, 1)",
            params={"sim": CAL_HUB},
        ),
    ]
    for d in (1.0, 2.0):
        out.append(
            Scenario(
                f"calibration_planted_logit_shift_{d:g}",
                "planted",
                f"test probabilities distorted: logit p → logit p + {d:g}",
                strength=d,
                params={"sim": BIG, "shift": d},
            )
        )
    return out


def distortion(shift: float):
    """The planted miscalibration: ``logit p → logit p + shift`` (monotone)."""
    from scipy.special import expit, logit

    return lambda q: expit(logit(np.clip(q, 1e-3, 1 - 1e-3)) + shift)


def _replicate(sc, seed: int):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.analyses.perturbation_prediction import calibration_screen

    rows = calibration_screen(sc.params["sim"], seed)
    rng = np.random.default_rng([seed, 3])
    s = rows["signal"].to_numpy() + rng.normal(size=len(rows))
    groups = (rows["arm"] + ":" + rows["perturbation"]).to_numpy()
    d = sc.params.get("shift")
    out = assess(
        s,
        rows["responder"].to_numpy(bool),
        groups,
        seed=seed,
        n_boot=50,
        distort=distortion(d) if d else None,
    )
    if out is None:
        return ReplicateOutcome(p=np.nan, estimate=np.nan, null_value=1.0)
    res = out["tests"]["isotonic"]
    conf = out["conformal"]
    return ReplicateOutcome.of(
        res,
        extra={
            "p_platt": out["tests"]["platt"].p,
            "ece": out["metrics"]["isotonic"]["ece"],
            "coverage": conf["coverage"],
        },
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("calibration", _scenarios())(_replicate)


_register_calibration()
