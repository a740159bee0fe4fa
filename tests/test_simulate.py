"""Specification of the synthetic Perturb-seq benchmark (``scfm_audit.data._simulate``)."""

from __future__ import annotations

import json
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.data._simulate import (
    SimulatedBenchmark,
    SimulationParams,
    simulate_perturbseq,
    write_benchmark,
)

CONTROL = "non-targeting"
SMALL = {"n_cells": 600, "n_genes": 120, "n_tfs": 12, "n_perturbations": 10}


# -- helpers ---------------------------------------------------------------------------------
def _lognorm(adata: ad.AnnData) -> np.ndarray:
    x = adata.X.toarray()
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def _pseudobulk_lfc(adata: ad.AnnData, modality: str) -> pd.DataFrame:
    """Observed log2 fold change (perturbations × genes) of CP10k means vs controls."""
    x = adata.X.toarray()
    x = x / x.sum(axis=1, keepdims=True) * 1e4
    obs = adata.obs
    arm = (obs["modality"] == modality).to_numpy()
    ctrl = x[arm & (obs["perturbation"] == CONTROL).to_numpy()].mean(axis=0)
    rows = {}
    for p in obs["perturbation"].cat.categories.drop(CONTROL):
        rows[p] = np.log2(
            (x[arm & (obs["perturbation"] == p).to_numpy()].mean(axis=0) + 0.01) / (ctrl + 0.01)
        )
    return pd.DataFrame(rows, index=adata.var_names).T


def _control_spearman(adata: ad.AnnData, cells: np.ndarray | None = None) -> np.ndarray:
    ctrl = (adata.obs["perturbation"] == CONTROL).to_numpy()
    if cells is not None:
        ctrl &= cells
    return np.nan_to_num(stats.spearmanr(_lognorm(adata)[ctrl]).statistic)


def _edge_vs_rewired_gap(bench: SimulatedBenchmark, seed: int = 0) -> float:
    """Mean |Spearman| over true GRN edges minus that over rewired non-edges.

    The non-edges keep each edge's source and permute the targets among edges (so both
    pairs sets have the same genes with the same degrees) and drop true edges and loops.
    """
    rho = _control_spearman(bench.adata)
    ix = {g: i for i, g in enumerate(bench.adata.var_names)}
    s = bench.grn.edges["source"].map(ix).to_numpy()
    t = bench.grn.edges["target"].map(ix).to_numpy()
    edges = set(zip(s.tolist(), t.tolist(), strict=True))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(20):
        tp = rng.permutation(t)
        keep = np.array([(a, b) not in edges and a != b for a, b in zip(s, tp, strict=True)])
        null.append(np.abs(rho[s[keep], tp[keep]]).mean())
    return float(np.abs(rho[s, t]).mean() - np.mean(null))


@pytest.fixture(scope="module")
def bench() -> SimulatedBenchmark:
    return simulate_perturbseq()


@pytest.fixture(scope="module")
def bench_both() -> SimulatedBenchmark:
    return simulate_perturbseq(modality="both", n_cells=6000)


# -- determinism -----------------------------------------------------------------------------
def test_same_seed_gives_bitwise_identical_data_and_truth() -> None:
    a = simulate_perturbseq(**SMALL, seed=3)
    b = simulate_perturbseq(SimulationParams(**SMALL, seed=3))
    assert (a.adata.X != b.adata.X).nnz == 0
    assert a.adata.X.dtype == b.adata.X.dtype
    pd.testing.assert_frame_equal(a.adata.obs, b.adata.obs)
    pd.testing.assert_frame_equal(a.adata.var, b.adata.var)
    pd.testing.assert_frame_equal(a.grn.edges, b.grn.edges)
    pd.testing.assert_frame_equal(a.true_effects, b.true_effects)


def test_different_seed_gives_different_data() -> None:
    a = simulate_perturbseq(**SMALL, seed=0)
    b = simulate_perturbseq(**SMALL, seed=1)
    assert (a.adata.X != b.adata.X).nnz > 0
    assert not a.grn.edges.equals(b.grn.edges)


# -- shape and annotations -------------------------------------------------------------------
def test_default_benchmark_has_documented_shape_and_columns(bench: SimulatedBenchmark) -> None:
    a = bench.adata
    p = bench.params
    assert a.shape == (p.n_cells, p.n_genes) == (3000, 400)
    assert {"perturbation", "modality", "cell_state", "donor", "n_counts"} <= set(a.obs)
    assert {"ensembl_id", "is_tf", "base_mean"} <= set(a.var)
    assert a.var_names.is_unique
    assert a.var_names[0] == "TF001" and a.var_names[p.n_tfs] == "G0001"
    assert int(a.var["is_tf"].sum()) == p.n_tfs
    assert a.var["ensembl_id"].is_unique
    assert all(re.fullmatch(r"ENSG9\d{10}", e) for e in a.var["ensembl_id"])
    assert set(a.obs["cell_state"].cat.categories) == {f"state{s}" for s in range(p.n_states)}
    assert a.obs["donor"].cat.categories.size == p.n_donors
    assert set(a.obs["modality"]) == {"CRISPRi"}
    assert a.uns["simulation"] == json.loads(p.model_dump_json())


def test_counts_are_csr_non_negative_integers(bench: SimulatedBenchmark) -> None:
    x = bench.adata.X
    assert sparse.issparse(x) and x.format == "csr"
    assert x.data.min() >= 0
    assert np.array_equal(x.data, np.round(x.data))
    np.testing.assert_array_equal(bench.adata.obs["n_counts"], np.asarray(x.sum(axis=1)).ravel())
    assert np.median(bench.adata.obs["n_counts"]) == pytest.approx(3000 * 0.9, rel=0.25)


def test_control_fraction_and_balanced_perturbations(bench: SimulatedBenchmark) -> None:
    counts = bench.adata.obs["perturbation"].value_counts()
    assert counts[CONTROL] == round(0.3 * 3000)
    per_pert = counts.drop(CONTROL)
    assert len(per_pert) == 30 and per_pert.min() == per_pert.max() == 70
    assert bench.params.cells_per_perturbation == 70
    perturbed = per_pert.index
    n_tf = bench.adata.var.loc[perturbed, "is_tf"].sum()
    assert n_tf == round(0.7 * 30)


def test_both_modalities_split_cells_into_two_arms_with_controls(
    bench_both: SimulatedBenchmark,
) -> None:
    obs = bench_both.adata.obs
    assert obs["modality"].value_counts().to_dict() == {"CRISPRi": 3000, "CRISPRa": 3000}
    ctrl = obs[obs["perturbation"] == CONTROL]
    assert ctrl["modality"].value_counts().to_dict() == {"CRISPRi": 900, "CRISPRa": 900}
    assert set(bench_both.true_effects["modality"]) == {"CRISPRi", "CRISPRa"}


# -- perturbation effects --------------------------------------------------------------------
@pytest.mark.parametrize(("modality", "expected"), [("CRISPRi", -2.74), ("CRISPRa", 2.0)])
def test_on_target_effect_matches_knockdown_and_activation(
    bench_both: SimulatedBenchmark, modality: str, expected: float
) -> None:
    """Perturbed cells move their target gene: to ~15 % (CRISPRi) or ~4× (CRISPRa)."""
    lfc = _pseudobulk_lfc(bench_both.adata, modality)
    on_target = np.array([lfc.loc[p, p] for p in lfc.index])
    assert np.all(np.sign(on_target) == np.sign(expected))
    assert np.median(on_target) == pytest.approx(expected, abs=0.6)
    self_rows = bench_both.true_effects.query("modality == @modality and relation == 'self'")
    np.testing.assert_allclose(self_rows["log2fc"], expected, atol=0.01)


@pytest.mark.parametrize("modality", ["CRISPRi", "CRISPRa"])
def test_perturbation_propagates_to_true_targets_only(
    bench_both: SimulatedBenchmark, modality: str
) -> None:
    """Direct targets move in the planted direction; genes without a path barely move."""
    a = bench_both.adata
    lfc = _pseudobulk_lfc(a, modality).stack().rename("observed")
    lfc.index.names = ["perturbation", "gene"]
    lfc = lfc.reset_index()
    expressed = set(a.var_names[a.var["base_mean"] > 1])
    lfc = lfc[lfc["gene"].isin(expressed) & (lfc["perturbation"] != lfc["gene"])]
    truth = bench_both.true_effects.query("modality == @modality and relation != 'self'")
    merged = lfc.merge(truth, on=["perturbation", "gene"], how="left")
    affected = merged[merged["log2fc"].notna()]
    unaffected = merged[merged["log2fc"].isna()]
    direct = affected[affected["relation"] == "direct"]

    assert len(direct) > 50
    sign_agreement = (np.sign(direct["observed"]) == np.sign(direct["log2fc"])).mean()
    assert sign_agreement > 0.85  # chance: 0.5
    assert stats.spearmanr(affected["observed"], affected["log2fc"]).statistic > 0.7
    assert (unaffected["observed"].abs() > 0.5).mean() < 0.1
    assert unaffected["observed"].abs().median() < 0.5 * affected["observed"].abs().median()


def test_non_tf_perturbation_changes_only_itself(bench: SimulatedBenchmark) -> None:
    te = bench.true_effects
    non_tf = ~bench.adata.var.loc[te["perturbation"], "is_tf"].to_numpy()
    assert non_tf.any()
    assert (te.loc[non_tf, "relation"] == "self").all()


def test_true_effects_relations_follow_the_grn(bench: SimulatedBenchmark) -> None:
    te = bench.true_effects
    pairs = set(zip(bench.grn.edges["source"], bench.grn.edges["target"], strict=True))
    direct = te[te["relation"] == "direct"]
    assert all(pair in pairs for pair in zip(direct["perturbation"], direct["gene"], strict=True))
    assert (te.loc[te["relation"] != "self", "log2fc"].abs() > 0).all()


# -- network structure in the data -----------------------------------------------------------
def test_true_edges_are_coexpressed_in_control_cells(bench: SimulatedBenchmark) -> None:
    """Controls: mean |Spearman| over true edges exceeds that of rewired non-edges."""
    assert _edge_vs_rewired_gap(bench) > 0.03


def test_null_simulation_has_no_edge_coexpression_and_no_downstream_effects() -> None:
    """H0 (regulation_strength = 0): true edges are no more co-expressed than non-edges."""
    null = simulate_perturbseq(regulation_strength=0.0)
    assert abs(_edge_vs_rewired_gap(null)) < 0.01
    assert (null.true_effects["relation"] == "self").all()
    assert null.grn.n_edges > 0 and set(null.grn.edges["sign"]) == {-1, 1}


@pytest.mark.parametrize(("predictability", "low", "high"), [(1.0, 0.8, 1.0), (0.0, 0.38, 0.62)])
def test_gene_level_predictability_enriches_targets_among_expressed_genes(
    predictability: float, low: float, high: float
) -> None:
    """AUROC of base_mean for 'is a TF target' among non-TF genes."""
    aurocs = []
    for seed in range(3):
        b = simulate_perturbseq(
            n_cells=200, n_perturbations=5, gene_level_predictability=predictability, seed=seed
        )
        var = b.adata.var[~b.adata.var["is_tf"]]
        is_target = var.index.isin(b.grn.targets)
        u = stats.mannwhitneyu(var["base_mean"][is_target], var["base_mean"][~is_target])
        aurocs.append(u.statistic / (is_target.sum() * (~is_target).sum()))
    assert low < np.mean(aurocs) < high


def test_edges_inactive_in_a_state_show_no_dependence_there() -> None:
    """Per state, signed Spearman of an edge is ~0 where inactive, clearly > 0 where active."""
    b = simulate_perturbseq(
        n_cells=4000,
        n_genes=200,
        n_tfs=20,
        n_perturbations=2,
        control_fraction=0.9,
        n_states=2,
        state_specificity=1.0,
        state_program_strength=0.0,
        module_strength=0.0,
        regulation_strength=1.5,
    )
    a = b.adata
    ix = {g: i for i, g in enumerate(a.var_names)}
    se = b.state_edges.merge(b.grn.edges[["source", "target", "sign"]], on=["source", "target"])
    assert set(se.groupby(["source", "target"])["active"].sum()) == {1}  # one state each
    se["signed_rho"] = np.nan
    for state in ["state0", "state1"]:
        rho = _control_spearman(a, (a.obs["cell_state"] == state).to_numpy())
        m = se["state"] == state
        src, tgt = se.loc[m, "source"].map(ix), se.loc[m, "target"].map(ix)
        se.loc[m, "signed_rho"] = rho[src, tgt] * se.loc[m, "sign"]
    by_activity = se.groupby("active")["signed_rho"].mean()
    assert by_activity[True] > 0.12
    assert abs(by_activity[False]) < 0.03


def test_state_edges_cover_every_edge_and_state(bench: SimulatedBenchmark) -> None:
    se = bench.state_edges
    assert list(se.columns) == ["source", "target", "state", "active"]
    assert len(se) == bench.grn.n_edges * bench.params.n_states
    per_edge = se.groupby(["source", "target"])["active"].sum()
    assert per_edge.min() >= 1
    frac_specific = (per_edge < bench.params.n_states).mean()
    assert frac_specific == pytest.approx(bench.params.state_specificity, abs=0.1)


def test_ppi_modules_are_undirected_cliques(bench: SimulatedBenchmark) -> None:
    p = bench.params
    assert not bench.ppi.directed and bench.ppi.name == "sim_ppi"
    assert bench.ppi.n_edges == p.n_modules * p.module_size * (p.module_size - 1) // 2
    assert bench.grn.directed and bench.grn.name == "sim_grn"


# -- scale and I/O ---------------------------------------------------------------------------
def test_chunked_run_streams_a_readable_h5ad(tmp_path) -> None:
    path = tmp_path / "sim.h5ad"
    on_disk = simulate_perturbseq(**SMALL, chunk_size=64, out_path=path)
    assert on_disk.adata.isbacked and path.exists()
    assert on_disk.adata.shape == (600, 120)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind

    read = ad.read_h5ad(path)
    assert read.shape == (600, 120) and sparse.issparse(read.X)
    in_memory = simulate_perturbseq(**SMALL, chunk_size=64)
    assert (read.X != in_memory.adata.X).nnz == 0
    pd.testing.assert_frame_equal(read.obs, in_memory.adata.obs)
    pd.testing.assert_frame_equal(read.var, in_memory.adata.var)


def test_write_benchmark_round_trip(tmp_path) -> None:
    b = simulate_perturbseq(**SMALL)
    paths = write_benchmark(b, tmp_path / "bench")
    names = {"perturbseq.h5ad", "grn.tsv", "ppi.tsv", "true_effects.tsv", "state_edges.tsv"}
    assert {p.name for p in paths.values()} == names | {"params.json"}
    assert all(p.exists() for p in paths.values())

    read = ad.read_h5ad(paths["adata"])
    assert (read.X != b.adata.X).nnz == 0
    for key, net in (("grn", b.grn), ("ppi", b.ppi)):
        table = pd.read_csv(paths[key], sep="\t")
        back = ReferenceNetwork(table, name=net.name, directed=bool(table["directed"].iloc[0]))
        pd.testing.assert_frame_equal(back.edges, net.edges)
        assert back.directed == net.directed
    te = pd.read_csv(paths["true_effects"], sep="\t")
    pd.testing.assert_frame_equal(te, b.true_effects, check_exact=False)
    assert len(pd.read_csv(paths["state_edges"], sep="\t")) == len(b.state_edges)
    params = SimulationParams.model_validate_json(paths["params"].read_text())
    assert params == b.params


# -- parameter validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_tfs": 500}, "n_tfs"),
        ({"knockdown": 1.0}, "knockdown"),
        ({"knockdown": -0.1}, "knockdown"),
        ({"activation": 0.5}, "activation"),
        ({"n_tiers": 50}, "n_tiers"),
        ({"n_states": 3, "state_balance": [0.5, 0.5]}, "one per state"),
        ({"n_cells": 20}, "raise n_cells"),
        ({"n_modules": 100}, "module_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"knock_down": 0.5}, "Did you mean 'knockdown'"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        simulate_perturbseq(**overrides)


def test_bad_chunk_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        simulate_perturbseq(**SMALL, chunk_size=0)


def test_params_are_frozen_and_reject_unknown_fields() -> None:
    p = SimulationParams()
    with pytest.raises(ValueError):
        SimulationParams(n_cell=10)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        p.n_cells = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_states": 1},
        {"n_modules": 0, "dispersion": 0.0, "dropout": 0.0},
        {"modality": "CRISPRa", "n_tiers": 1},
        {"n_states": 3, "state_balance": [0.6, 0.3, 0.1]},
        {"n_tfs": 3, "frac_tf_perturbations": 1.0},  # capped: 3 TFs + 7 non-TFs
        {"n_perturbations": 120, "n_cells": 1000},
    ],
)
def test_edge_configurations_simulate_valid_data(overrides: dict) -> None:
    b = simulate_perturbseq(**{**SMALL, **overrides})
    assert b.adata.shape == (b.params.n_cells, 120)
    assert b.adata.X.data.min() >= 0
    assert b.adata.obs["perturbation"].cat.categories.size == b.params.n_perturbations + 1
    assert b.true_effects["perturbation"].nunique() == b.params.n_perturbations
