"""Contract over the whole analysis registry: every registered analysis runs on the toy
simulator with its default parameters, returns what it declares, registers its tests,
and survives a reference that shares no gene with the data."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from conftest import tiny_config
from scfm_audit.pipeline import ANALYSES, AnalysisResult, config_from_dict, run_audit
from scfm_audit.pipeline._cache import ArtifactCache
from scfm_audit.pipeline._runner import Progress, Resources, _run_analyses
from scfm_audit.pipeline._validate import InputError

NAMES = ANALYSES.names()


def test_registry_is_not_empty():
    assert "grn_recovery" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete(name):
    spec = ANALYSES.get(name)
    assert spec.description and spec.version and spec.category
    spec.params()  # defaults alone are a valid parameter set


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_bench):
    """A 3-layer scGPT checkpoint in the real layout: analyses of layered and per-head
    attention have something to read."""
    from scfm_audit.models import build_scgpt_checkpoint

    path = tmp_path_factory.mktemp("model") / "scgpt"
    build_scgpt_checkpoint(path, list(tiny_bench.adata.var_names), n_layers=3, seed=0)
    return path


def with_attention(cfg: dict, model_path) -> dict:
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(model_path)}}
    cfg["edges"]["attn"] = {
        "scorer": "attention",
        "model": "tiny",
        "max_cells": 40,
        "per_head": True,
        "score": "softmax_relative",  # the demo's reading: every option reaches every path
        "correction": "apc",
    }
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_simulator_and_registers_tests(name, tmp_path, tiny_model):
    cfg = with_attention(tiny_config(tmp_path), tiny_model)
    cfg["analyses"] = {name: ANALYSES.get(name).quick}
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    res = run.results[name]
    assert isinstance(res, AnalysisResult)
    assert res.tables and all(isinstance(t, pd.DataFrame) and len(t) for t in res.tables.values())
    assert all(isinstance(f, Figure) for f in res.figures.values())
    mine = run.tests[run.tests["analysis"] == name]
    assert len(mine) > 0
    assert mine["p"].dropna().between(0, 1).all()
    assert mine["hypothesis"].str.len().gt(0).all() and mine["null"].str.len().gt(0).all()
    # the claim path: exactly one claim test per scorecard line, answered from that test
    board = run.verdicts()
    lines = board[board["analysis"] == name]
    assert (mine["family"] == "claim").sum() == len(lines)
    assert lines["answer"].isin(["yes", "opposite", "no evidence", "n/a"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_reference_without_shared_genes_is_handled(name, tmp_path, tiny_model):
    ref = tmp_path / "alien.tsv"
    ref.write_text("source\ttarget\nALIEN1\tALIEN2\nALIEN1\tALIEN3\n")
    cfg = with_attention(tiny_config(tmp_path / "out"), tiny_model)
    cfg["references"] = {"alien": {"format": "table", "path": str(ref)}}
    cfg["analyses"] = {name: ANALYSES.get(name).quick}
    # a run refuses it before computing (a reference matching none of the
    # data's genes is an input error with a one-line reason) ...
    with pytest.raises(InputError, match="shares no gene"):
        run_audit(config_from_dict(cfg), quiet=True)
    # ... and the analysis itself, given it anyway, handles it and says why
    c = config_from_dict(cfg)
    progress = Progress(quiet=True)
    run = _run_analyses(
        c, c.analysis_params(), Resources(c, ArtifactCache(None), progress), progress
    )
    assert not run.errors, run.errors
    assert run.results[name].notes  # says why nothing could be evaluated


@pytest.mark.parametrize("name", NAMES)
def test_every_analysis_is_calibrated_or_says_why_not(name):
    """Every analysis declares null and planted simulator scenarios for the calibration
    harness (with at least one hub-structured null), unless it is exempt with a reason."""
    from scfm_audit.analyses._calibration import CALIBRATIONS, EXEMPT

    if name in EXEMPT:
        assert len(EXEMPT[name]) > 10
        return
    assert name in CALIBRATIONS, f"{name} has no registered calibration"
    cal = CALIBRATIONS.get(name)
    kinds = [s.kind for s in cal.scenarios]
    assert "null" in kinds and "planted" in kinds
    assert any("hub" in s.name for s in cal.scenarios if s.kind == "null")
    assert len({s.strength for s in cal.scenarios if s.kind == "planted"}) >= 2


def test_readme_claims_table_is_the_registry():
    """The README's table of claims and their tests is the registry's: an analysis that
    adds, drops or rewords a claim must update the README (regenerate it with
    ``scfm_audit.analyses.claims_table()``)."""
    from pathlib import Path

    from scfm_audit.analyses import claims_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- claims:start -->\n") + len("<!-- claims:start -->\n")
    end = readme.index("\n<!-- claims:end -->")
    assert readme[start:end] == claims_table()


@pytest.mark.parametrize("name", NAMES)
def test_every_analysis_declares_its_claims(name):
    spec = ANALYSES.get(name)
    assert bool(spec.claims) != bool(spec.no_claims), (
        f"{name}: declare its claims (claims=...) or why it makes none (no_claims=...)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_demo_block_is_keyed_by_analysis(name):
    """A demo block maps analysis names (``name`` or ``name@tag``) to parameters that
    the analysis accepts."""
    spec = ANALYSES.get(name)
    if spec.demo is None:
        return
    for models in (False, True):
        blocks = spec.demo(quick=False, models=models) or {}
        for key, params in blocks.items():
            assert key.split("@")[0] == name, (name, key)
            spec.params(**params)  # valid parameters
