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
# Parameters that keep an analysis' contract run short (its defaults are checked for validity).
QUICK = {
    "attention_vs_coexpression": {
        "n_boot": 50,
        "n_perm": 99,
        "n_perm_max": 0,
        "n_mantel": 19,
        "gbm_max_iter": 30,
        "cv_folds": 3,
    },
    "gene_level_null": {"n_boot": 100},
    "incremental_value": {"n_boot": 50, "n_splits": 3, "gbm_max_iter": 10, "ks": [5]},
    "head_ablation": {
        "ks": [2],
        "channels": ["zero", "mean"],
        "n_random": 19,
        "n_random_other": 0,
        "n_entropy_matched": 2,
        "n_cells": 8,
        "n_reference_cells": 8,
        "n_boot": 50,
        "selection_n_perm": 99,
        "selection_n_perm_max": 0,
        "prediction_cells": 16,
        "in_silico_cells": 8,
        "in_silico_perturbations": 3,
    },
    "perturbation_prediction": {"n_boot": 100},
    "context_dependence": {"n_boot": 100},
    "in_silico_perturbation": {
        "datasets": ["sim"],
        "max_cells": 24,
        "max_perturbations": 6,
        "n_perm": 199,
        "n_perm_max": 0,
        "n_boot": 100,
    },
    "perturbation_responders": {
        "n_boot": 200,
        "sweep_lfc": [0.5, 1.0],
        "sweep_control_cells": [60, 1000],
        "sweep_hvgs": [60, 1000],
        "sweep_reference": [0.5, 60, 60],
    },
    "cssi": {
        "datasets": ["sim"],
        "strata": "kmeans",
        "n_clusters": 3,
        "k_scan": [2, 4],
        "n_null_strata": 2,
        "n_perm": 49,
        "n_boot": 20,
    },
    "scaling": {
        "datasets": ["sim"],
        "grid": [20, 40, 80],
        "n_repeats": 2,
        "n_boot": 50,
    },
    "batch_leakage": {
        "max_cells": 200,
        "n_perm": 49,
        "n_perm_max": 0,
        "n_resamples": 3,
        "top_k": 20,
    },
    "calibration": {"n_boot": 20},
    "synthetic_controls": {
        "n_replicates": 5,
        "scenarios": ["hub_null_directed_150", "planted_auroc_0.65"],
    },
}


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


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_simulator_and_registers_tests(name, tmp_path, tiny_model):
    cfg = with_attention(tiny_config(tmp_path), tiny_model)
    cfg["analyses"] = {name: QUICK.get(name, {})}
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
def test_reference_without_shared_genes_is_handled(name, tmp_path, tiny_model):
    ref = tmp_path / "alien.tsv"
    ref.write_text("source\ttarget\nALIEN1\tALIEN2\nALIEN1\tALIEN3\n")
    cfg = with_attention(tiny_config(tmp_path / "out"), tiny_model)
    cfg["references"] = {"alien": {"format": "table", "path": str(ref)}}
    cfg["analyses"] = {name: QUICK.get(name, {})}
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
