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


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_simulator_and_registers_tests(name, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["analyses"] = {name: {}}
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


@pytest.mark.parametrize("name", NAMES)
def test_reference_without_shared_genes_is_handled(name, tmp_path):
    ref = tmp_path / "alien.tsv"
    ref.write_text("source\ttarget\nALIEN1\tALIEN2\nALIEN1\tALIEN3\n")
    cfg = tiny_config(tmp_path / "out")
    cfg["references"] = {"alien": {"format": "table", "path": str(ref)}}
    cfg["analyses"] = {name: {}}
    # a run refuses it before computing (issue 7: a reference matching none of the
    # data's genes is an input error with a one-line reason) ...
    with pytest.raises(InputError, match="shares no gene"):
        run_audit(config_from_dict(cfg), quiet=True)
    # ... and the analysis itself, given it anyway, handles it and says why
    c = config_from_dict(cfg)
    progress = Progress(quiet=True)
    run = _run_analyses(c, c.analysis_params(), Resources(c, ArtifactCache(None), progress),
                        progress)  # fmt: skip
    assert not run.errors, run.errors
    assert run.results[name].notes  # says why nothing could be evaluated
