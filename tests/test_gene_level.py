"""Gene-level statistics and pair baselines: definitions checked against numpy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm_audit._registry import UnknownNameError
from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.edges._gene_level import gene_level_scores, gene_statistics
from scfm_audit.edges._registry import EDGE_SCORERS

GENES = [f"G{j}" for j in range(8)]


def _adata(sparse: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(7)
    mu = np.exp(rng.normal(0.0, 1.0, len(GENES)))
    x = rng.negative_binomial(3, 3 / (3 + mu[None, :]), size=(50, len(GENES))).astype(float)
    x[:, 2] = 0.0  # never detected
    x[4] = 0.0  # an empty cell
    return ad.AnnData(
        X=sp.csr_matrix(x) if sparse else x,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=GENES),
        layers={"counts": sp.csr_matrix(x)},
    )


def _log1p(x: np.ndarray) -> np.ndarray:
    tot = x.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(x * 1e4, tot, out=np.zeros_like(x), where=tot > 0))


@pytest.mark.parametrize("transform", ["log1p", "raw"])
@pytest.mark.parametrize("row_chunk", [6, 1000])
def test_gene_statistics_matches_numpy(transform, row_chunk):
    a = _adata()
    x = a.X.toarray()
    y = _log1p(x) if transform == "log1p" else x
    st = gene_statistics(a, transform=transform, row_chunk=row_chunk)
    assert list(st.columns) == ["mean", "variance", "detection", "mean_counts"]
    assert list(st.index) == GENES and st.index.name == "gene"
    np.testing.assert_allclose(st["mean"], y.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(st["variance"], y.var(axis=0, ddof=1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(st["detection"], (x > 0).mean(axis=0))
    np.testing.assert_allclose(st["mean_counts"], x.mean(axis=0))


def test_gene_statistics_backed_dense_and_layer(tmp_path):
    a = _adata(sparse=False)
    want = gene_statistics(a)
    path = tmp_path / "toy.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        got = gene_statistics(backed, row_chunk=9)
    finally:
        backed.file.close()
    pd.testing.assert_frame_equal(got, want, rtol=1e-12)
    pd.testing.assert_frame_equal(gene_statistics(a, counts="counts"), want, rtol=1e-12)
    sub = gene_statistics(a, genes=["G5", "G1"])
    pd.testing.assert_frame_equal(sub, want.loc[["G5", "G1"]], rtol=1e-12)


def test_gene_level_score_definitions():
    a = _adata()
    ref = ReferenceNetwork(
        pd.DataFrame(
            {"source": ["G0", "G0", "G0", "G3", "TF_X"], "target": ["G1", "G4", "ZZ", "G1", "G0"]}
        ),
        name="toy",
    )
    genes = ["G3", "G0", "G1", "G5"]
    out = gene_level_scores(a, reference=ref, genes=genes, dtype=np.float64)
    by = {es.method: es for es in out}
    assert list(by) == [
        "gene_level_mean",
        "gene_level_variance",
        "gene_level_detection",
        "target_mean",
        "target_variance",
        "target_detection",
        "tf_outdegree",
    ]
    st = gene_statistics(a, genes=genes)
    off = ~np.eye(4, dtype=bool)
    for f in ("mean", "variance", "detection"):
        v = st[f].to_numpy()
        prod, tgt = by[f"gene_level_{f}"], by[f"target_{f}"]
        np.testing.assert_allclose(prod.scores[off], np.outer(v, v)[off])
        np.testing.assert_allclose(tgt.scores[off], np.tile(v, (4, 1))[off])
        assert not prod.directed and tgt.directed
        assert prod.params["feature"] == f and prod.params["transform"] == "log1p"
    deg = by["tf_outdegree"].scores
    # G3 → 1 target, G0 → 3 targets (ZZ counts: degree in the reference as given), others 0
    np.testing.assert_allclose(deg[off], np.repeat([1.0, 3.0, 0.0, 0.0], 4).reshape(4, 4)[off])
    assert by["tf_outdegree"].params["reference"] == "toy"
    for es in out:
        assert list(es.genes) == genes and es.n_cells == 50 and es.coverage is None
        assert np.isnan(np.diagonal(es.scores)).all()


def test_gene_level_options_and_errors():
    a = _adata()
    out = gene_level_scores(a, features=("detection",), kinds=("target",))
    assert [es.method for es in out] == ["target_detection"]
    assert out[0].scores.dtype == np.float32
    with pytest.raises(ValueError, match="Unknown gene-level feature"):
        gene_level_scores(a, features=("median",))
    with pytest.raises(ValueError, match="Unknown kind"):
        gene_level_scores(a, kinds=("ratio",))
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        gene_level_scores(a, genes=["G0", "MISSING"])
    st = gene_statistics(a)
    reused = gene_level_scores(a, statistics=st, features=("mean",), kinds=("product",))
    np.testing.assert_allclose(
        reused[0].scores, gene_level_scores(a, features=("mean",), kinds=("product",))[0].scores
    )


def test_registry_gene_level_scorer():
    out = EDGE_SCORERS.get("gene_level")(_adata(), genes=GENES[:3], seed=0, counts="counts")
    assert [es.method for es in out][:3] == [
        "gene_level_mean",
        "gene_level_variance",
        "gene_level_detection",
    ]
    assert all(es.n_genes == 3 for es in out)
    with pytest.raises(UnknownNameError, match="Did you mean 'gene_level'"):
        EDGE_SCORERS.get("gene_levl")
