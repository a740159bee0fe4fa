"""The QC standard: the scorecard read as standards × (model × dataset), standards.csv,
the matrix on top of the report, and ``scfm-audit compare`` on two hand-built runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from scfm_audit.analyses._contract import AnalysisParams, AnalysisResult, AnalysisSpec, Verdict
from scfm_audit.cli import app
from scfm_audit.pipeline._config import AuditConfig
from scfm_audit.pipeline._runner import RunResult, write_outputs
from scfm_audit.report._compare import diff_test
from scfm_audit.report._standards import STANDARDS, aggregate, matrix_lines, standards_matrix
from scfm_audit.stats._registry import TestRegistry

nan = math.nan
BASELINE = (
    "gene-level baseline (variance, pre-declared) beats attention[m1] at predicting responders"
)


def _row(
    analysis,
    claim,
    answer,
    *,
    model="m1",
    dataset="d1",
    reference=None,
    q=0.01,
    effect=0.1,
    lo=0.05,
    hi=0.15,
):
    return {
        "analysis": analysis,
        "claim": claim,
        "model": model,
        "dataset": dataset,
        "reference": reference,
        "answer": answer,
        "reason": "",
        "q": q,
        "p": q,
        "effect_name": "Δ",
        "effect": effect,
        "ci_low": lo,
        "ci_high": hi,
    }


def _cell(m: pd.DataFrame, standard: str, model="m1", dataset="d1") -> pd.Series:
    hit = m[(m["standard"] == standard) & (m["model"] == model) & (m["dataset"] == dataset)]
    assert len(hit) == 1, (standard, model, dataset)
    return hit.iloc[0]


def test_mapping_inversion_aggregation_and_not_run():
    sc = pd.DataFrame(
        [
            # baseline beats attention: opposite -> attention beats baselines: yes
            _row(
                "perturbation_prediction",
                BASELINE,
                "opposite",
                q=0.002,
                effect=-0.1,
                lo=-0.2,
                hi=-0.05,
            ),
            _row(
                "perturbation_prediction",
                "attention[m1] beats co-expression at predicting responders",
                "no evidence",
                q=0.4,
            ),
            # leakage claim holds -> "no batch leakage": opposite
            _row("batch_leakage", "attention[m1]'s edges leak batch (batch)", "yes"),
            _row(
                "calibration",
                "attention[m1]'s calibrated scores are miscalibrated on held-out perturbations",
                "no evidence",
                q=0.6,
            ),
            _row("grn_recovery", "attention[m1] recovers grn", "yes", reference="grn", q=0.001),
            _row(
                "grn_recovery", "attention[m1] recovers ppi", "no evidence", reference="ppi", q=0.3
            ),
            _row(
                "cssi",
                "CSSI strata beat random strata of the same sizes (attention[m1], grn)",
                "n/a",
                q=nan,
            ),
            # an analysis over two datasets that answered nothing: n/a in both columns
            _row(
                "stability",
                "stability: no claim answered",
                "n/a",
                model=None,
                dataset="d1, d2",
                q=nan,
                effect=nan,
                lo=nan,
                hi=nan,
            ),
            _row(
                "head_ablation",
                "m1: ablating regulatory heads degrades the model",
                "yes",
                dataset="d2",
            ),
            # unmapped and model-less: stays in the claim list only
            _row("grn_recovery", "spearman recovers grn", "yes", model=None),
            _row("some_other", "something", "yes"),
        ]
    )
    m = standards_matrix(sc)
    assert len(m) == len(STANDARDS) * 2  # columns m1/d1, m1/d2 (no model-less column)
    assert set(zip(m["model"], m["dataset"], strict=True)) == {("m1", "d1"), ("m1", "d2")}
    cell = _cell(m, "beats_baselines")
    assert cell["answer"] == "yes" and cell["inverted"]
    assert cell["q"] == pytest.approx(0.002) and cell["effect"] == pytest.approx(-0.1)
    assert "opposite (inverted: yes)" in cell["claims"]
    assert _cell(m, "beats_coexpression")["answer"] == "no evidence"
    assert _cell(m, "no_batch_leakage")["answer"] == "opposite"
    # a failure claim (miscalibrated) without evidence: the failure was not detected
    assert _cell(m, "calibrated")["answer"] == "not detected"
    rec = _cell(m, "recovers_reference")
    assert rec["answer"] == "mixed" and rec["n_claims"] == 2 and rec["q"] == pytest.approx(0.001)
    assert _cell(m, "cssi_specific")["answer"] == "n/a"
    assert (
        _cell(m, "stable")["answer"] == "n/a"
        and _cell(m, "stable", dataset="d2")["answer"] == "n/a"
    )
    assert _cell(m, "heads_causal", dataset="d2")["answer"] == "yes"
    assert _cell(m, "heads_causal")["answer"] == "not run"
    assert _cell(m, "detectable")["answer"] == "not run"
    assert not _cell(m, "recovers_reference")["claims"].count("spearman")


def test_aggregation_rule():
    assert aggregate([]) == "not run"
    assert aggregate(["n/a", "n/a"]) == "n/a"
    assert aggregate(["yes", "n/a", "yes"]) == "yes"
    assert aggregate(["yes", "no evidence"]) == "mixed"
    assert aggregate(["opposite"]) == "opposite"


def test_detectability_table_and_no_model_run():
    sc = pd.DataFrame([_row("grn_recovery", "spearman recovers grn", "yes", model=None)])
    det = pd.DataFrame(
        {
            "dataset": ["d1", "d1"],
            "source": ["spearman", "pearson"],
            "layer": [nan, nan],
            "reference": ["grn", "grn"],
            "n_cells": [400, 400],
            "effect": [0.05, 0.05],
            "power_at_effect": [0.9, 0.95],
            "power": [0.8, 0.8],
            "cells_needed": [300, 200],
            "detectable_delta_at_n": [0.04, 0.03],
        }
    )
    m = standards_matrix(sc, det)
    assert set(m["model"]) == {"no model"}  # a run with no model shows its sources
    assert _cell(m, "recovers_reference", "no model")["answer"] == "yes"
    d = _cell(m, "detectable", "no model")
    assert d["answer"] == "yes" and d["n_claims"] == 2
    det.loc[0, "power_at_effect"] = 0.3
    assert _cell(standards_matrix(sc, det), "detectable", "no model")["answer"] == "mixed"


def test_terminal_matrix_fits_100_columns():
    rows = [
        _row("grn_recovery", f"attention[{mo}] recovers grn", "yes", model=mo, dataset=d)
        for mo in ("scgpt_demo_model", "geneformer_demo_model")
        for d in ("simulated_benchmark", "perturbed", "null_twin")
    ]
    lines = matrix_lines(standards_matrix(pd.DataFrame(rows)))
    assert max(len(x) for x in lines) <= 100
    assert len([x for x in lines if x.startswith("recovers references")]) == 1  # one block
    assert all(len(x.split()) <= 9 for x in lines if x.startswith("recovers"))


# ------------------------------------------------------------------ whole runs --
def _spec(name: str) -> AnalysisSpec:
    return AnalysisSpec(
        name=name,
        description=name,
        params=AnalysisParams,
        run=lambda ctx, p: AnalysisResult(),
        version="1",
    )


def _run(output: Path, *, leak_p: float, leak: float, rec_effect: float) -> RunResult:
    reg = TestRegistry(alpha=0.05)

    def rec(analysis, p, effect, lo, hi, reference=None, dataset="k562"):
        return reg.add(
            family="claim",
            analysis=analysis,
            hypothesis=analysis,
            test="t",
            null="n",
            p=p,
            statistic_name="s",
            statistic=effect,
            effect_name="ΔAUROC",
            effect=effect,
            ci_low=lo,
            ci_high=hi,
            n=100,
            model="scgpt",
            dataset=dataset,
            reference=reference,
        )

    results = {
        "grn_recovery": AnalysisResult(
            verdicts=[
                Verdict(
                    claim="attention[scgpt] recovers grn",
                    record=rec(
                        "grn_recovery",
                        0.001,
                        rec_effect,
                        rec_effect - 0.05,
                        rec_effect + 0.05,
                        "grn",
                    ),
                ),
            ]
        ),
        "perturbation_prediction": AnalysisResult(
            verdicts=[
                Verdict(
                    claim=BASELINE.replace("m1", "scgpt"),
                    record=rec("perturbation_prediction", 0.002, -0.1, -0.15, -0.05),
                ),
            ]
        ),
        "batch_leakage": AnalysisResult(
            verdicts=[
                Verdict(
                    claim="attention[scgpt]'s edges leak batch (batch)",
                    record=rec("batch_leakage", leak_p, leak, leak - 0.1, leak + 0.1),
                ),
            ]
        ),
    }
    cfg = AuditConfig(datasets={"k562": {"simulate": {"n_cells": 50}}}, output=output, analyses={})
    return RunResult(
        config=cfg,
        output=output,
        specs={n: _spec(n) for n in results},
        params={},
        results=results,
        tests=reg.to_frame(),
        family_sensitivity=reg.family_sensitivity(),
        timings=dict.fromkeys(results, 0.1),
        alpha=0.05,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")
    write_outputs(_run(a, leak_p=0.001, leak=0.2, rec_effect=0.2))
    write_outputs(_run(b, leak_p=0.8, leak=0.01, rec_effect=0.05))
    return a, b


def test_standards_csv_written_beside_the_scorecard(two_runs):
    a, _ = two_runs
    sc = pd.read_csv(a / "scorecard.csv", keep_default_na=False, na_values=[""])
    st = pd.read_csv(a / "standards.csv", keep_default_na=False, na_values=[""])
    assert (a / "standards.parquet").is_file()
    assert len(sc) == 3  # one row per claim
    assert len(st) == len(STANDARDS)  # one model × one dataset
    assert {"answer", "effect", "ci_low", "ci_high", "q", "claims"} <= set(st.columns)
    st = st.set_index("standard")
    assert st.loc["beats_baselines", "answer"] == "yes"  # inverted from "opposite"
    assert st.loc["no_batch_leakage", "answer"] == "opposite"
    assert st.loc["heads_causal", "answer"] == "not run"


def test_report_matrix_on_top_one_row_per_standard(two_runs):
    a, _ = two_runs
    html = (a / "report.html").read_text(encoding="utf-8")
    i_std, i_claims = html.index('id="standards"'), html.index('id="scorecard"')
    assert html.index('id="top"') < i_std < i_claims
    matrix = html[i_std:i_claims]
    body = matrix[matrix.index("<tbody>") : matrix.index("</tbody>")]
    assert body.count("<tr>") == len(STANDARDS)
    for s in STANDARDS:
        assert f'title="{s.meaning}"'.replace("'", "&#39;") in body
    assert body.count('<td class="cell"') == len(STANDARDS)
    assert "✓ yes" in body and "⇄ opposite" in body and "not run" in body
    assert re.search(r"q 0\.00\d", body)  # q below the word
    # the claim list stays beneath, collapsible
    assert re.search(r'<details class="claims">\s*<summary class="group">', html[i_claims:])
    assert "<script" not in html.lower()


def test_compare_prints_differing_claims_and_writes_html(two_runs, tmp_path):
    a, b = two_runs
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "QC standard, side by side" in out
    assert re.search(r"no batch leakage\s+opposite\s+not-detected", out)
    assert "claims whose answers differ: 1 of 3 matched" in out
    assert "attention[scgpt]'s edges leak batch (batch)" in out
    assert "no batch leakage" in out  # the changed standard
    assert "independent" in out and "descriptive" in out
    # Δ = 0.2 − 0.01 with se = 0.2 / 3.92 each: z ≈ 2.63
    assert re.search(r"leak batch \(batch\)\tk562\tyes\tno evidence\t0\.19\t2\.63\t", out)
    assert max(len(x) for x in out.splitlines() if not x.startswith(("QC", "attention"))) <= 100
    html = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert "edges leak batch" in html and "<script" not in html.lower()


def test_compare_exits_2_on_a_folder_that_is_not_a_run(two_runs, tmp_path):
    a, _ = two_runs
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "empty")])
    assert r.exit_code == 2
    assert "scorecard.csv is missing" in r.output


def test_difference_test_from_two_cis():
    t = diff_test(0.2, 0.1, 0.3, 0.0, -0.1, 0.1)
    se = math.hypot(0.2 / 3.919927969, 0.2 / 3.919927969)
    assert t["delta"] == pytest.approx(0.2) and t["z"] == pytest.approx(0.2 / se)
    assert t["p_diff"] == pytest.approx(math.erfc(abs(t["z"]) / math.sqrt(2)))
    assert math.isnan(diff_test(0.2, nan, 0.3, 0.0, -0.1, 0.1)["z"])


def test_end_of_run_prints_the_matrix_and_the_claims_on_a_pipe(tmp_path, capsys):
    import time

    from scfm_audit.cli import _finish

    _finish(_run(tmp_path, leak_p=0.001, leak=0.2, rec_effect=0.2), time.perf_counter())
    out = capsys.readouterr().out
    assert "claim\tdataset\tanswer\tq\testimate [95% CI]\tlayer" in out  # plain on a pipe
    i = out.index("QC standard")
    matrix = out[i:].splitlines()
    assert matrix[1].split() == ["standard", "scgpt/k562"]
    assert any(re.fullmatch(r"no batch leakage\s+opposite", x) for x in matrix)
    assert max(len(x) for x in matrix) <= 100
    assert "report.html" in out[i:]


def test_compare_reads_a_run_without_standards_csv(two_runs, tmp_path):
    import shutil

    a, b = two_runs
    old = tmp_path / "old"
    shutil.copytree(b, old)
    (old / "standards.csv").unlink()
    r = CliRunner().invoke(app, ["compare", str(a), str(old), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert re.search(r"no batch leakage\s+opposite\s+not-detected", r.output)


def test_terminal_headers_one_cut_per_name_numbered_on_collision():
    def lines(models, datasets):
        rows = [
            _row("grn_recovery", f"attention[{mo}] recovers grn", "yes", model=mo, dataset=d)
            for mo in models
            for d in datasets
        ]
        return matrix_lines(standards_matrix(pd.DataFrame(rows)))

    head = lines(["scgpt_demo", "geneformer_demo"], ["sim", "sim_crispra"])[0].split()
    assert head == ["standard", "scgpt/sim", "scgpt/sim_c", "genef/sim", "genef/sim_c"]
    out = lines(["scgpt_demo_a", "scgpt_demo_b"], ["sim", "sim_crispra"])
    assert out[0].split() == ["standard", "#1", "#2", "#3", "#4"]
    assert "#2 = scgpt_demo_a × sim_crispra" in " ".join(out)
