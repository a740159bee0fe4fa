"""in_silico_perturbation: the kernels against plain reference computations, the model
interventions on tiny real checkpoints, the shuffled-label test, and calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from scfm_audit.data._dataset import DatasetSpec, control_mask
from scfm_audit.evaluate._in_silico import (
    compare_in_silico,
    cross_scores,
    in_silico_effects,
    in_silico_test,
    perturbable,
)

SPEC = DatasetSpec(perturbation="perturbation", modality="modality")


def _random_profiles(seed=0, n_pert=6, n_genes=40, arms=("A",)):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    perts = genes[:n_pert]
    pr, ob = [], []
    for a in arms:
        for p in perts:
            for g in genes:
                pr.append((a, p, g, rng.normal() if rng.random() > 0.1 else np.nan))
                ob.append((a, p, g, rng.normal(), bool(rng.random() < 0.3)))
    pr = pd.DataFrame(pr, columns=["arm", "perturbation", "gene", "predicted_shift"])
    ob = pd.DataFrame(ob, columns=["arm", "perturbation", "gene", "log2fc", "responder"])
    return pr, ob, perts


@pytest.mark.parametrize("signed", [True, False])
def test_cross_scores_match_scipy_and_sklearn(signed):
    pr, ob, perts = _random_profiles()
    cs = cross_scores(pr, ob, signed=signed)
    assert list(cs.units["perturbation"]) == perts
    for j, pj in enumerate(perts):
        x = pr[pr.perturbation == pj].set_index("gene")["predicted_shift"]
        for k, pk in enumerate(perts):
            o = ob[ob.perturbation == pk].set_index("gene")
            m = x.notna() & ~x.index.isin([pj, pk])  # both perturbed genes excluded
            y = o["log2fc"][m] if signed else o["log2fc"][m].abs()
            assert cs.matrices["spearman"][j, k] == pytest.approx(spearmanr(x[m], y)[0])
            assert cs.matrices["auroc"][j, k] == pytest.approx(
                roc_auc_score(o["responder"][m], x[m].abs())
            )
            lab = o["responder"][m]
            agree = (np.sign(x[m][lab]) == np.sign(o["log2fc"][m][lab])).mean()
            if signed:
                assert cs.matrices["sign_agreement"][j, k] == pytest.approx(agree)
            else:  # an unsigned readout has no sign to agree
                assert np.isnan(cs.matrices["sign_agreement"][j, k])


def test_shuffled_label_test_finds_planted_specificity_and_not_gene_level_patterns():
    rng = np.random.default_rng(1)
    n, G = 20, 200
    pattern = rng.normal(size=G)  # a gene-level pattern present in every profile
    own = rng.normal(size=(n, G))
    obs = pattern + own
    genes = [f"g{i}" for i in range(G)]

    def frames(pred):
        pr = pd.DataFrame(
            {
                "arm": "all",
                "perturbation": np.repeat(genes[:n], G),
                "gene": np.tile(genes, n),
                "predicted_shift": pred.ravel(),
            }
        )
        ob = pr.rename(columns={"predicted_shift": "log2fc"}).assign(
            log2fc=obs.ravel(), responder=np.abs(obs.ravel()) > 1.5
        )
        return pr, ob

    gene_level = pattern + rng.normal(size=(n, G))  # correlates with every observed profile
    _, tests, _ = compare_in_silico(*frames(gene_level), signed=True, n_boot=200, seed=0)
    t = tests["spearman"]
    assert t.statistic > 0.2  # large raw Spearman ...
    assert t.p > 0.05 and t.ci_low < 0 < t.ci_high  # ... but nothing perturbation-specific
    planted = gene_level + 0.5 * own
    _, tests, _ = compare_in_silico(*frames(planted), signed=True, n_boot=200, seed=0)
    t = tests["spearman"]
    assert t.p < 0.01 and t.effect > 0 and t.ci_low > 0
    assert t.n_draws > 999  # the adaptive second stage ran for a small p
    r = t.result  # the typed result the claim is recorded from
    assert r.side == "greater" and r.p_greater < 0.01 < r.p_less and r.p == t.p
    assert r.p_floor == t.p_floor and r.null_value == 0.0 and r.effect == t.effect
    reversed_ = gene_level - 0.5 * own  # anti-specific: the side comes from the tails
    _, tests, _ = compare_in_silico(*frames(reversed_), signed=True, n_boot=50, seed=0)
    assert tests["spearman"].result.side == "less"


def test_permutations_stay_within_arms():
    # two arms at different levels: any draw pairing units across arms would move the mean
    M = np.full((6, 6), np.nan)
    M[:3, :3], M[3:, 3:] = 1.0, 0.0
    t = in_silico_test(M, np.array(list("aaabbb")), stages=(199,), n_boot=50, seed=0)
    assert np.allclose(t.null, 0.5) and t.p == 1.0 and t.effect == 0.0
    assert t.result.p_floor == 1.0  # a point-mass null: nothing can be extreme
    few = in_silico_test(M[:2, :2], np.array(list("aa")), stages=(19,), n_boot=0, seed=0)
    assert np.isnan(few.result.p) and "fewer than 3" in few.result.reason


@pytest.fixture(scope="module")
def tiny_screen(tiny_bench):
    ad = tiny_bench.adata
    cells = np.flatnonzero(control_mask(ad, SPEC))[:40]
    perts = sorted(set(ad.obs["perturbation"].astype(str)) - {"non-targeting"})
    return ad, cells, perts


@pytest.fixture(scope="module")
def tiny_scgpt(tmp_path_factory, tiny_bench):
    from scfm_audit.models import build_scgpt_checkpoint, load_model

    genes = list(tiny_bench.adata.var_names)
    path = tmp_path_factory.mktemp("isp") / "scgpt"
    build_scgpt_checkpoint(path, [*genes[:-3], "OTHER1", "OTHER2", "OTHER3"], seed=0)
    return load_model("scgpt", path, device="cpu")


def test_scgpt_deletion_changes_predictions_and_reuses_the_baseline(tiny_scgpt, tiny_screen):
    ad, cells, perts = tiny_screen
    m = tiny_scgpt
    calls = []
    forward = m.forward

    def counting(batch, **kw):
        calls.append(len(batch))
        return forward(batch, **kw)

    m.forward = counting
    try:
        eff = in_silico_effects(
            m, ad, SPEC, perturbations=perts[:3], cells=cells, mode="delete", batch_size=16
        )
    finally:
        del m.forward
    assert eff.attrs["readout"] == "expression" and eff.attrs["signed"]
    # cells used = control cells whose input carries the gene (counted independently)
    X = ad.X[cells]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    for p in perts[:3]:
        rows = eff[eff.perturbation == p]
        expressed = int((X[:, list(ad.var_names).index(p)] > 0).sum())
        assert rows["n_cells"].iloc[0] == expressed > 0
        assert rows.loc[rows.gene == p, "predicted_shift"].isna().all()  # deleted itself
        assert rows["predicted_shift"].abs().max() > 1e-5  # the deletion moved predictions
        assert (rows["n_cells_gene"] <= expressed).all()
    # against a plain one-cell-at-a-time computation of the same quantity
    p = perts[0]
    gi = list(ad.var_names).index(p)
    diffs = {}
    for c in cells[X[:, gi] > 0]:
        b = m.tokenize(ad, np.array([c]))
        base, pert = m.forward(b), m.forward(m.perturb(b, p, mode="delete"))
        pb = m.perturb(b, p, mode="delete")
        y0 = dict(zip(b.gene_index[0].tolist(), base.gene_predictions[0].tolist()))
        y1 = dict(zip(pb.gene_index[0].tolist(), pert.gene_predictions[0].tolist()))
        for g in set(y0) & set(y1) - {-1}:
            diffs.setdefault(g, []).append(y1[g] - y0[g])
    ref = pd.Series({ad.var_names[g]: np.mean(v) for g, v in diffs.items()})
    got = eff[eff.perturbation == p].set_index("gene")["predicted_shift"].dropna()
    assert set(got.index) == set(ref.index)
    assert np.allclose(got[ref.index], ref, atol=1e-5)
    # one probe + one baseline per batch (3 batches), then one pass per (batch, gene)
    n_batches = -(-len(cells) // 16)
    assert len(calls) <= 1 + n_batches + n_batches * 3
    assert sum(1 for c in calls if c == 16) >= n_batches - 1  # baselines are full batches


def test_overexpression_uses_every_cell_and_deletion_without_the_gene_skips(
    tiny_scgpt, tiny_screen
):
    ad, cells, perts = tiny_screen
    eff = in_silico_effects(
        tiny_scgpt, ad, SPEC, perturbations=perts[:2], cells=cells, mode="overexpress"
    )
    assert (eff["n_cells"] == len(cells)).all()
    col = ad.X[cells][:, list(ad.var_names).index(perts[0])]
    col = col.toarray().ravel() if hasattr(col, "toarray") else np.asarray(col).ravel()
    zero_cells = cells[col == 0]  # cells whose input lacks the gene: nothing to delete
    assert zero_cells.size
    eff0 = in_silico_effects(
        tiny_scgpt, ad, SPEC, perturbations=perts[:1], cells=zero_cells, mode="delete"
    )
    assert (eff0["n_cells"] == 0).all() and eff0["predicted_shift"].isna().all()


def test_out_of_vocabulary_genes_are_reported_and_bad_input_is_refused(tiny_scgpt, tiny_screen):
    ad, cells, perts = tiny_screen
    last3 = list(ad.var_names[-3:])
    ok, skipped = perturbable(tiny_scgpt, ad, [perts[0], last3[0], "NOT_A_GENE"])
    assert ok == [perts[0]]
    assert "vocabulary" in skipped[last3[0]] and "dataset" in skipped["NOT_A_GENE"]
    with pytest.raises(ValueError, match="not among the dataset's genes"):
        in_silico_effects(tiny_scgpt, ad, SPEC, perturbations=["NOT_A_GENE"], cells=cells)
    with pytest.raises(ValueError, match="mode must be"):
        in_silico_effects(tiny_scgpt, ad, SPEC, perturbations=perts[:1], cells=cells, mode="x")


def test_random_model_gives_no_evidence_against_shuffled_labels(tiny_scgpt, tiny_bench):
    """One seed, not a rate: a random-init scGPT's in-silico deletions on the tiny screen
    are not perturbation-specific."""
    from scfm_audit.evaluate._de import differential_expression, responder_labels

    ad = tiny_bench.adata
    de = responder_labels(differential_expression(ad, SPEC))
    perts = sorted(pd.unique(de["perturbation"]))
    ok, _ = perturbable(tiny_scgpt, ad, perts)
    cells = np.flatnonzero(control_mask(ad, SPEC))[:60]
    eff = in_silico_effects(tiny_scgpt, ad, SPEC, perturbations=ok, cells=cells)
    table, tests, _ = compare_in_silico(
        eff.assign(arm="CRISPRi"), de, signed=True, stages=(199,), n_boot=100, seed=0
    )
    assert len(table) == len(ok) >= 6
    assert tests["spearman"].p > 0.05


def test_geneformer_embedding_readout_is_unsigned(tmp_path, tiny_screen):
    from scfm_audit.models import build_geneformer_checkpoint, load_model

    ad, cells, perts = tiny_screen
    path = build_geneformer_checkpoint(tmp_path / "gf", list(ad.var["ensembl_id"]), seed=0)
    m = load_model("geneformer", path, device="cpu")
    eff = in_silico_effects(m, ad, SPEC, perturbations=perts[:1], cells=cells[:12])
    assert eff.attrs["readout"] == "embedding" and not eff.attrs["signed"]
    shift = eff["predicted_shift"].dropna()
    assert len(shift) and (shift > -1e-5).all() and shift.max() > 1e-4
    # the layer before the last (Geneformer's emb_layer=-1) is a different readout
    eff1 = in_silico_effects(
        m, ad, SPEC, perturbations=perts[:1], cells=cells[:12], embedding_layer=-1
    )
    a = eff1["predicted_shift"].to_numpy()
    b = eff[eff.perturbation == perts[0]]["predicted_shift"].to_numpy()
    assert eff1.attrs["embedding_layer"] == -1 and not np.allclose(a, b, equal_nan=True)


@pytest.mark.slow
def test_calibration_keeps_level_under_the_hub_null_and_finds_planted_effects():
    from scfm_audit.analyses._calibration import calibrate

    summ, _ = calibrate(
        "in_silico_perturbation",
        n_replicates=6,
        scenarios=["hub_null_variance_pattern", "planted_true_effects_0.4"],
    )
    rate = summ.set_index("scenario")["rate"]
    assert rate["hub_null_variance_pattern"] <= 1 / 6
    assert rate["planted_true_effects_0.4"] >= 5 / 6


def test_analysis_reports_genes_outside_the_vocabulary(tmp_path, tiny_bench):
    from conftest import tiny_config
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.pipeline import config_from_dict, run_audit

    genes = [g for g in tiny_bench.adata.var_names if g != "TF001"]  # a perturbed gene
    build_scgpt_checkpoint(tmp_path / "m", genes, n_layers=2, seed=0)
    cfg = tiny_config(tmp_path / "out")
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(tmp_path / "m")}}
    cfg["analyses"] = {
        "in_silico_perturbation": {
            "datasets": ["sim"],
            "max_cells": 24,
            "n_perm": 99,
            "n_perm_max": 0,
            "n_boot": 20,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    res = run.results["in_silico_perturbation"]
    skipped = res.tables["skipped"]
    assert list(skipped["perturbation"]) == ["TF001"]
    assert "vocabulary" in skipped["reason"].iloc[0]
    assert any("TF001" in n for n in res.notes)
    per = res.tables["per_perturbation"]
    assert "TF001" not in set(per["perturbation"]) and len(per) == 7
    assert (per["n_cells"] <= 24).all() and (per["n_cells"] > 0).all()
    (v,) = res.verdicts
    assert v.record.family == "claim" and v.record.null and v.direction == "greater"
    assert not np.isnan(v.record.p_greater) and not np.isnan(v.record.p_floor)
    tests = run.tests[run.tests["analysis"] == "in_silico_perturbation"]
    assert (tests["family"] == "claim").sum() == 1 and (tests["family"] == "descriptive").sum()


def test_two_arm_screen_maps_arms_to_modes_and_refuses_an_unmapped_arm(tmp_path, tiny_bench):
    from conftest import TINY_SIM
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.pipeline import config_from_dict, run_audit

    build_scgpt_checkpoint(tmp_path / "m", list(tiny_bench.adata.var_names), n_layers=2)
    quick = {"max_cells": 16, "n_perm": 99, "n_perm_max": 0, "n_boot": 20}
    cfg = {
        "seed": 0,
        "output": str(tmp_path / "out"),
        "datasets": {"both": {"simulate": {**TINY_SIM, "modality": "both"}}},
        "references": {},
        "edges": {},
        "models": {"tiny": {"family": "scgpt", "path": str(tmp_path / "m")}},
        "analyses": {
            "in_silico_perturbation": quick,
            "in_silico_perturbation@bad": {**quick, "arm_modes": {"CRISPRi": "delete"}},
        },
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    per = run.results["in_silico_perturbation"].tables["per_perturbation"]
    modes = per.groupby("arm")["mode"].first().to_dict()
    assert modes == {"CRISPRa": "overexpress", "CRISPRi": "delete"}
    a = per[per["arm"] == "CRISPRa"]
    assert (a["n_cells"] == 16).all()  # overexpression acts on every control cell
    assert "CRISPRa" in run.errors["in_silico_perturbation@bad"]
    assert "arm_modes" in run.errors["in_silico_perturbation@bad"]


def test_specificity_ci_inverts_the_shuffled_label_test():
    """The CI of the specificity is the acceptance region of the shuffled-label test under
    a shift model: on exchangeable (null) matrices it covers 0 at the test's level, and a
    planted shift of the matched entries lies inside it."""
    from scfm_audit.evaluate._in_silico_compare import _specificity, shift_inversion_ci

    rng = np.random.default_rng(0)
    arms = np.array(["a"] * 8 + ["b"] * 7)
    covered = 0
    for _ in range(200):
        M = rng.standard_normal((15, 15))
        lo, hi = shift_inversion_ci(M, arms, n_draws=499, rng=rng)
        covered += lo <= 0 <= hi
    assert 0.92 <= covered / 200 <= 0.985  # binomial band around 0.95 (n = 200)
    M = rng.standard_normal((15, 15)) + 1.5 * np.eye(15)
    lo, hi = shift_inversion_ci(M, arms, n_draws=999, rng=rng)
    _, eff = _specificity(M, np.arange(15), arms)
    assert 0 < lo < eff < hi and lo < 1.5 < hi
