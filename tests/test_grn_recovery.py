"""grn_recovery: the candidate universe, the two-way bootstrap, the structure-preserving
nulls and the four-valued answers behave as stated on planted and on null data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from scfm_audit.data import ReferenceNetwork, simulate_perturbseq
from scfm_audit.edges import EdgeScores, coexpression
from scfm_audit.evaluate import candidate_pairs, edge_recovery
from scfm_audit.evaluate._recovery import (
    RewiredNetworks,
    gene_roles,
    nan_lowest_ranks,
    pair_scores,
    rank_matrix,
    recovery_result,
    relabelled_auroc_null,
    weighted_auroc,
)
from scfm_audit.stats import StatTestResult, answer_result, permute_within_classes


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


def test_weighted_auroc_equals_auroc_of_replicated_cases():
    rng = np.random.default_rng(3)
    n = 300
    y = rng.random(n) < 0.2
    s = np.round(rng.normal(size=n) + y, 1)  # ties on purpose
    s[:5] = np.nan
    W = rng.integers(0, 4, size=(6, n))
    got = weighted_auroc(s, y, W)
    s_fill = np.where(np.isnan(s), -1e9, s)
    want = [roc_auc_score(np.repeat(y, w), np.repeat(s_fill, w)) for w in W]
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_auroc_and_f1_of_counts_are_the_general_ones_bitwise(seed):
    """H0: with whole-number weights the running-sum AUROC and top-K F1 equal the general
    formulas to the last bit (ties, NaN scores, no positives)."""
    from scfm_audit.evaluate._recovery import counts_top_k_f1

    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 2000))
    y = rng.random(n) < (0.0 if seed == 5 else 0.1)
    s = rng.normal(size=n) + y
    if seed % 2:
        s = np.round(s, 1)
    s[rng.random(n) < 0.1] = np.nan
    W = rng.multinomial(n, np.full(n, 1 / n), size=7) * rng.integers(0, 3, size=(7, n))
    W = W.astype(float)
    np.testing.assert_array_equal(
        weighted_auroc(s, y, W, counts=True), weighted_auroc(s, y, W), strict=True
    )
    order = np.argsort(-np.where(np.isnan(s), -np.inf, s), kind="stable")
    Wo, yo = W[:, order], y[order].astype(float)
    K = (Wo * yo).sum(1, keepdims=True)
    top = np.cumsum(Wo, axis=1) <= K
    with np.errstate(invalid="ignore", divide="ignore"):
        want = 2 * (Wo * yo * top).sum(1) / ((Wo * top).sum(1) + K[:, 0])
    np.testing.assert_array_equal(counts_top_k_f1(Wo, np.flatnonzero(yo)), want)


def _random_setting(seed=0, n_genes=40, directed=True):
    rng = np.random.default_rng(seed)
    genes = pd.Index([f"g{i}" for i in range(n_genes)])
    src = genes[:8] if directed else genes[:25]
    edges = {(a, b) for a in src for b in rng.choice(genes, 4) if a != b}
    ref = _ref(sorted(edges), directed=directed)
    scores = EdgeScores(rng.normal(size=(n_genes, n_genes)), genes, method="noise")
    return genes, ref, scores


@pytest.mark.parametrize("directed", [True, False])
def test_relabelled_null_equals_auroc_of_the_relabelled_reference(directed):
    """Each null draw is the AUROC of the same graph with its genes renamed within their
    role and degree: the candidate universe is unchanged and so is every gene's degree."""
    genes, ref, scores = _random_setting(directed=directed)
    pairs = candidate_pairs(genes, ref)
    s = pair_scores(scores, pairs)
    R = rank_matrix(nan_lowest_ranks(s), pairs)
    classes = gene_roles(pairs, match="degree")
    perms = permute_within_classes(classes, 5, np.random.default_rng(1))
    null = relabelled_auroc_null(R, pairs, perms)
    for b, perm in enumerate(perms):
        renamed = pd.Series(genes[perm], index=genes)
        e = ref.edges.assign(
            source=renamed[ref.edges["source"]].to_numpy(),
            target=renamed[ref.edges["target"]].to_numpy(),
        )
        new_pairs = candidate_pairs(genes, _ref(e[["source", "target"]].to_numpy(), directed))
        assert len(new_pairs) == len(pairs) and new_pairs.n_pos == pairs.n_pos
        np.testing.assert_array_equal(gene_roles(new_pairs, match="degree") >= 0, True)
        y = new_pairs.label
        x = pair_scores(scores, new_pairs)
        assert null[b] == pytest.approx(roc_auc_score(y, x), abs=1e-12)


def test_permutations_within_classes_are_bijections_inside_each_class():
    classes = np.array([0, 1, 1, 2, 2, 2, 0, 5])
    perms = permute_within_classes(classes, 200, np.random.default_rng(0))
    for perm in perms:
        assert sorted(perm) == list(range(len(classes)))
        np.testing.assert_array_equal(classes[perm], classes)
    assert len({tuple(p) for p in perms}) > 20  # it does shuffle


def test_degree_classes_keep_every_gene_degree():
    genes, ref, _ = _random_setting(seed=4)
    pairs = candidate_pairs(genes, ref)
    classes = gene_roles(pairs, match="degree")
    out_deg = np.bincount(pairs.source[pairs.label], minlength=len(genes))
    in_deg = np.bincount(pairs.target[pairs.label], minlength=len(genes))
    for perm in permute_within_classes(classes, 20, np.random.default_rng(2)):
        np.testing.assert_array_equal(out_deg[perm], out_deg)
        np.testing.assert_array_equal(in_deg[perm], in_deg)


@pytest.fixture(scope="module")
def planted():
    bench = simulate_perturbseq(n_cells=800, n_genes=150, n_tfs=15, seed=2)
    return bench, coexpression(bench.adata, method="spearman")


def test_planted_network_is_recovered_under_every_structure_preserving_null(planted):
    bench, rho = planted
    r = edge_recovery(rho, candidate_pairs(rho.genes, bench.grn), n_boot=200, n_rewire=99, seed=0)
    assert r["auroc"] > 0.6
    assert r["auroc_ci_low"] > 0.5
    assert r["null"] == "degree_permutation"
    assert r["p"] == r["p_degree_permutation"] < 0.001
    assert r["p_node_permutation"] < 0.01 and r["p_rewire"] < 0.05
    assert r["epr"] > 1.5


@pytest.mark.parametrize("network", ["grn", "ppi"])
def test_shared_rewired_networks_equal_a_chain_of_its_own(planted, network):
    """H0: reading the rewiring null from networks shared by several score sets gives
    exactly the draws a score set's own chain with that seed gives."""
    bench, rho = planted
    ref = bench.grn if network == "grn" else bench.ppi
    pairs = candidate_pairs(rho.genes, ref)
    own = edge_recovery(rho, pairs, n_boot=20, n_perm=19, n_rewire=30, seed=3)
    shared = RewiredNetworks(pairs, 3 + 5)
    noise = EdgeScores(np.random.default_rng(0).random(rho.scores.shape), rho.genes, "noise")
    other = edge_recovery(noise, pairs, n_boot=20, n_perm=19, n_rewire=30, seed=9, rewired=shared)
    got = edge_recovery(rho, pairs, n_boot=20, n_perm=19, n_rewire=30, seed=3, rewired=shared)
    np.testing.assert_array_equal(got["null_rewiring"], own["null_rewiring"])
    assert got["p_rewire"] == own["p_rewire"]
    assert len(other["null_rewiring"]) == 30 and len(shared.networks(0, 30)) == 30


def test_strong_effect_is_not_lost_to_the_permutation_floor(planted):
    """With 19 first-stage draws the floor is 0.1; the verdict null keeps drawing while
    p < 0.05, so a strong effect reaches p ≈ 1e-4 instead of reading as not significant."""
    bench, rho = planted
    pairs = candidate_pairs(rho.genes, bench.grn)
    r = edge_recovery(rho, pairs, n_boot=20, n_perm=19, n_perm_max=9_999, seed=0)
    assert r["n_null_draws"] == 9_999
    assert r["p"] == pytest.approx(2 / 10_000)
    assert r["p_floor"] == pytest.approx(2 / 10_000)
    no_refinement = edge_recovery(rho, pairs, n_boot=20, n_perm=19, n_perm_max=0, seed=0)
    assert no_refinement["p"] == pytest.approx(0.1)
    # its floor (0.1) cannot reach alpha: n/a with the reason, never "no evidence"
    answer, reason = answer_result(recovery_result(no_refinement))
    assert answer == "n/a" and "smallest p" in reason
    assert answer_result(recovery_result(r))[0] == "yes"


def test_anti_recovery_reads_opposite(planted):
    bench, rho = planted
    flipped = EdgeScores(-np.abs(rho.dense()), rho.genes, method="anti")
    r = edge_recovery(
        flipped, candidate_pairs(rho.genes, bench.grn), n_boot=100, transform="raw", seed=0
    )
    assert r["auroc"] < 0.4 and r["p"] < 0.001
    assert r["p_less"] < r["p_greater"]
    answer, _ = answer_result(recovery_result(r))
    assert answer == "opposite"


def test_zero_variance_regulators_are_not_assessable(planted):
    bench, rho = planted
    pairs = candidate_pairs(rho.genes, bench.grn)
    d = rho.dense().copy()
    d[np.unique(pairs.source), :] = np.nan  # what Spearman gives for constant regulators
    r = edge_recovery(EdgeScores(d, rho.genes, method="flat"), pairs, n_boot=20, seed=0)
    assert np.isnan(r["p"]) and "zero variance" in r["not_assessable"]
    answer, reason = answer_result(recovery_result(r))
    assert answer == "n/a" and "zero variance" in reason


@pytest.mark.parametrize(
    ("p", "p_greater", "p_less", "claimed", "expected"),
    [
        (0.002, 0.001, 0.999, "greater", "yes"),
        (0.002, 0.999, 0.001, "greater", "opposite"),
        (0.002, 0.999, 0.001, "less", "yes"),
        (0.4, 0.2, 0.8, "greater", "no evidence"),
        (np.nan, np.nan, np.nan, "greater", "n/a"),
    ],
)
def test_four_valued_answers(p, p_greater, p_less, claimed, expected):
    """The side is the tested statistic's (its tails), whatever the estimate says: here
    the estimate 0.7 lies above 0.5 in every row."""
    res = StatTestResult(
        0.7,
        p,
        0.7,
        100,
        "t",
        "AUROC",
        "AUROC",
        "two-sided",
        p_greater=p_greater,
        p_less=p_less,
        null_value=0.5,
        p_floor=1e-4,
    )
    assert answer_result(res, claimed=claimed)[0] == expected


def test_null_simulation_gives_no_systematic_small_p_values():
    """With regulation switched off, the verdict p over independent null benchmarks must
    not pile up near zero (type-I error at most nominal, allowing for sampling noise)."""
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
            rho, candidate_pairs(rho.genes, bench.grn), n_boot=50, n_perm=199, seed=seed
        )
        ps.append(r["p"])
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 2, ps
    assert np.median(ps) > 0.15, ps


def test_random_scores_are_not_recovered(planted):
    bench, rho = planted
    rng = np.random.default_rng(0)
    noise = EdgeScores(rng.random(rho.scores.shape), rho.genes, method="noise")
    r = edge_recovery(
        noise, candidate_pairs(noise.genes, bench.grn), n_boot=50, n_perm=199, n_rewire=50, seed=1
    )
    assert r["p"] > 0.01 and r["p_rewire"] > 0.01 and r["p_shuffle"] > 0.01
    assert abs(r["auroc"] - 0.5) < 0.1
    assert r["auroc_ci_low"] < 0.5 < r["auroc_ci_high"]


def test_unscored_pairs_rank_lowest(planted):
    bench, rho = planted
    d = rho.dense().copy()
    pairs = candidate_pairs(rho.genes, bench.grn)
    d[pairs.source[pairs.label], pairs.target[pairs.label]] = np.nan  # hide every true edge
    hidden = EdgeScores(d, rho.genes, method="hidden")
    r = edge_recovery(hidden, pairs, n_boot=20, n_perm=49, seed=0)
    assert r["auroc"] < 0.05
