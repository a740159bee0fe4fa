"""layer_organisation: the depth-trend test finds a planted "PPI early, regulation late"
pattern, reads a reversed one as opposite, and keeps its level when nothing is planted."""

from __future__ import annotations

import numpy as np
import pytest

from scfm_audit.analyses import calibrate
from scfm_audit.analyses.layer_organisation import _layered_scores, depth_trend, trend_results
from scfm_audit.stats import answer_result


@pytest.mark.parametrize(("beta", "expected"), [(0.4, "yes"), (-0.4, "opposite")])
def test_planted_trend_is_found_with_its_sign(beta, expected):
    layers, ppi, tf = _layered_scores(seed=3, beta=beta)
    t = depth_trend(layers, ppi, tf, n_boot=200, seed=0, transform="raw")
    assert np.sign(t["slope"]) == -np.sign(beta)
    assert t["slope_ci"][0] <= t["slope"] <= t["slope_ci"][1]
    slope, _ = trend_results(t, n_layers=len(layers), n_boot=200, n=len(layers[0].genes))
    assert slope.side == ("less" if beta > 0 else "greater")
    answer, _ = answer_result(slope, claimed="less")
    assert answer == expected
    # the per-layer difference itself moves from PPI-favoured to TF-favoured (or back)
    assert np.sign(t["d"][0] - t["d"][-1]) == np.sign(beta)


@pytest.mark.slow
def test_no_trend_without_planted_signal():
    """Hub-structured references placed independently: ≤ 2 of 10 replicates reject
    (P(X ≥ 3) = 0.012 at the nominal 5%), and the slope CI covers 0 in most."""
    summary, reps = calibrate(
        "layer_organisation", n_replicates=10, seed=11, scenarios=["hub_null_layers"]
    )
    row = summary.iloc[0]
    assert row["rejections"] <= 2
    assert row["coverage"] >= 0.8
    assert reps["estimate"].abs().max() < 0.02
