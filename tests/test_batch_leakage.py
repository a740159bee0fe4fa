"""batch_leakage: the ridge CV kernel equals scikit-learn's; planted donor effects are
found and a clean simulation (batch_strength 0) is not flagged; a composition-only
difference between donors is not credited by the within-state permutation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scfm_audit.evaluate._leakage import (
    RidgeCV,
    artifact_sensitivity,
    fold_labels,
    jaccard,
    leakage_test,
    top_edges,
)
from scfm_audit.stats._verdict import answer_result


def test_ridge_cv_matches_scikit_learn():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 8))
    y = rng.integers(0, 3, 150)
    X[:, 0] += y  # some signal
    strata = rng.integers(0, 2, 150)
    fold = fold_labels(strata, 150, folds=5, seed=1)
    pred = np.empty(150, int)
    for f in np.unique(fold):
        m = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))
        m.fit(X[fold != f], y[fold != f])
        pred[fold == f] = m.predict(X[fold == f])
    ours = RidgeCV(X, fold, alpha=1.0).balanced_accuracy(y)[0]
    assert ours == pytest.approx(balanced_accuracy_score(y, pred))


def _replicate(name: str, seed: int):
    from scfm_audit.analyses._calibration import CALIBRATIONS

    cal = CALIBRATIONS.get("batch_leakage")
    return cal.replicate(cal.scenario(name), seed)


def test_planted_batch_leakage_is_found():
    out = _replicate("planted_batch_0.3", 1)
    assert out.p < 0.01 and out.side == "greater"
    assert out.estimate > 0.5  # three donors: chance ≈ 1/3


@pytest.mark.parametrize("seed", [1, 2])
def test_clean_simulation_is_not_flagged(seed):
    out = _replicate("coexp_null_batch0", seed)
    assert out.p > 0.05
    assert abs(out.estimate - out.null_value) < 0.1


def test_composition_difference_is_not_credited():
    """Donors that differ only in their mix of cell states: the within-state permutation
    keeps its level where the unstratified one rejects (seed chosen where it does)."""
    out = _replicate("composition_null", 2)
    assert out.p > 0.05
    assert out.extra["p_unstratified"] < out.p


def test_claim_reads_leakage_as_yes():
    rng = np.random.default_rng(3)
    batch = np.repeat(["a", "b"], 60)
    F = rng.normal(size=(120, 5))
    F[batch == "b", 0] += 1.5
    res, _ = leakage_test(F, batch, None, stages=(199,), seed=0)
    assert answer_result(res, claimed="greater")[0] == "yes"
    res0, _ = leakage_test(rng.normal(size=(120, 5)), batch, None, stages=(199,), seed=0)
    assert answer_result(res0, claimed="greater")[0] != "yes"


def test_artifact_sensitivity_flags_a_batch_driven_correlation():
    """Edge 0's correlation exists only because batch b (90 % of the cells) shifts both
    genes; balancing the batches shrinks it, so its sensitivity exceeds 0.5. Edge 1 is
    correlated within every batch and is stable."""
    rng = np.random.default_rng(0)
    batch = np.array(["a"] * 20 + ["b"] * 180)
    X = rng.normal(size=(200, 4))
    X[batch == "a", :2] += 3.0
    z = rng.normal(size=200)
    X[:, 2] += 2 * z
    X[:, 3] += 2 * z
    t = artifact_sensitivity(X, np.array([0, 2]), np.array([1, 3]), batch, seed=0)
    assert t.loc[0, "sensitivity"] > 0.5 > t.loc[1, "sensitivity"]


def test_top_edges_and_jaccard():
    from scfm_audit.edges._scores import EdgeScores

    m = np.array([[0, 3, -5], [3, 0, 1], [-5, 1, 0]], float)
    es = EdgeScores(m, pd.Index(["a", "b", "c"]), method="x", directed=False)
    top = top_edges(es, 2)
    assert list(zip(top["source"], top["target"], strict=True)) == [("a", "c"), ("a", "b")]
    assert jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
