"""The QC standard: a run's claims read as a short list of standards, one matrix of
standards × (model × dataset) that a reader sees first.

Each :class:`Standard` says what it means and what a failing answer implies, and maps
scorecard rows (:meth:`RunResult.verdicts`) onto itself by :class:`Rule` — an analysis
name and, where the analysis answers several claims, a pattern on the claim text. A rule
with ``invert=True`` reads a claim stated against the standard ("gene-level baseline
beats attention", "M's edges leak batch") and swaps its answer: yes ↔ opposite (no
evidence and n/a stay). The claim's effect and CI are kept as the claim states them
(not negated); ``standards.csv`` says which claims were inverted.

A cell with several claims (several references, sources or layers) is aggregated:

* the answered claims (yes / no evidence / opposite) decide; if they all agree, that is
  the cell's answer, otherwise the cell is **mixed** (the claims column lists each);
* a cell with claims but none answered is **n/a**;
* no claim at all: **not run**.

The cell's effect, CI and q are those of the claim with the smallest q among the claims
behind its answer (all claims for mixed).

Columns are the run's (model, dataset) pairs. Claims about a source without a model
(co-expression, gene-level baselines) stay in the claim list; only a run that audits no
model at all shows them, in one column per dataset under the model "no model". A claim
over several datasets ("a, b") counts in each of them; an analysis that answered no claim
(its n/a line has no model) marks its standards n/a in every column of its datasets.

``detectable at this size`` reads the ``detectability`` table (no claim): yes when the
run has the cells needed to detect the pre-declared effect with the stated power
(``power_at_effect ≥ power``), no evidence when it has fewer; its effect is the smallest
detectable ΔAUROC at the run's size.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import pandas as pd

#: the answers, best first for display; "mixed" and "not run" are the matrix's own
ANSWERS = ("yes", "no evidence", "not detected", "opposite", "n/a", "mixed", "not run")
ANSWERED = ("yes", "no evidence", "not detected", "opposite")
INVERT = {"yes": "opposite", "opposite": "yes"}
NO_MODEL = "no model"

#: one word per answer, for the terminal
WORD = {
    "yes": "yes",
    "no evidence": "no-evidence",
    "not detected": "not-detected",
    "opposite": "opposite",
    "n/a": "n/a",
    "mixed": "mixed",
    "not run": "not-run",
}


@dataclass(frozen=True)
class Rule:
    """Scorecard rows of ``analysis`` whose claim matches ``pattern`` (a regular
    expression, searched; None: every claim of the analysis); ``invert``: the claim is
    stated against the standard, its answer is swapped (yes ↔ opposite); ``failure``:
    the claim states a failure (leakage, miscalibration), so its "no evidence" reads "not
    detected" for the standard — the failure was looked for and not found at this size,
    which is what the standard asks (not a red "no evidence")."""

    analysis: str
    pattern: str | None = None
    invert: bool = False
    failure: bool = False

    def matches(self, analysis: str, claim: str) -> bool:
        if analysis != self.analysis:
            return False
        return self.pattern is None or re.search(self.pattern, claim or "") is not None

    def describe(self) -> str:
        out = self.analysis + (f" /{self.pattern}/" if self.pattern else "")
        return out + (" (inverted)" if self.invert else "")


@dataclass(frozen=True)
class Standard:
    id: str
    title: str
    short: str  # ≤ 24 characters, for the terminal
    meaning: str  # what it means and what a failing answer implies
    rules: tuple[Rule, ...] = ()
    table: str | None = None  # read from an analysis table instead of claims


STANDARDS: tuple[Standard, ...] = (
    Standard(
        "recovers_reference",
        "recovers reference networks",
        "recovers references",
        "The source's edge scores rank known regulatory / interaction edges above "
        "degree-matched random pairs; without it the edges carry no recoverable biology "
        "and nothing below is worth reading.",
        (Rule("grn_recovery"),),
    ),
    Standard(
        "beats_baselines",
        "attention beats gene-level baselines",
        "beats gene baselines",
        "Edge scores do better than scores built from single genes alone (expression, "
        "variance, degree); failing, the 'regulatory' signal is gene-level structure that "
        "needs no model.",
        (
            Rule("gene_level_null"),
            Rule("perturbation_prediction", r"^gene-level baseline\b.*\bbeats\b", invert=True),
        ),
    ),
    Standard(
        "beats_coexpression",
        "attention beats co-expression",
        "beats co-expression",
        "Attention carries signal beyond plain co-expression of the same cells; failing, "
        "the model's attention is a costly way to compute a correlation.",
        (
            Rule("attention_vs_coexpression"),
            Rule("perturbation_prediction", r"beats co-expression"),
        ),
    ),
    Standard(
        "incremental_value",
        "edges add value for responders",
        "adds value (responders)",
        "Edge scores improve the prediction of perturbation responders beyond gene-level "
        "features, out of fold; failing, edges do not help the task they are claimed for.",
        (Rule("incremental_value"),),
    ),
    Standard(
        "heads_causal",
        "regulatory heads are causally used",
        "heads causally used",
        "Ablating the heads read as regulatory degrades the model more than ablating "
        "random heads; failing, the heads' attention is read out, not used.",
        (Rule("head_ablation"),),
    ),
    Standard(
        "cssi_specific",
        "CSSI beats random strata",
        "CSSI > random strata",
        "Cell-state-specific scoring recovers more than the same scoring on random strata "
        "of the same sizes; failing, any stratification helps and 'cell state' adds "
        "nothing.",
        (Rule("cssi", r"random strata"),),
    ),
    Standard(
        "stable",
        "stable across halves",
        "stable across halves",
        "The top-k edges of two halves of the cells overlap beyond gene-level degree "
        "structure; failing, the edge list is noise at this number of cells.",
        (Rule("stability"),),
    ),
    Standard(
        "consistent",
        "consistent across contexts",
        "consistent (contexts)",
        "The same source's edges agree across datasets / cell types / donors beyond "
        "gene-level structure; failing, edges are context artefacts or noise.",
        (Rule("cross_context_consistency"),),
    ),
    Standard(
        "no_batch_leakage",
        "no batch leakage",
        "no batch leakage",
        "Batch cannot be predicted from the edges beyond within-cell-state chance; an "
        "'opposite' (the leakage claim holds) means edges encode batch and comparisons "
        "across batches are confounded.",
        (
            Rule("batch_leakage", r"^no batch leakage"),
            Rule("batch_leakage", r"\bleak", invert=True, failure=True),
        ),
    ),
    Standard(
        "calibrated",
        "calibrated on held-out perturbations",
        "calibrated",
        "Edge scores mapped to responder probabilities are calibrated on perturbations "
        "not used to fit the map; an 'opposite' (the miscalibration claim holds) means "
        "the scores cannot be read as probabilities.",
        (
            Rule("calibration", r"\bmiscalibrated\b", invert=True, failure=True),
            Rule("calibration", r"\bcalibrated\b"),
        ),
    ),
    Standard(
        "detectable",
        "detectable at this size",
        "detectable at this size",
        "The run has the cells to detect the pre-declared recovery effect with the stated "
        "power after BH (detectability's closed form); 'no evidence' here means too few "
        "cells, so a 'no evidence' elsewhere says little.",
        table="detectability",
    ),
)

BY_ID = {s.id: s for s in STANDARDS}
COLUMNS = [
    "standard",
    "title",
    "model",
    "dataset",
    "answer",
    "effect_name",
    "effect",
    "ci_low",
    "ci_high",
    "q",
    "n_claims",
    "inverted",
    "claims",
    "meaning",
]


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v == ""


def _datasets(v: Any) -> list[str]:
    if _missing(v):
        return []
    return [d.strip() for d in str(v).split(",") if d.strip()]


def _match(analysis: str, claim: str) -> tuple[Standard, Rule] | None:
    for s in STANDARDS:
        for r in s.rules:
            if r.matches(analysis, claim):
                return s, r
    return None


def _model_of_source(source: Any) -> str | None:
    m = re.search(r"\[([^\]]+)\]\s*$", str(source or ""))
    return m.group(1) if m else None


def _fnum(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _claim_items(scorecard: pd.DataFrame) -> list[dict[str, Any]]:
    """Scorecard rows mapped to standards (unmapped rows dropped)."""
    items = []
    for r in scorecard.to_dict("records"):
        hit = _match(str(r.get("analysis", "")), str(r.get("claim", "")))
        if hit is None:
            continue
        s, rule = hit
        answer = str(r.get("answer") or "n/a")
        items.append(
            {
                "standard": s.id,
                "model": None if _missing(r.get("model")) else str(r["model"]),
                "datasets": _datasets(r.get("dataset")),
                "answer": (
                    "not detected"
                    if rule.failure and answer == "no evidence"
                    else INVERT.get(answer, answer)
                    if rule.invert
                    else answer
                ),
                "claim_answer": answer,
                "inverted": rule.invert,
                "claim": str(r.get("claim", "")),
                "reference": None if _missing(r.get("reference")) else str(r["reference"]),
                "effect_name": "" if _missing(r.get("effect_name")) else str(r["effect_name"]),
                "effect": _fnum(r.get("effect")),
                "ci_low": _fnum(r.get("ci_low")),
                "ci_high": _fnum(r.get("ci_high")),
                "q": _fnum(r.get("q")),
                "placeholder": str(r.get("claim", "")).endswith(": no claim answered"),
                "below_detectable": str(r.get("power_note") or "").startswith("below"),
            }
        )
    return items


def _detectability_items(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    if table is None or len(table) == 0:
        return []
    items = []
    for r in table.to_dict("records"):
        power, at = _fnum(r.get("power")), _fnum(r.get("power_at_effect"))
        if math.isnan(at) or math.isnan(power):
            answer = "n/a"
        else:
            answer = "yes" if at >= power else "no evidence"
        layer = r.get("layer")
        where = f"{r.get('source')} on {r.get('reference')}" + (
            "" if _missing(layer) else f", layer {int(_fnum(layer))}"
        )
        items.append(
            {
                "standard": "detectable",
                "model": _model_of_source(r.get("source")),
                "datasets": _datasets(r.get("dataset")),
                "answer": answer,
                "claim_answer": answer,
                "inverted": False,
                "claim": f"{where}: power {at:.2f} at ΔAUROC {_fnum(r.get('effect')):g} "
                f"with {r.get('n_cells')} cells (needs {_fnum(r.get('cells_needed')):.0f})",
                "reference": r.get("reference"),
                "effect_name": "detectable ΔAUROC at n",
                "effect": _fnum(r.get("detectable_delta_at_n")),
                "ci_low": math.nan,
                "ci_high": math.nan,
                "q": math.nan,
                "placeholder": False,
            }
        )
    return items


def _columns(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (model, dataset) pairs, in order of first appearance; model-less claims only
    when the run has no model."""
    pairs: dict[tuple[str, str], None] = {}
    with_model = [i for i in items if i["model"] is not None and not i["placeholder"]]
    src = with_model or [i for i in items if not i["placeholder"]]
    for i in src:
        for d in i["datasets"]:
            pairs[(i["model"] or NO_MODEL, d)] = None
    return list(pairs)


def aggregate(answers: list[str]) -> str:
    """A cell's answer from its claims' answers (see the module docstring)."""
    if not answers:
        return "not run"
    answered = {a for a in answers if a in ANSWERED}
    if not answered:
        return "n/a"
    return answered.pop() if len(answered) == 1 else "mixed"


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.3g}"


def _claim_line(i: dict[str, Any]) -> str:
    est = _fmt(i["effect"])
    if est and not (math.isnan(i["ci_low"]) or math.isnan(i["ci_high"])):
        est += f" [{_fmt(i['ci_low'])}, {_fmt(i['ci_high'])}]"
    bits = [f"{i['claim']}: {i['claim_answer']}"]
    if i["inverted"]:
        bits.append(f"(inverted: {i['answer']})")
    if est:
        bits.append(f"{i['effect_name'] or 'effect'} {est}")
    if not math.isnan(i["q"]):
        bits.append(f"q={i['q']:.3g}")
    if i.get("below_detectable"):
        bits.append("(below the detectable size: 'no evidence' says little)")
    return " ".join(bits)


def standards_matrix(
    scorecard: pd.DataFrame, detectability: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per standard × (model, dataset): the aggregated answer, the effect, CI and
    q of the claim behind it, how many claims, whether any was inverted, and the claims
    themselves (``"; "``-joined). ``detectability``: the detectability analysis' table."""
    items = _claim_items(scorecard) + _detectability_items(detectability)
    cols = _columns(items)
    no_model_run = bool(cols) and all(m == NO_MODEL for m, _ in cols)
    rows = []
    for s in STANDARDS:
        mine = [i for i in items if i["standard"] == s.id]
        for model, ds in cols:
            cell = [
                i
                for i in mine
                if not i["placeholder"]
                and ds in i["datasets"]
                and (i["model"] == model or (no_model_run and i["model"] is None))
            ]
            if not cell:  # an analysis that answered nothing: n/a where it was asked
                cell = [i for i in mine if i["placeholder"] and ds in i["datasets"]]
            answer = aggregate([i["answer"] for i in cell])
            behind = [i for i in cell if i["answer"] == answer] or cell
            qs = [i for i in behind if not math.isnan(i["q"])]
            best = min(qs, key=lambda i: i["q"]) if qs else (behind[0] if behind else None)
            rows.append(
                {
                    "standard": s.id,
                    "title": s.title,
                    "model": model,
                    "dataset": ds,
                    "answer": answer,
                    "effect_name": best["effect_name"] if best else "",
                    "effect": best["effect"] if best else math.nan,
                    "ci_low": best["ci_low"] if best else math.nan,
                    "ci_high": best["ci_high"] if best else math.nan,
                    "q": best["q"] if best else math.nan,
                    "n_claims": len(cell),
                    "inverted": any(i["inverted"] for i in cell),
                    "claims": "; ".join(_claim_line(i) for i in cell),
                    "meaning": s.meaning,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


# ------------------------------------------------------------------ the terminal --
def _headers(pairs: list[tuple[Any, Any]], width: int, prefix: str) -> list[str]:
    """``prefix + model/dataset`` for each column, cut to ``width`` characters the same
    way for every column (one model, one dataset: one abbreviation); numbered columns
    (``#1``) when the cut names would collide."""
    ms, ds = [str(m) for m, _ in pairs], [str(d) for _, d in pairs]
    avail = width - len(prefix) - 1
    ml, dl = max(map(len, ms)), max(map(len, ds))
    if ml + dl > avail:
        dl = min(dl, max(avail // 2, avail - ml))
        ml = avail - dl
    out = [f"{prefix}{m[:ml]}/{d[:dl]}" for m, d in zip(ms, ds, strict=True)]
    if len(set(out)) < len(out):
        out = [f"{prefix}#{i + 1}" for i in range(len(pairs))]
    return out


def matrix_lines(
    matrix: pd.DataFrame, *, width: int = 100, colour: bool = False, prefix: str = ""
) -> list[str]:
    """The matrix as fixed-width text lines (at most ``width`` characters, more columns
    wrap into further blocks): one row per standard, one word per cell, headers
    ``model/dataset`` abbreviated. ``colour``: rich markup on the words."""
    if matrix is None or matrix.empty:
        return ["(no standards: the run answered no claim a standard reads)"]
    label_w = 24
    pairs = list(dict.fromkeys(zip(matrix["model"], matrix["dataset"], strict=True)))
    # cells 12 wide, wider (up to 20) when the full headers then still fit
    longest = max(len(prefix) + len(f"{m}/{d}") for m, d in pairs) + 1
    cell_w = max(12, min(longest, 20))
    if label_w + cell_w * len(pairs) > width:
        cell_w = 12
    heads = _headers(pairs, cell_w - 1, prefix)
    per_block = max((width - label_w) // cell_w, 1)
    look = {(r.standard, r.model, r.dataset): r.answer for r in matrix.itertuples()}
    colours = {
        "yes": "green",
        "opposite": "magenta",
        "no evidence": "red",
        "mixed": "yellow",
        "not detected": "cyan",
    }
    lines: list[str] = []
    for b in range(0, len(pairs), per_block):
        block = pairs[b : b + per_block]
        head = "standard".ljust(label_w) + "".join(
            heads[pairs.index(md)].ljust(cell_w) for md in block
        )
        lines += [head.rstrip(), "-" * min(width, label_w + cell_w * len(block) - 1)]
        for s in STANDARDS:
            if s.id not in set(matrix["standard"]):
                continue
            cells = []
            for m, d in block:
                a = look.get((s.id, m, d), "not run")
                w = WORD.get(a, a).ljust(cell_w)
                if colour and a in colours:
                    w = f"[{colours[a]}]{w}[/]"
                elif colour and a in ("n/a", "not run"):
                    w = f"[dim]{w}[/]"
                cells.append(w)
            lines.append((s.short[: label_w - 1].ljust(label_w) + "".join(cells)).rstrip())
        lines.append("")
    short = {}
    for (m, d), a in zip(pairs, heads, strict=True):
        if a != f"{prefix}{m}/{d}":
            short[a] = f"{prefix}{m} × {d}"
    if short:  # abbreviated headers: say what they stand for
        key = "; ".join(f"{a} = {full}" for a, full in short.items())
        lines += textwrap.wrap("columns: " + key, width=width, subsequent_indent="  ")
    else:
        lines = lines[:-1]
    if colour:
        from rich.markup import escape

        body = {s.short[: label_w - 1] for s in STANDARDS}
        lines = [x if x[:label_w].rstrip() in body else escape(x) for x in lines]
    return lines


def run_standards(run: Any, scorecard: pd.DataFrame | None = None) -> pd.DataFrame:
    """The standards matrix of a :class:`~scfm_audit.analyses._run.RunResult`
    (``scorecard``: its :meth:`verdicts`, when already computed)."""
    det = run.results.get("detectability")
    table = det.tables.get("detectability") if det is not None else None
    return standards_matrix(run.verdicts() if scorecard is None else scorecard, table)
