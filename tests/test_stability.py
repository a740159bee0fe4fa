"""The ``stability`` analysis and the agreement kernel it shares with
``cross_context_consistency``.

Specifications: the kernel's statistics equal plain reference implementations (scipy's
Spearman, set Jaccard, sign counts; a relabelled metric equals the metric of the
explicitly relabelled matrix; weighted ranks equal the ranks of the expanded sample);
the degree-matched relabelling keeps the relabelled set's top-k degree sequence; known
answers: halves that share only hubs (planted instability of every pair) are not called
reproducible although a plain edge shuffle calls them so, halves that share pair signal
are, and co-expression of simulated cells with modules is (a clean configuration is not
flagged); the claim's test keeps its level on hub-structured nulls (a few replicates
here; ``benchmarks/calibration.py`` runs the full table); the halves are two shards of
one attention pass whose sum is the pooled pass.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from scfm_audit.analyses import calibrate
from scfm_audit.analyses.stability import edge_shuffle_p, hub_scores
from scfm_audit.evaluate import _agreement as ag
from scfm_audit.evaluate._agreement import (
    METRICS,
    ScoreSet,
    matched_classes,
    pair_metric,
    relabelling_test,
    resolve_k,
    universe,
)
from scfm_audit.stats import answer_result


def _pair(n=40, directed=False, seed=0, nan=True):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    B = 0.5 * A + rng.normal(size=(n, n))
    if not directed:
        A, B = (A + A.T) / 2, (B + B.T) / 2
    if nan:
        A[2, 7] = A[7, 2] = np.nan
    u = universe(n, directed=directed)
    k = resolve_k(0.05, u.size)
    return A, B, u, ScoreSet(A, u, k=k), ScoreSet(B, u, k=k)


@pytest.mark.parametrize("directed", [False, True])
def test_statistics_equal_plain_references(directed):
    _, _, _, a, b = _pair(directed=directed)
    va = np.where(np.isnan(a.v), -1.0, a.v)  # NaN ranks lowest (|scores| are ≥ 0)
    assert pair_metric(a, b, "spearman")[0] == pytest.approx(spearmanr(va, b.v).statistic)
    ta, tb = set(a.top.tolist()), set(b.top.tolist())
    assert len(ta) == len(tb) == a.k
    assert pair_metric(a, b, "jaccard")[0] == pytest.approx(len(ta & tb) / len(ta | tb))
    sa, sb = np.sign(np.nan_to_num(a.raw)), np.sign(np.nan_to_num(b.raw))
    agree = np.mean([sa[i] == sb[i] and sa[i] != 0 for i in ta | tb])
    assert pair_metric(a, b, "sign")[0] == pytest.approx(agree)


@pytest.mark.parametrize("directed", [False, True])
def test_relabelled_metric_equals_metric_of_relabelled_matrix(directed):
    _, B, u, a, b = _pair(directed=directed, seed=1)
    rng = np.random.default_rng(3)
    r = np.stack([rng.permutation(u.n) for _ in range(3)])
    for metric in METRICS:
        got = pair_metric(a, b, metric, r)
        for d in range(3):
            relabelled = ScoreSet(B[np.ix_(r[d], r[d])], u, k=b.k)
            assert got[d] == pytest.approx(pair_metric(a, relabelled, metric)[0])


def test_weighted_ranks_equal_ranks_of_the_expanded_sample():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 5, 30).astype(float)  # ties
    v[[3, 9]] = np.nan
    w = rng.integers(0, 4, 30).astype(float)
    got = ag._WeightedRanks(v).ranks(w[None, :])[0]
    expanded = np.repeat(np.where(np.isnan(v), -np.inf, v), w.astype(int))
    r = rankdata(expanded)
    start = np.r_[0, np.cumsum(w.astype(int))[:-1]]
    for i in np.flatnonzero(w > 0):
        assert got[i] == pytest.approx(r[start[i]])
    ones = np.ones((1, len(v)))
    x, y = ag._WeightedRanks(v).ranks(ones), ag._WeightedRanks(v[::-1].copy()).ranks(ones)
    assert ag._weighted_corr(x, y, ones)[0] == pytest.approx(
        spearmanr(np.nan_to_num(v, nan=-1), np.nan_to_num(v[::-1], nan=-1)).statistic
    )


def test_bootstrap_intervals_contain_the_estimate():
    _, _, _, a, b = _pair(n=60, seed=2, nan=False)
    boot = ag.bootstrap_agreement([a, b], n_boot=200, seed=0)
    for metric in ("spearman", "jaccard"):
        lo, hi = ag.percentile_ci(boot[metric][:, 0])
        assert lo <= pair_metric(a, b, metric)[0] <= hi


def test_matched_classes_are_invariant_to_relabelling_within_them():
    rng = np.random.default_rng(0)
    s = np.column_stack([rng.normal(size=50), rng.normal(size=50)])
    s[5] = np.nan
    cls = matched_classes(s, 0.4)
    assert cls[5] == cls.max() and (cls == cls[5]).sum() == 1  # no strength: own class
    for c in np.unique(cls):  # every member within the tolerance of the class' first
        m = np.flatnonzero(cls == c)
        if len(m) > 1 and c != cls[5]:
            assert np.abs(s[m] - s[m].max(axis=0)).max() <= 0.8 + 1e-12
    from scfm_audit.stats import permute_within_classes

    p = permute_within_classes(cls, 1, rng)[0]
    again = matched_classes(s[p], 0.4)
    assert np.array_equal(cls[p] == cls[p][:, None], again == again[:, None])
    assert len(np.unique(matched_classes(s, 0.0))) == 50  # zero width: no ties, singletons


@pytest.mark.parametrize("directed", [False, True])
def test_degree_matched_relabelling_keeps_the_top_k_degree_sequence(directed):
    from scfm_audit.stats import permute_within_classes

    rng = np.random.default_rng(1)
    _, B = hub_scores(50, rng, form="additive", beta=0.0, directed=directed)
    u = universe(50, directed=directed)
    b = ScoreSet(B, u, k=resolve_k(0.05, u.size))
    p = permute_within_classes(b.classes_for("jaccard"), 5, rng)
    for r in p:
        relabelled = ScoreSet(B[np.ix_(r, r)], u, k=b.k)
        assert np.array_equal(relabelled.degree, b.degree)  # every gene keeps its degree
        assert b.n_movable("jaccard") > 0


def _answer(A, B, directed=False, seed=0, covs=(None, None)):
    u = universe(A.shape[0], directed=directed)
    k = resolve_k(0.05, u.size)
    a, b = (ScoreSet(M, u, k=k, covariates=c) for M, c in zip((A, B), covs, strict=True))
    t = relabelling_test([a, b], "jaccard", stages=(999, 9999), seed=seed)
    res = t.mc.result(t.observed, test="t", effect_name="J", h0="h")
    return answer_result(res, claimed="greater")[0], res, edge_shuffle_p(a, b)


@pytest.mark.parametrize("form", ["additive", "multiplicative", "sink"])
def test_halves_sharing_only_hubs_are_not_reproducible(form):
    """Planted instability: every pair's noise is independent between the halves, only
    the genes' hub effects are shared. The naive answer (pairs exchangeable) is "yes"."""
    for seed in range(3):
        A, B = hub_scores(
            100, np.random.default_rng(seed), form=form, beta=0.0, directed=form == "sink"
        )
        ans, res, naive = _answer(A, B, directed=form == "sink", seed=seed)
        assert ans != "yes", (form, seed, res)
        assert res.effect > 0.2 and naive < 1e-6  # large overlap, all of it from the hubs


def test_halves_sharing_pair_signal_are_reproducible():
    A, B = hub_scores(100, np.random.default_rng(0), form="additive", beta=1.5)
    ans, res, _ = _answer(A, B)
    assert ans == "yes" and res.effect > res.null_value


def _coexpression_halves(module_strength: float, seed: int):
    from scfm_audit.analyses._calibration import Scenario
    from scfm_audit.analyses.stability import _cal_cells

    sc = Scenario("x", "null", "", params={"cells": True, "module_strength": module_strength})
    mats, _, covs = _cal_cells(sc, seed)
    return mats, covs


def test_clean_coexpression_is_reproducible_and_independent_genes_are_not():
    """Known answers on cells, with the analysis' default matching (top-k degree and
    expression mean and variance of the relabelled half)."""
    (A, B), covs = _coexpression_halves(0.5, seed=0)
    assert _answer(A, B, covs=covs)[0] == "yes"  # modules: real shared pair structure
    for seed in range(3):
        (A, B), covs = _coexpression_halves(0.0, seed=seed)
        assert _answer(A, B, covs=covs, seed=seed)[0] != "yes"  # no pair structure at all


def test_claim_test_keeps_its_level_on_hub_structured_nulls():
    """≤ 6 of 40 rejections per hub null (P(X ≥ 7) = 0.003 at the nominal 5 %), where
    the plain edge shuffle rejects nearly always; power at β = 1."""
    names = ["hub_null_additive", "hub_null_multiplicative", "hub_null_sinks_directed"]
    null, _ = calibrate("stability", n_replicates=40, seed=11, scenarios=names)
    for row in null.itertuples():
        assert row.rejections <= 6, (row.scenario, row.rejections)
    assert (null["rate[edge_shuffle]"] >= 0.9).all()
    planted, _ = calibrate(
        "stability", n_replicates=10, seed=11, scenarios=["planted_shared_edges_1"]
    )
    assert planted.loc[0, "rate"] >= 0.7


def test_halves_are_two_shards_of_one_attention_pass(tmp_path, tiny_bench):
    """The stability run sums the halves' shards and compares them with the run's pooled
    attention scores (one pass, no second forward pass for the pooled scores)."""
    from conftest import tiny_config
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.pipeline import config_from_dict, run_audit

    path = tmp_path / "m"
    build_scgpt_checkpoint(path, list(tiny_bench.adata.var_names), n_layers=2, seed=0)
    cfg = tiny_config(tmp_path / "out")
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(path)}}
    cfg["edges"] = {
        "attn": {
            "scorer": "attention",
            "model": "tiny",
            "max_cells": 60,
            "score": "softmax_relative",
            "correction": "apc",
        }
    }
    cfg["analyses"] = {
        "stability": {
            "datasets": ["sim"],
            "grid": [10],
            "n_perm": 99,
            "n_perm_max": 0,
            "n_boot": 20,
            "n_null_grid": 5,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    res = run.results["stability"]
    note = next(n for n in res.notes if "shards reproduces the pooled" in n)
    assert float(re.search(r"max \|Δ\| = ([0-9.e+-]+)", note).group(1)) < 1e-4
    table = res.tables["stability"]
    assert set(table["layer"]) == {0, 1} and (table["n_cells_half"] == 30).all()
    curve = res.tables["curve"]
    assert sorted(curve["n_cells"].unique()) == [10, 30]
    claims = run.verdicts()
    assert len(claims) == 1 and "reproducible across halves" in claims["claim"].iloc[0]
