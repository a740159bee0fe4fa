"""Reference-network loaders: parse, filters, error messages with line numbers."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scfm_audit._registry import UnknownNameError
from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.data._references import (
    REFERENCE_LOADERS,
    ReferenceFormatError,
    load_reference,
)

DATA = Path(__file__).parent / "data"
TRRUST = DATA / "trrust_rawdata.human.tsv"


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def edge(net, source, target):
    e = net.edges
    row = e[(e["source"] == source) & (e["target"] == target)]
    assert len(row) == 1, f"edge {source}->{target} not found once"
    return row.iloc[0]


def test_registry_lists_formats():
    assert set(REFERENCE_LOADERS.names()) >= {
        "trrust",
        "dorothea",
        "collectri",
        "string",
        "chip",
        "table",
    }


def test_unknown_format_did_you_mean():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'trrust'"):
        load_reference("trust", TRRUST)


def test_unknown_option_named():
    with pytest.raises(ValueError, match=r"no option 'min_scor'.*Did you mean 'min_score'"):
        load_reference("string", TRRUST, min_scor=5)


# -- TRRUST -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trrust():
    return load_reference("trrust", TRRUST)


@pytest.fixture(scope="module")
def trrust_raw():
    return pd.read_csv(
        TRRUST, sep="\t", header=None, names=["tf", "target", "mode", "pmid"], dtype=str
    )


def test_trrust_counts(trrust, trrust_raw):
    assert len(trrust_raw) == 9396
    assert trrust.params["n_rows"] == 9396
    pairs = trrust_raw.drop_duplicates(["tf", "target"])
    pairs = pairs[pairs["tf"] != pairs["target"]]  # self-loops are dropped by ReferenceNetwork
    assert trrust.n_edges == len(pairs)
    assert trrust.directed and trrust.name == "trrust"
    assert set(trrust.sources) == set(pairs["tf"])


def test_trrust_known_edges_and_signs(trrust, trrust_raw):
    # first lines of the file: AATF->BAX Repression, AATF->MYC Activation, AATF->TP53 Unknown
    assert edge(trrust, "AATF", "BAX")["sign"] == -1
    assert edge(trrust, "AATF", "MYC")["sign"] == 1
    assert edge(trrust, "AATF", "TP53")["sign"] == 0
    assert edge(trrust, "AATF", "MYC")["evidence"] == "20549547"
    # every pair whose records all agree keeps that sign; disagreeing pairs get 0
    mode = {"Activation": 1, "Repression": -1, "Unknown": 0}
    raw = trrust_raw.assign(sign=trrust_raw["mode"].map(mode))
    raw = raw[raw["tf"] != raw["target"]]
    expected = raw.groupby(["tf", "target"])["sign"].agg(
        lambda s: s.iloc[0] if s.nunique() == 1 else 0
    )
    got = trrust.edges.set_index(["source", "target"])["sign"]
    got.index.names = ["tf", "target"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_dtype=False)
    assert (trrust.edges["weight"] == 1.0).all()


def test_trrust_bad_field_count_line_number(tmp_path):
    path = write(tmp_path / "t.tsv", "A\tB\tActivation\t1\nA\tC\tRepression\n")
    with pytest.raises(
        ReferenceFormatError, match=r"t\.tsv, line 2: expected 4 tab-separated fields.*found 3"
    ):
        load_reference("trrust", path)


def test_trrust_bad_mode_line_number(tmp_path):
    path = write(tmp_path / "t.tsv.gz", "A\tB\tActivation\t1\n\nA\tC\tUp\t2\n")
    with pytest.raises(ReferenceFormatError, match=r"line 3: mode 'Up'"):
        load_reference("trrust", path)


def test_trrust_gz_and_name(tmp_path):
    path = write(tmp_path / "t.tsv.gz", "A\tB\tActivation\t1\nA\tB\tRepression\t2\n")
    net = load_reference("trrust", path, name="my-trrust")
    assert net.name == "my-trrust" and net.n_edges == 1
    assert edge(net, "A", "B")["sign"] == 0 and edge(net, "A", "B")["evidence"] == "1;2"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv' does not exist"):
        load_reference("trrust", tmp_path / "missing.tsv")


# -- DoRothEA / CollecTRI ---------------------------------------------------------------

DOROTHEA = """source,confidence,target,weight
TP53,A,CDKN1A,1
TP53,B,MDM2,1
MYC,C,CDK4,1
MYC,D,TP53,-1
STAT1,E,IRF1,1
"""


def test_dorothea_confidence_filter(tmp_path):
    path = write(tmp_path / "dorothea.csv", DOROTHEA)
    net = load_reference("dorothea", path)
    assert net.n_edges == 3 and set(net.sources) == {"TP53", "MYC"}
    assert edge(net, "TP53", "CDKN1A")["evidence"] == "confidence=A"
    assert load_reference("dorothea", path, min_confidence="A").n_edges == 1
    all_edges = load_reference("dorothea", path, min_confidence=None)
    assert all_edges.n_edges == 5
    assert edge(all_edges, "MYC", "TP53")["sign"] == -1
    assert edge(all_edges, "MYC", "TP53")["weight"] == 1.0


def test_dorothea_tsv_gz_with_mor(tmp_path):
    text = DOROTHEA.replace(",", "\t").replace("weight", "mor")
    net = load_reference("dorothea", write(tmp_path / "d.tsv.gz", text), min_confidence="B")
    assert net.n_edges == 2


def test_dorothea_bad_confidence_line(tmp_path):
    path = write(tmp_path / "d.csv", DOROTHEA.replace("MYC,C,CDK4", "MYC,Z,CDK4"))
    with pytest.raises(ReferenceFormatError, match=r"d\.csv, line 4: confidence 'Z'"):
        load_reference("dorothea", path)


def test_dorothea_without_confidence_needs_none(tmp_path):
    path = write(tmp_path / "d.csv", "source,target,weight\nA,B,1\n")
    with pytest.raises(ReferenceFormatError, match=r"no 'confidence' column.*min_confidence=None"):
        load_reference("dorothea", path)
    assert load_reference("dorothea", path, min_confidence=None).n_edges == 1


def test_collectri_float_weights(tmp_path):
    path = write(tmp_path / "c.tsv", "source\ttarget\tweight\nA\tB\t-0.5\nA\tC\t2\nA\tD\t0\n")
    net = load_reference("collectri", path)
    assert edge(net, "A", "B")["sign"] == -1 and edge(net, "A", "B")["weight"] == 0.5
    assert edge(net, "A", "C")["sign"] == 1 and edge(net, "A", "D")["sign"] == 0


def test_collectri_bad_weight_line(tmp_path):
    path = write(tmp_path / "c.csv", "source,target,weight\nA,B,1\n\nA,C,strong\n")
    with pytest.raises(ReferenceFormatError, match=r"c\.csv, line 4: 'weight' value 'strong'"):
        load_reference("collectri", path)


def test_collectri_too_many_fields_line(tmp_path):
    path = write(tmp_path / "c.csv", "source,target,weight\nA,B,1\nA,C,1\nA,D,1,extra\n")
    with pytest.raises(
        ReferenceFormatError, match=r"c\.csv, line 4: expected 3 comma-separated fields.*found 4"
    ):
        load_reference("collectri", path)


def test_collectri_too_few_fields_line(tmp_path):
    path = write(tmp_path / "c.csv", "source,target,weight\nA,B,1\nA,C\n")
    with pytest.raises(ReferenceFormatError, match=r"line 3: empty or missing 'weight' field"):
        load_reference("collectri", path)


def test_collectri_missing_column(tmp_path):
    path = write(tmp_path / "c.csv", "source,targets,weight\nA,B,1\n")
    with pytest.raises(ReferenceFormatError, match=r"line 1: no target column 'target'.*'targets'"):
        load_reference("collectri", path)


# -- STRING -----------------------------------------------------------------------------

LINKS = """protein1 protein2 combined_score
9606.ENSP01 9606.ENSP02 950
9606.ENSP02 9606.ENSP01 950
9606.ENSP01 9606.ENSP03 710
9606.ENSP02 9606.ENSP03 400
9606.ENSP03 9606.ENSP99 900
"""
ALIASES = """#string_protein_id\talias\tsource
9606.ENSP01\tP04637\tUniProt_AC
9606.ENSP01\tTP53\tEnsembl_HGNC_symbol BioMart_HUGO
9606.ENSP02\tmdm2-old\tEnsembl_EntrezGene
9606.ENSP02\tMDM2\tBioMart_HUGO
9606.ENSP03\tCDKN1A_first\tUniProt_GN_Name
9606.ENSP03\tP21\tEnsembl_gene
"""


def test_string_score_filter_and_alias_rule(tmp_path):
    links = write(tmp_path / "9606.protein.links.txt.gz", LINKS)
    aliases = write(tmp_path / "9606.protein.aliases.txt.gz", ALIASES)
    with pytest.warns(UserWarning, match="1 of 4 STRING proteins"):
        net = load_reference("string", links, aliases=aliases)
    assert not net.directed
    # 01-02 (both directions merged), 01-03; 02-03 below 700; 03-99 unmapped
    assert net.n_edges == 2
    assert edge(net, "MDM2", "TP53")["weight"] == pytest.approx(0.95)  # canonical order
    assert set(net.genes) == {"TP53", "MDM2", "CDKN1A_first"}  # fallback: first alias
    assert net.params["n_unmapped_proteins"] == 1 and net.params["n_edges_unmapped"] == 1
    with pytest.warns(UserWarning):
        strict = load_reference("string", links, aliases=aliases, min_score=900)
    assert strict.n_edges == 1


def test_string_without_aliases_needs_them(tmp_path):
    links = write(tmp_path / "links.txt", LINKS)
    with pytest.raises(ValueError, match=r"pass aliases="):
        load_reference("string", links)


def test_string_symbol_ids_and_bad_score(tmp_path):
    ok = write(tmp_path / "l.txt", "protein1 protein2 combined_score\nA B 800\n")
    assert load_reference("string", ok).n_edges == 1
    bad = write(tmp_path / "bad.txt", "protein1 protein2 combined_score\nA B 800\nA C high\n")
    with pytest.raises(
        ReferenceFormatError, match=r"bad\.txt, line 3: 'combined_score' value 'high'"
    ):
        load_reference("string", bad)


def test_string_wrong_header(tmp_path):
    path = write(tmp_path / "l.txt", "a b c\nA B 800\n")
    with pytest.raises(ReferenceFormatError, match=r"line 1: expected the space-separated header"):
        load_reference("string", path)


# -- generic tables / ChIP --------------------------------------------------------------


def test_chip_table_aliases_and_gz(tmp_path):
    path = write(
        tmp_path / "chip.tsv.gz", "TF\ttarget_gene\tpeak_score\nGATA1\tKLF1\t12\nGATA1\tTAL1\t3\n"
    )
    net = load_reference("chip", path, weight_col="peak_score")
    assert net.directed and net.n_edges == 2
    assert (
        edge(net, "GATA1", "KLF1")["weight"] == 12
        and edge(net, "GATA1", "KLF1")["evidence"] == "ChIP-seq"
    )


def test_table_custom_columns_signs_undirected(tmp_path):
    text = "a,b,effect,src\nX,Y,activation,lit\nY,X,+,db\nX,Z,-,db\n"
    path = write(tmp_path / "net.csv", text)
    net = load_reference(
        "table",
        path,
        source_col="a",
        target_col="b",
        sign_col="effect",
        evidence_col="src",
        directed=False,
    )
    assert not net.directed and net.n_edges == 2
    assert edge(net, "X", "Y")["sign"] == 1 and edge(net, "X", "Y")["evidence"] == "db;lit"
    assert edge(net, "X", "Z")["sign"] == -1


def test_table_txt_sniffed_and_weight_sign(tmp_path):
    path = write(tmp_path / "net.txt", "source\ttarget\tweight\nA\tB\t-2\nA\tC\t0.5\n")
    net = load_reference("table", path)
    assert edge(net, "A", "B")["sign"] == -1 and edge(net, "A", "B")["weight"] == 2


def test_table_errors(tmp_path):
    path = write(tmp_path / "net.tsv", "source\ttarget\tsign\nA\tB\t+\nA\t\t-\n")
    with pytest.raises(ReferenceFormatError, match=r"net\.tsv, line 3: empty or missing 'target'"):
        load_reference("table", path)
    path = write(tmp_path / "net2.tsv", "source\ttarget\tsign\nA\tB\t+\nA\tC\tmaybe\n")
    with pytest.raises(ReferenceFormatError, match=r"line 3: sign value 'maybe'"):
        load_reference("table", path)
    with pytest.raises(ReferenceFormatError, match=r"no source column 'regulator'"):
        load_reference("table", path, source_col="regulator")
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(ReferenceFormatError, match=r"empty\.csv: the file is empty"):
        load_reference("table", empty)


def _merge_by_the_rule(edges: pd.DataFrame, directed: bool) -> pd.DataFrame:
    """The documented duplicate-merge rule, written plainly (one Python call per pair)."""
    df = edges[edges["source"] != edges["target"]].copy()
    if not directed:
        lo = df[["source", "target"]].min(axis=1)
        hi = df[["source", "target"]].max(axis=1)
        df["source"], df["target"] = lo, hi
    rows = []
    for (s, t), grp in df.groupby(["source", "target"]):
        signs = set(grp["sign"])
        ev = sorted({e for e in grp["evidence"] if e})
        rows.append(
            (s, t, grp["weight"].max(), signs.pop() if len(signs) == 1 else 0, ";".join(ev))
        )
    return pd.DataFrame(rows, columns=["source", "target", "weight", "sign", "evidence"])


@pytest.mark.parametrize("directed", [True, False])
def test_duplicate_merge_follows_the_rule(directed):
    """ReferenceNetwork's vectorised duplicate merge equals the rule written plainly."""
    rng = np.random.default_rng(0)
    genes = np.array(list("ABCDEF"))
    edges = pd.DataFrame(
        {
            "source": genes[rng.integers(0, 6, 300)],
            "target": genes[rng.integers(0, 6, 300)],
            "weight": rng.random(300).round(3),
            "sign": rng.integers(-1, 2, 300),
            "evidence": rng.choice(["", "p1", "p2", "p3"], 300),
        }
    )
    fast = ReferenceNetwork(edges, name="x", directed=directed).edges
    slow = _merge_by_the_rule(edges, directed)
    key = ["source", "target"]
    pd.testing.assert_frame_equal(
        fast.sort_values(key).reset_index(drop=True),
        slow.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )


def test_table_reads_directed_from_its_own_column(tmp_path):
    """The simulator's ppi.tsv says directed=False in a column: it loads undirected,
    unless the config overrides it; a file mixing both values is an error."""
    p = tmp_path / "ppi.tsv"
    p.write_text("source\ttarget\tdirected\nA\tB\tFalse\nB\tC\tFalse\n")
    assert not load_reference("table", p).directed
    assert load_reference("table", p, directed=True).directed
    p.write_text("source\ttarget\tdirected\nA\tB\tFalse\nB\tC\tTrue\n")
    with pytest.raises(ValueError, match="one value"):
        load_reference("table", p)
