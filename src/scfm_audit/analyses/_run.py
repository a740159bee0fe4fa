"""What one run produced, and its scorecard: the result the runner hands to the report.

It lives below ``report/`` and ``pipeline/`` so the report renders it without importing the
layer that orchestrates runs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scfm_audit.analyses._contract import AnalysisResult, AnalysisSpec

#: a source's label without its layer / head ("attention[scgpt]/L3/H5" -> "attention[scgpt]")
_LAYERED = re.compile(r"(/L\d+)?(/H\d+)?$")


def power_notes(scorecard: pd.DataFrame, detectability: pd.DataFrame | None) -> pd.DataFrame:
    """``scorecard`` with ``detectable_effect`` and ``power_note`` on each "no evidence"
    answer of the recovery test (effect AUROC against a reference) for which the
    ``detectability`` analysis sized the same dataset, source, reference and layer.

    ``detectable_effect`` is the smallest ΔAUROC over the null's centre, as this run's
    estimate would show it, that the test finds with the stated power after BH;
    ``power_note`` says whether the run is below the size at which the pre-declared
    effect is detectable (then "no evidence" says little) or not. Other rows: NaN / "".
    """
    out = scorecard.copy()
    out["detectable_effect"] = float("nan")
    out["power_note"] = ""
    if detectability is None or detectability.empty or out.empty:
        return out
    det = detectability
    for i, r in out.iterrows():
        if r["answer"] != "no evidence" or r.get("effect_name") != "AUROC":
            continue
        if pd.isna(r.get("reference")) or pd.isna(r.get("method")) or pd.isna(r["dataset"]):
            continue
        base = _LAYERED.sub("", str(r["method"]))
        hit = det[
            (det["dataset"] == r["dataset"])
            & (det["reference"] == r["reference"])
            & (det["source"] == base)
        ]
        if not pd.isna(r.get("layer")) and hit["layer"].notna().any():
            hit = hit[hit["layer"] == r["layer"]]
        if hit.empty:
            continue
        d = hit.iloc[0]
        out.at[i, "detectable_effect"] = d["detectable_delta_at_n"]
        below = not (d["power_at_effect"] >= d["power"])
        out.at[i, "power_note"] = (
            f"{'below' if below else 'at or above'} the detectable size: with "
            f"{int(d['n_cells'])} cells this test finds ΔAUROC ≥ "
            f"{d['detectable_delta_at_n']:.3f} over its null's centre with power "
            f"{d['power']:.0%}; the pre-declared ΔAUROC {d['effect']:g} needs "
            f"{d['cells_needed']:.0f} cells"
        )
    return out


@dataclass
class RunResult:
    """Everything one run produced (also written to ``output``)."""

    config: Any  # the pipeline's AuditConfig
    output: Path
    specs: dict[str, AnalysisSpec]
    params: dict[str, Any]
    results: dict[str, AnalysisResult]
    tests: pd.DataFrame
    family_sensitivity: pd.DataFrame
    timings: dict[str, float]
    files: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    alpha: float = 0.05
    cache_hits: list[str] = field(default_factory=list)
    cache_misses: list[str] = field(default_factory=list)
    total_seconds: float | None = None
    #: models whose training log says they did not learn (name -> why): their claims are n/a
    unlearned_models: dict[str, str] = field(default_factory=dict)

    #: warnings raised while checking and computing (numpy / scipy RuntimeWarning,
    #: OptimizeWarning, ...): "Category: message" -> count; logged, not printed
    #: mid-progress, and in run.json
    warnings: dict[str, int] = field(default_factory=dict)
    #: figures already drawn as PNG, by analysis and figure name: bytes, or a future of
    #: them while a process beside the run draws them (the runner's; empty otherwise)
    pngs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    #: analyses that ran in the process beside the run (their seconds overlap the others')
    ran_beside: list[str] = field(default_factory=list)

    def _claim_rows(self) -> pd.DataFrame:
        """Scorecard rows, one per claim, answered by
        :func:`scfm_audit.stats._verdict.answer_claims`: the four-valued answer from the
        claim's one test, with q from BH over the run's claim tests only, the tested side
        against the null's own centre, n/a where the test cannot reach α; the estimate
        with its CI, the layer it rests on and why."""
        from scfm_audit.stats._verdict import answer_claims

        rows = []
        for name, res in self.results.items():
            for v in res.verdicts:
                rec = v.record
                model = v.model or rec.model
                unlearned = self.unlearned_models.get(model or "")
                rows.append(
                    {
                        "analysis": name,
                        "claim": v.claim,
                        "model": model,
                        "dataset": v.dataset or rec.dataset,
                        "reference": rec.reference,
                        "claimed": v.direction,
                        # nothing learned: attention says nothing, whatever its test says
                        "p": float("nan") if unlearned else rec.p,
                        "reason": unlearned or v.reason or str(rec.extra.get("reason") or ""),
                        "effect_name": rec.effect_name,
                        "effect": rec.effect,
                        "ci_low": rec.ci_low,
                        "ci_high": rec.ci_high,
                        "null_value": rec.null_value,
                        "p_greater": rec.p_greater,
                        "p_less": rec.p_less,
                        "p_floor": rec.p_floor,
                        "direction": rec.direction,
                        "layer": rec.layer,
                        "layer_choice": v.layer_choice,
                        "test": rec.test,
                        "null_name": rec.null_name,
                        "method": rec.method,
                    }
                )
        cols = [
            "analysis",
            "claim",
            "model",
            "dataset",
            "reference",
            "answer",
            "reason",
            "q",
            "p",
            "effect_name",
            "effect",
            "ci_low",
            "ci_high",
            "null_value",
            "side",
            "claimed",
            "p_floor",
            "q_at_floor",
            "layer",
            "layer_choice",
            "test",
            "null_name",
            "method",
            "detectable_effect",
            "power_note",
        ]
        if not rows:
            return pd.DataFrame(columns=cols)
        answered = answer_claims(pd.DataFrame(rows), alpha=self.alpha)
        return power_notes(answered, self._detectability())[cols]

    def _detectability(self) -> pd.DataFrame | None:
        res = self.results.get("detectability")
        return None if res is None else res.tables.get("detectability")

    def verdicts(self) -> pd.DataFrame:
        """The claims' scorecard rows (:meth:`RunResult.verdicts`), a claim over several
        datasets naming them (not "None"), and one ``n/a`` line with the reason for each
        requested analysis that answered no claim (it failed, or evaluated nothing)."""
        sc = self._claim_rows()
        if len(sc):
            missing = sc["dataset"].isna()
            if missing.any():
                sc.loc[missing, "dataset"] = [self._datasets_of(a) for a in sc["analysis"][missing]]
        extra = self._unanswered()
        if not extra:
            return sc
        rows = pd.DataFrame(extra).reindex(columns=sc.columns)
        return pd.concat([sc, rows], ignore_index=True) if len(sc) else rows

    def _datasets_of(self, name: str) -> str | None:
        """The datasets an analysis spans (for a claim over several, e.g. contexts)."""
        p = self.params.get(name)
        if p is None or "datasets" not in type(p).model_fields:
            return None  # an analysis that reads no dataset (synthetic_controls)
        names = list(p.datasets or self.config.datasets)
        return ", ".join(names) if names else None

    def _unanswered(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.params:
            res = self.results.get(name)
            if res is not None and res.verdicts:
                continue
            spec = self.specs.get(name)
            if name not in self.errors and spec is not None and spec.no_claims:
                continue  # a planning tool answers no claim by design
            if name in self.errors:
                reason = f"the analysis failed: {self.errors[name]}"
            else:
                notes = "; ".join(res.notes[:2]) if res is not None and res.notes else ""
                reason = "it evaluated nothing" + (
                    f": {notes}" if notes else " (see its section of the report)"
                )
            rows.append(
                {
                    "analysis": name,
                    "claim": f"{name}: no claim answered",
                    "model": None,
                    "dataset": self._datasets_of(name),
                    "reference": None,
                    "answer": "n/a",
                    "reason": reason,
                    "q": float("nan"),
                    "p": float("nan"),
                    "effect_name": "",
                    "effect": float("nan"),
                    "ci_low": float("nan"),
                    "ci_high": float("nan"),
                    "null_value": float("nan"),
                    "layer": None,
                    "layer_choice": "",
                    "test": "",
                    "null_name": "",
                }
            )
        return rows
