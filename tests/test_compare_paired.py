"""`scfm-audit compare`: where both runs scored the same edges, a paired test of the
recovery difference (ΔAUROC under one two-way vertex bootstrap), read from each run's
cache, never recomputed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from scfm_audit.cli import app
from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.pipeline import config_from_dict, run_audit
from scfm_audit.pipeline._runner import finished_run_scores
from scfm_audit.report._compare import compare_runs, load_run, paired_recovery_test


def _scores(genes: list[str], edges: pd.DataFrame, signal: float, seed: int) -> EdgeScores:
    rng = np.random.default_rng(seed)
    n = len(genes)
    s = rng.normal(size=(n, n))
    pos = pd.Series(range(n), index=genes)
    s[pos[edges["source"]].to_numpy(), pos[edges["target"]].to_numpy()] += signal
    return EdgeScores(scores=s, genes=pd.Index(genes), method="planted")


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(60)]
    tfs = genes[:8]
    src = rng.choice(tfs, 80)
    tgt = rng.choice(genes[8:], 80)
    edges = pd.DataFrame({"source": src, "target": tgt}).drop_duplicates()
    ref = ReferenceNetwork(name="ref", edges=edges, directed=True)
    return genes, edges, ref


def test_a_planted_difference_is_found_and_its_ci_covers_it(planted):
    genes, edges, ref = planted
    strong = _scores(genes, edges, signal=1.5, seed=1)
    none = _scores(genes, edges, signal=0.0, seed=2)
    t = paired_recovery_test(strong, none, ref, n_boot=499, seed=0)
    assert t["delta"] > 0.2 and t["ci_low"] > 0 and t["p"] <= 2 / 500 * 1.0001
    assert t["n_pos"] == len(edges)


def test_a_source_against_itself_has_no_difference(planted):
    """H0 true by construction: Δ = 0 in every draw, p = 1."""
    genes, edges, ref = planted
    a = _scores(genes, edges, signal=0.5, seed=3)
    t = paired_recovery_test(a, a, ref, n_boot=199, seed=0)
    assert t["delta"] == 0 and t["ci_low"] == 0 and t["ci_high"] == 0 and t["p"] == 1


def test_only_the_genes_both_runs_scored_are_compared(planted):
    genes, edges, ref = planted
    a = _scores(genes, edges, signal=1.0, seed=4)
    b = _scores(genes[:50], edges[edges["target"].isin(genes[:50])], signal=1.0, seed=5)
    t = paired_recovery_test(a, b, ref, n_boot=99, seed=0)
    assert t["n_pairs"] == 8 * 49  # 8 TFs × the 49 other genes among the 50 shared


@pytest.fixture(scope="module")
def two_cached_runs(tmp_path_factory):
    """Two runs on the same simulated data: one co-expression source each (Pearson, and
    Spearman under the same config name), recovery of the simulated GRN."""
    out = []
    for name, method in (("a", "pearson"), ("b", "spearman")):
        folder = tmp_path_factory.mktemp(f"run_{name}")
        cfg = tiny_config(folder)
        cfg["edges"] = {"coexp": {"scorer": "coexpression", "method": method, "max_cells": 400}}
        cfg["analyses"] = {
            "grn_recovery": {
                "datasets": ["sim"],
                "references": ["grn"],
                "n_boot": 50,
                "n_perm": 99,
                "n_rewire": 5,
            }
        }
        run = run_audit(config_from_dict(cfg), quiet=True)
        assert not run.errors, run.errors
        out.append(folder)
    return out


@pytest.mark.slow
def test_compare_pairs_two_runs_that_scored_the_same_edges(two_cached_runs, tmp_path):
    a, b = two_cached_runs
    res = compare_runs(load_run(a), load_run(b), scores_of=finished_run_scores, n_boot=99)
    pt = res["paired"]
    assert len(pt) == 1
    r = pt.iloc[0]
    assert (r["dataset"], r["reference"]) == ("sim", "grn")
    # Δ is the difference of the two runs' own AUROCs on the same candidates
    sa, sb = (pd.read_csv(f / "scorecard.csv").iloc[0] for f in (a, b))
    assert r["delta"] == pytest.approx(sa["effect"] - sb["effect"], abs=1e-9)
    assert r["ci_low"] <= r["delta"] <= r["ci_high"] and 0 < r["p"] <= 1
    cli = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    assert "paired tests on the same edges: 1" in cli.output
    assert "Paired tests on the same edges (1)" in (tmp_path / "compare.html").read_text()


@pytest.mark.slow
def test_without_a_cache_there_is_no_paired_test(two_cached_runs, tmp_path):
    import shutil

    a, b = two_cached_runs
    b2 = tmp_path / "b_nocache"
    shutil.copytree(b, b2, ignore=shutil.ignore_patterns("cache"))
    assert compare_runs(load_run(a), load_run(b2), scores_of=finished_run_scores, n_boot=99)[
        "paired"
    ].empty
    # without a reader of the runs' scores (the report alone), no paired test either
    assert compare_runs(load_run(a), load_run(b), n_boot=99)["paired"].empty
