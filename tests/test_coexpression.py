"""Co-expression kernels and scorer: checked against scipy / numpy reference implementations."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as ss

from scfm_audit._registry import UnknownNameError
from scfm_audit.edges import _coexpression as coex
from scfm_audit.edges._coexpression import (
    coexpression,
    cooccurrence_counts,
    pearson_matrix,
    spearman_matrix,
)
from scfm_audit.edges._registry import EDGE_SCORERS
from scfm_audit.edges._scores import EdgeScores

TOL = 1e-10


def _counts(n: int = 80, p: int = 12, seed: int = 0) -> np.ndarray:
    """Sparse NB-like integer counts with massive ties, one all-zero gene (3) and one
    constant non-zero gene (5)."""
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(-0.5, 1.0, p))
    x = rng.negative_binomial(2, 2 / (2 + mu[None, :]), size=(n, p)).astype(np.float64)
    x[:, 3] = 0.0
    x[:, 5] = 2.0
    return x


def _floats(seed: int = 1) -> np.ndarray:
    """Non-integer values with ties among non-zeros and negative values (sort path)."""
    rng = np.random.default_rng(seed)
    x = _counts(seed=seed) * rng.choice([0.5, 1.25, np.pi], size=(80, 12))
    x[:7, 1] = -1.5
    x[10:20, 2] = -0.25
    return x


def _spearman_ref(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return ss.spearmanr(x).statistic


def _pearson_ref(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.corrcoef(x, rowvar=False)


def _assert_close(ours: np.ndarray, ref: np.ndarray, tol: float = TOL) -> None:
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    assert np.nanmax(np.abs(ours - ref)) <= tol


FORMATS = {"dense": np.asarray, "csr": sp.csr_matrix, "csc": sp.csc_matrix}


# -- kernels ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("data", [_counts, _floats], ids=["counts", "floats"])
def test_spearman_matches_scipy(fmt, data):
    x = data()
    _assert_close(spearman_matrix(FORMATS[fmt](x)), _spearman_ref(x))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("data", [_counts, _floats], ids=["counts", "floats"])
def test_pearson_matches_numpy(fmt, data):
    x = data()
    _assert_close(pearson_matrix(FORMATS[fmt](x)), _pearson_ref(x))


def test_sort_path_equals_count_table_path(monkeypatch):
    """Integer data are ranked from a count table; with no table budget they are sorted."""
    x = _counts()
    table = spearman_matrix(sp.csr_matrix(x))
    monkeypatch.setattr(coex, "_TABLE_ELEMENTS", 8)
    for fmt in ("dense", "csc"):
        _assert_close(spearman_matrix(FORMATS[fmt](x)), table, tol=1e-13)


@pytest.mark.parametrize("kernel", [spearman_matrix, pearson_matrix])
@pytest.mark.parametrize("order", ["C", "F"])
def test_input_is_not_modified(kernel, order):
    x = np.asarray(_floats(), order=order)
    before = x.copy()
    _assert_close(kernel(x), kernel(np.ascontiguousarray(before)), tol=1e-13)
    np.testing.assert_array_equal(x, before)


def test_explicit_zeros_and_duplicates_in_sparse_input():
    x = _counts()
    m = sp.coo_matrix(x)
    # split every entry into two duplicates and add explicit zeros
    rows = np.r_[m.row, m.row, [0, 1]]
    cols = np.r_[m.col, m.col, [3, 3]]
    vals = np.r_[m.data / 2, m.data / 2, [0.0, 0.0]]
    messy = sp.csc_matrix((vals, (rows, cols)), shape=x.shape)
    messy.has_canonical_format = False
    _assert_close(spearman_matrix(messy), _spearman_ref(x))


@pytest.mark.parametrize("kernel", [spearman_matrix, pearson_matrix])
@pytest.mark.parametrize("fmt", ["dense", "csc"])
def test_chunked_equals_unchunked(kernel, fmt):
    x = FORMATS[fmt](_floats())
    full = kernel(x)
    for chunk in (1, 5, 11, 100):
        part = kernel(x, chunk_size=chunk)
        _assert_close(part, full, tol=1e-13)
        np.testing.assert_array_equal(part, part.T)  # exactly symmetric


@pytest.mark.parametrize("kernel", [spearman_matrix, pearson_matrix])
def test_constant_gene_is_nan(kernel):
    r = kernel(sp.csr_matrix(_counts()))
    for g in (3, 5):  # all-zero gene, constant non-zero gene
        assert np.isnan(r[g]).all() and np.isnan(r[:, g]).all()
    ok = np.setdiff1d(np.arange(12), [3, 5])
    assert not np.isnan(r[np.ix_(ok, ok)]).any()
    np.testing.assert_array_equal(np.diagonal(r)[ok], 1.0)
    assert np.nanmax(np.abs(r)) <= 1.0


def test_float32_output():
    x = _counts()
    r = spearman_matrix(sp.csr_matrix(x), dtype=np.float32)
    assert r.dtype == np.float32
    _assert_close(r.astype(np.float64), _spearman_ref(x), tol=1e-5)


def test_kernel_input_errors():
    x = _floats()
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        spearman_matrix(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pearson_matrix(sp.csr_matrix(x))
    with pytest.raises(ValueError, match="at least 2 cells"):
        spearman_matrix(np.ones((1, 3)))
    with pytest.raises(ValueError, match="floating"):
        spearman_matrix(_counts(), dtype=np.int64)


@pytest.mark.parametrize("sparse_product", [False, True], ids=["blas", "sparse-product"])
def test_cooccurrence_equals_brute_force(monkeypatch, sparse_product):
    monkeypatch.setattr(coex, "_SPARSE_COOCCURRENCE_DENSITY", 1.1 if sparse_product else 0.0)
    x = _floats()
    x[np.random.default_rng(3).random(x.shape) < 0.3] = 0.0
    p = x.shape[1]
    brute = np.array(
        [[np.sum((x[:, i] != 0) & (x[:, j] != 0)) for j in range(p)] for i in range(p)]
    )
    for fmt in FORMATS:
        for chunk in (None, 5):
            got = cooccurrence_counts(FORMATS[fmt](x), chunk_size=chunk)
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, brute)


# -- AnnData scorer -------------------------------------------------------------------------
def _adata(sparse: bool = True) -> ad.AnnData:
    x = _counts(n=60, p=10, seed=4)
    x[7] = 0.0  # an all-zero cell stays zero after normalisation
    x[:, 8] = 0.0
    x[:2, 8] = [1.0, 3.0]  # gene 8 detected in 2 cells only
    a = ad.AnnData(
        X=sp.csr_matrix(x) if sparse else x,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(x.shape[1])]),
    )
    a.layers["counts"] = sp.csr_matrix(x)
    return a


def _log1p_reference(x: np.ndarray) -> np.ndarray:
    tot = x.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(x * 1e4, tot, out=np.zeros_like(x), where=tot > 0))


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_coexpression_log1p_matches_reference(method):
    a = _adata()
    es = coexpression(a, method=method, min_cells=0, dtype=np.float64, row_chunk=17)
    y = _log1p_reference(a.X.toarray())
    ref = _spearman_ref(y) if method == "spearman" else _pearson_ref(y)
    np.fill_diagonal(ref, np.nan)
    _assert_close(es.scores, ref)
    assert isinstance(es, EdgeScores) and es.method == method
    assert es.n_cells == 60 and not es.directed
    assert es.params["transform"] == "log1p" and es.params["counts"] == "X"
    # G3 is never detected; G5's constant count varies once cells are normalised
    assert es.params["constant_genes"] == ["G3"]


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
def test_log1p_matches_scanpy():
    sc = pytest.importorskip("scanpy")
    a = _adata()
    ref_ad = ad.AnnData(X=a.X.toarray())
    sc.pp.normalize_total(ref_ad, target_sum=1e4)
    sc.pp.log1p(ref_ad)
    expr = coex._expression_matrix(
        a, counts="X", transform="log1p", gene_idx=np.arange(a.n_vars), row_chunk=13
    )
    np.testing.assert_allclose(expr.toarray(), ref_ad.X, rtol=1e-12, atol=1e-12)


def test_coexpression_raw_counts_layer():
    a = _adata()
    a.X = sp.csr_matrix(a.shape)  # X is not the counts: the layer is used
    es = coexpression(a, transform="raw", counts="counts", min_cells=0, dtype=np.float64)
    ref = _spearman_ref(a.layers["counts"].toarray())
    np.fill_diagonal(ref, np.nan)
    _assert_close(es.scores, ref)
    with pytest.raises(ValueError, match="layer"):
        coexpression(a, counts="spliced")


def test_coverage_and_min_cells():
    a = _adata()
    es = coexpression(a, min_cells=3)
    x = a.X.toarray()
    brute = np.array(
        [[np.sum((x[:, i] > 0) & (x[:, j] > 0)) for j in range(10)] for i in range(10)]
    )
    np.testing.assert_array_equal(es.coverage, brute)
    assert es.coverage.dtype == np.int32
    assert np.isnan(es.scores[8]).all() and np.isnan(es.scores[:, 8]).all()
    assert es.params["low_detection_genes"] == ["G3", "G8"]
    assert np.isnan(np.diagonal(es.scores)).all()
    assert es.scores.dtype == np.float32


def test_coexpression_save_load_roundtrip(tmp_path):
    es = coexpression(_adata())
    es.save(tmp_path / "edges.npz")
    back = EdgeScores.load(tmp_path / "edges.npz")
    np.testing.assert_array_equal(back.scores, es.scores)
    np.testing.assert_array_equal(back.coverage, es.coverage)
    assert back.params == es.params and not back.directed and back.n_cells == 60


def test_genes_restriction_and_missing_genes():
    a = _adata()
    full = coexpression(a, min_cells=0, dtype=np.float64)
    genes = ["G6", "G0", "G2"]
    sub = coexpression(a, genes=genes, min_cells=0, dtype=np.float64)
    assert list(sub.genes) == genes
    # normalisation uses every gene's counts, so a subset equals the subset of the full set
    np.testing.assert_allclose(sub.scores, full.subset(genes).scores, atol=1e-12)
    np.testing.assert_array_equal(sub.coverage, full.subset(genes).coverage)
    with pytest.raises(ValueError, match=r"not in adata.var_names: \['NOPE', 'ALSO_NOPE'\]"):
        coexpression(a, genes=["G1", "NOPE", "ALSO_NOPE"])
    with pytest.raises(ValueError, match="duplicates"):
        coexpression(a, genes=["G1", "G1"])


def test_log1p_rejects_negative_values():
    a = _adata(sparse=False)
    a.X[0, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        coexpression(a)
    with pytest.raises(ValueError, match="method"):
        coexpression(_adata(), method="kendall")


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_backed_equals_in_memory(tmp_path, sparse, method):
    a = _adata(sparse=sparse)
    path = tmp_path / "toy.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        got = coexpression(backed, method=method, row_chunk=7, dtype=np.float64)
    finally:
        backed.file.close()
    want = coexpression(a, method=method, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got.scores), np.isnan(want.scores))
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-12)
    np.testing.assert_array_equal(got.coverage, want.coverage)


# -- registry -------------------------------------------------------------------------------
def test_registry_coexpression_scorer():
    scorer = EDGE_SCORERS.get("coexpression")
    out = scorer(_adata(), genes=["G0", "G1", "G2"], seed=3, method="pearson")
    assert isinstance(out, list) and len(out) == 1
    assert out[0].method == "pearson" and list(out[0].genes) == ["G0", "G1", "G2"]
    assert "coexpression" in EDGE_SCORERS.names()


def test_registry_typo_suggests_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'coexpression'"):
        EDGE_SCORERS.get("coexpresion")
