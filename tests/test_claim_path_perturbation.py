"""Known answers of the perturbation analyses on the one claim path: what they register
through ``ctx.claim`` is answered by the scorecard (``RunResult.verdicts`` →
``stats._verdict.answer_claims``), never by the analysis.

(b) of issue 15: attention wins 27 of 30 perturbations by a little, the gene-level
baseline wins 3 by a lot. Mean Δ(baseline − attention) ≈ +0.013, rank-biserial ≈ −0.63,
signed-rank p ≈ 0.003: the answer to "the baseline beats attention" must not be "yes"
(the ranks say the opposite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scfm_audit.analyses._contract import AnalysisResult, ClaimRecorder
from scfm_audit.stats._registry import TestRegistry


class FakeContext(ClaimRecorder):
    """The claim-recording part of the runner's context, nothing else."""

    def __init__(self, analysis: str):
        self.analysis, self.claims, self.registry = analysis, [], TestRegistry()

    def add_test(self, **fields):
        fields.setdefault("analysis", self.analysis)
        return self.registry.add(**fields)

    def seed_for(self, *keys) -> int:
        return 0


def scorecard(ctx: FakeContext) -> pd.DataFrame:
    """The run's scorecard for what ``ctx`` recorded (the runner's own code)."""
    from scfm_audit.pipeline._runner import RunResult

    run = RunResult(
        None,
        None,
        {},
        {},
        {ctx.analysis: AnalysisResult(verdicts=ctx.claims)},
        pd.DataFrame(),
        pd.DataFrame(),
        {},
    )
    return run.verdicts()


SKEW = np.r_[np.linspace(-0.015, -0.005, 27), [0.21, 0.22, 0.23]]


def _prediction_data(delta: np.ndarray):
    """PredictionData of one arm whose per-perturbation AUROCs are attention 0.7 and
    variance 0.7 + ``delta`` (mean and detection ride with variance); no co-expression."""
    from scfm_audit.analyses.perturbation_prediction import PredictionData

    n = len(delta)
    perts = [f"P{i}" for i in range(n)]
    att = np.full(n, 0.7)
    auc = {
        "attention|L0": att,
        "mean": att + delta,
        "variance": att + delta,
        "detection": att + delta,
        "responsiveness_loo": att,
    }
    kinds = {"attention|L0": ("attention", 0)}
    metrics = pd.concat(
        [
            pd.DataFrame(
                {
                    "arm": "all",
                    "perturbation": perts,
                    "scorer": k,
                    "n": 10,
                    "n_pos": 3,
                    "auroc": v,
                    "auprc": 0.5,
                    "recall@10": 0.5,
                    "kind": kinds.get(k, ("gene_level", None))[0],
                    "layer": kinds.get(k, (None, None))[1],
                    "head": None,
                }
            )
            for k, v in auc.items()
        ],
        ignore_index=True,
    )
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "arm": "all",
            "perturbation": np.repeat(perts, 10),
            "responder": np.tile([True] * 3 + [False] * 7, n),
        }
    )
    scores = {k: rng.normal(size=len(rows)) for k in auc}
    return PredictionData(
        "sim",
        "attn",
        "m",
        metrics,
        rows,
        scores,
        [(0, "attention|L0")],
        None,
        "no co-expression source configured",
    )


def test_skewed_paired_differences_do_not_read_yes_baseline_beats_attention():
    from scfm_audit.analyses.perturbation_prediction import PredictionParams, _Acc, _arm

    assert SKEW.mean() == pytest.approx(0.013, abs=0.002)
    ctx = FakeContext("perturbation_prediction")
    p = PredictionParams(verdict_layer=0, coexpression=None, n_boot=200, top_k=[10])
    _arm(ctx, p, _prediction_data(SKEW), "all", "", "attention [m]", _Acc())
    card = scorecard(ctx).set_index("claim")
    row = card.loc["gene-level baseline (variance) beats attention [m] at predicting responders"]
    assert row["answer"] != "yes"
    assert row["answer"] == "opposite" and row["side"] == "less"
    assert row["effect"] < 0 and row["ci_high"] < 0  # Hodges–Lehmann, with the ranks
    assert row["p"] == pytest.approx(0.003, abs=0.002)
    # the co-expression claim keeps its line as n/a with the reason
    co = card.loc["attention [m] beats co-expression at predicting responders"]
    assert co["answer"] == "n/a" and "co-expression" in co["reason"]
    # the mean ΔAUROC is described, not tested
    claim = next(r for r in ctx.registry.records() if r.family == "claim")
    assert claim.extra["mean_delta"] == pytest.approx(SKEW.mean())
    assert claim.extra["rank_biserial"] == pytest.approx(-0.63, abs=0.01)
    assert all(r.family in ("claim", "descriptive") for r in ctx.registry.records())


def test_a_clear_baseline_win_reads_yes():
    from scfm_audit.analyses.perturbation_prediction import PredictionParams, _Acc, _arm

    ctx = FakeContext("perturbation_prediction")
    p = PredictionParams(verdict_layer=0, coexpression=None, n_boot=200, top_k=[10])
    win = np.linspace(0.05, 0.2, 30)
    _arm(ctx, p, _prediction_data(win), "all", "", "attention [m]", _Acc())
    card = scorecard(ctx)
    assert card["answer"].tolist() == ["yes", "n/a"]


def test_skewed_dominance_across_contexts_is_not_yes():
    """The intersection-union over contexts reads each context's side from its ranks."""
    from scfm_audit.evaluate._perturbation import combine_intersection_union, paired_comparison

    att = np.full(30, 0.7)
    skew = paired_comparison(att + SKEW, att, n_boot=100, seed=0)
    clear = paired_comparison(att + np.linspace(0.05, 0.2, 30), att, n_boot=100, seed=0)
    res, i = combine_intersection_union([clear.result, skew.result])
    ctx = FakeContext("context_dependence")
    from scfm_audit.analyses._contract import Unit

    ctx.claim(res, Unit(model="m"), claim="baseline beats attention in every context")
    assert scorecard(ctx)["answer"].iloc[0] == "opposite" and i == 1


def _delta_row(delta, p, floor=1 / 201):
    return {
        "delta_auroc": delta,
        "p": p,
        "p_floor": floor,
        "n_rows": 1000,
        "delta_auroc_ci_low": delta - 0.01,
        "delta_auroc_ci_high": delta + 0.01,
    }


def _incremental_claims(bootstrap: str, rows: dict) -> pd.DataFrame:
    from scfm_audit.analyses.incremental_value import (
        IncrementalValueParams,
        _claim,
        delta_result,
    )

    ctx = FakeContext("incremental_value")
    p = IncrementalValueParams(bootstrap=bootstrap, verdict_layer="best")
    prov = {
        n: {"source": "attention [m]", "model": "m", "layer": lay, "edges": "attn"}
        for n, lay in zip(rows, range(len(rows)), strict=False)
    }
    results = {
        n: delta_result(r, bootstrap, 200, "logistic by perturbation") for n, r in rows.items()
    }
    _claim(ctx, p, "sim", list(rows), results, prov, "perturbation")
    assert sum(r.family == "claim" for r in ctx.registry.records()) == 1
    return scorecard(ctx)


def test_incremental_value_is_one_sided_and_says_opposite_not_tested():
    """Defect 5: the one-sided bootstrap cannot say 'opposite'; a ΔAUROC below 0 reads
    'no evidence — opposite not tested', and the best of two layers is Bonferroni'd."""
    card = _incremental_claims(
        "two-way", {"L0": _delta_row(-0.02, 0.9), "L1": _delta_row(-0.01, 0.8)}
    )
    row = card.iloc[0]
    assert row["answer"] == "no evidence" and "opposite not tested" in row["reason"]
    assert row["p"] == pytest.approx(1.0) and row["layer"] == 1  # 0.8 × 2 layers, capped
    card = _incremental_claims("two-way", {"L0": _delta_row(0.03, 1 / 201)})
    assert card["answer"].iloc[0] == "yes"


def test_the_papers_perturbation_bootstrap_is_marked_with_its_type_i():
    card = _incremental_claims("perturbation", {"L0": _delta_row(0.03, 1 / 201)})
    row = card.iloc[0]
    assert row["answer"] == "yes"
    assert "paper's design" in row["reason"] and "7.5%" in row["reason"]
    card = _incremental_claims("perturbation", {"L0": _delta_row(-0.01, 0.7)})
    assert "opposite not tested" in card["reason"].iloc[0]
