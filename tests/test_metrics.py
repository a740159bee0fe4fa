"""Ranking metrics vs scikit-learn, tie handling, NaN policies, early precision by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from scfm_audit.stats._metrics import (
    _midranks,
    auprc,
    auroc,
    early_precision,
    early_precision_ratio,
    pr_points,
    roc_points,
)


def _random_case(rng: np.random.Generator, *, n: int, k: int, levels: int):
    """Labels with both classes and heavily tied integer-valued scores (n, k)."""
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[1] = True, False
    scores = rng.integers(0, levels, size=(n, k)).astype(float) + 0.3 * y[:, None]
    scores = np.round(scores)  # positives shifted, then re-tied
    return y, scores


@pytest.mark.parametrize("seed", range(20))
def test_auroc_auprc_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y, s = _random_case(rng, n=n, k=6, levels=int(rng.integers(1, 15)))
    ours_roc = auroc(y, s)
    ours_ap = auprc(y, s)
    for j in range(s.shape[1]):
        assert abs(ours_roc[j] - roc_auc_score(y, s[:, j])) <= 1e-12
        assert abs(ours_ap[j] - average_precision_score(y, s[:, j])) <= 1e-12
        # 1-D gives a float equal to the corresponding column
        assert isinstance(auroc(y, s[:, j]), float)
        assert auroc(y, s[:, j]) == ours_roc[j]
        assert auprc(y, s[:, j]) == ours_ap[j]


def test_continuous_scores_and_int_labels() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(5000) < 0.03).astype(int)
    s = rng.normal(size=5000) + 0.8 * y
    assert abs(auroc(y, s) - roc_auc_score(y, s)) <= 1e-12
    assert abs(auprc(y, s) - average_precision_score(y, s)) <= 1e-12


def test_auroc_is_order_invariant_and_known_values() -> None:
    y = np.array([1, 0, 1, 0])
    assert auroc(y, [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert auroc(y, [0.1, 0.9, 0.2, 0.8]) == 0.0
    assert auroc(y, [1.0, 1.0, 1.0, 1.0]) == 0.5
    # one tie between a positive and a negative: (1 + 1 + 1 + 0.5) / 4
    assert auroc(y, [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875, abs=0)
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, 50).astype(float)
    lab = rng.random(50) < 0.4
    perm = rng.permutation(50)
    assert auroc(lab, s) == auroc(lab[perm], s[perm])
    assert auprc(lab, s) == pytest.approx(auprc(lab[perm], s[perm]), abs=1e-15)


def test_midranks_match_scipy() -> None:
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, size=(300, 4)).astype(float)
    np.testing.assert_array_equal(_midranks(s), rankdata(s, axis=0))


def test_nan_policies() -> None:
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.9, np.nan, 0.3, 0.4, 0.7, np.nan])
    # lowest: NaNs tie with each other below every real score
    low = s.copy()
    low[np.isnan(low)] = -1.0
    assert auroc(y, s) == roc_auc_score(y, low)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, low), abs=1e-12)
    # omit: drop the rows
    keep = ~np.isnan(s)
    assert auroc(y, s, nan_policy="omit") == roc_auc_score(y[keep], s[keep])
    with pytest.raises(ValueError, match="NaN"):
        auroc(y, s, nan_policy="raise")
    with pytest.raises(ValueError, match="1-D"):
        auroc(y, np.column_stack([s, s]), nan_policy="omit")
    with pytest.raises(ValueError, match="nan_policy"):
        auroc(y, s, nan_policy="ignore")  # type: ignore[arg-type]
    # 2-D with NaN under "lowest" equals column-by-column
    s2 = np.column_stack([s, s[::-1]])
    np.testing.assert_array_equal(auroc(y, s2), [auroc(y, s), auroc(y, s[::-1])])


def test_degenerate_inputs() -> None:
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([0, 0], [0.1, 0.2]))
    assert np.isnan(auroc(np.array([], dtype=bool), np.array([])))
    out = auroc([0, 0, 0], np.ones((3, 4)))
    assert out.shape == (4,) and np.isnan(out).all()
    assert np.isnan(auprc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert auprc([1, 1, 1], [0.1, 0.2, 0.3]) == 1.0
    # omit leaving one class
    assert np.isnan(auroc([1, 0, 1], [0.3, np.nan, 0.1], nan_policy="omit"))
    # single positive, single negative
    assert auroc([1, 0], [2.0, 1.0]) == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="binary"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="rows"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="1-D"):
        auroc(np.zeros((2, 2)), [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        auroc([0, 1], np.zeros((2, 2, 2)))


def test_2d_large_chunks_equal_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import scfm_audit.stats._metrics as m

    rng = np.random.default_rng(11)
    y, s = _random_case(rng, n=997, k=9, levels=30)
    full = early_precision(y, s), _midranks(s)
    monkeypatch.setattr(m, "_CHUNK_ELEMENTS", 2000)  # two columns per chunk
    np.testing.assert_array_equal(early_precision(y, s), full[0])
    np.testing.assert_array_equal(_midranks(s), full[1])


# --------------------------------------------------------------------- early precision


def test_early_precision_hand_examples() -> None:
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    s = np.array([8, 7, 6, 5, 4, 3, 2, 1], dtype=float)
    # k = 3 positives: top 3 = [1, 0, 1] -> 2/3; positive rate 3/8 -> EPR = 16/9
    assert early_precision(y, s) == pytest.approx(2 / 3)
    assert early_precision_ratio(y, s) == pytest.approx((2 / 3) / (3 / 8))
    assert early_precision(y, s, k=1) == 1.0
    assert early_precision(y, s, k=2) == 0.5
    assert early_precision(y, s, k=8) == pytest.approx(3 / 8)
    assert early_precision_ratio(y, s, k=8) == pytest.approx(1.0)


def test_early_precision_ties_at_cut() -> None:
    # top score 9 (positive) then four items tied at 5 (two positives), k = 3:
    # a = 1 above, p_a = 1; g = 4 tied with p_g = 2; 2 places shared among 4 -> 1 expected pos
    y = np.array([1, 1, 0, 1, 0, 0, 0])
    s = np.array([9, 5, 5, 5, 5, 1, 0], dtype=float)
    assert early_precision(y, s) == pytest.approx((1 + 2 * 2 / 4) / 3)
    # inclusive (BEELINE): all 5 edges with score >= 5 kept -> 3/5
    assert early_precision(y, s, ties="inclusive") == pytest.approx(3 / 5)
    # fractional rule does not depend on the order of the tied items
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(len(y))
        assert early_precision(y[perm], s[perm]) == pytest.approx((1 + 2 * 2 / 4) / 3)
    # equals the average over all orders of the tied block (brute force)
    from itertools import permutations

    tied = [1, 0, 1, 0]
    avg = np.mean([(1 + sum(p[:2])) / 3 for p in permutations(tied)])
    assert early_precision(y, s) == pytest.approx(avg)


def test_early_precision_2d_nan_and_validation() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([[6, 1], [5, 2], [4, 3], [3, 4], [2, 5], [np.nan, 6]], dtype=float)
    np.testing.assert_allclose(early_precision(y, s), [2 / 3, 1 / 3])
    assert early_precision(y, s[:, 0]) == pytest.approx(2 / 3)
    assert np.isnan(early_precision([0, 0, 0], [1.0, 2.0, 3.0]))
    assert np.isnan(early_precision_ratio([0, 0, 0], [1.0, 2.0, 3.0]))
    assert early_precision([0, 0, 0], [1.0, 2.0, 3.0], k=2) == 0.0
    for bad in (0, 7, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            early_precision(y, s[:, 0], k=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ties"):
        early_precision(y, s[:, 0], ties="random")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ curves


@pytest.mark.parametrize("seed", range(5))
def test_curve_points_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random_case(rng, n=200, k=1, levels=12)
    s = s[:, 0]
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
        df = roc_points(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(df["fpr"], fpr)
        np.testing.assert_allclose(df["tpr"], tpr)
        np.testing.assert_array_equal(df["threshold"], thr)
        prec, rec, thr = precision_recall_curve(y, s, drop_intermediate=drop)
        df = pr_points(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(df["precision"], prec)
        np.testing.assert_allclose(df["recall"], rec)
        np.testing.assert_array_equal(df["threshold"].to_numpy()[:-1], thr)
        assert np.isnan(df["threshold"].iloc[-1])


def test_curve_points_degenerate() -> None:
    df = roc_points([1, 1], [0.2, 0.4])
    assert df["fpr"].isna().all() and (df["tpr"].iloc[-1] == 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = pr_points([0, 0], [0.2, 0.4])
    assert df["recall"].iloc[:-1].isna().all()
    with pytest.raises(ValueError, match="1-D"):
        roc_points([0, 1], np.ones((2, 2)))
