"""grn_recovery: the candidate universe, the cluster bootstrap, and the nulls behave as
stated on planted and on null data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from scfm_audit.data import ReferenceNetwork, simulate_perturbseq
from scfm_audit.edges import EdgeScores, coexpression
from scfm_audit.evaluate import candidate_pairs, clustered_auroc_bootstrap, edge_recovery


def _ref(edges, directed=True):
    return ReferenceNetwork(pd.DataFrame(edges, columns=["source", "target"]), directed=directed)


def test_directed_universe_is_every_tf_to_gene_pair_without_self():
    genes = pd.Index(["A", "B", "C", "D"])
    ref = _ref([("A", "B"), ("A", "C"), ("C", "D"), ("X", "A")])  # X not scored
    pairs = candidate_pairs(genes, ref)
    # sources A and C (X absent) × 4 genes − 2 self pairs
    assert len(pairs) == 2 * 4 - 2
    got = {
        (genes[s], genes[t]) for s, t in zip(pairs.source[pairs.label], pairs.target[pairs.label])
    }
    assert got == {("A", "B"), ("A", "C"), ("C", "D")}


def test_undirected_universe_is_unordered_pairs_of_reference_genes():
    genes = pd.Index(["A", "B", "C", "D", "E"])
    ref = _ref([("B", "A"), ("C", "D")], directed=False)
    pairs = candidate_pairs(genes, ref)
    assert len(pairs) == 6  # 4 reference genes → 4·3/2 pairs; E is not in the reference
    assert pairs.n_pos == 2


def test_cluster_bootstrap_equals_brute_force_resampling():
    rng = np.random.default_rng(3)
    n = 400
    cluster = rng.integers(0, 15, n)
    y = rng.random(n) < 0.2
    s = np.round(rng.normal(size=n) + y, 1)  # ties on purpose
    s[:5] = np.nan
    lo, hi, dist = clustered_auroc_bootstrap(s, y, cluster, n_boot=20, seed=11)
    # replay the same multinomial cluster weights and recompute by replication
    codes = np.unique(cluster)
    W = np.random.default_rng(11).multinomial(
        len(codes), np.full(len(codes), 1 / len(codes)), size=20
    )
    s_fill = np.where(np.isnan(s), -np.inf, s)
    brute = []
    for w in W:
        idx = np.concatenate(
            [
                np.repeat(np.flatnonzero(cluster == c)[None], k, 0).ravel()
                for c, k in zip(codes, w)
                if k
            ]
        )
        if y[idx].all() or not y[idx].any():
            continue
        brute.append(roc_auc_score(y[idx], np.nan_to_num(s_fill[idx], neginf=-1e9)))
    np.testing.assert_allclose(dist, brute, atol=1e-12)
    assert lo <= np.median(dist) <= hi


@pytest.fixture(scope="module")
def planted():
    bench = simulate_perturbseq(n_cells=800, n_genes=150, n_tfs=15, seed=2)
    return bench, coexpression(bench.adata, method="spearman")


def test_planted_network_is_recovered_beyond_chance_and_degree(planted):
    bench, rho = planted
    r = edge_recovery(
        rho, candidate_pairs(rho.genes, bench.grn), n_boot=200, n_perm=500, n_rewire=50, seed=0
    )
    assert r["auroc"] > 0.6
    assert r["auroc_ci_low"] > 0.5
    assert r["p_shuffle"] < 0.01
    assert r["p_rewire"] < 0.05
    assert r["epr"] > 1.5


def test_null_simulation_gives_no_systematic_small_p_values():
    """With regulation switched off, p over independent null benchmarks must not pile up
    near zero (type-I error at most nominal, allowing for sampling noise)."""
    ps = []
    for seed in range(12):
        bench = simulate_perturbseq(
            n_cells=300,
            n_genes=80,
            n_tfs=8,
            n_perturbations=4,
            regulation_strength=0.0,
            seed=100 + seed,
        )
        rho = coexpression(bench.adata, method="spearman")
        r = edge_recovery(
            rho, candidate_pairs(rho.genes, bench.grn), n_boot=50, n_perm=200, n_rewire=0, seed=seed
        )
        ps.append(r["p_shuffle"])
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 3, ps
    assert np.median(ps) > 0.15, ps


def test_random_scores_are_not_recovered_under_rewiring_null(planted):
    bench, rho = planted
    rng = np.random.default_rng(0)
    noise = EdgeScores(rng.random(rho.scores.shape), rho.genes, method="noise")
    r = edge_recovery(
        noise, candidate_pairs(noise.genes, bench.grn), n_boot=50, n_perm=200, n_rewire=50, seed=1
    )
    assert r["p_shuffle"] > 0.01 and r["p_rewire"] > 0.01
    assert abs(r["auroc"] - 0.5) < 0.1


def test_unscored_pairs_rank_lowest(planted):
    bench, rho = planted
    d = rho.dense().copy()
    pairs = candidate_pairs(rho.genes, bench.grn)
    d[pairs.source[pairs.label], pairs.target[pairs.label]] = np.nan  # hide every true edge
    hidden = EdgeScores(d, rho.genes, method="hidden")
    r = edge_recovery(hidden, pairs, n_boot=20, n_perm=50, n_rewire=0, seed=0)
    assert r["auroc"] < 0.05
