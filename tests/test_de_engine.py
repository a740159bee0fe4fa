"""The compiled DE engine (evaluate/_de.py + _de_kernels.py) against scanpy, scipy and the
previous implementation (tests/_de_previous.py): ties, all-zero genes, one-cell groups,
stored zeros, backed and in-memory input, gene blocks, threads, tie_correct on and off,
and the calibration of both tie settings under a null perturbation."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy import stats as sst

from scfm_audit.data import simulate_perturbseq
from scfm_audit.data._dataset import DatasetSpec
from scfm_audit.evaluate._de import differential_expression

sys.path.insert(0, str(Path(__file__).parent))
import _de_previous as previous

SPEC = DatasetSpec(perturbation="perturbation", modality="modality")
PLAIN = DatasetSpec(perturbation="perturbation")
SMALL = {"n_cells": 1500, "n_genes": 60, "n_tfs": 8, "n_perturbations": 4, "n_modules": 3}


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(**SMALL, seed=7)


def _awkward(seed=0) -> ad.AnnData:
    """Few distinct counts (many ties, also among non-zeros: equal library sizes), an
    all-zero gene, a gene non-zero in one cell only, a one-cell perturbation, a group
    without counts at a gene, and explicitly stored zeros."""
    rng = np.random.default_rng(seed)
    groups = ["non-targeting"] * 60 + ["A"] * 25 + ["B"] * 30 + ["C"] * 1 + ["D"] * 12
    n, G = len(groups), 9
    X = rng.poisson(0.6, (n, G)).astype(np.float32)
    X[:, 0] = 0  # all-zero gene
    X[:, 1] = 0
    X[5, 1] = 3  # one non-zero cell
    X[np.array(groups) == "D", 2] = 0  # a group without counts at gene 2
    X[np.array(groups) == "A", 3] += 2  # a shift
    X[:, 8] = 10 - X[:, :8].sum(axis=1).clip(max=9)  # equal totals → ties among non-zeros
    M = sparse.csr_matrix(X)
    M.data[::7] = 0  # stored zeros stay zeros
    obs = pd.DataFrame({"perturbation": groups}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(M, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))


def _scanpy(adata, method, tie_correct=False):
    import scanpy as sc

    x = adata.copy()
    x.X = sparse.csr_matrix(x.X, dtype=np.float64)
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    size = x.obs["perturbation"].value_counts()
    groups = sorted(set(size.index[size > 1]) - {"non-targeting"})  # scanpy refuses 1 cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            x,
            "perturbation",
            groups=groups,
            reference="non-targeting",
            method=method,
            tie_correct=tie_correct,
        )
    r = x.uns["rank_genes_groups"]
    return {
        g: pd.Series(np.asarray(r["pvals"][g], dtype=float), index=list(r["names"][g]))
        for g in groups
    }


def _compare_p(de, ref, rtol=1e-10):
    """p equal to scanpy's to ``rtol`` where ours is finite (ours is NaN where every value
    ties: scanpy reports p = 1 there) and at least 90 % finite."""
    n_ok = 0
    for pert, d in de.groupby("perturbation"):
        if pert not in ref:
            continue
        mine = d.set_index("gene")["p"]
        theirs = ref[pert].loc[mine.index]
        ok = np.isfinite(mine.to_numpy())
        np.testing.assert_allclose(mine.to_numpy()[ok], theirs.to_numpy()[ok], rtol=rtol)
        assert (theirs.to_numpy()[~ok] == 1).all()
        n_ok += ok.sum()
    return n_ok / len(de)


@pytest.mark.parametrize("tie_correct", [True, False])
@pytest.mark.parametrize(("ours", "theirs"), [("welch", "t-test"), ("wilcoxon", "wilcoxon")])
def test_p_equals_scanpy_to_1e10(sim, ours, theirs, tie_correct):
    de = differential_expression(
        sim.adata, SPEC, method=ours, chunk_size=200, tie_correct=tie_correct
    )
    assert _compare_p(de, _scanpy(sim.adata, theirs, tie_correct)) > 0.9
    if ours == "wilcoxon":
        assert de.attrs["de"]["tie_correct"] is tie_correct
        assert "tie" in de.attrs["de"]["variance"]


@pytest.mark.parametrize("tie_correct", [True, False])
def test_awkward_wilcoxon_equals_scanpy_and_scipy(tie_correct):
    from scfm_audit.evaluate._de import _log_normalise

    a = _awkward()
    de = differential_expression(a, PLAIN, method="wilcoxon", tie_correct=tie_correct)
    _compare_p(de, _scanpy(a, "wilcoxon", tie_correct))
    Y = _log_normalise(a.X).toarray()
    lab = a.obs["perturbation"].to_numpy()
    x0 = Y[lab == "non-targeting"]
    for pert, d in de.groupby("perturbation"):
        x1 = Y[lab == pert]
        u = sst.mannwhitneyu(x1, x0, axis=0, method="asymptotic", use_continuity=False)
        z = d["statistic"].to_numpy()
        n1, n0 = len(x1), len(x0)
        if tie_correct:  # scipy's asymptotic p is the tie-corrected one
            ok = np.isfinite(z)
            np.testing.assert_allclose(d["p"].to_numpy()[ok], u.pvalue[ok], rtol=1e-10)
            const = (Y[np.isin(lab, [pert, "non-targeting"])] == Y[0]).all(axis=0)
            assert (~ok == const).all()  # NaN exactly where every value ties
        else:
            zu = (u.statistic - n1 * n0 / 2) / np.sqrt(n1 * n0 * (n1 + n0 + 1) / 12)
            np.testing.assert_allclose(z, zu, rtol=1e-12, atol=1e-12)
    one = de[de["perturbation"] == "C"]
    assert (one["n_perturbed"] == 1).all() and np.isfinite(one["p"]).any()


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_equals_previous_implementation(sim, method):
    """Welch as before within float rounding; the Wilcoxon without tie correction too."""
    old = previous.differential_expression(sim.adata, SPEC, method=method, chunk_size=300)
    new = differential_expression(sim.adata, SPEC, method=method, chunk_size=300, tie_correct=False)
    assert list(new.columns) == list(old.columns)
    pd.testing.assert_frame_equal(
        new.drop(columns=["p", "q_within", "q_screen"]),
        old.drop(columns=["p", "q_within", "q_screen"]),
        check_exact=False,
        rtol=1e-11,
    )
    for c in ("p", "q_within", "q_screen"):  # relative error of p grows with |t|
        np.testing.assert_allclose(new[c], old[c], rtol=1e-9, equal_nan=True)


def test_awkward_welch_equals_previous():
    a = _awkward(1)
    old = previous.differential_expression(a, PLAIN, method="welch")
    new = differential_expression(a, PLAIN, method="welch", chunk_size=17)
    pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=1e-11)
    assert new.loc[new["gene"] == "g0", "p"].isna().all()  # all-zero gene: no test
    assert new.loc[new["perturbation"] == "C", "p"].isna().all()  # one cell: no variance


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_backed_equals_in_memory_and_dense(sim, tmp_path, method):
    mem = differential_expression(sim.adata, SPEC, method=method)
    path = tmp_path / "s.h5ad"
    sim.adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    chunked = differential_expression(backed, SPEC, method=method, chunk_size=97)
    backed.file.close()
    pd.testing.assert_frame_equal(mem, chunked, check_exact=False, rtol=1e-12)
    dense = sim.adata.copy()
    dense.X = dense.X.toarray()
    pd.testing.assert_frame_equal(
        mem, differential_expression(dense, SPEC, method=method, chunk_size=333), rtol=1e-12
    )


def test_gene_blocks_and_threads_do_not_change_ranks(sim):
    import numba

    one = differential_expression(sim.adata, SPEC, method="wilcoxon")
    blocks = differential_expression(sim.adata, SPEC, method="wilcoxon", max_rank_values=500)
    pd.testing.assert_frame_equal(one, blocks)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = differential_expression(sim.adata, SPEC, method="wilcoxon")
    finally:
        numba.set_num_threads(before)
    pd.testing.assert_frame_equal(one, single)


@pytest.mark.parametrize("tie_correct", [True, False])
def test_type_one_error_under_a_null_perturbation(tie_correct):
    """The simulator's 1,800 controls relabelled at random into 25 pseudo-perturbations of
    40 cells (H0 true by construction) against the other 800, 200 genes: the tie-corrected test rejects at
    α = 0.05 within binomial error (4 SE: genes of one perturbation share its cells), the
    uncorrected one at most that (it is conservative with many zeros)."""
    b = simulate_perturbseq(
        n_cells=6000, n_genes=200, n_tfs=20, n_perturbations=2, n_modules=5, seed=11
    )
    a = b.adata[b.adata.obs["perturbation"] == "non-targeting"].copy()
    rng = np.random.default_rng(0)
    lab = np.array(["non-targeting"] * a.n_obs, dtype=object)
    lab[rng.permutation(a.n_obs)[:1000]] = np.repeat([f"P{i}" for i in range(25)], 40)
    a.obs = pd.DataFrame({"perturbation": lab}, index=a.obs_names)
    de = differential_expression(a, PLAIN, method="wilcoxon", tie_correct=tie_correct)
    p = de["p"].dropna().to_numpy()
    rate = float((p < 0.05).mean())
    se = np.sqrt(0.05 * 0.95 / p.size)
    assert rate <= 0.05 + 4 * se
    if tie_correct:
        assert rate >= 0.05 - 4 * se
