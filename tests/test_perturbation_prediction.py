"""Perturbation prediction (catalogue 7): the per-perturbation ranking kernels equal plain
references, the paired comparison is scipy's Wilcoxon over perturbations, the layer is
chosen out of fold, the verdict test keeps its level on exchangeable scorers and finds a
planted margin, and on simulated screens gene-level baselines win where responders are
gene-level predictable while co-expression wins where pairwise regulation carries the
signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from scfm_audit.analyses._calibration import CALIBRATIONS
from scfm_audit.analyses.perturbation_prediction import (
    baseline_claim,
    calibration_screen,
    choose_attention,
    cv_layer_auroc,
)
from scfm_audit.evaluate._perturbation import (
    combine_intersection_union,
    paired_comparison,
    ranking_metrics,
)
from scfm_audit.stats._tests import StatTestResult


def _groups(seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(8), [30, 40, 5, 20, 1, 25, 30, 12])
    rng.shuffle(g)
    y = rng.random(len(g)) < 0.25
    y[g == 7] = False  # a perturbation without responders
    s = np.round(rng.normal(size=len(g)), 1)  # ties
    s[rng.random(len(g)) < 0.1] = np.nan  # unscored candidates rank lowest
    return g, y, s


def test_per_perturbation_auroc_and_auprc_equal_scikit_learn():
    g, y, s = _groups()
    t = ranking_metrics(g, y, {"s": s}, top_k=(3,)).set_index("perturbation")
    for k in np.unique(g):
        m = g == k
        yy, ss = y[m], np.where(np.isnan(s[m]), -1e9, s[m])
        if 0 < yy.sum() < len(yy):
            assert t.loc[k, "auroc"] == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
        else:  # no responder, or no non-responder: not evaluable
            assert np.isnan(t.loc[k, "auroc"])
        if yy.sum():
            assert t.loc[k, "auprc"] == pytest.approx(average_precision_score(yy, ss), abs=1e-12)
        assert t.loc[k, "n"] == m.sum() and t.loc[k, "n_pos"] == yy.sum()


def test_recall_at_k_counts_responders_among_the_top_k_and_shares_tied_places():
    rng = np.random.default_rng(1)
    g = np.repeat([0, 1], 50)
    y = rng.random(100) < 0.2
    s = rng.normal(size=100)  # no ties: plain top-k by sorting
    t = ranking_metrics(g, y, {"s": s}, top_k=(5, 10)).set_index("perturbation")
    for k in (0, 1):
        m = g == k
        order = np.argsort(-s[m])
        for kk in (5, 10):
            assert t.loc[k, f"recall@{kk}"] == pytest.approx(y[m][order[:kk]].sum() / y[m].sum())
    # four tied candidates share the last two places: each is in the top 3 with prob 1/2
    t = ranking_metrics(
        np.zeros(5, int),
        np.array([1, 1, 0, 0, 0], bool),
        {"s": np.array([2.0, 1, 1, 1, 1])},
        top_k=(3,),
    )
    assert t["recall@3"].iloc[0] == pytest.approx((1 + 0.5) / 2)


def test_paired_comparison_is_scipy_wilcoxon_over_perturbations():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 0.9, 30), rng.uniform(0.5, 0.9, 30)
    b[3] = np.nan  # perturbations without both AUROCs are dropped
    c = paired_comparison(a, b, n_boot=500, seed=0)
    ok = ~np.isnan(b)
    assert c.n == ok.sum()
    assert c.p == pytest.approx(stats.wilcoxon(a[ok], b[ok]).pvalue)
    assert c.mean_delta == pytest.approx(np.mean(a[ok] - b[ok]))
    assert c.ci_low < c.mean_delta < c.ci_high
    assert c.hl_ci_low <= c.hodges_lehmann <= c.hl_ci_high and c.result.p == c.p
    assert c == paired_comparison(a, b, n_boot=500, seed=0)  # seeded


def _r(effect, p):
    """A two-sided result whose ranks lie on the side of ``effect``."""
    tail = p / 2 if effect > 0 else 1 - p / 2
    return StatTestResult(
        1.0, p, effect, 10, "wilcoxon", "T", "HL", "two-sided", p_greater=tail, p_less=1 - tail
    )


def test_intersection_union_needs_every_baseline_and_reports_the_weakest():
    res, i = combine_intersection_union([_r(0.2, 0.001), _r(0.05, 0.03), _r(0.1, 0.01)])
    assert i == 1 and res.p == pytest.approx(0.03)  # all lead: max p, weakest reported
    assert res.side == "greater"
    res, i = combine_intersection_union([_r(0.2, 0.001), _r(-0.05, 0.01), _r(0.1, 0.01)])
    assert i == 1 and res.p == pytest.approx(0.03) and res.side == "less"  # Bonferroni


def test_intersection_union_reads_sides_from_the_tests_not_the_mean():
    """Defect 3: a component whose mean Δ is positive but whose ranks say 'less' is a
    loser; the combined side is 'less', never 'yes' for the claim."""
    skew = np.r_[np.linspace(-0.015, -0.005, 27), [0.21, 0.22, 0.23]]
    att = np.full(30, 0.7)
    c = paired_comparison(att + skew, att, n_boot=200, seed=0)
    assert c.mean_delta > 0 and c.result.side == "less"
    res, i = combine_intersection_union([c.result, _r(0.1, 0.001)])
    assert i == 0 and res.side == "less" and res.p < 0.05


def test_nested_cv_chooses_the_layer_without_the_held_out_perturbations():
    rng = np.random.default_rng(3)
    att = pd.DataFrame(rng.uniform(0.4, 0.6, (40, 3)), columns=["L0", "L1", "L2"])
    att["L1"] += 0.3  # best everywhere: every fold picks it
    vec, chosen = cv_layer_auroc(att, folds=5, seed=0)
    assert chosen == [1] * 5 and np.allclose(vec, att["L1"])
    # a layer that is best only on one perturbation cannot be picked for it out of fold
    att2 = pd.DataFrame({"L0": np.full(10, 0.6), "L1": np.r_[0.99, np.full(9, 0.5)]})
    vec, _ = cv_layer_auroc(att2, folds=10, seed=0)
    assert vec[0] == 0.6
    wide = att.assign(variance=0.7)
    _, layer, mult, why = choose_attention(wide, [(0, "L0"), (1, "L1"), (2, "L2")], "best", folds=5)
    assert (layer, mult) == (1, 3) and "Bonferroni" in why
    with pytest.raises(ValueError, match="verdict_layer"):
        choose_attention(wide, [(0, "L0"), (1, "L1")], 5)


def test_calibration_keeps_level_on_exchangeable_scorers_and_finds_the_planted_margin():
    cal = CALIBRATIONS.get("perturbation_prediction")
    for name in ("prediction_exchangeable_null", "prediction_hub_null"):
        out = [cal.replicate(cal.scenario(name), s) for s in range(4)]
        assert all(0 < o.p <= 1 for o in out)
        assert sum(o.p < 0.05 for o in out) <= 1
    strong = max((s for s in cal.scenarios if s.kind == "planted"), key=lambda s: s.strength)
    out = [cal.replicate(strong, s) for s in range(3)]
    assert all(o.p < 0.05 and o.estimate > 0 for o in out)


def _known_answer(gene_level_predictability, regulation_strength):
    """Per-perturbation AUROC of variance, |Spearman| (control cells) and a synthetic
    attention = |Spearman| + noise, on a simulated screen."""
    sim = {
        "gene_level_predictability": gene_level_predictability,
        "regulation_strength": regulation_strength,
    }
    rows = calibration_screen(sim, 0, coexpression=True)
    sp = rows["spearman"].to_numpy()
    noise = np.random.default_rng(0).normal(scale=0.1, size=len(sp))
    m = ranking_metrics(
        rows["perturbation"].to_numpy(),
        rows["responder"].to_numpy(),
        {"variance": rows["variance"].to_numpy(), "spearman": sp, "attention": sp + noise},
    )
    return m.pivot(index="perturbation", columns="scorer", values="auroc").dropna()


def test_gene_level_baselines_win_when_responders_are_gene_level_predictable():
    w = _known_answer(1.0, 1.0)  # (i) targets enriched among highly expressed genes
    for scorer in ("spearman", "attention"):
        comp, res, _ = baseline_claim(w, w[scorer].to_numpy(), "variance", n_boot=200, seed=0)
        assert comp.mean_delta > 0.1 and res.p < 0.05 and res.side == "greater"


def test_coexpression_wins_when_pairwise_regulation_carries_the_signal():
    w = _known_answer(0.0, 2.0)  # (ii) targets uniform, strong regulation, TF perturbations
    comp, res, _ = baseline_claim(w, w["spearman"].to_numpy(), "variance", n_boot=200, seed=0)
    assert comp.mean_delta < -0.05 and res.p < 0.05  # the claim's answer is "opposite"
    assert res.side == "less" and res.effect < 0


def test_all_baselines_claim_is_the_intersection_union_of_the_three_wilcoxons():
    rng = np.random.default_rng(4)
    att = rng.uniform(0.5, 0.7, 25)
    wide = pd.DataFrame(
        {
            "mean": att + rng.uniform(0.0, 0.2, 25),
            "variance": att + rng.uniform(0.05, 0.3, 25),
            "detection": att + rng.uniform(-0.05, 0.15, 25),
        }
    )
    comp, res, name = baseline_claim(wide, att, "all", n_boot=100, seed=0)
    ps = {b: stats.wilcoxon(wide[b], att).pvalue for b in ("mean", "variance", "detection")}
    assert res.p == pytest.approx(max(ps.values())) and res.side == "greater"
    assert name == "detection" and comp.mean_delta == pytest.approx(np.mean(wide[name] - att))
    comp, res, name = baseline_claim(wide, att, "variance", n_boot=100, seed=0)
    assert name == "variance" and res.p == pytest.approx(ps["variance"])
