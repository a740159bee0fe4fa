"""The command line as a user types it."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from scfm_audit.cli import app

runner = CliRunner()


def test_analyses_lists_the_catalogue():
    r = runner.invoke(app, ["analyses"])
    assert r.exit_code == 0
    assert "grn_recovery" in r.output


def test_validate_good_config(tmp_path):
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(tiny_config("out")))
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 0, r.output
    assert "FAIL" not in r.output


def test_validate_reports_missing_dataset_file(tmp_path):
    cfg = tiny_config("out")
    cfg["datasets"]["real"] = {"path": "missing.h5ad", "perturbation": "gene"}
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["validate", str(p)], terminal_width=200)
    assert r.exit_code == 2  # bad input
    assert "error:" in r.output and "missing.h5ad" in r.output


def test_run_with_bad_config_exits_with_the_message(tmp_path):
    cfg = tiny_config("out", n_bot=3)
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 2
    assert "n_bot" in r.output


def test_simulate_writes_the_benchmark(tmp_path):
    r = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            str(tmp_path / "b"),
            "--n-cells",
            "200",
            "--n-genes",
            "60",
            "--n-tfs",
            "6",
        ],
    )
    assert r.exit_code == 0, r.output
    for f in ("perturbseq.h5ad", "grn.tsv", "ppi.tsv"):
        assert (tmp_path / "b" / f).exists()
