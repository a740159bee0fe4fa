"""The run's test registry: BH q-values, NaN handling, family definitions, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from scfm_audit.stats._fdr import bh_fdr
from scfm_audit.stats._registry import TEST_COLUMNS, TestRecord, TestRegistry


def _registry(ps, families, analyses) -> TestRegistry:
    reg = TestRegistry(alpha=0.05)
    for i, (p, fam, ana) in enumerate(zip(ps, families, analyses)):
        reg.add(analysis=ana, hypothesis=f"h{i}", test="t", null="H0", p=p, family=fam)
    return reg


def test_bh_fdr_matches_statsmodels() -> None:
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(size=40), rng.uniform(0, 0.01, size=10)]
    np.testing.assert_allclose(bh_fdr(p), multipletests(p, method="fdr_bh")[1], rtol=1e-14)
    p_nan = p.copy()
    p_nan[[3, 17]] = np.nan
    q = bh_fdr(p_nan)
    assert np.isnan(q[[3, 17]]).all()
    ok = ~np.isnan(p_nan)
    np.testing.assert_allclose(q[ok], multipletests(p_nan[ok], method="fdr_bh")[1])


def test_registry_q_values_per_family() -> None:
    rng = np.random.default_rng(1)
    n = 30
    ps = np.r_[rng.uniform(0, 0.004, 8), rng.uniform(size=n - 8)]
    families = ["claim" if i % 3 else "descriptive" for i in range(n)]
    analyses = [f"a{i % 4}" for i in range(n)]
    ps[5] = np.nan
    reg = _registry(ps, families, analyses)
    df = reg.to_frame()
    assert list(df.columns[: len(TEST_COLUMNS)]) == list(TEST_COLUMNS)
    ok = ~np.isnan(ps)
    # run-wide (sensitivity only)
    expected_run = np.full(n, np.nan)
    expected_run[ok] = multipletests(ps[ok], method="fdr_bh")[1]
    np.testing.assert_allclose(df["q_run"], expected_run)
    # q: within the test's own family (claims with claims, descriptive with descriptive)
    expected = np.full(n, np.nan)
    for fam in ("claim", "descriptive"):
        sel = (np.array(families) == fam) & ok
        expected[sel] = multipletests(ps[sel], method="fdr_bh")[1]
    np.testing.assert_allclose(df["q"], expected)
    # per analysis
    for a in set(analyses):
        sel = (np.array(analyses) == a) & ok
        np.testing.assert_allclose(
            df.loc[sel, "q_analysis"], multipletests(ps[sel], method="fdr_bh")[1]
        )
    # NaN p kept, with NaN q and not passed
    assert len(df) == n
    assert np.isnan(df.loc[5, "p"]) and np.isnan(df.loc[5, "q"]) and not df.loc[5, "passed"]
    np.testing.assert_array_equal(df["passed"], np.nan_to_num(expected, nan=1.0) < 0.05)


def test_family_sensitivity_counts() -> None:
    ps = [0.001, 0.01, 0.02, 0.045, 0.3, math.nan]
    fams = ["claim", "claim", "descriptive", "descriptive", "claim", "claim"]
    anas = ["a", "a", "b", "b", "b", "a"]
    sens = _registry(ps, fams, anas).family_sensitivity().set_index("family_definition")
    # uncorrected: 4 of 5 computable p < 0.05
    assert sens.loc["uncorrected"].tolist() == [5, 4]
    # all tests BH over 5: q = [.005, .025, .0333, .05625, .3] -> 3 below 0.05
    assert sens.loc["all tests (BH)"].tolist() == [5, 3]
    # claims: [.001, .01, .3] -> q = [.003, .015, .3] -> 2
    assert sens.loc["claims only (BH; answers the scorecard)"].tolist() == [3, 2]
    # per analysis: a: [.001, .01] -> 2; b: [.02, .045, .3] -> q = [.06, .0675, .3] -> 0
    assert sens.loc["per analysis (BH)"].tolist() == [5, 2]


def test_invalid_records_rejected() -> None:
    for bad in (1.5, -0.1, math.inf):
        with pytest.raises(ValueError, match="probability"):
            TestRecord(analysis="a", hypothesis="h", test="t", null="H0", p=bad)
    with pytest.raises(ValueError, match="family"):
        TestRecord(analysis="a", hypothesis="h", test="t", null="H0", p=0.5, family="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        TestRecord(analysis="a", hypothesis="h", test="t", null="H0", p=0.5, direction="up")  # type: ignore[arg-type]
    rec = TestRecord(analysis="a", hypothesis="h", test="t", null="H0", p=np.float64(0.2))
    assert isinstance(rec.p, float)
    assert math.isnan(TestRecord(analysis="a", hypothesis="h", test="t", null="H0", p=math.nan).p)
    reg = TestRegistry()
    with pytest.raises(TypeError):
        reg.add(rec, analysis="b")


def test_empty_registry() -> None:
    reg = TestRegistry()
    assert reg.to_frame().empty and list(reg.to_frame().columns) == list(TEST_COLUMNS)
    assert reg.family_sensitivity().empty


def test_registry_records_each_tests_null_its_value_and_its_floor():
    reg = TestRegistry()
    reg.add(
        analysis="a",
        hypothesis="h",
        test="degree permutation (999 draws, two-sided)",
        null="reference genes exchangeable within role and degree",
        null_name="degree_permutation",
        null_value=0.5,
        p=0.002,
        p_floor=0.002,
        effect=0.7,
        direction="two-sided",
    )
    df = reg.to_frame()
    for col in ("null_name", "null", "null_value", "p_floor"):
        assert col in df.columns
    row = df.iloc[0]
    assert row["null_name"] == "degree_permutation" and row["null_value"] == 0.5
    assert row["p_floor"] == 0.002
