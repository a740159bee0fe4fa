"""Specifications of the DE engine (evaluate/_de.py), the on-target QC and sweep kernels
(evaluate/_responders.py) and the ``perturbation_responders`` calibration."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy import stats as sst

from scfm_audit.data import simulate_perturbseq
from scfm_audit.data._dataset import DatasetSpec
from scfm_audit.evaluate._de import (
    DE_COLUMNS,
    DEInputError,
    _bh_rows,
    differential_expression,
    responder_labels,
)
from scfm_audit.evaluate._responders import (
    hvg_ranking,
    on_target_qc,
    on_target_test,
    responder_sweep,
    split_control_on_target,
)
from scfm_audit.stats._fdr import bh_fdr

SPEC = DatasetSpec(perturbation="perturbation", modality="modality")
SMALL = {"n_cells": 900, "n_genes": 60, "n_tfs": 8, "n_perturbations": 4, "n_modules": 3}


@pytest.fixture(scope="module")
def small():
    return simulate_perturbseq(**SMALL, seed=3)


@pytest.fixture(scope="module")
def both_arms():
    return simulate_perturbseq(**{**SMALL, "n_cells": 1600}, modality="both", seed=4)


def _scanpy(adata, method):
    import scanpy as sc

    x = adata.copy()
    x.X = sparse.csr_matrix(x.X, dtype=np.float64)
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(x, "perturbation", reference="non-targeting", method=method)
    return x.uns["rank_genes_groups"]


@pytest.mark.parametrize(("ours", "theirs"), [("welch", "t-test"), ("wilcoxon", "wilcoxon")])
def test_equals_scanpy_rank_genes_groups(small, ours, theirs):
    """Welch = scanpy method="t-test", Mann–Whitney = scanpy "wilcoxon" (same ties), both
    with reference = control, on scanpy's own normalize_total + log1p (scanpy's default:
    no tie correction; both settings in tests/test_de_engine.py)."""
    de = differential_expression(small.adata, SPEC, method=ours, chunk_size=128, tie_correct=False)
    r = _scanpy(small.adata, theirs)
    for pert in de["perturbation"].unique():
        d = de[de["perturbation"] == pert].set_index("gene")
        names = list(r["names"][pert])
        for col, mine in (("pvals", "p"), ("scores", "statistic"), ("logfoldchanges", "log2fc")):
            a = d.loc[names, mine].to_numpy()
            b = np.asarray(r[col][pert], dtype=float)
            ok = np.isfinite(a)
            assert ok.mean() > 0.9
            # scanpy stores scores and fold changes as float32: compare relatively
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_chunked_and_backed_equal_in_memory(small, tmp_path, method):
    whole = differential_expression(small.adata, SPEC, method=method, chunk_size=10**6)
    path = tmp_path / "s.h5ad"
    small.adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    chunked = differential_expression(backed, SPEC, method=method, chunk_size=97)
    assert list(chunked.columns) == DE_COLUMNS
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-10)
    backed.file.close()


def test_gene_subset_keeps_normalisation_over_all_genes(small):
    genes = list(small.adata.var_names[::3])
    sub = differential_expression(small.adata, SPEC, genes=genes)
    full = differential_expression(small.adata, SPEC)
    full = full[full["gene"].isin(genes)].reset_index(drop=True)
    np.testing.assert_allclose(sub["p"], full["p"], rtol=1e-12)
    assert not np.allclose(sub["q_within"], full["q_within"])  # BH over the subset only


def test_pseudobulk_equals_tests_on_hand_summed_units(small):
    a = small.adata
    pb = differential_expression(a, SPEC, pseudobulk_by="donor", chunk_size=200)
    key = a.obs["perturbation"].astype(str) + "|" + a.obs["donor"].astype(str)
    codes, uniq = pd.factorize(key)
    ind = sparse.csr_matrix((np.ones(a.n_obs), (codes, np.arange(a.n_obs))))
    sums = ind @ sparse.csr_matrix(a.X, dtype=np.float64)
    obs = pd.DataFrame(
        {"perturbation": [u.split("|")[0] for u in uniq], "modality": "CRISPRi"},
        index=[str(i) for i in range(len(uniq))],
    )
    hand = differential_expression(ad.AnnData(X=sums, obs=obs, var=a.var[[]]), SPEC)
    pd.testing.assert_frame_equal(pb, hand, check_exact=False, rtol=1e-10)
    assert pb["n_control"].iat[0] == a.obs["donor"].nunique()
    assert pb.attrs["de"]["pseudobulk_by"] == "donor"


def test_pseudobulk_needs_two_units_per_group():
    b = simulate_perturbseq(**SMALL, n_donors=1, seed=5)
    with pytest.raises(DEInputError, match="fewer than 2 units"):
        differential_expression(b.adata, SPEC, pseudobulk_by="donor")
    with pytest.raises(DEInputError, match="not an obs column"):
        differential_expression(b.adata, SPEC, pseudobulk_by="guide")


def test_bad_options_say_what_to_change(small):
    with pytest.raises(DEInputError, match="use 'welch' or 'wilcoxon'"):
        differential_expression(small.adata, SPEC, method="t-test")
    with pytest.raises(DEInputError, match="not in the dataset"):
        differential_expression(small.adata, SPEC, genes=["NOPE"])
    with pytest.raises(DEInputError, match="max_control_cells"):
        differential_expression(small.adata, SPEC, max_control_cells=1)


def test_control_subsample_is_seeded_and_capped(small):
    n_ctrl = int((small.adata.obs["perturbation"] == "non-targeting").sum())
    a = differential_expression(small.adata, SPEC, max_control_cells=100, seed=1)
    b = differential_expression(small.adata, SPEC, max_control_cells=100, seed=1)
    c = differential_expression(small.adata, SPEC, max_control_cells=100, seed=2)
    assert (a["n_control"] == 100).all()
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["p"], c["p"], equal_nan=True)
    big = differential_expression(small.adata, SPEC, max_control_cells=10**6)
    assert (big["n_control"] == n_ctrl).all()
    assert big.attrs["de"]["controls_available"] == {"CRISPRi": n_ctrl}


def test_bh_within_rows_equals_bh_per_row():
    rng = np.random.default_rng(0)
    p = rng.random((5, 40)) ** 3
    p[1, [3, 7]] = np.nan
    want = np.vstack([bh_fdr(r) for r in p])
    np.testing.assert_allclose(_bh_rows(p), want, equal_nan=True)


def test_null_screen_welch_pvalues_are_uniform():
    """No regulation, no knock-down: per-gene Welch p-values are uniform (KS), and the
    rejection rate at 0.05 lies within a binomial band."""
    b = simulate_perturbseq(
        n_cells=3000,
        n_genes=200,
        n_tfs=20,
        n_perturbations=10,
        regulation_strength=0,
        knockdown=0,
        seed=11,
    )
    p = differential_expression(b.adata, SPEC)["p"].dropna().to_numpy()
    assert p.size > 1800
    assert sst.kstest(p, "uniform").pvalue > 0.01
    lo, hi = sst.binom.ppf([0.0005, 0.9995], p.size, 0.05) / p.size
    assert lo <= (p < 0.05).mean() <= hi


def test_called_responders_are_mostly_true_effects():
    """Among responders (scope 'within', BH 0.05) of planted screens, the fraction with no
    true effect stays near the FDR. Targets are uniform over genes and expression less
    skewed: the simulator's library-composition shift (not in true_effects) is then
    small; with targets on highly expressed genes it moves every gene of a perturbation
    by up to ~0.5 log2 on the normalised scale, and that is a real normalised-scale effect."""
    false, called = 0, 0
    for seed in (1, 2, 3):
        b = simulate_perturbseq(
            n_cells=3000,
            n_genes=300,
            n_tfs=20,
            n_perturbations=10,
            seed=seed,
            gene_level_predictability=0.0,
            expression_sd=0.8,
        )
        r = responder_labels(differential_expression(b.adata, SPEC), scope="within")
        r = r[r["responder"]]
        truth = set(zip(b.true_effects["perturbation"], b.true_effects["gene"], strict=True))
        false += sum((a, g) not in truth for a, g in zip(r["perturbation"], r["gene"], strict=True))
        called += len(r)
    assert called > 100
    assert false / called <= 0.10


def test_on_target_qc_statuses(both_arms):
    de = differential_expression(both_arms.adata, SPEC)
    qc = on_target_qc(de)
    assert set(qc["status"]) == {"pass"}
    assert set(qc.loc[qc["arm"] == "CRISPRi", "expected"]) == {"down"}
    assert set(qc.loc[qc["arm"] == "CRISPRa", "expected"]) == {"up"}
    assert (qc.loc[qc["arm"] == "CRISPRa", "on_target_log2fc"] > 0.5).all()
    # a target outside the tested genes has its own status
    some = sorted(set(de["gene"]) - set(de["perturbation"]))[:10]
    sub = on_target_qc(differential_expression(both_arms.adata, SPEC, genes=some))
    assert set(sub["status"]) == {"target not measured"}
    # no knock-down: the QC fails and says why
    flat = simulate_perturbseq(**SMALL, knockdown=0.0, seed=6)
    qc0 = on_target_qc(differential_expression(flat.adata, SPEC))
    assert (qc0["status"] == "fail").mean() >= 0.75
    assert qc0.loc[qc0["status"] == "fail", "reason"].str.contains("not <").all()


def test_on_target_test_is_the_signed_rank_test():
    x = np.array([-1.2, -0.4, 0.3, -2.0, -0.9, np.nan, -0.1])
    res = on_target_test(x, n_boot=200, seed=0)
    want = sst.wilcoxon(x[np.isfinite(x)])
    assert res["p"] == pytest.approx(want.pvalue) and res["n"] == 6
    assert res["ci_low"] <= res["median"] <= res["ci_high"]
    assert np.isnan(on_target_test([0.3])["p"])


def test_sweep_grid_caps_and_reference(small):
    sw = responder_sweep(
        small.adata,
        SPEC,
        lfc_grid=(0.25, 0.5),
        control_grid=(80, 10**5),
        hvg_grid=(30, 1000),
        reference=(0.5, 80, 30),
    )
    assert len(sw) == 8
    assert sw.loc[sw["control_cells"] == 10**5, "controls_capped"].all()
    assert sw.loc[sw["hvgs"] == 1000, "hvgs_capped"].all()
    assert (sw.loc[sw["hvgs"] == 30, "genes_tested"] == 30).all()
    ref = sw[sw["is_reference"]]
    assert len(ref) == 1 and ref["jaccard_vs_reference"].iat[0] == 1.0
    assert sw["jaccard_vs_reference"].between(0, 1).all()
    top = hvg_ranking(small.adata, SPEC)
    assert len(top) == small.adata.n_vars and top.is_unique
    with pytest.raises(ValueError, match="not a configuration of the grid"):
        responder_sweep(small.adata, SPEC, reference=(0.3, 2000, 2000))


def test_split_controls_are_disjoint_equal_shares_and_fold_changes_are_scanpys(both_arms):
    """Each perturbation's on-target log2FC against its own share of its arm's controls:
    shares disjoint within an arm, equal in size, and the fold change is scanpy's formula
    on those cells (log-normalised over every gene)."""
    a = both_arms.adata
    out = split_control_on_target(a, SPEC, seed=7)
    assert set(out["arm"]) == {"CRISPRi", "CRISPRa"}
    for arm, sub in out.groupby("arm"):
        n_ctrl = int(
            ((a.obs["perturbation"] == "non-targeting") & (a.obs["modality"] == arm)).sum()
        )
        assert sub["n_control"].nunique() == 1
        assert sub["n_control"].iat[0] == n_ctrl // len(sub)
    # one perturbation by hand, with the shares rebuilt from the same seed
    x = np.asarray(a.X.toarray() if sparse.issparse(a.X) else a.X, float)
    y = np.log1p(x / (x.sum(1, keepdims=True) / 1e4))
    arm = "CRISPRi"
    obs = a.obs
    ctrl = np.flatnonzero((obs["perturbation"] == "non-targeting") & (obs["modality"] == arm))
    names = sorted(set(obs.loc[obs["modality"] == arm, "perturbation"]) - {"non-targeting"})
    names = [n for n in names if n in a.var_names]
    import zlib

    rng = np.random.default_rng([7, zlib.crc32(f"split:{arm}".encode())])
    order = rng.permutation(ctrl)
    share = ctrl.size // len(names)
    i, name = 1, names[1]
    mine = np.sort(order[i * share : (i + 1) * share])
    cells = np.flatnonzero((obs["perturbation"] == name) & (obs["modality"] == arm))
    g = a.var_names.get_loc(name)
    m1, m0 = y[cells, g].mean(), y[mine, g].mean()
    want = np.log2(np.expm1(m1) + 1e-9) - np.log2(np.expm1(m0) + 1e-9)
    got = out[(out["arm"] == arm) & (out["perturbation"] == name)]["on_target_log2fc"].iat[0]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_too_few_controls_test_a_seeded_subset_of_perturbations(small):
    a = small.adata
    n_ctrl = int((a.obs["perturbation"] == "non-targeting").sum())
    out = split_control_on_target(a, SPEC, min_share=n_ctrl // 2, seed=0)
    assert len(out) == 2 and (out["n_control"] == n_ctrl // 2).all()
    again = split_control_on_target(a, SPEC, min_share=n_ctrl // 2, seed=0)
    pd.testing.assert_frame_equal(out, again)
    assert split_control_on_target(a, SPEC, min_share=n_ctrl + 1).empty


def test_hvg_ranking_reads_dense_counts_like_sparse(small):
    dense = small.adata.copy()
    dense.X = sparse.csr_matrix(dense.X).toarray()
    as_csr = small.adata.copy()
    as_csr.X = sparse.csr_matrix(as_csr.X)
    assert list(hvg_ranking(dense, SPEC)) == list(hvg_ranking(as_csr, SPEC))


@pytest.mark.slow
def test_calibration_keeps_level_and_finds_a_50_percent_knockdown():
    """12 perturbations, 450 controls (37 per share): a 50 % knock-down is found in every
    replicate; the hub null (shared controls over-rejected on it) is not flagged."""
    from scfm_audit.analyses._calibration import calibrate

    summ, _ = calibrate(
        "perturbation_responders",
        n_replicates=6,
        scenarios=["hub_null_regulation_no_knockdown", "planted_knockdown_0.5"],
    )
    rate = summ.set_index("scenario")["rate"]
    assert rate["hub_null_regulation_no_knockdown"] <= 1 / 6
    assert rate["planted_knockdown_0.5"] == 1.0


def test_wilcoxon_per_arm_equals_scipy_u(both_arms):
    """Each arm against its own controls: z from scipy's U without tie correction (scanpy's
    default; ``tie_correct=True`` is compared with scipy in tests/test_de_engine.py)."""
    from scfm_audit.evaluate._de import _log_normalise

    a = both_arms.adata
    de = differential_expression(a, SPEC, method="wilcoxon", chunk_size=333, tie_correct=False)
    Y = _log_normalise(a.X).toarray()
    lab, arm = (a.obs[c].astype(str).to_numpy() for c in ("perturbation", "modality"))
    assert set(de["arm"]) == {"CRISPRi", "CRISPRa"}
    for (ar, pert), d in de.groupby(["arm", "perturbation"]):
        x1, x0 = Y[(lab == pert) & (arm == ar)], Y[(lab == "non-targeting") & (arm == ar)]
        n1, n0 = len(x1), len(x0)
        u = sst.mannwhitneyu(x1, x0, axis=0, method="asymptotic", use_continuity=False).statistic
        z = (u - n1 * n0 / 2) / np.sqrt(n1 * n0 * (n1 + n0 + 1) / 12)
        ok = np.isfinite(d["statistic"].to_numpy())
        np.testing.assert_allclose(d["statistic"].to_numpy()[ok], z[ok], rtol=1e-12, atol=1e-12)


def test_threaded_t_tail_equals_scipy():
    from scfm_audit.evaluate._de import _two_sided_t

    rng = np.random.default_rng(1)
    t = rng.normal(0, 3, (4, 300_000))
    df = rng.uniform(2, 500, (4, 300_000))
    np.testing.assert_allclose(_two_sided_t(t, df), 2 * sst.t.sf(np.abs(t), df), rtol=1e-12)
