"""Files the project writes load and run in scanpy without a copy: the simulator's h5ad
has one index dtype for ``indptr`` and ``indices`` (anndata 0.12 keeps a mixed pair, on
which scipy's kernels behind ``rank_genes_groups`` fail)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

from scfm_audit.data import simulate_perturbseq

SMALL = {"n_cells": 600, "n_genes": 60, "n_tfs": 8, "n_perturbations": 3, "n_modules": 3}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "s.h5ad"
    b = simulate_perturbseq(**SMALL, seed=0, out_path=path)
    b.adata.file.close()
    return path


def _rank(x, method):
    import scanpy as sc

    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(x, "perturbation", reference="non-targeting", method=method)
    p = np.concatenate(
        [
            np.asarray(x.uns["rank_genes_groups"]["pvals"][g])
            for g in x.uns["rank_genes_groups"]["pvals"].dtype.names
        ]
    )
    assert np.isfinite(p).all()


def test_in_memory_index_dtypes_agree():
    X = simulate_perturbseq(**SMALL, seed=0).adata.X
    assert X.indptr.dtype == X.indices.dtype == np.int32


@pytest.mark.parametrize("method", ["wilcoxon", "t-test"])
def test_scanpy_reads_written_file_in_memory(written, method):
    import scanpy as sc

    x = sc.read_h5ad(written)
    assert x.X.indptr.dtype == x.X.indices.dtype == np.int32
    _rank(x, method)


def test_scanpy_reads_written_file_backed(written):
    import scanpy as sc

    x = sc.read_h5ad(written, backed="r")
    block = x.X[0:200]
    assert block.indptr.dtype == block.indices.dtype
    m = x.to_memory()
    x.file.close()
    assert m.X.indptr.dtype == m.X.indices.dtype == np.int32
    block.eliminate_zeros()  # the scipy kernel that failed on the mixed pair
    _rank(m, "wilcoxon")


def test_anndata_roundtrip_keeps_one_dtype(written, tmp_path):
    a = ad.read_h5ad(written)
    a.write_h5ad(tmp_path / "again.h5ad")
    b = ad.read_h5ad(tmp_path / "again.h5ad")
    assert b.X.indptr.dtype == b.X.indices.dtype
