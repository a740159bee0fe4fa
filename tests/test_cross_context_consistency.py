"""The ``cross_context_consistency`` analysis.

Specifications: with several contexts the first is held fixed and every other one is
relabelled within its own classes, and a pair's draws equal the metric of the two
explicitly relabelled matrices; known answers: contexts that share only (their own,
correlated) hubs do not agree beyond gene-level structure although a plain edge shuffle
says they do, contexts sharing pair signal do; the claim's test keeps its level on
hub-structured nulls (a few replicates; the full table: ``benchmarks/calibration.py``);
a run compares datasets (one claim, no dataset) and the cell states of a dataset
(per-stratum scores, one claim per dataset) and draws the agreement matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from scfm_audit.analyses import calibrate
from scfm_audit.analyses.stability import edge_shuffle_p, hub_scores
from scfm_audit.evaluate._agreement import (
    ScoreSet,
    _relative,
    pair_metric,
    relabelling_null,
    relabelling_test,
    resolve_k,
    universe,
)
from scfm_audit.stats import answer_result, permute_within_classes


def _sets(beta: float, seed: int, n_sets: int = 3, form: str = "additive", G: int = 100):
    mats = hub_scores(
        G, np.random.default_rng(seed), form=form, beta=beta, n_sets=n_sets, context_sd=0.3
    )
    u = universe(G, directed=False)
    k = resolve_k(0.05, u.size)
    return mats, [ScoreSet(M, u, k=k) for M in mats]


def test_pair_draws_equal_the_metric_of_both_relabelled_matrices():
    mats, sets = _sets(0.5, seed=0)
    rng = np.random.default_rng(1)
    perms = [None] + [permute_within_classes(s.classes_for("jaccard"), 4, rng) for s in sets[1:]]
    u, k = sets[0].u, sets[0].k
    for ia, ib in [(0, 1), (1, 2)]:
        r = _relative(perms, ia, ib, 4, u.n)
        got = pair_metric(sets[ia], sets[ib], "jaccard", r)
        for d in range(4):
            pa = np.arange(u.n) if perms[ia] is None else perms[ia][d]
            pb = perms[ib][d]
            a = ScoreSet(mats[ia][np.ix_(pa, pa)], u, k=k)
            b = ScoreSet(mats[ib][np.ix_(pb, pb)], u, k=k)
            assert got[d] == pytest.approx(pair_metric(a, b, "jaccard")[0])
    null = relabelling_null(sets, "jaccard", [(0, 1), (0, 2), (1, 2)], 7, rng)
    assert null.shape == (7, 3) and np.isfinite(null).all()


def _answer(sets, seed=0):
    t = relabelling_test(sets, "jaccard", stages=(999, 9999), seed=seed)
    res = t.mc.result(t.observed, test="t", effect_name="mean J", h0="h")
    return answer_result(res, claimed="greater")[0], res


@pytest.mark.parametrize("form", ["additive", "multiplicative"])
def test_contexts_sharing_only_their_hubs_do_not_agree(form):
    for seed in range(3):
        _, sets = _sets(0.0, seed, form=form)
        ans, res = _answer(sets, seed)
        assert ans != "yes", (form, seed, res)
        assert edge_shuffle_p(sets[0], sets[1]) < 1e-6  # the naive test says they agree


def test_contexts_sharing_pair_signal_agree():
    _, sets = _sets(1.5, seed=0)
    ans, res = _answer(sets)
    assert ans == "yes" and res.effect > res.null_value


def test_claim_test_keeps_its_level_on_hub_structured_nulls():
    """≤ 6 of 40 rejections per hub null (P(X ≥ 7) = 0.003 at the nominal 5 %); power at
    β = 1."""
    names = ["hub_null_additive_contexts", "hub_null_multiplicative_contexts"]
    null, _ = calibrate("cross_context_consistency", n_replicates=40, seed=5, scenarios=names)
    for row in null.itertuples():
        assert row.rejections <= 6, (row.scenario, row.rejections)
    assert (null["rate[edge_shuffle]"] >= 0.9).all()
    planted, _ = calibrate(
        "cross_context_consistency",
        n_replicates=10,
        seed=5,
        scenarios=["planted_shared_edges_contexts_1"],
    )
    assert planted.loc[0, "rate"] >= 0.7


def test_run_compares_datasets_and_cell_states(tmp_path):
    from conftest import tiny_config
    from scfm_audit.pipeline import config_from_dict, run_audit

    cfg = tiny_config(tmp_path)
    cfg["edges"] = {
        "spearman": {
            "scorer": "coexpression",
            "method": "spearman",
            "cells": "all",
            "max_cells": 600,
        }
    }
    cfg["analyses"] = {
        "cross_context_consistency": {
            "contexts": ["datasets", "cell_state", "modality"],
            "n_perm": 199,
            "n_perm_max": 0,
            "n_boot": 30,
            "min_context_cells": 40,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    res = run.results["cross_context_consistency"]
    summary = res.tables["consistency"]
    assert set(summary["family"]) == {"datasets", "cell_state"}
    states = summary[summary["family"] == "cell_state"]
    assert set(states["dataset"]) == {"sim", "null"} and (states["n_contexts"] >= 2).all()
    pairs = res.tables["pairs"]
    m = states.set_index("dataset")["n_contexts"]
    for ds, n in m.items():  # every pair of contexts once
        assert (pairs["dataset"] == ds).sum() == n * (n - 1) // 2
    assert any(
        "modality" in n or "perturbation arms" in n or "fewer than 2" in n for n in res.notes
    )  # one CRISPRi arm: nothing to compare
    v = run.verdicts()
    assert len(v) == 3  # datasets (named together) + the cell states of each dataset
    assert sorted(v["dataset"]) == ["null", "sim", "sim, null"]
    assert v["claim"].str.contains("beyond gene-level structure").all()
    assert any(k.startswith("consistency_cell_state_sim") for k in res.figures)
    # the two simulations share gene names, not genes: no agreement between datasets
    across = v[v["dataset"] == "sim, null"].iloc[0]
    assert across["answer"] != "yes"


def test_claims_name_each_source_by_its_config_name(tmp_path):
    """Two co-expression sources of one method stay apart in the scorecard (the
    per-context scores carry the source's name, as the runner's pooled scores do)."""
    from conftest import tiny_config
    from scfm_audit.pipeline import config_from_dict, run_audit

    cfg = tiny_config(tmp_path)
    cfg["edges"] = {
        "spearman": {"scorer": "coexpression", "method": "spearman", "max_cells": 400},
        "spearman_all": {
            "scorer": "coexpression",
            "method": "spearman",
            "cells": "all",
            "max_cells": 600,
        },
    }
    cfg["analyses"] = {
        "cross_context_consistency": {
            "datasets": ["sim"],
            "contexts": ["cell_state"],
            "n_perm": 99,
            "n_perm_max": 0,
            "n_boot": 20,
            "min_context_cells": 20,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    claims = run.verdicts()["claim"].tolist()
    assert len(claims) == 2 and len(set(claims)) == 2
    assert any("spearman_all" in c for c in claims)
