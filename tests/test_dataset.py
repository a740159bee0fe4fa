"""Dataset loading and validation: one test per problem, asserting the message."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfm_audit.data._dataset import (
    DatasetError,
    DatasetSpec,
    control_mask,
    counts_matrix,
    get_spec,
    load_dataset,
    perturbation_groups,
    validate_dataset,
)

SPEC = DatasetSpec(
    perturbation="gene",
    modality="modality",
    cell_state="state",
    batch="donor",
    gene_id_column="gene_ids",
)


def make_adata(n_cells: int = 60, n_genes: int = 12, *, sparse: bool = True, seed: int = 0):
    """Toy Perturb-seq: 3 targeted genes + non-targeting controls, integer counts."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    labels = np.array(["non-targeting", "TP53", "MYC", "GATA1"])[np.arange(n_cells) % 4]
    obs = pd.DataFrame(
        {
            "gene": pd.Categorical(labels),
            "modality": np.where(np.arange(n_cells) % 2 == 0, "crispri", "CRISPRa"),
            "state": "K562",
            "donor": np.where(np.arange(n_cells) < n_cells // 2, "d1", "d2"),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"gene_ids": [f"ENSG{i:011d}.3" for i in range(n_genes)]},
        index=[f"G{i}" for i in range(n_genes)],
    )
    X = sp.csr_matrix(counts) if sparse else counts
    adata = ad.AnnData(X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    return adata


def test_valid_dataset_passes_sparse_and_dense():
    validate_dataset(make_adata(), SPEC)
    validate_dataset(make_adata(sparse=False), SPEC)


def test_load_dataset_roundtrip_and_spec(tmp_path):
    path = tmp_path / "toy.h5ad"
    make_adata().write_h5ad(path)
    spec = DatasetSpec(perturbation="gene", modality="modality", control=["non-targeting"])
    adata = load_dataset(path, spec)
    assert adata.uns["scfm_audit"]["name"] == "toy"
    assert get_spec(adata) == DatasetSpec(perturbation="gene", modality="modality")
    # modality normalised to canonical spelling
    assert set(adata.obs["modality"].astype(str)) == {"CRISPRi", "CRISPRa"}
    # the stored spec survives an h5ad round trip
    adata.write_h5ad(tmp_path / "again.h5ad")
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    assert get_spec(again) == get_spec(adata)


def test_spec_with_several_controls_roundtrips(tmp_path):
    spec = DatasetSpec(perturbation="gene", control=("non-targeting", "safe-targeting"))
    adata = load_dataset(make_adata(), spec, name="toy")
    adata.write_h5ad(tmp_path / "t.h5ad")
    assert get_spec(ad.read_h5ad(tmp_path / "t.h5ad")) == spec
    assert DatasetSpec(control=["a", "b"]).controls == ("a", "b")


def test_load_backed(tmp_path):
    path = tmp_path / "toy.h5ad"
    make_adata(n_cells=200).write_h5ad(path)
    adata = load_dataset(path, SPEC, backed=True)
    assert adata.isbacked
    X = counts_matrix(adata)
    assert sp.issparse(X) and X.shape == (200, 12)
    rows = counts_matrix(adata, obs=np.array([5, 1, 3]))
    np.testing.assert_array_equal(rows.toarray(), X[[5, 1, 3]].toarray())


def test_backed_non_integer_detected(tmp_path):
    a = make_adata(n_cells=100, sparse=False)
    a.X = np.log1p(a.X)
    path = tmp_path / "log.h5ad"
    a.write_h5ad(path)
    with pytest.raises(DatasetError, match="looks log-normalised"):
        load_dataset(path, DatasetSpec(), backed=True)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.h5ad.*does not exist"):
        load_dataset(tmp_path / "nope.h5ad")


def test_non_h5ad_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=r"not an \.h5ad file"):
        load_dataset(path)


def test_missing_counts_layer_lists_layers():
    with pytest.raises(
        DatasetError, match=r"layer 'raw' not found; available layers: \['counts'\]"
    ):
        validate_dataset(make_adata(), DatasetSpec(counts="raw"))


@pytest.mark.parametrize(
    ("field", "column", "suggest"),
    [
        ("perturbation", "genes", "gene"),
        ("modality", "Modality", "modality"),
        ("cell_state", "stat", "state"),
        ("batch", "donors", "donor"),
    ],
)
def test_missing_obs_column_suggests_close_name(field, column, suggest):
    spec = DatasetSpec(**{field: column})
    with pytest.raises(
        DatasetError, match=rf"{column!r} not found in obs.*did you mean {suggest!r}"
    ):
        validate_dataset(make_adata(), spec)


def test_missing_gene_id_column():
    with pytest.raises(
        DatasetError, match=r"Gene id column 'gene_id' not found in var.*'gene_ids'"
    ):
        validate_dataset(make_adata(), DatasetSpec(gene_id_column="gene_id"))


def test_no_control_cells_shows_values():
    a = make_adata()
    a.obs["gene"] = a.obs["gene"].cat.rename_categories({"non-targeting": "NT"})
    with pytest.raises(DatasetError, match=r"No control cells.*'non-targeting'.*'NT' \(15\)"):
        validate_dataset(a, DatasetSpec(perturbation="gene"))


def test_no_control_cells_suggests_case_variant():
    a = make_adata()
    a.obs["gene"] = a.obs["gene"].cat.rename_categories({"non-targeting": "Non-Targeting"})
    with pytest.raises(DatasetError, match=r"Close labels: 'Non-Targeting'"):
        validate_dataset(a, DatasetSpec(perturbation="gene"))


def test_negative_counts():
    a = make_adata(sparse=False)
    a.X[0, 0] = -3
    with pytest.raises(DatasetError, match=r"negative \(min -3\).*raw-count layer"):
        validate_dataset(a, DatasetSpec())


@pytest.mark.parametrize(("value", "what"), [(np.nan, "1 NaN"), (np.inf, "1 inf")])
def test_non_finite_counts(value, what):
    a = make_adata()
    a.X.data[0] = value
    with pytest.raises(DatasetError, match=rf"non-finite values \({what}"):
        validate_dataset(a, DatasetSpec())


def test_log_normalised_detected_and_layer_fix_works():
    a = make_adata()
    a.X = a.X.log1p()
    with pytest.raises(DatasetError, match=r"looks log-normalised; point `counts` at the raw"):
        validate_dataset(a, DatasetSpec())
    validate_dataset(a, DatasetSpec(counts="counts"))


def test_non_integer_large_values():
    a = make_adata(sparse=False)
    a.X = a.X * 100.5
    with pytest.raises(DatasetError, match=r"non-integer.*require_counts=False"):
        validate_dataset(a, DatasetSpec())
    validate_dataset(a, DatasetSpec(require_counts=False))


def test_duplicated_gene_names():
    a = make_adata()
    a.var_names = ["G0", "G0", *a.var_names[2:]]
    with pytest.raises(DatasetError, match=r"1 duplicated gene name.*'G0'.*var_names_make_unique"):
        validate_dataset(a, DatasetSpec())


def test_empty_perturbation_category():
    a = make_adata()
    a.obs["gene"] = a.obs["gene"].cat.add_categories(["KLF1"])
    with pytest.raises(
        DatasetError, match=r"zero cells \(e\.g\. 'KLF1'\).*remove_unused_categories"
    ):
        validate_dataset(a, DatasetSpec(perturbation="gene"))


def test_nan_perturbation_labels():
    a = make_adata()
    a.obs["gene"] = a.obs["gene"].astype(object)
    a.obs.iloc[1, a.obs.columns.get_loc("gene")] = np.nan
    with pytest.raises(DatasetError, match=r"1 cell\(s\) have no label \(NaN\)"):
        validate_dataset(a, DatasetSpec(perturbation="gene"))


def test_bad_modality_values():
    a = make_adata()
    a.obs["modality"] = a.obs["modality"].replace({"CRISPRa": "CRISPR-KO"})
    with pytest.raises(DatasetError, match=r"unknown value\(s\) \['CRISPR-KO'\].*'CRISPRi'"):
        validate_dataset(a, DatasetSpec(perturbation="gene", modality="modality"))


def test_modality_nan_allowed_only_for_controls():
    a = make_adata()
    a.obs["modality"] = a.obs["modality"].astype(object)
    ctrl = (a.obs["gene"] == "non-targeting").to_numpy()
    a.obs.loc[ctrl, "modality"] = np.nan
    validate_dataset(a, DatasetSpec(perturbation="gene", modality="modality"))
    a.obs.iloc[1, a.obs.columns.get_loc("modality")] = np.nan
    with pytest.raises(DatasetError, match=r"1 perturbed cell\(s\) without a value"):
        validate_dataset(a, DatasetSpec(perturbation="gene", modality="modality"))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_zero_cells_or_genes(shape):
    a = ad.AnnData(np.zeros(shape, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"needs at least one"):
        validate_dataset(a, DatasetSpec())


def test_several_problems_reported_together():
    a = make_adata()
    a.var_names = ["G0", "G0", *a.var_names[2:]]
    with pytest.raises(DatasetError, match=r"2 problems") as info:
        validate_dataset(a, DatasetSpec(counts="raw", perturbation="gene"))
    assert len(info.value.problems) == 2


def test_large_matrix_is_sampled_quickly():
    rng = np.random.default_rng(1)
    X = sp.random(3000, 2000, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    a = ad.AnnData(X)
    validate_dataset(a, DatasetSpec())  # 1.8e6 stored values, only 1e6 checked


def test_control_mask_marks_the_non_targeting_cells():
    a = load_dataset(make_adata(), SPEC)
    mask = control_mask(a)
    assert mask.dtype == bool and mask.shape == (60,)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(0, 60, 4))
    assert (a.obs["gene"][mask] == "non-targeting").all()


def test_perturbation_groups_hold_each_targets_cells_in_obs_order():
    a = load_dataset(make_adata(), SPEC)
    groups = perturbation_groups(a)
    assert list(groups) == ["GATA1", "MYC", "TP53"]  # sorted, controls excluded
    for target, first in (("TP53", 1), ("MYC", 2), ("GATA1", 3)):
        np.testing.assert_array_equal(groups[target], np.arange(first, 60, 4))
        assert (a.obs["gene"].to_numpy()[groups[target]] == target).all()
    covered = np.sort(np.concatenate([*groups.values(), np.flatnonzero(control_mask(a))]))
    np.testing.assert_array_equal(covered, np.arange(a.n_obs))  # a partition of the cells


def test_counts_matrix_keeps_the_storage_and_selects_rows():
    a = load_dataset(make_adata(), SPEC)
    X = counts_matrix(a)
    assert isinstance(X, sp.csr_matrix) and X.shape == (60, 12)
    np.testing.assert_array_equal(X.toarray(), a.X.toarray())
    rows = counts_matrix(a, obs=np.array([5, 2, 9]))
    np.testing.assert_array_equal(rows.toarray(), a.X.toarray()[[5, 2, 9]])
    first = counts_matrix(a, obs=np.arange(60) < 3)
    np.testing.assert_array_equal(first.toarray(), a.X.toarray()[:3])
    dense_adata = make_adata(sparse=False)
    dense = counts_matrix(dense_adata, DatasetSpec(counts="counts"))
    assert isinstance(dense, np.ndarray) and dense.shape == (60, 12)
    np.testing.assert_array_equal(dense, dense_adata.layers["counts"])


def test_helpers_without_spec_say_how_to_fix():
    with pytest.raises(DatasetError, match=r"load_dataset"):
        get_spec(make_adata())
    with pytest.raises(DatasetError, match=r"perturbation is not set"):
        control_mask(make_adata(), DatasetSpec())
