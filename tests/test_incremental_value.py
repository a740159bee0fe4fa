"""incremental_value: the kernel (folds, out-of-fold predictions, paired bootstrap over
perturbations, nested LRT, propensity matching) and the simulator's known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from scfm_audit.analyses._perturbation_common import responsiveness
from scfm_audit.evaluate._incremental import (
    _ap_setup,
    _weighted_ap,
    auroc_blocks,
    compare_predictions,
    cross_validated_predictions,
    grouped_folds,
    nested_lrt,
    propensity_matched,
    topk_recall,
)


def _table(n_pert=12, n_cand=40, seed=0, candidate_level=False):
    """A synthetic (perturbation, candidate) table: responders depend on the candidate's
    mean (gene level) and, unless ``candidate_level``, on a pair-level signal ``edge``."""
    rng = np.random.default_rng(seed)
    pert = np.repeat([f"P{i}" for i in range(n_pert)], n_cand)
    cand = np.tile([f"C{j}" for j in range(n_cand)], n_pert)
    mean = np.tile(rng.normal(size=n_cand), n_pert)
    edge = rng.normal(size=len(pert))
    logit = -3 + 1.5 * mean + (0 if candidate_level else 2.0 * edge)
    y = rng.random(len(pert)) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "arm": "all",
            "perturbation": pert,
            "candidate": cand,
            "responder": y,
            "mean": mean,
            "variance": np.tile(rng.random(n_cand), n_pert),
            "detection": np.tile(rng.random(n_cand), n_pert),
            "edge": edge,
        }
    )


GENE = ["mean", "variance", "detection", "responsiveness"]


def _resp(rows):
    return lambda train: {"responsiveness": responsiveness(rows, train)}


# ----------------------------------------------------------------------- metrics
def test_bootstrap_auroc_and_auprc_equal_sklearn_on_replicated_rows():
    """A bootstrap draw's AUROC (wᵀCw decomposition) and AUPRC (weighted cumulative sums)
    equal scikit-learn's on the table with each perturbation's rows repeated by its
    multiplicity — ties included."""
    rng = np.random.default_rng(1)
    n, P = 2000, 15
    u = rng.integers(0, P, n)
    y = rng.random(n) < 0.15
    s = np.round(rng.normal(size=n) + y, 1)  # many ties
    C, n1, n0 = auroc_blocks(y, s, u, P)
    assert C.sum() / (n1.sum() * n0.sum()) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.multinomial(P, np.full(P, 1 / P)).astype(float)
    idx = np.repeat(np.arange(n), w[u].astype(int))
    assert w @ C @ w / ((w @ n1) * (w @ n0)) == pytest.approx(roc_auc_score(y[idx], s[idx]))
    order, ends = _ap_setup(y, s)
    ap = _weighted_ap(y[order].astype(float), u[order], ends, w)
    assert ap == pytest.approx(average_precision_score(y[idx], s[idx]))


def test_two_way_draws_equal_sklearn_on_rows_replicated_by_both_multiplicities():
    from scfm_audit.evaluate._incremental import _ap_rows, _two_way_auroc

    rng = np.random.default_rng(3)
    n, P, C = 1500, 12, 30
    u, c = rng.integers(0, P, n), rng.integers(0, C, n)
    y = rng.random(n) < 0.15
    s = np.round(rng.normal(size=n) + y, 1)
    W = rng.multinomial(P, np.full(P, 1 / P), size=3).astype(float)
    V = rng.multinomial(C, np.full(C, 1 / C), size=3).astype(float)
    auc = _two_way_auroc(y, s, u, c, W, V)
    order, ends = _ap_setup(y, s)
    for b in range(3):
        idx = np.repeat(np.arange(n), (W[b][u] * V[b][c]).astype(int))
        assert auc[b] == pytest.approx(roc_auc_score(y[idx], s[idx]))
        ap = _ap_rows(y[order].astype(float), (W[b][u] * V[b][c])[order], ends)
        assert ap == pytest.approx(average_precision_score(y[idx], s[idx]))


def test_bootstrap_ap_by_blocks_equals_the_loop_over_draws():
    from scfm_audit.evaluate._incremental import _bootstrap_ap

    rng = np.random.default_rng(2)
    n, P = 3000, 20
    u = rng.integers(0, P, n)
    y = rng.random(n) < 0.1
    s = np.round(rng.normal(size=n) + y, 1)
    W = rng.multinomial(P, np.full(P, 1 / P), size=30).astype(float)
    order, ends = _ap_setup(y, s)
    oy, ou = y[order].astype(float), u[order]
    loop = np.array([_weighted_ap(oy, ou, ends, w) for w in W])
    np.testing.assert_allclose(_bootstrap_ap(y, s, u, P, W, oy, ou, ends, chunk=7), loop)


def test_topk_recall_counts_ties_in_expectation():
    y = np.array([1, 0, 1, 0, 1, 0], bool)
    s = np.array([3.0, 2.0, 2.0, 1.0, 5.0, 5.0])
    u = np.array([0, 0, 0, 0, 1, 1])
    r = topk_recall(y, s, u, 2, k=2)
    # unit 0: top-2 = {3.0} + one of two tied 2.0 (half a responder): (1 + 0.5) / 2
    # unit 1: both rows in the top 2: 1/1
    assert r == pytest.approx([0.75, 1.0])


def test_identical_predictions_differ_by_nothing():
    rows = _table()
    s = rows["mean"].to_numpy()
    m, d = compare_predictions(
        rows["responder"].to_numpy(),
        {"gene": s, "same": s.copy()},
        rows["perturbation"],
        baseline="gene",
        n_boot=200,
        seed=0,
    )
    r = d.iloc[0]
    assert r["delta_auroc"] == 0 and r["delta_auroc_ci_low"] == 0 == r["delta_auroc_ci_high"]
    assert r["p"] == 1.0 and r["p_two_sided"] == 1.0
    assert m["n_rows"].iloc[0] == len(rows) and m["n_units"].iloc[0] == 12


# ----------------------------------------------------------------------- folds
@pytest.mark.parametrize("grouping", ["perturbation", "candidate", "joint"])
def test_folds_keep_grouped_units_out_of_training(grouping):
    rows = _table()
    p, c = rows["perturbation"].to_numpy(), rows["candidate"].to_numpy()
    folds = grouped_folds(p, c, grouping=grouping, n_splits=4, seed=3)
    tested = np.zeros(len(rows), int)
    for train, test in folds:
        assert not (train & test).any()
        if grouping in ("perturbation", "joint"):
            assert not set(p[test]) & set(p[train])
        if grouping in ("candidate", "joint"):
            assert not set(c[test]) & set(c[train])
        tested += test
    assert tested.max() == 1
    if grouping == "joint":  # only the "diagonal" blocks are testable: ~1/n_splits of rows
        assert 0.15 < tested.mean() < 0.35
    else:
        assert tested.all()


def test_too_few_units_for_the_folds_is_a_clear_error():
    rows = _table(n_pert=3)
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        grouped_folds(rows["perturbation"], rows["candidate"], grouping="perturbation")


def test_out_of_fold_predictions_never_read_test_labels():
    """Flipping the labels of a fold's test rows leaves that fold's predictions unchanged:
    responsiveness is recomputed from training rows only."""
    rows = _table(candidate_level=True)
    kw = dict(
        label="responder",
        perturbation="perturbation",
        candidate="candidate",
        feature_sets={"gene": GENE},
        grouping="perturbation",
        n_splits=4,
        seed=0,
    )
    cv = cross_validated_predictions(rows, fold_features=_resp(rows), **kw)
    flipped = rows.copy()
    test0 = np.zeros(len(rows), bool)
    test0[cv.rows[cv.fold == 0]] = True
    flipped.loc[test0, "responder"] = ~flipped.loc[test0, "responder"]
    cv2 = cross_validated_predictions(flipped, fold_features=_resp(flipped), **kw)
    f0 = cv.fold == 0
    np.testing.assert_allclose(cv.predictions["gene"][f0], cv2.predictions["gene"][f0])
    assert not np.allclose(cv.predictions["gene"][~f0], cv2.predictions["gene"][~f0])


def test_responsiveness_carries_over_perturbations_but_not_candidates():
    """A purely candidate-level responder pattern is predictable when test candidates were
    seen in training (folds by perturbation), not when they are unseen (by candidate;
    responsiveness is then unknown and imputed)."""
    rng = np.random.default_rng(0)
    rows = _table(n_pert=20, n_cand=60, candidate_level=True)
    hub = rng.random(60) < 0.2  # hub candidates respond to most perturbations
    rows["responder"] = np.tile(hub, 20) & (rng.random(len(rows)) < 0.8)
    rows[["mean", "variance", "detection"]] = rng.normal(size=(len(rows), 3))  # uninformative
    auc = {}
    for g in ("perturbation", "candidate"):
        cv = cross_validated_predictions(
            rows,
            label="responder",
            perturbation="perturbation",
            candidate="candidate",
            feature_sets={"gene": GENE},
            grouping=g,
            seed=0,
            fold_features=_resp(rows),
        )
        auc[g] = roc_auc_score(rows["responder"].to_numpy()[cv.rows], cv.predictions["gene"])
    assert auc["perturbation"] > 0.95
    assert abs(auc["candidate"] - 0.5) < 0.1


def test_gbm_and_logistic_find_a_pair_level_signal():
    rows = _table(n_pert=10, n_cand=50)
    for model in ("logistic", "gbm"):
        cv = cross_validated_predictions(
            rows,
            label="responder",
            perturbation="perturbation",
            candidate="candidate",
            feature_sets={"gene": GENE, "edge": [*GENE, "edge"]},
            model=model,
            seed=0,
            fold_features=_resp(rows),
            max_iter=30 if model == "gbm" else None,
        )
        _, d = compare_predictions(
            rows["responder"].to_numpy()[cv.rows],
            cv.predictions,
            rows["perturbation"].to_numpy()[cv.rows],
            baseline="gene",
            n_boot=200,
            seed=0,
        )
        assert d["delta_auroc"].iloc[0] > 0.05 and d["p"].iloc[0] < 0.05, model


# ----------------------------------------------------------------------- LRT, matching
def test_nested_lrt_finds_a_real_predictor_and_not_noise():
    rows = _table()
    y = rows["responder"].to_numpy()
    base = rows[["mean"]].to_numpy()
    real = nested_lrt(y, base, rows[["edge"]].to_numpy())
    noise = nested_lrt(y, base, np.random.default_rng(5).normal(size=(len(rows), 1)))
    assert real["p"] < 1e-6 and real["df"] == 1 and real["n"] == len(rows)
    assert noise["p"] > 0.01 and noise["lr"] >= 0


def test_propensity_matching_is_within_perturbation_without_reuse_and_in_caliper():
    rows = _table(n_pert=10, n_cand=80)
    y = rows["responder"].to_numpy()
    prop = 1 / (1 + np.exp(-rows["mean"].to_numpy()))
    units = rows["perturbation"].to_numpy()
    m = propensity_matched(y, prop, units, n_per=5, caliper=0.2, seed=0)
    pos, neg = m.rows[: m.n_matched], m.rows[m.n_matched :]
    assert y[pos].all() and not y[neg].any()
    assert len(set(neg)) == len(neg) == m.n_negatives
    assert m.n_responders == y.sum() and 0 < m.n_matched <= m.n_responders
    assert m.n_full <= m.n_matched and m.n_negatives <= 5 * m.n_matched
    lg = np.log(prop / (1 - prop))
    width = 0.2 * lg.std()
    for u in np.unique(units[pos]):  # every negative is near some responder of its unit
        pu, nu = pos[units[pos] == u], neg[units[neg] == u]
        gap = np.abs(lg[nu][:, None] - lg[pu][None, :]).min(axis=1)
        assert (gap <= width + 1e-12).all()
    assert set(units[neg]) <= set(units[pos])
    again = propensity_matched(y, prop, units, n_per=5, caliper=0.2, seed=0)
    np.testing.assert_array_equal(m.rows, again.rows)
    # matched on the propensity, the propensity no longer separates the classes much
    auc = roc_auc_score(y[m.rows], prop[m.rows])
    assert abs(auc - 0.5) < 0.15


# ----------------------------------------------------------------------- known answers
def test_no_incremental_value_when_the_edge_is_gene_level_only():
    """(i) Responders predictable from gene-level statistics (predictability 1) and an
    edge score that is the candidate's mean plus noise: no incremental value."""
    from scfm_audit.analyses._perturbation_sim import calibration_rows
    from scfm_audit.analyses.incremental_value import incremental_test

    rows = calibration_rows({"edge": "candidate_mean", "gene_level_predictability": 1.0}, 0)
    rows["|edge|"] = rows["edge"].abs()
    r = incremental_test(rows, edge_columns=["edge", "|edge|"], n_boot=200, seed=0)
    assert r["auroc_gene"] > 0.65  # gene-level features do predict responders here
    assert r["p"] > 0.05
    assert r["delta_auroc_ci_low"] <= 0 <= r["delta_auroc_ci_high"]


def test_correlation_edges_add_value_when_pairwise_regulation_carries_signal():
    """(ii) No gene-level predictability, strong regulation, TF perturbations: Spearman
    co-expression of perturbed gene and candidate on control cells adds value."""
    from scfm_audit.analyses._perturbation_sim import calibration_rows
    from scfm_audit.analyses.incremental_value import incremental_test

    params = {"edge": "coexpression", "gene_level_predictability": 0.0, "regulation_strength": 1.5}
    rows = calibration_rows(params, 0)
    rows["|edge|"] = rows["edge"].abs()
    r = incremental_test(rows, edge_columns=["edge", "|edge|"], n_boot=200, seed=0)
    assert r["delta_auroc"] > 0.05 and r["p"] < 0.01


@pytest.mark.slow
def test_calibration_keeps_level_on_the_hub_null_and_has_power():
    from scfm_audit.analyses import calibrate

    summary, reps = calibrate(
        "incremental_value",
        n_replicates=6,
        seed=0,
        scenarios=["hub_null_candidate_level", "planted_truth_0.6"],
    )
    rate = summary.set_index("scenario")["rate"]
    assert rate["hub_null_candidate_level"] <= 1 / 6
    assert rate["planted_truth_0.6"] >= 0.5
    assert reps["n_rows"].gt(1000).all()


def test_an_unknown_edge_source_is_named_with_the_fix(tmp_path):
    from conftest import tiny_config
    from scfm_audit.pipeline import config_from_dict, run_audit

    cfg = tiny_config(tmp_path)
    cfg["analyses"] = {"incremental_value": {"correlation": ["spearmann"], "gbm": False}}
    with pytest.raises(Exception, match=r"\['spearmann'\] are not edge sources.*under 'edges'"):
        run_audit(config_from_dict(cfg), quiet=True)
