"""Head ablation: the cached-residual condition runner equals full forwards, the set-vs-
random test is an exact rank test (type-I on a hub-like null, power on planted effects),
head sets are drawn as stated, and the analysis reports structurally unable conditions as
such, with fidelity for every condition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from scfm_audit.analyses._calibration import calibrate
from scfm_audit.evaluate._ablation import (
    Condition,
    all_heads,
    entropy_matched_sets,
    masked_loss_conditions,
    random_head_sets,
    set_vs_random,
)


@pytest.fixture(scope="module")
def tiny(tiny_bench, tmp_path_factory):
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.models.scgpt import ScGPTAdapter

    path = tmp_path_factory.mktemp("abl") / "scgpt"
    build_scgpt_checkpoint(path, list(tiny_bench.adata.var_names), n_layers=3, seed=3)
    return path, ScGPTAdapter.load(path, device="cpu")


def test_rank_test_by_hand():
    base = np.zeros(4)
    rand = np.array([[1.0] * 4, [2.0] * 4, [3.0] * 4])  # D_random = 1, 2, 3
    r = set_vs_random(np.full(4, 2.5), rand, base)
    assert r["degradation"] == 2.5 and r["excess"] == pytest.approx(0.5)
    assert r["p_greater"] == pytest.approx((1 + 1) / 4)  # one random set ≥ 2.5
    assert r["p_less"] == pytest.approx((1 + 2) / 4)
    assert r["p"] == pytest.approx(1.0)
    assert r["quantile"] == pytest.approx(2 / 3)
    top = set_vs_random(np.full(4, 9.0), rand, base, n_boot=50, seed=0)
    assert top["p"] == pytest.approx(2 * 1 / 4) and top["quantile"] == 1.0
    assert top["ci_low"] == top["ci_high"] == 1.0


def test_head_sets():
    heads = all_heads(4, 4)
    rng = np.random.default_rng(0)
    sets = random_head_sets(heads, 5, 30, rng)
    assert all(len(set(s)) == 5 for s in sets) and len(set(sets)) > 20
    reg = ((2, 0), (2, 1), (3, 3))
    lm = random_head_sets(heads, 3, 20, rng, layer_matched=reg)
    assert all(sorted(L for L, _ in s) == [2, 2, 3] for s in lm)
    ent = pd.Series(np.arange(16.0), index=pd.MultiIndex.from_tuples(heads))
    em = entropy_matched_sets(ent, [(0, 0), (3, 3)], 20, rng, n_near=2)
    for s in em:  # each replacement is one of the 2 nearest by entropy, never itself
        assert len(set(s)) == 2 and (0, 0) not in s and (3, 3) not in s
        assert all(ent.loc[h] in (1.0, 2.0, 13.0, 14.0) for h in s)


def test_cached_runner_equals_full_forward(tiny, tiny_bench):
    from scfm_audit.models._interventions import compute_head_means
    from scfm_audit.models._masked import masked_inputs

    _, model = tiny
    adata = tiny_bench.adata
    mb = [
        masked_inputs(model, model.tokenize(adata, np.arange(i, i + 6)), ratio=0.2, seed=i)
        for i in (0, 6)
    ]
    means = compute_head_means(model, [m.batch for m in mb])
    conds = [
        Condition("random-k", "zero", ((1, 0), (2, 3))),
        Condition("random-k", "uniform", ((2, 1),)),
        Condition("random-k", "mean", ((1, 1), (1, 2))),
        Condition("mlp", "mlp", layers=(2,)),
        Condition("full-layer", "zero", tuple((0, h) for h in range(4))),
    ]
    fast = masked_loss_conditions(model, mb, conds, head_means=means)
    slow = masked_loss_conditions(model, mb, conds, head_means=means, use_cache=False)
    np.testing.assert_allclose(fast.loss, slow.loss, rtol=1e-5)
    np.testing.assert_allclose(fast.baseline, slow.baseline)
    assert fast.layer_passes < slow.layer_passes == slow.full_passes
    assert (fast.hidden > 0).all()  # every condition changed the model
    assert np.isfinite(fast.degradation()).all()


@pytest.mark.slow
def test_calibration_type_one_and_power():
    summ, reps = calibrate(
        "head_ablation",
        n_replicates=60,
        scenarios=[
            "hub_null_random_regulatory_set",
            "planted_regulatory_shift_8.0",
            "hub_null_one_head_of_16",
        ],
    )
    one = reps[reps["scenario"] == "hub_null_one_head_of_16"]
    assert (one["p"] >= 2 / 16 - 1e-12).all()  # the exact test's floor
    null = summ.set_index("scenario").loc["hub_null_random_regulatory_set"]
    planted = summ.set_index("scenario").loc["planted_regulatory_shift_8.0"]
    assert null["rate_low"] <= 0.05  # the level lies within the CI of the type-I error
    assert null["rate"] <= 0.15
    assert planted["rate"] >= 0.7
    assert planted["mean_estimate"] > 0.8  # the regulatory set sits high among random sets


def test_tiny_model_null_replicate_runs():
    from scfm_audit.analyses.head_ablation import _tiny_model_replicate

    r = _tiny_model_replicate(11, n_random=9)
    assert 0 < r.p <= 1 and 0 <= r.estimate <= 1


@pytest.mark.slow
def test_analysis_reports_order_fidelity_and_verdict(tmp_path, tiny):
    from scfm_audit.pipeline import config_from_dict, run_audit

    path, _ = tiny
    cfg = tiny_config(tmp_path)
    cfg["datasets"] = {"sim": cfg["datasets"]["sim"]}
    cfg["references"] = {"grn": cfg["references"]["grn"]}
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(path)}}
    cfg["edges"] = {
        "attn": {"scorer": "attention", "model": "tiny", "max_cells": 40, "per_head": True}
    }
    cfg["analyses"] = {
        "head_ablation": {
            "ks": [2, 20],
            "n_random": 19,
            "n_random_other": 19,
            "n_entropy_matched": 3,
            "n_cells": 8,
            "n_reference_cells": 8,
            "n_boot": 50,
            "selection_n_perm": 99,
            "selection_n_perm_max": 0,
            "prediction_cells": 16,
            "random_sets": "layer_matched",
            "selection": "top_auroc",
            "selection_k": 1,  # 1 head: 4 layer-matched sets exist
            "in_silico_cells": 8,
            "in_silico_perturbations": 4,
        }
    }
    run = run_audit(config_from_dict(cfg), quiet=True)
    assert not run.errors, run.errors
    res = run.results["head_ablation"]
    cond = res.tables["conditions"]
    assert set(cond["channel"]) == {"zero", "uniform", "mean", "mlp"}
    assert (cond["fidelity_hidden"] > 0).all()  # every condition changed the model
    assert not (cond["kind"] == "top-k").any() or (cond["size"] < 12).all()  # k=20 ≥ 12 heads
    assert any("≥ its 12 heads" in n for n in res.notes)
    isp = res.tables["in_silico"]  # readout (b): the model's outputs, downstream of all
    assert not isp["structurally_unable"].any()
    assert set(isp["statistic"]) == {"auroc", "spearman"}
    assert isp["n_perturbations"].min() >= 2 and isp["change"].notna().all()
    rnd = res.tables["random_sets"]
    # only 4 one-head sets in the head's layer: all 3 others are compared (exact test)
    assert rnd.groupby("channel").size().to_dict() == {"mean": 3, "uniform": 3, "zero": 3}
    assert any("exact permutation test" in n and "cannot reach 0.05" in n for n in res.notes)
    heads = res.tables["heads"]
    assert heads["selected"].sum() == 1
    assert (heads["selected_by"] == "top-1 AUROC above its null centre").sum() == 1
    chosen = heads[heads["selected"]]
    assert (chosen["auroc"] > chosen["auroc_null_mean"]).all()  # never an anti-recovering head
    pred = res.tables["prediction"]
    last_mlp = pred[pred["condition"].str.startswith("MLP 2")]
    assert last_mlp["structurally_unable"].all() and last_mlp["change"].isna().all()
    assert "structurally unable" in last_mlp["order"].iloc[0]
    early = pred[pred["condition"].str.startswith("MLP 0")]
    assert not early["structurally_unable"].any() and early["change"].notna().all()
    (v,) = res.verdicts
    assert v.claim == "tiny: ablating regulatory heads degrades the model"
    assert v.record.family == "claim" and v.record.null_value == 0.5
    assert 2 / 4 <= v.record.p <= 1 and v.record.p_floor == 0.5  # exact: 4 sets, 2/4
    card = run.verdicts()
    card = card[card["analysis"] == "head_ablation"]
    assert card["answer"].tolist() == ["n/a"]  # cannot reach 0.05: not "no evidence"
    reason = card["reason"].iloc[0]
    assert "only 4 distinct 1-head sets" in reason and "random_sets: any" in reason
    tests = run.tests[run.tests["analysis"] == "head_ablation"]
    assert (tests["family"] == "claim").sum() == 1
    assert res.tables["cost"]["saved"].iloc[0] > 0  # layer-matched sets skip lower layers
    assert "ablation_sim_tiny" in res.figures


def test_every_head_set_is_the_whole_support():
    from scfm_audit.evaluate._ablation import every_head_set, n_head_sets

    heads = all_heads(2, 4)
    rng = np.random.default_rng(1)
    assert n_head_sets(heads, 2) == 28
    sets = every_head_set(heads, 2, rng, exclude=[(1, 0), (0, 1)])
    assert len(sets) == 27 == len(set(sets)) and ((0, 1), (1, 0)) not in sets
    lm = every_head_set(heads, 2, rng, layer_matched=[(0, 0), (1, 1)])
    assert len(lm) == n_head_sets(heads, 2, layer_matched=[(0, 0), (1, 1)]) == 16


def test_bad_parameters_say_what_to_fix(tmp_path, tiny):
    from scfm_audit.pipeline import config_from_dict, run_audit

    path, _ = tiny
    cfg = tiny_config(tmp_path)
    cfg["models"] = {"tiny": {"family": "scgpt", "path": str(path)}}
    cfg["analyses"] = {"head_ablation": {"models": ["nope"]}}
    with pytest.raises(ValueError, match="'nope' is not defined under 'models'"):
        config_from_dict(cfg)
    cfg["analyses"] = {"head_ablation": {"channels": ["uniform"], "verdict_channel": "zero"}}
    with pytest.raises(Exception, match="add it to channels"):  # the run's only analysis
        run_audit(config_from_dict(cfg), quiet=True)


def test_every_head_regulatory_gives_na():
    from types import SimpleNamespace

    from scfm_audit.analyses._contract import Unit
    from scfm_audit.analyses.head_ablation import HeadAblationParams, _set_tests
    from scfm_audit.evaluate._ablation import random_set_design
    from test_claim_path_heads import _answers, _Ctx

    heads = tuple(all_heads(3, 4))
    design = random_set_design(heads, heads, 19, np.random.default_rng(0))
    assert design == ([], 1, True)
    ctx = _Ctx()
    res = SimpleNamespace(loss=np.ones((1, 4)), baseline=np.zeros(4))
    p = HeadAblationParams(channels=["zero"], n_entropy_matched=0)
    conds = [Condition("regulatory", "zero", heads)]
    rows = _set_tests(
        ctx, p, Unit("sim", "tiny", "grn"), "attn", conds, res, design, heads, "FDR", {}
    )
    assert rows == []
    (row,) = _answers(ctx).itertuples()
    assert row.answer == "n/a" and "every one of the 12 heads" in row.reason
