"""Gene id mapping symbol ↔ Ensembl."""

from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scfm_audit.data._genes import (
    GeneIdError,
    gene_id_map,
    strip_version,
    to_ensembl,
    to_symbol,
)

SYMBOLS = ["TP53", "MYC", "GATA1", "NOVEL1"]
IDS = ["ENSG00000141510.17", "ENSG00000136997.21", "ENSG00000102145", None]


def make_adata(var: dict | None = None) -> ad.AnnData:
    var_df = pd.DataFrame(var or {}, index=SYMBOLS)
    return ad.AnnData(np.zeros((2, len(SYMBOLS)), dtype=np.float32), var=var_df)


def test_strip_version():
    s = strip_version(
        ["ENSG00000141510.17", "ENSMUSG00000059552", "TP53", None, "ENSG00000002586.20_PAR_Y"]
    )
    assert s.tolist()[:2] == ["ENSG00000141510", "ENSMUSG00000059552"]
    assert pd.isna(s[2]) and pd.isna(s[3])
    assert s[4] == "ENSG00000002586"


def test_from_var_column_counts_unmapped():
    a = make_adata({"gene_ids": IDS})
    with pytest.warns(UserWarning, match=r"1 of 4 genes have no Ensembl id.*NOVEL1"):
        m = gene_id_map(a)
    assert list(m.columns) == ["symbol", "ensembl_id"]
    assert m["symbol"].tolist() == SYMBOLS
    assert m["ensembl_id"].tolist()[:3] == ["ENSG00000141510", "ENSG00000136997", "ENSG00000102145"]
    assert m.attrs["n_unmapped"] == 1 and m.attrs["n_mapped"] == 3


def test_column_detected_by_value_pattern():
    a = make_adata({"weird_name": ["ENSG00000141510", "ENSG00000136997", "ENSG00000102145", "x"]})
    with pytest.warns(UserWarning):
        s = to_ensembl(a)
    assert s.index.tolist() == SYMBOLS
    assert s["TP53"] == "ENSG00000141510" and pd.isna(s["NOVEL1"])


def test_spec_column_used():
    a = make_adata({"ens": [*IDS[:3], "ENSG00000000001"], "other": ["x"] * 4})
    a.uns["scfm_audit"] = {"spec": {"gene_id_column": "ens"}}
    assert to_ensembl(a)["NOVEL1"] == "ENSG00000000001"


def test_missing_column_error():
    a = make_adata({"gene_ids": IDS})
    with pytest.raises(GeneIdError, match=r"'gene_id' not found in var.*did you mean 'gene_ids'"):
        gene_id_map(a, column="gene_id")


def test_column_without_ensembl_ids_error():
    a = make_adata({"feature_types": ["Gene Expression"] * 4})
    with pytest.raises(GeneIdError, match=r"'feature_types' contains no Ensembl-looking ids"):
        gene_id_map(a, column="feature_types")


def test_no_column_found_error():
    with pytest.raises(GeneIdError, match=r"No var column with Ensembl ids found.*table="):
        gene_id_map(make_adata({"x": ["a"] * 4}))


@pytest.mark.parametrize(
    ("header", "sep", "suffix"),
    [
        (("gene_name", "gene_id"), "\t", ".tsv"),
        (("Symbol", "Ensembl"), ",", ".csv"),
        (("hgnc_symbol", "ensembl_gene_id"), "\t", ".tsv.gz"),
        (("name", "stable"), ",", ".csv"),  # detected by value pattern
    ],
)
def test_from_table_file(tmp_path, header, sep, suffix):
    rows = [
        header,
        ("MYC", "ENSG00000136997.21"),
        ("TP53", "ENSG00000141510"),
        ("EXTRA", "ENSG00000000002"),
    ]
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    path = tmp_path / f"map{suffix}"
    if suffix.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    with pytest.warns(UserWarning, match="2 of 4"):
        s = to_ensembl(make_adata(), table=path)
    assert s["MYC"] == "ENSG00000136997" and s["TP53"] == "ENSG00000141510"
    assert s.isna().sum() == 2


def test_table_without_header(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("ENSG00000136997\tMYC\nENSG00000141510\tTP53\n")
    with pytest.warns(UserWarning):
        s = to_ensembl(make_adata(), table=path)
    assert s["MYC"] == "ENSG00000136997"


def test_table_unrecognised_columns(tmp_path):
    table = pd.DataFrame({"a": ["MYC"], "b": ["foo"]})
    with pytest.raises(GeneIdError, match=r"Could not recognise the columns.*symbol column"):
        gene_id_map(make_adata(), table=table)


def test_to_symbol_from_table_and_adata():
    table = pd.DataFrame(
        {"symbol": ["MYC", "TP53"], "ensembl_id": ["ENSG00000136997", "ENSG00000141510.3"]}
    )
    s = to_symbol(["ENSG00000141510.17", "ENSG00000136997"], table=table)
    assert s.tolist() == ["TP53", "MYC"]
    assert s.index.tolist() == ["ENSG00000141510.17", "ENSG00000136997"]
    with pytest.warns(UserWarning, match="1 of 2 ids"):
        s2 = to_symbol(["ENSG00000102145", "ENSG00000999999"], table=make_adata({"gene_ids": IDS}))
    assert s2.iloc[0] == "GATA1" and pd.isna(s2.iloc[1])


def test_column_and_table_exclusive():
    with pytest.raises(GeneIdError, match="not both"):
        gene_id_map(make_adata({"gene_ids": IDS}), column="gene_ids", table=pd.DataFrame())
