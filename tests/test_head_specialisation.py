"""head_specialisation: a head with planted reference signal is found and selected; with
none, the global test keeps its level and the stated fallback chooses the heads."""

from __future__ import annotations

import pandas as pd
import pytest

from scfm_audit.analyses import calibrate
from scfm_audit.analyses.head_specialisation import _head_scores, select_heads
from scfm_audit.evaluate import edge_recovery
from scfm_audit.evaluate._recovery import recovery_result


def _table(heads, pairs):
    rows = []
    for es in heads:
        r = recovery_result(
            edge_recovery(
                es, pairs, n_boot=20, n_perm=199, n_perm_max=1999, transform="raw", seed=0
            )
        )
        rows.append(
            {
                "layer": es.layer,
                "head": es.head,
                "auroc": r.effect,
                "p": r.p,
                "p_greater": r.p_greater,
                "auroc_null_mean": r.null_value,
                "auroc_null_sd": r.null_scale,
            }
        )
    return pd.DataFrame(rows)


def test_planted_head_is_the_one_selected_by_fdr():
    heads, pairs = _head_scores(seed=5, auroc=0.7)
    t = select_heads(_table(heads, pairs), fdr=0.05, fallback_k=3)
    chosen = t[t["selected"]]
    assert (chosen["selected_by"] == "FDR").all()
    assert [(0, 0)] == list(zip(chosen["layer"], chosen["head"]))


def test_without_signal_the_fallback_rule_is_stated():
    t = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "auroc": [0.52, 0.49, 0.55, 0.70],
            "p_greater": [0.2, 0.6, 0.4, 0.9],
            "auroc_null_mean": [0.5, 0.5, 0.5, 0.75],
            "auroc_null_sd": [0.01, 0.01, 0.1, 0.02],
        }
    )
    s = select_heads(t, fdr=0.05, fallback_k=2)
    assert s["selected"].sum() == 2
    # by null-standardised AUROC (z 2.0 and 0.5), never the 0.70 head below its centre
    assert set(s.loc[s["selected"], "auroc"]) == {0.52, 0.55}
    label = "fallback: top-2 null-standardised AUROC"
    assert (s.loc[s["selected"], "selected_by"] == label).all()
    one = select_heads(t, fdr=0.05, fallback_k=4)  # only two heads lie above their centre
    assert one["selected"].sum() == 2 and not one.loc[3, "selected"]


@pytest.mark.slow
def test_global_test_keeps_its_level_and_finds_a_planted_head():
    summary, _ = calibrate(
        "head_specialisation",
        n_replicates=12,
        seed=3,
        scenarios=["hub_null_heads", "planted_head_auroc_0.7"],
    )
    s = summary.set_index("scenario")
    assert s.loc["hub_null_heads", "rejections"] <= 2  # P(X ≥ 3) = 0.02 at 5%
    assert s.loc["planted_head_auroc_0.7", "rate"] >= 0.9
