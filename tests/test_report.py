"""The HTML report and the figure helpers, on a hand-built RunResult (no analysis runs)."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from scfm_audit.analyses._contract import AnalysisParams, AnalysisResult, AnalysisSpec, Verdict
from scfm_audit.pipeline._config import AuditConfig
from scfm_audit.pipeline._runner import RunResult, write_outputs
from scfm_audit.report import (
    forest_figure,
    head_heatmap,
    metric_by_layer_figure,
    null_distribution_figure,
    render_report,
    roc_pr_figure,
)
from scfm_audit.report._html import fmt_num, fmt_p
from scfm_audit.stats._registry import TestRegistry

XSS = "<script>alert('pwned')</script>"


def _spec(name: str, **kw) -> AnalysisSpec:
    return AnalysisSpec(
        name=name,
        description=kw.get("description", f"{name} description"),
        params=AnalysisParams,
        run=lambda ctx, p: AnalysisResult(),
        version="1.2",
        category="A. Does attention encode biology?",
        reference="catalogue #1",
    )


def _layer_table(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for method in ("attention", "spearman"):
        for layer in range(4):
            for head in range(4):
                auc = 0.5 + 0.05 * layer * (method == "attention") + rng.normal(0, 0.01)
                rows.append(
                    {
                        "method": method,
                        "layer": layer,
                        "head": head,
                        "auroc": auc,
                        "ci_low": auc - 0.03,
                        "ci_high": auc + 0.03,
                        "significant": auc > 0.6,
                    }
                )
    return pd.DataFrame(rows)


def fake_run(output: Path, *, seed: int = 0) -> RunResult:
    """A small RunResult by hand: two analyses with tables, figures, tests and verdicts
    (one claim with a script tag), a NaN-p test, and one failed analysis."""
    rng = np.random.default_rng(seed)
    reg = TestRegistry(alpha=0.05)
    rec_yes = reg.add(
        family="claim",
        analysis="grn_recovery",
        hypothesis="attention ranks TRRUST edges",
        test="label-shuffle permutation (999)",
        null="labels exchangeable",
        p=0.001,
        statistic_name="AUROC",
        statistic=0.71,
        effect_name="AUROC - 0.5",
        effect=0.21,
        ci_low=0.15,
        ci_high=0.27,
        n=5120,
        model="scgpt",
        dataset="k562",
        reference="trrust",
        method="attention",
        layer=3,
    )
    rec_no = reg.add(
        family="claim",
        analysis="grn_recovery",
        hypothesis="spearman ranks TRRUST edges",
        test="label-shuffle permutation (999)",
        null="labels exchangeable",
        p=0.6,
        statistic_name="AUROC",
        statistic=0.49,
        effect_name="AUROC - 0.5",
        effect=-0.01,
        ci_low=-0.05,
        ci_high=0.03,
        n=5120,
        dataset="k562",
        reference="trrust",
        method="spearman",
    )
    rec_nan = reg.add(
        family="claim",
        analysis="grn_recovery",
        hypothesis="attention ranks STRING edges",
        test="label-shuffle permutation (999)",
        null="labels exchangeable",
        p=math.nan,
        n=3,
        model="scgpt",
        dataset="k562",
        reference="string",
        method="attention",
        layer=3,
    )
    table = _layer_table(rng)
    for r in table.itertuples():
        reg.add(
            analysis="grn_recovery",
            hypothesis=f"head L{r.layer}H{r.head} above null",
            test="label-shuffle permutation (999)",
            null="labels exchangeable",
            p=float(rng.uniform(0, 0.2)),
            statistic_name="AUROC",
            statistic=r.auroc,
            effect_name="AUROC - 0.5",
            effect=r.auroc - 0.5,
            n=5120,
            model="scgpt",
            dataset="k562",
            reference="trrust",
            method=r.method,
            layer=r.layer,
            head=r.head,
            family="descriptive",
        )
    rec_inc = reg.add(
        family="claim",
        analysis="incremental_value",
        hypothesis="edges add to gene-level",
        test="likelihood-ratio",
        null="edge coefficients zero",
        p=0.4,
        statistic_name="LR",
        statistic=0.7,
        effect_name="ΔAUROC",
        effect=-0.0004,
        ci_low=-0.002,
        ci_high=0.001,
        n=559_720,
        model="geneformer",
        dataset="rpe1",
        direction="greater",
    )
    rec_opp = reg.add(
        family="claim",
        analysis="incremental_value",
        hypothesis="attention beats gene-level",
        test="paired DeLong",
        null="equal AUROC",
        p=1e-6,
        statistic_name="z",
        statistic=-4.9,
        effect_name="ΔAUROC",
        effect=-0.12,
        ci_low=-0.15,
        ci_high=-0.09,
        n=600,
        model="geneformer",
        dataset="rpe1",
    )
    y = rng.integers(0, 2, 400)
    curves = {"attention": (y, y + rng.normal(0, 1.2, 400)), "spearman": (y, rng.normal(0, 1, 400))}
    grn = AnalysisResult(
        tables={"recovery": table},
        figures={
            "roc_pr": roc_pr_figure(curves, title="TRRUST recovery on k562"),
            "by_layer": metric_by_layer_figure(table[table["head"] == 0], title="AUROC by layer"),
        },
        summary="Attention recovers TRRUST in late layers.\n\nSecond paragraph & more.",
        verdicts=[
            Verdict(claim=f"attention recovers TRRUST {XSS}", record=rec_yes),
            Verdict(claim="spearman recovers TRRUST", record=rec_no, model=None),
            Verdict(claim="attention recovers STRING", record=rec_nan),
        ],
        notes=["string: only 3 reference edges among the scored genes."],
    )
    inc = AnalysisResult(
        tables={
            "coefficients": pd.DataFrame(
                {
                    "feature": ["mean", "edge"],
                    "coef": [1.234567, -0.000123456],
                    "n": [559_720, 559_720],
                }
            )
        },
        figures={
            "forest": forest_figure(
                pd.DataFrame(
                    {
                        "perturbation": ["A", "B"],
                        "d": [0.1, -0.2],
                        "lo": [0.0, -0.3],
                        "hi": [0.2, -0.1],
                    }
                ),
                label="perturbation",
                effect="d",
                ci_low="lo",
                ci_high="hi",
            )
        },
        summary="Edges add nothing beyond gene-level features.",
        verdicts=[
            Verdict(claim="edge features add to gene-level features", record=rec_inc),
            Verdict(claim="attention beats the gene-level baseline", record=rec_opp),
        ],
    )
    cfg = AuditConfig(datasets={"k562": {"simulate": {"n_cells": 50}}}, output=output, analyses={})
    return RunResult(
        config=cfg,
        output=output,
        specs={n: _spec(n) for n in ("grn_recovery", "broken_analysis", "incremental_value")},
        params={},
        results={"grn_recovery": grn, "incremental_value": inc},
        tests=reg.to_frame(),
        family_sensitivity=reg.family_sensitivity(),
        timings={"grn_recovery": 3.2, "broken_analysis": 0.1, "incremental_value": 75.0},
        errors={"broken_analysis": "ValueError: reference 'trrust' has no edges among <genes>"},
        alpha=0.05,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[RunResult, str]:
    out = tmp_path_factory.mktemp("run")
    run = fake_run(out)
    write_outputs(run)  # writes tables + figures, then calls render_report
    html = (out / "report.html").read_text(encoding="utf-8")
    return run, html


def test_report_is_one_self_contained_file(report):
    run, html = report
    out = run.output
    assert (out / "report.html").is_file()
    assert not list(out.glob(".report.html.*"))  # atomic write left no temp file
    assert html.startswith("<!DOCTYPE html>")
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 3  # roc_pr, by_layer, forest
    assert all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)
    # embedded bytes are the written files
    written = (out / "figures" / "grn_recovery__roc_pr.png").read_bytes()
    assert base64.b64encode(written).decode() in html
    # nothing fetched from outside, no scripts
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    assert "<script" not in html.lower()


def test_scorecard_on_top_with_badges_and_q(report):
    run, html = report
    i_score = html.index('id="scorecard"')
    i_first = html.index('id="a-grn_recovery"')
    assert html.index('id="top"') < i_score < html.index('id="contents"') < i_first
    scorecard = html[i_score : html.index('id="contents"')]
    assert "✓ yes" in scorecard and "✗ no evidence" in scorecard and "– n/a" in scorecard
    v = run.verdicts().set_index("claim")
    q_yes = v.loc[f"attention recovers TRRUST {XSS}", "q"]
    assert fmt_p(q_yes) in scorecard
    assert fmt_p(v.loc["edge features add to gene-level features", "q"]) in scorecard
    assert "BH" in scorecard or "Benjamini" in scorecard
    assert "claim tests only" in scorecard and "5 claim tests" in scorecard
    # groups by model / dataset
    assert scorecard.count('class="group"') == 3
    # effect with CI
    assert "0.21 [0.15, 0.27]" in scorecard
    # significant against the claim: its own answer, not a plain "no"
    assert v["answer"].value_counts().get("opposite", 0) == 1
    table = scorecard[scorecard.index("<table>") :]
    assert table.count('<span class="badge opp">⇄ opposite</span>') == 1
    # family-definition sensitivity
    assert "claims only (BH; answers the scorecard)" in scorecard
    assert "per analysis (BH)" in scorecard


def test_user_text_is_escaped(report):
    _, html = report
    assert XSS not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "Second paragraph &amp; more." in html


def test_failed_analysis_shows_error_in_place(report):
    _, html = report
    sec = html[html.index('id="a-broken_analysis"') : html.index('id="a-incremental_value"')]
    assert 'class="error"' in sec
    assert "ValueError: reference &#39;trrust&#39; has no edges among &lt;genes&gt;" in sec
    toc = html[html.index('id="contents"') : html.index('id="a-grn_recovery"')]
    assert "failed" in toc


def test_sections_tables_tests_footer(report):
    run, html = report
    grn = html[html.index('id="a-grn_recovery"') : html.index('id="a-broken_analysis"')]
    # table: first 20 rows and a pointer to the full file
    assert "32 rows × 7 columns, first 20 shown" in grn
    assert "tables/grn_recovery__recovery.csv" in grn
    assert (run.output / "tables" / "grn_recovery__recovery.csv").is_file()
    # long test list collapsed; NaN p shown as a dash, q < α column
    n_tests = int((run.tests["analysis"] == "grn_recovery").sum())
    assert f"Tests: {n_tests}" in grn
    assert re.search(r"<details>\s*<summary>Tests", grn)
    assert "statistic (AUROC)" in grn and "AUROC - 0.5 [CI]" in grn
    assert "Common to all tests:" in grn and "label-shuffle permutation (999)" in grn
    assert "string: only 3 reference edges" in grn
    assert "v1.2" in grn
    assert "catalogue #1" not in grn and "Design reference" not in grn  # internal notes
    inc = html[html.index('id="a-incremental_value"') : html.index('id="footer"')]
    assert "559,720" in inc and "1.235" in inc and "-0.0001235" in inc
    assert re.search(r"<details open>\s*<summary>Tests", inc)
    assert "paired DeLong" in inc and 'title="null: equal AUROC"' in inc
    footer = html[html.index('id="footer"') :]
    assert "seed: 0" in footer and "datasets:" in footer  # resolved config YAML
    assert "1 min 15 s" in footer and "1 min 18 s" in footer  # per analysis + total


def test_render_report_returns_path_and_draws_unwritten_figures(tmp_path):
    run = fake_run(tmp_path)  # figures never written to disk: drawn from the objects
    path = render_report(run, tmp_path / "sub" / "r.html")
    assert path == tmp_path / "sub" / "r.html" and path.is_file()
    assert path.read_text(encoding="utf-8").count("data:image/png;base64,") == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.123456, "0.1235"),
        (559720, "559,720"),
        (559720.0, "559,720"),
        (3, "3"),
        (float("nan"), "—"),
        (None, "—"),
        (True, "true"),
        (-0.0004, "-0.0004"),
    ],
)
def test_fmt_num(value, expected):
    assert fmt_num(value) == expected


def test_fmt_p():
    assert fmt_p(0.04567) == "0.0457"
    assert fmt_p(1.234e-7) == "1.23e-07"
    assert fmt_p(float("nan")) == "—"


# ------------------------------------------------------------------------- figures --
def _labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_roc_pr_figure():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    fig = roc_pr_figure(
        {"good": (y, y + rng.normal(0, 1, 300)), "one class": (np.ones(5), np.arange(5.0))},
        title="t",
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert all(_labelled(ax) for ax in fig.axes)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("AUROC" in t for t in legend) and any("undefined" in t for t in legend)
    assert any("chance" in t for t in legend)
    pr_legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("AUPRC" in t for t in pr_legend) and any("positive rate" in t for t in pr_legend)


def test_metric_by_layer_figure():
    df = _layer_table(np.random.default_rng(2))
    df = df[df["head"] == 0].assign(reference=lambda d: np.where(d.layer < 2, "ppi", "tf"))
    fig = metric_by_layer_figure(df, title="by layer")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and _labelled(fig.axes[0])
    assert fig.axes[0].get_ylabel() == "AUROC"
    fig = metric_by_layer_figure(df, col="reference", ci=None, chance=None)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="not in the table"):
        metric_by_layer_figure(df, y="nope")


def test_head_heatmap():
    df = _layer_table(np.random.default_rng(3))
    fig = head_heatmap(df[df.method == "attention"], mark="significant", center=0.5, title="h")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colour bar
    assert fig.axes[0].get_xlabel() == "head" and fig.axes[0].get_ylabel() == "layer"
    assert fig.axes[1].get_ylabel() == "AUROC"
    # duplicates per cell are averaged, and the figure says so
    fig = head_heatmap(df)
    assert any("mean of up to 2" in t.get_text() for t in fig.axes[0].texts)


def test_null_distribution_figure():
    null = np.random.default_rng(4).normal(size=999)
    fig = null_distribution_figure(null, 3.0, title="null", xlabel="AUROC")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and _labelled(fig.axes[0])
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    p = (1 + np.sum(null >= 3.0)) / 1000
    assert f"p = {p:.3g}" in legend


def test_forest_figure():
    df = pd.DataFrame(
        {
            "name": list("abc"),
            "eff": [0.1, -0.2, 0.0],
            "lo": [0.0, -0.3, np.nan],
            "hi": [0.2, -0.1, np.nan],
            "sig": [True, True, False],
            "grp": ["x", "y", "x"],
        }
    )
    fig = forest_figure(
        df, label="name", effect="eff", ci_low="lo", ci_high="hi", hue="grp", mark="sig"
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and _labelled(fig.axes[0])
    pos = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert pos["a"] > pos["b"] > pos["c"]  # table order, top to bottom


def test_minimal_run_renders(tmp_path):
    """No tests, no verdicts, an empty table: the report still renders and says so."""
    reg = TestRegistry()
    run = RunResult(
        config=AuditConfig(datasets={"k562": {"simulate": {}}}, output=tmp_path),
        output=tmp_path,
        specs={"empty": _spec("empty")},
        params={},
        results={"empty": AnalysisResult(tables={"none": pd.DataFrame()})},
        tests=reg.to_frame(),
        family_sensitivity=reg.family_sensitivity(),
        timings={},
    )
    html = render_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No analysis of this run declared a verdict." in html
    assert "registered no statistical tests" in html
    assert "0 rows × 0 columns" in html


# -- what a reader sees -----------------------------------------------------------------
def test_analysis_tables_show_values_with_ci_at_one_precision_per_column():
    from scfm_audit.report._html import _table

    df = pd.DataFrame(
        {
            "reference": ["grn", "ppi"],
            "auroc": [0.6888475, 0.6575103],
            "auroc_ci_low": [0.6299263, 0.5984221],
            "auroc_ci_high": [0.7682607, 0.7013904],
            "positive_rate": [0.16101, 0.0847458],
            "p_shuffle": [0.0196078, 0.000012],
            "delta": [1.234567, -0.000123456],  # spans 4 orders: each value on its own
            "n_candidates": [354, 1770],
            "layer": [3.0, np.nan],  # whole numbers with NaN (pooled) stay whole
        }
    )
    tab = _table(df)
    head = [h["text"] for h in tab["header"]]
    assert head == [
        "reference",
        "auroc [CI]",
        "positive_rate",
        "p_shuffle",
        "delta",
        "n_candidates",
        "layer",
    ]
    rows = [[c["text"] for c in r] for r in tab["rows"]]
    assert rows[0][1] == "0.689 [0.630, 0.768]" and rows[1][1] == "0.658 [0.598, 0.701]"
    assert [r[2] for r in rows] == ["0.161", "0.085"]
    assert [r[3] for r in rows] == ["0.0196", "1.20e-05"]
    assert [r[4] for r in rows] == ["1.235", "-0.0001235"]
    assert [r[5] for r in rows] == ["354", "1,770"]
    assert [r[6] for r in rows] == ["3", "—"]
    assert not tab["wide"] and _table(pd.DataFrame({f"c{i}": [1] for i in range(12)}))["wide"]


def test_tests_table_shows_auroc_on_its_natural_scale_with_its_ci():
    """Effect 'AUROC - 0.5' with CI → the AUROC column carries the CI shifted back."""
    from scfm_audit.report._html import _tests_table

    reg = TestRegistry(alpha=0.05)
    for auc, lo, hi in ((0.6888, 0.6299, 0.7683), (0.55, 0.48, 0.62)):
        reg.add(
            analysis="grn_recovery",
            hypothesis="h",
            test="perm",
            null="label shuffle",
            statistic_name="AUROC",
            statistic=auc,
            effect_name="AUROC - 0.5",
            effect=auc - 0.5,
            ci_low=lo - 0.5,
            ci_high=hi - 0.5,
            p=0.02,
            n=100,
            direction="greater",
        )
    run = RunResult(
        config=AuditConfig(datasets={"d": {"simulate": {}}}),
        output=Path("."),
        specs={},
        params={},
        results={},
        tests=reg.to_frame(),
        family_sensitivity=pd.DataFrame(),
        timings={},
    )
    t = _tests_table(run, "grn_recovery")
    head = [h["text"] for h in t["header"]]
    assert "AUROC [CI]" in head and not any("AUROC - 0.5" in h for h in head)
    cells = [c["text"] for c in t["rows"][0]["cells"]]
    assert "0.689 [0.630, 0.768]" in cells
    assert "0.550 [0.480, 0.620]" in [c["text"] for c in t["rows"][1]["cells"]]


def test_figures_keep_legends_off_the_curves_and_auroc_axes_fixed():
    """ROC/PR legends sit below the axes; by-layer legends to the right; an AUROC axis
    spans at least 0.3–0.8 (so ±0.01 noise does not fill it) and contains 0.5; a
    heatmap centred at 0.5 spans at least 0.4–0.6."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    fig = roc_pr_figure({"a": (y, y + rng.normal(0, 1, 400))})
    fig.canvas.draw()
    for ax in fig.axes:
        leg, box = ax.get_legend(), ax.get_window_extent()
        assert leg.get_window_extent().y1 < box.y0  # entirely below the axes
    df = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "auroc": [0.501, 0.509, 0.497],
            "ci_low": [0.49, 0.5, 0.48],
            "ci_high": [0.51, 0.52, 0.51],
            "method": "attention",
        }
    )
    fig = metric_by_layer_figure(df)
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo <= 0.3 and hi >= 0.8
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1
    heat = pd.DataFrame(
        {"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "auroc": [0.5, 0.51, 0.49, 0.505]}
    )
    fig = head_heatmap(heat, center=0.5)
    norm = fig.axes[0].images[0].norm
    assert norm.vmin <= 0.4 and norm.vmax >= 0.6


CHROMIUM = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if __import__("shutil").which(b)),
    None,
)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_wide_tables_scroll_in_a_browser(report, tmp_path):
    """In headless Chromium at 900 px, every table box wider than the page scrolls
    (overflow-x auto, scrollWidth > clientWidth) instead of being cut off."""
    import subprocess

    _, html = report
    probe = (
        "<script>window.addEventListener('load',()=>{const o=[];"
        "document.querySelectorAll('.scroll').forEach(e=>o.push([e.scrollWidth,e.clientWidth,"
        "getComputedStyle(e).overflowX].join(':')));const p=document.createElement('pre');"
        "p.id='probe';p.textContent=o.join(' ');document.body.appendChild(p);});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=900,2000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    boxes = [b.split(":") for b in re.search(r'<pre id="probe">([^<]*)', dom).group(1).split()]
    assert boxes and all(ov == "auto" for _, _, ov in boxes)
    assert any(int(sw) > int(cw) for sw, cw, _ in boxes)  # some table is wider: it scrolls


def test_training_block_shows_curves_and_chance(tmp_path):
    """Models with a train_log.json get a training curve and their held-out loss against
    chance and the baseline; a model that did not learn is flagged; others are skipped."""
    import json

    def write_log(folder, learned: bool):
        folder.mkdir()
        log = {
            "family": "scgpt",
            "steps": 40,
            "loss_per_step": list(np.linspace(200, 60, 40)),
            "eval_loss_per_epoch": [210.0, 120.0, 80.0, 70.0],
            "eval_loss_initial": 210.0,
            "eval_loss_final": 70.0 if learned else 150.0,
            "chance_loss": 205.0,
            "baseline_loss": 140.0,
            "baseline": "per-gene mean bin",
            "eval_held_out": True,
            "n_eval_cells": 60,
            "learned": learned,
            "params": {"seed": 3},
        }
        (folder / "train_log.json").write_text(json.dumps(log))

    write_log(tmp_path / "good", True)
    write_log(tmp_path / "bad", False)
    (tmp_path / "downloaded").mkdir()
    models = {
        n: {"family": "scgpt", "path": str(tmp_path / n)} for n in ("good", "bad", "downloaded")
    }
    reg = TestRegistry()
    run = RunResult(
        config=AuditConfig(datasets={"k562": {"simulate": {}}}, output=tmp_path, models=models),
        output=tmp_path,
        specs={},
        params={},
        results={},
        tests=reg.to_frame(),
        family_sensitivity=reg.family_sensitivity(),
        timings={},
    )
    html = render_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    block = html[html.index('id="model-training"') : html.index('id="footer"')]
    assert "<h3>good " in block and "<h3>bad " in block and "downloaded" not in block
    assert block.count("data:image/png;base64,") == 2
    assert "chance 205" in block and "per-gene mean bin" in block and "seed 3" in block
    assert block.count("did not beat chance and baseline") == 1
