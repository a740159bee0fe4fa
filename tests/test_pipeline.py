"""The runner as a user meets it: config errors name the key, a run writes one folder,
the same config gives the same numbers, a killed run resumes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import tiny_config
from scfm_audit._io import atomic_path, atomic_write_text
from scfm_audit.pipeline import ConfigError, config_from_dict, load_config, run_audit
from scfm_audit.pipeline._cache import ArtifactCache
from scfm_audit.stats import bh_fdr

# -- config validation ------------------------------------------------------------------


def test_unknown_analysis_gets_did_you_mean(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["analyses"]["grn_recovry"] = {}
    with pytest.raises(ConfigError, match=r"analyses\.grn_recovry: unknown analysis.*grn_recovery"):
        config_from_dict(cfg)


def test_unknown_parameter_points_at_the_key(tmp_path):
    cfg = tiny_config(tmp_path, n_bot=5)
    with pytest.raises(ConfigError, match=r"analyses\.grn_recovery\.n_bot: unknown key"):
        config_from_dict(cfg)


def test_wrong_type_points_at_the_key(tmp_path):
    cfg = tiny_config(tmp_path, n_perm="many")
    with pytest.raises(ConfigError, match=r"analyses\.grn_recovery\.n_perm"):
        config_from_dict(cfg)


def test_reference_to_undefined_name_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path, references=["grm"])
    with pytest.raises(ConfigError, match=r"'grm' is not defined under 'references'.*'grn'"):
        config_from_dict(cfg)


def test_dataset_needs_exactly_one_source(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["datasets"]["sim"]["path"] = "x.h5ad"
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        config_from_dict(cfg)


def test_simulated_reference_must_name_a_simulated_dataset(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["datasets"]["real"] = {"path": "real.h5ad"}
    cfg["references"]["bad"] = {"format": "simulated", "dataset": "real"}
    with pytest.raises(ConfigError, match="'real' is not a simulated dataset"):
        config_from_dict(cfg)


def test_unknown_top_level_key(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["analysis"] = {}
    with pytest.raises(ConfigError, match="analysis: unknown key"):
        config_from_dict(cfg)


def test_yaml_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = tiny_config("out")
    cfg["references"]["trrust"] = {"format": "trrust", "path": "refs/trrust.tsv"}
    p = tmp_path / "sub" / "audit.yaml"
    p.write_text(yaml.safe_dump(cfg))
    loaded = load_config(p)
    assert loaded.references["trrust"].path == tmp_path / "sub" / "refs" / "trrust.tsv"
    assert loaded.output == tmp_path / "sub" / "out"


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


# -- a run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_audit(config_from_dict(tiny_config(out)), quiet=True)


def test_run_writes_one_complete_folder(first_run):
    out = first_run.output
    for f in (
        "report.html",
        "tests.parquet",
        "tests.csv",
        "scorecard.csv",
        "config.resolved.yaml",
        "run.json",
        "tables/grn_recovery__recovery.parquet",
        "tables/family_sensitivity.csv",
    ):
        assert (out / f).exists(), f
    assert list((out / "figures").glob("grn_recovery__roc_pr_*.png"))
    # the resolved config is itself a valid config
    assert load_config(out / "config.resolved.yaml").seed == 0


def test_every_test_has_p_and_q_within_its_family(first_run):
    tests = pd.read_parquet(first_run.output / "tests.parquet")
    assert len(tests) == len(first_run.tests) > 0
    assert tests["p"].between(0, 1).all()
    assert tests["q"].notna().all() and (tests["q"] >= tests["p"] - 1e-12).all()
    # one claim test per scorecard line; the claims' q is BH among claims only
    claims = tests[tests["family"] == "claim"]
    assert len(claims) == len(first_run.verdicts())
    assert np.allclose(claims["q"], bh_fdr(claims["p"].to_numpy()))
    assert set(tests["analysis"]) == {"grn_recovery", "grn_recovery@null"}


def test_planted_network_recovered_and_null_not(first_run):
    sc = first_run.verdicts()
    planted = sc[sc["dataset"] == "sim"]
    null = sc[sc["dataset"] == "null"]
    assert (planted["answer"] == "yes").all(), planted
    assert (null["answer"] == "no evidence").all(), null
    # the scorecard names the estimate on its natural scale, the null and the null's own
    # centre (a degree-matched relabelling is not centred exactly on 0.5)
    assert (sc["effect_name"] == "AUROC").all()
    assert sc["null_value"].between(0.3, 0.7).all() and (sc["null_value"] != 0.5).any()
    assert (sc["null_name"] == "degree_permutation").all()
    assert (planted["side"] == "greater").all()


def test_same_config_same_numbers_and_cache_reuse(first_run, tmp_path):
    again = run_audit(first_run.config, quiet=True)
    assert again.cache_hits and not again.cache_misses
    cols = ["analysis", "hypothesis", "method", "reference", "p", "q", "effect", "ci_low"]
    pd.testing.assert_frame_equal(again.tests[cols], first_run.tests[cols])
    # and a fresh folder (no cache at all) gives the same numbers too
    fresh = run_audit(config_from_dict(tiny_config(tmp_path)), quiet=True)
    pd.testing.assert_frame_equal(fresh.tests[cols], first_run.tests[cols])


def test_killed_run_resumes_with_identical_results(first_run, tmp_path, monkeypatch):
    """A kill during the second edge computation leaves the first artifact complete and no
    half-written one; the next run computes only what is missing, with identical numbers."""
    from scfm_audit.edges import _registry

    real = _registry.EDGE_SCORERS.get("coexpression")
    calls = {"n": 0}

    def dying(adata, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what SIGINT / a kill looks like mid-computation
        return real(adata, **kw)

    monkeypatch.setitem(_registry.EDGE_SCORERS._items, "coexpression", dying)
    cfg = config_from_dict(tiny_config(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, quiet=True)
    edges_dir = tmp_path / "cache" / "edges"
    done = [d for d in edges_dir.iterdir() if (d / "DONE").exists()]
    assert len(done) == 1
    assert not (tmp_path / "report.html").exists()
    # a stale temporary folder, as a kill during a write would leave, is cleaned up
    (edges_dir / ".tmp-deadbeef-1").mkdir()
    monkeypatch.setitem(_registry.EDGE_SCORERS._items, "coexpression", real)
    resumed = run_audit(cfg, quiet=True)
    assert not (edges_dir / ".tmp-deadbeef-1").exists()
    assert len(resumed.cache_hits) >= 2  # the simulation and the first edge artifact
    cols = ["hypothesis", "p", "q", "effect"]
    pd.testing.assert_frame_equal(resumed.tests[cols], first_run.tests[cols])


def test_failing_analysis_is_reported_not_fatal(tmp_path, monkeypatch):
    from scfm_audit.analyses._contract import ANALYSES

    cfg = config_from_dict(tiny_config(tmp_path))
    spec = ANALYSES.get("grn_recovery")

    def boom(ctx, p):
        if ctx.analysis == "grn_recovery@null":
            ctx.add_test(hypothesis="half", test="t", null="n", p=0.5)
            raise RuntimeError("exploded on purpose")
        return spec.run(ctx, p)

    monkeypatch.setitem(
        ANALYSES._items, "grn_recovery", type(spec)(**{**spec.__dict__, "run": boom})
    )
    run = run_audit(cfg, quiet=True)
    assert "exploded on purpose" in run.errors["grn_recovery@null"]
    assert "half" not in set(run.tests["hypothesis"])  # its partial tests are dropped
    assert "exploded on purpose" in (tmp_path / "report.html").read_text()


# -- atomic writes and the cache ------------------------------------------------------------


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    assert oct(os.stat(target).st_mode & 0o044) != "0o0"  # readable by others


def test_cache_keys_on_parameters(tmp_path):
    cache = ArtifactCache(tmp_path)
    n = {"calls": 0}

    def compute():
        n["calls"] += 1
        return pd.DataFrame({"x": [n["calls"]]})

    a = cache.get_or_compute("t", {"k": 1}, compute, codec="frame")
    b = cache.get_or_compute("t", {"k": 1}, compute, codec="frame")
    c = cache.get_or_compute("t", {"k": 2}, compute, codec="frame")
    assert n["calls"] == 2
    assert a["x"][0] == b["x"][0] == 1 and c["x"][0] == 2


def test_genes_outside_a_models_vocabulary_are_reported(tmp_path, tiny_bench):
    """A model that knows only part of the dataset's genes: the run says how many and
    which, instead of silently scoring fewer genes."""
    from scfm_audit.models import build_scgpt_checkpoint

    genes = list(tiny_bench.adata.var_names)
    build_scgpt_checkpoint(tmp_path / "scgpt", genes[:-5], seed=0)
    cfg = tiny_config(tmp_path / "out")
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(tmp_path / "scgpt")}}
    cfg["edges"]["attn"] = {"scorer": "attention", "model": "tiny", "max_cells": 40}
    cfg["analyses"] = {
        "grn_recovery": {
            "datasets": ["sim"],
            "references": ["grn"],
            "edges": ["attn"],
            "n_boot": 20,
            "n_perm": 20,
            "n_rewire": 0,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    note = next(n for n in run.notes if n.startswith("vocabulary tiny sim"))
    assert f"{len(genes) - 5}/{len(genes)} genes" in note
    assert all(g in note for g in genes[-5:])
    assert "vocabulary tiny sim" in (run.output / "report.html").read_text()


@pytest.mark.parametrize("verdict_layer", ["best", 0])
def test_layer_behind_a_claim_is_stated_and_selection_is_corrected(
    tmp_path, tiny_bench, verdict_layer
):
    """A layered source's scorecard answer rests on one layer: fixed a priori (its own
    test), or the best by AUROC with p × number of layers (Bonferroni); the per-layer
    tests are descriptive, and the scorecard says which layer and why."""
    from scfm_audit.models import build_scgpt_checkpoint

    build_scgpt_checkpoint(tmp_path / "scgpt", list(tiny_bench.adata.var_names), seed=0)
    cfg = tiny_config(tmp_path / "out")
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(tmp_path / "scgpt")}}
    cfg["edges"] = {"attn": {"scorer": "attention", "model": "tiny", "max_cells": 40}}
    cfg["analyses"] = {
        "grn_recovery": {
            "datasets": ["sim"],
            "references": ["grn"],
            "n_boot": 20,
            "n_perm": 99,
            "per_head": False,
            "verdict_layer": verdict_layer,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    sc = run.verdicts()
    assert len(sc) == 1 and sc["answer"].iloc[0] in ("yes", "opposite", "no evidence", "n/a")
    t = run.tests
    verdict_null = t["null_name"] == "degree_permutation"
    selected = t["hypothesis"].str.contains("selected layer")
    per_layer = t[verdict_null & ~selected & t["layer"].notna()]
    assert (per_layer["family"] == "descriptive").all()
    n_layers = per_layer["layer"].nunique()
    assert n_layers >= 2
    chosen = sc["layer"].iloc[0]
    p_layer = per_layer.loc[per_layer["layer"] == chosen, "p"].iloc[0]
    if verdict_layer == "best":  # the largest null-standardised effect
        z = (per_layer["effect"] - per_layer["null_value"]) / per_layer["null_scale"]
        assert chosen == per_layer.loc[z.idxmax(), "layer"]
        assert f"best of {n_layers} layers" in sc["layer_choice"].iloc[0]
        assert sc["p"].iloc[0] == pytest.approx(min(1.0, n_layers * p_layer))
    else:
        assert chosen == 0 and "fixed a priori" in sc["layer_choice"].iloc[0]
        assert sc["p"].iloc[0] == pytest.approx(p_layer)


def test_claims_about_a_model_that_did_not_learn_are_not_assessable(tmp_path, tiny_bench):
    """A demo model whose training log says it did not beat its baseline: its attention
    claims read n/a with the reason, whatever their p-values."""
    import json

    from scfm_audit.models import build_scgpt_checkpoint

    build_scgpt_checkpoint(tmp_path / "scgpt", list(tiny_bench.adata.var_names), seed=0)
    (tmp_path / "scgpt" / "train_log.json").write_text(
        json.dumps(
            {"learned": False, "eval_loss_final": 5.6, "chance_loss": 5.7, "baseline_loss": 5.5}
        )
    )
    cfg = tiny_config(tmp_path / "out")
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(tmp_path / "scgpt")}}
    cfg["edges"]["attn"] = {"scorer": "attention", "model": "tiny", "max_cells": 40}
    cfg["analyses"] = {
        "grn_recovery": {
            "datasets": ["sim"],
            "references": ["grn"],
            "n_boot": 20,
            "n_perm": 49,
            "per_head": False,
        }
    }
    sc = run_audit(config_from_dict(cfg), quiet=True).verdicts().set_index("model", drop=False)
    attn = sc[sc["model"] == "tiny"]
    assert len(attn) == 1 and attn["answer"].iloc[0] == "n/a"
    assert "did not learn" in attn["reason"].iloc[0]
    assert (sc[sc["model"].isna()]["answer"] == "yes").all()  # co-expression unaffected


def test_responders_are_computed_once_per_run(tmp_path, monkeypatch):
    """Analyses sharing a dataset's responder definition share one DE pass (a run-wide
    artifact), instead of one per analysis and edge source."""
    import scfm_audit.evaluate._de as de_mod

    calls = []
    real = de_mod.differential_expression
    monkeypatch.setattr(
        de_mod, "differential_expression", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    cfg = tiny_config(tmp_path)
    cfg["analyses"] = {
        "perturbation_prediction": {"datasets": ["sim"], "attention": ["pearson"], "n_boot": 50},
        "incremental_value": {
            "datasets": ["sim"],
            "attention": ["pearson"],
            "correlation": ["spearman"],
            "n_boot": 50,
            "gbm": False,
            "groupings": ["perturbation"],
            "matched": False,
        },
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    assert len(calls) == 1
