"""``scfm-audit compare RUN_A RUN_B``: two run folders side by side, standard by standard,
the claims whose answers differ, and a descriptive test of each matched claim's effect
difference; ``compare.html`` is a small self-contained page (no script).

Matching. Standards match on (standard, model, dataset); when the runs audit one model
each and the models differ (two models on the same data), on (standard, dataset); when
they cover one dataset each and the datasets differ, on (standard, model). Claims match on
(analysis, claim text, reference, dataset, model); when the runs share no model, on the
claim text with the row's model name replaced by ``<model>`` and without the model; the
dataset is dropped from the key when the runs share none.

The difference test: z = (e_A − e_B) / √(se_A² + se_B²), se = (CI high − CI low) / (2 ×
1.96), each CI read as a normal 95% interval, the runs taken as independent; two-sided p.
Two runs on the same cells are not independent (their estimates correlate, usually
positively, which makes this z conservative), and asymmetric CIs are only approximately
normal: the test is descriptive, not a claim.

The paired test, where the same edges were scored: for each matched recovery claim (AUROC
against the same reference on the same dataset), both runs' scores of the claimed source
and layer — read from each run's artifact cache, never recomputed — on the candidate
pairs of the genes both scored; ΔAUROC = AUROC_A − AUROC_B with a two-way vertex bootstrap
(:func:`~scfm_audit.evaluate._pairwise.paired_vertex_bootstrap`: both AUROCs under the
same gene draws, so the edges' dependence through shared hub genes and the runs'
correlation are both kept), percentile CI, and the two-sided p by inverting the bootstrap
intervals (H0: ΔAUROC = 0). Descriptive too: the comparison is not one of either run's
claims.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from scfm_audit._io import atomic_write_text
from scfm_audit.report._standards import STANDARDS, standards_matrix

if TYPE_CHECKING:
    from scfm_audit.data._network import ReferenceNetwork
    from scfm_audit.edges._scores import EdgeScores

Z95 = 1.959963984540054
TEST_NOTE = (
    "Δ = effect A − effect B; z from the two 95% CIs' normal approximation (se = CI width "
    "/ 3.92), assuming independent runs; two runs on the same cells are not independent, "
    "so z and p are descriptive (conservative when the estimates correlate positively)."
)


class NotARunError(ValueError):
    """The folder is not a run's output (a file every run writes is missing)."""


@dataclass
class RunTables:
    folder: Path
    scorecard: pd.DataFrame
    standards: pd.DataFrame


def _read_csv(path: Path) -> pd.DataFrame:
    # "n/a" is an answer, not a missing value
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def load_run(folder: str | Path) -> RunTables:
    """A run folder's scorecard and standards (computed from the scorecard, and the
    detectability table if any, when ``standards.csv`` predates it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotARunError(f"{folder} is not a run folder: no such directory")
    sc_path = folder / "scorecard.csv"
    if not sc_path.is_file():
        raise NotARunError(
            f"{folder} is not a run folder: {sc_path.name} is missing "
            "(every `scfm-audit run` / `demo` writes it)"
        )
    scorecard = _read_csv(sc_path)
    std_path = folder / "standards.csv"
    if std_path.is_file():
        standards = _read_csv(std_path)
    else:
        det = folder / "tables" / "detectability__detectability.csv"
        standards = standards_matrix(scorecard, _read_csv(det) if det.is_file() else None)
    return RunTables(folder, scorecard, standards)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v == ""


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _norm_claim(claim: Any, model: Any) -> str:
    text = str(claim)
    if not _missing(model):
        text = re.sub(re.escape(str(model)), "<model>", text)
    return text


def _key_dims(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    ma, mb = set(a["model"].astype(str)), set(b["model"].astype(str))
    da, db = set(a["dataset"].astype(str)), set(b["dataset"].astype(str))
    dims = ["model", "dataset"]
    if len(ma) == 1 and len(mb) == 1 and ma != mb:
        dims.remove("model")
    if len(da) == 1 and len(db) == 1 and da != db:
        dims.remove("dataset")
    return dims


def diff_test(ea: float, la: float, ha: float, eb: float, lb: float, hb: float) -> dict:
    """Δ, z and two-sided p from two estimates with 95% CIs (see the module docstring)."""
    vals = [ea, la, ha, eb, lb, hb]
    if any(math.isnan(v) for v in vals):
        return {"delta": ea - eb, "z": math.nan, "p_diff": math.nan}
    se = math.hypot((ha - la) / (2 * Z95), (hb - lb) / (2 * Z95))
    if se <= 0:
        return {"delta": ea - eb, "z": math.nan, "p_diff": math.nan}
    z = (ea - eb) / se
    return {"delta": ea - eb, "z": z, "p_diff": math.erfc(abs(z) / math.sqrt(2))}


PAIRED_NOTE = (
    "Paired: ΔAUROC on the candidate pairs of the genes both runs scored, two-way vertex "
    "bootstrap (same gene draws for A and B) percentile CI, p from inverting the bootstrap "
    "intervals (H0: ΔAUROC = 0); descriptive, scores read from each run's cache."
)


class RunScores(Protocol):
    """What the paired test reads of a finished run: its cached score sets and its
    references (:func:`scfm_audit.pipeline._runner.finished_run_scores` provides them; the
    report sits below the pipeline and does not build them itself)."""

    def source(self, dataset: str, label: str) -> EdgeScores | None:
        """The cached pooled score set labelled ``label`` on ``dataset``, or None."""
        ...

    def reference(self, name: str) -> ReferenceNetwork | None:
        """Reference ``name`` of the run's config, or None when it has none."""
        ...


#: a finished run's folder -> its scores (None: no resolved config or no cache)
ScoresOf = Callable[[Path], "RunScores | None"]


def paired_recovery_test(
    es_a: Any, es_b: Any, reference: Any, *, n_boot: int = 999, seed: int = 0
) -> dict[str, float]:
    """ΔAUROC (A − B) of two score sets on the same candidate pairs of ``reference`` (the
    genes both scored), its two-way vertex-bootstrap percentile 95% CI and two-sided p
    (H0: equal AUROC; see the module docstring)."""
    import numpy as np

    from scfm_audit.evaluate._pairwise import bootstrap_p, paired_vertex_bootstrap
    from scfm_audit.evaluate._recovery import (
        auroc_from_ranks,
        candidate_pairs,
        nan_lowest_ranks,
        pair_scores,
    )

    genes = es_a.genes.intersection(es_b.genes, sort=False)
    pairs = candidate_pairs(genes, reference)
    nan = float("nan")
    out = {"delta": nan, "ci_low": nan, "ci_high": nan, "p": nan, "n_pairs": len(pairs)}
    out["n_pos"] = pairs.n_pos
    if pairs.n_pos == 0 or pairs.n_pos == len(pairs):
        return out
    sa = pair_scores(es_a.subset(genes), pairs)
    sb = pair_scores(es_b.subset(genes), pairs)
    ya = auroc_from_ranks(nan_lowest_ranks(sa), pairs.label)
    yb = auroc_from_ranks(nan_lowest_ranks(sb), pairs.label)
    draws = paired_vertex_bootstrap({"a": sa, "b": sb}, pairs, n_boot=n_boot, seed=seed)
    d = (draws["a"] - draws["b"]).to_numpy()
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return out
    p, _ = bootstrap_p(d, 0.0)
    lo, hi = np.quantile(d, [0.025, 0.975])
    out.update(delta=ya - yb, ci_low=float(lo), ci_high=float(hi), p=p)
    return out


def paired_tests(
    a: RunTables,
    b: RunTables,
    matched: pd.DataFrame,
    scores_of: ScoresOf | None,
    *,
    n_boot: int = 999,
    seed: int = 0,
) -> pd.DataFrame:
    """The paired test of every matched recovery claim (``matched``: merged scorecard rows
    with ``_a`` / ``_b`` suffixes) whose two runs scored the same dataset against the same
    reference and left the claimed source's scores in their caches."""
    cols = [
        "analysis",
        "claim",
        "dataset",
        "reference",
        "source_a",
        "source_b",
        "delta",
        "ci_low",
        "ci_high",
        "p",
        "n_pairs",
        "n_pos",
    ]
    need = {"method_a", "method_b", "effect_name_a"}
    if "dataset" in matched.columns:  # matched on the dataset: one name for both runs
        matched = matched.assign(dataset_a=matched["dataset"], dataset_b=matched["dataset"])
    if matched.empty or not need <= set(matched.columns):
        return pd.DataFrame(columns=cols)
    rows_ = matched[
        (matched["effect_name_a"].astype(str) == "AUROC")
        & (matched["effect_name_b"].astype(str) == "AUROC")
        & (matched["dataset_a"].astype(str) == matched["dataset_b"].astype(str))
        & matched["method_a"].notna()
        & matched["method_b"].notna()
        & ~matched["reference"].isin(["nan", "None", ""])
    ]
    if rows_.empty or scores_of is None:
        return pd.DataFrame(columns=cols)
    ra, rb = scores_of(a.folder), scores_of(b.folder)
    if ra is None or rb is None:
        return pd.DataFrame(columns=cols)
    out = []
    for r in rows_.to_dict("records"):
        ds, ref = str(r["dataset_a"]), str(r["reference"])
        es_a = ra.source(ds, str(r["method_a"]))
        es_b = rb.source(ds, str(r["method_b"]))
        network = ra.reference(ref)
        if es_a is None or es_b is None or network is None:
            continue
        t = paired_recovery_test(es_a, es_b, network, n_boot=n_boot, seed=seed)
        out.append(
            {
                "analysis": r["analysis"],
                "claim": r["claim_a"],
                "dataset": ds,
                "reference": ref,
                "source_a": r["method_a"],
                "source_b": r["method_b"],
                **t,
            }
        )
    return pd.DataFrame(out, columns=cols)


def compare_runs(
    a: RunTables, b: RunTables, *, scores_of: ScoresOf | None = None, n_boot: int = 999
) -> dict[str, Any]:
    """Standards side by side (matched as the module docstring says), the standards whose
    answer changed, and the matched claims whose answers differ, with Δ, z and p; with
    ``scores_of`` (a finished run's cached scores), the paired tests on the same edges."""
    sa, sb = a.standards.copy(), b.standards.copy()
    dims = _key_dims(sa, sb) if len(sa) and len(sb) else ["model", "dataset"]
    changed = []
    if len(sa) and len(sb):
        m = sa.merge(sb, on=["standard", *dims], suffixes=("_a", "_b"))
        for r in m.to_dict("records"):
            if r["answer_a"] != r["answer_b"]:
                changed.append(
                    {
                        "standard": r["title_a"],
                        "where": " · ".join(str(r[d]) for d in dims) or "—",
                        "a": r["answer_a"],
                        "b": r["answer_b"],
                        "a_col": f"{r.get('model_a', r.get('model'))}/{r.get('dataset_a', r.get('dataset'))}",
                        "b_col": f"{r.get('model_b', r.get('model'))}/{r.get('dataset_b', r.get('dataset'))}",
                    }
                )
    ca, cb = a.scorecard.copy(), b.scorecard.copy()
    shared_ds = set(ca["dataset"].astype(str)) & set(cb["dataset"].astype(str))
    models_a = set(ca["model"].dropna().astype(str))
    models_b = set(cb["model"].dropna().astype(str))
    # runs of other models: the model's name is masked in the claim; shared models match
    mask = not (models_a & models_b)
    key = ["analysis", "claim_key", "reference"] + (["dataset"] if shared_ds else [])
    key += [] if mask else ["model"]
    for c in (ca, cb):
        c["claim_key"] = [
            _norm_claim(t, m) if mask else str(t)
            for t, m in zip(c["claim"], c["model"], strict=True)
        ]
        c["model"] = c["model"].astype(str)
        c["reference"] = c["reference"].astype(str)
        c["dataset"] = c["dataset"].astype(str)
    ca = ca.drop_duplicates(key)
    cb = cb.drop_duplicates(key)
    mc = ca.merge(cb, on=key, suffixes=("_a", "_b"), how="outer", indicator=True)
    differ, tested = [], 0
    for r in mc[mc["_merge"] == "both"].to_dict("records"):
        same_scale = str(r["effect_name_a"]) == str(r["effect_name_b"])
        t = diff_test(
            *(_f(r[f"{k}_a"]) for k in ("effect", "ci_low", "ci_high")),
            *(_f(r[f"{k}_b"]) for k in ("effect", "ci_low", "ci_high")),
        )
        if not same_scale:
            t = {"delta": math.nan, "z": math.nan, "p_diff": math.nan}
        tested += not math.isnan(t["z"])
        if r["answer_a"] == r["answer_b"]:
            continue
        differ.append(
            {
                "analysis": r["analysis"],
                "claim": r["claim_a"],
                "dataset": r["dataset"]
                if "dataset" in key
                else f"{r['dataset_a']} | {r['dataset_b']}",
                "reference": "" if r["reference"] in ("nan", "None") else r["reference"],
                "answer_a": r["answer_a"],
                "answer_b": r["answer_b"],
                "effect_name": "" if _missing(r["effect_name_a"]) else str(r["effect_name_a"]),
                "effect_a": _f(r["effect_a"]),
                "ci_low_a": _f(r["ci_low_a"]),
                "ci_high_a": _f(r["ci_high_a"]),
                "q_a": _f(r["q_a"]),
                "effect_b": _f(r["effect_b"]),
                "ci_low_b": _f(r["ci_low_b"]),
                "ci_high_b": _f(r["ci_high_b"]),
                "q_b": _f(r["q_b"]),
                **t,
            }
        )
    n_both = int((mc["_merge"] == "both").sum())
    paired = paired_tests(a, b, mc[mc["_merge"] == "both"], scores_of, n_boot=n_boot)
    return {
        "paired": paired,
        "a": a,
        "b": b,
        "dims": dims,
        "changed": changed,
        "differ": pd.DataFrame(differ),
        "n_matched": n_both,
        "n_tested": tested,
        "only_a": int((mc["_merge"] == "left_only").sum()),
        "only_b": int((mc["_merge"] == "right_only").sum()),
        "claim_key": key,
    }


# ------------------------------------------------------------------------- html --
_CLS = {
    "yes": "yes",
    "opposite": "opp",
    "no evidence": "no",
    "mixed": "mix",
    "n/a": "na",
    "not run": "nr",
}


def _est(e: float, lo: float, hi: float) -> str:
    if math.isnan(e):
        return "—"
    out = f"{e:.3g}"
    if not (math.isnan(lo) or math.isnan(hi)):
        out += f" [{lo:.3g}, {hi:.3g}]"
    return out


def _pfmt(p: float) -> str:
    if math.isnan(p):
        return "—"
    return f"{p:.2e}" if 0 < p < 1e-3 else f"{p:.3g}"


def _matrix_view(std: pd.DataFrame, other: pd.DataFrame | None = None) -> dict[str, Any]:
    """One run's matrix; a cell whose (standard, model, dataset) has another answer in
    ``other`` is marked changed."""
    if std.empty:
        return {"columns": [], "rows": []}
    pairs = list(dict.fromkeys(zip(std["model"], std["dataset"], strict=True)))
    look = {(r["standard"], r["model"], r["dataset"]): r for r in std.to_dict("records")}
    theirs = (
        {}
        if other is None or other.empty
        else {
            (r["standard"], r["model"], r["dataset"]): r["answer"] for r in other.to_dict("records")
        }
    )
    rows = []
    for s in STANDARDS:
        cells = []
        for m, d in pairs:
            r = look.get((s.id, m, d))
            ans = r["answer"] if r is not None else "not run"
            title = (
                ""
                if r is None
                else (
                    f"{_est(_f(r['effect']), _f(r['ci_low']), _f(r['ci_high']))}, "
                    f"q {_pfmt(_f(r['q']))}\n{'' if _missing(r['claims']) else r['claims']}"
                )
            )
            then = theirs.get((s.id, m, d))
            changed = then is not None and then != ans
            if changed:
                title = f"the other run: {then}\n{title}"
            cells.append(
                {"answer": ans, "cls": _CLS.get(ans, "na"), "title": title, "changed": changed}
            )
        rows.append({"title": s.title, "meaning": s.meaning, "cells": cells})
    return {"columns": [{"model": m, "dataset": d} for m, d in pairs], "rows": rows}


def render_compare(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``compare.html`` (atomically) and return its path."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    src = resources.files("scfm_audit.report").joinpath("templates/compare.html.j2")
    tpl = env.from_string(src.read_text(encoding="utf-8"))
    differ = []
    for r in result["differ"].to_dict("records") if len(result["differ"]) else []:
        differ.append(
            {
                **{k: r[k] for k in ("analysis", "claim", "dataset", "reference", "effect_name")},
                "a": r["answer_a"],
                "b": r["answer_b"],
                "cls_a": _CLS.get(r["answer_a"], "na"),
                "cls_b": _CLS.get(r["answer_b"], "na"),
                "est_a": _est(r["effect_a"], r["ci_low_a"], r["ci_high_a"]),
                "est_b": _est(r["effect_b"], r["ci_low_b"], r["ci_high_b"]),
                "q_a": _pfmt(r["q_a"]),
                "q_b": _pfmt(r["q_b"]),
                "delta": "—" if math.isnan(r["delta"]) else f"{r['delta']:.3g}",
                "z": "—" if math.isnan(r["z"]) else f"{r['z']:.2f}",
                "p": _pfmt(r["p_diff"]),
            }
        )
    html = tpl.render(
        a=str(result["a"].folder),
        b=str(result["b"].folder),
        ma=_matrix_view(result["a"].standards, result["b"].standards),
        mb=_matrix_view(result["b"].standards, result["a"].standards),
        changed=result["changed"],
        differ=differ,
        paired=[
            {
                **{k: r[k] for k in ("claim", "dataset", "reference", "source_a", "source_b")},
                "delta": _est(r["delta"], r["ci_low"], r["ci_high"]),
                "p": _pfmt(r["p"]),
                "n": f"{int(r['n_pairs'])} ({int(r['n_pos'])} in the reference)",
            }
            for r in result["paired"].to_dict("records")
        ],
        paired_note=PAIRED_NOTE,
        note=TEST_NOTE,
        n_matched=result["n_matched"],
        n_tested=result["n_tested"],
        only_a=result["only_a"],
        only_b=result["only_b"],
        dims=" × ".join(result["dims"]),
        date=datetime.now().strftime("%Y-%m-%d %H:%M"),
    )
    path = Path(path)
    atomic_write_text(path, html)
    return path
