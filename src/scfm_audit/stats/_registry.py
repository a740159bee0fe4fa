"""The run's test registry: every p-value of every analysis, one row each, BH-corrected
within its family: the claim tests (one per scorecard line) and the descriptive tests."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from scfm_audit.stats._fdr import bh_fdr

Family = Literal["claim", "descriptive"]
Direction = Literal["greater", "less", "two-sided"]

TEST_COLUMNS = (
    "analysis",
    "hypothesis",
    "test",
    "null_name",
    "null",
    "model",
    "dataset",
    "reference",
    "method",
    "layer",
    "head",
    "statistic_name",
    "statistic",
    "effect_name",
    "effect",
    "ci_low",
    "ci_high",
    "null_value",
    "p",
    "p_greater",
    "p_less",
    "p_floor",
    "null_scale",
    "n",
    "direction",
    "family",
    "seed",
    "q",
    "q_run",
    "q_analysis",
    "passed",
)


@dataclass
class TestRecord:
    """One statistical test.

    ``p`` is the raw p-value of ``test`` under ``null`` (the H0 in words; ``null_name`` a
    short name of the null model, e.g. "degree_permutation"); ``direction`` is the
    alternative ("greater": effect above ``null_value``; "two-sided"). ``effect`` is the
    effect on its natural scale (e.g. AUROC, ΔAUROC, Cohen's d) with a CI (``ci_low``,
    ``ci_high``) when one was computed, and ``null_value`` its value under H0 (e.g. 0.5
    for an AUROC under label exchange, the permutation null's mean for a null that keeps
    hubs, 0 for a difference). ``p_greater`` / ``p_less``: the one-sided tails of the
    same statistic (they give the tested side). ``p_floor`` is the smallest p the test
    could give (exact tests: from the number of distinct outcomes; Monte-Carlo tests:
    the staged floor, raised by atoms of the null): a test whose floor cannot reach α
    answers ``n/a``. ``family`` is "claim" (the one test answering a scorecard line,
    registered through ``ctx.claim``) or "descriptive" (``ctx.describe``).
    """

    __test__ = False  # not a pytest class

    analysis: str
    hypothesis: str
    test: str
    null: str
    p: float
    statistic_name: str = ""
    statistic: float = math.nan
    effect_name: str = ""
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    null_value: float = 0.0
    null_name: str = ""
    p_floor: float = math.nan
    p_greater: float = math.nan
    p_less: float = math.nan
    null_scale: float = math.nan
    n: int = 0
    direction: Direction = "two-sided"
    family: Family = "descriptive"
    model: str | None = None
    dataset: str | None = None
    reference: str | None = None
    method: str | None = None
    layer: int | None = None
    head: int | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.p, float | int | np.floating) and 0.0 <= float(self.p) <= 1.0):
            if not (isinstance(self.p, float) and math.isnan(self.p)):
                raise ValueError(
                    f"Test {self.analysis}/{self.hypothesis}: p={self.p!r} is not a "
                    "probability in [0, 1]."
                )
        if self.family not in ("claim", "descriptive"):
            raise ValueError(f"family must be 'claim' or 'descriptive', got {self.family!r}")
        if self.direction not in ("greater", "less", "two-sided"):
            raise ValueError(f"direction must be greater/less/two-sided, got {self.direction!r}")
        self.p = float(self.p)


class TestRegistry:
    """Collects :class:`TestRecord`s from every analysis of a run.

    BH-FDR (:meth:`to_frame`): ``q`` within the test's own family (claims with claims,
    descriptive with descriptive: the only q that answers anything), and for the
    sensitivity of conclusions to the family definition ``q_run`` over every test of the
    run and ``q_analysis`` within each analysis. Tests with NaN p (not computable, e.g.
    too few observations) are kept with NaN q.
    """

    __test__ = False

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha
        self._records: list[TestRecord] = []

    def add(self, record: TestRecord | None = None, /, **fields: Any) -> TestRecord:
        """Register a test, given as a record or as its fields."""
        if record is None:
            record = TestRecord(**fields)
        elif fields:
            raise TypeError("pass either a TestRecord or keyword fields, not both")
        self._records.append(record)
        return record

    def extend(self, records: Iterable[TestRecord]) -> None:
        for r in records:
            self.add(r)

    def __len__(self) -> int:
        return len(self._records)

    def rollback(self, n: int) -> None:
        """Forget every test registered after the first ``n`` (an analysis that failed
        midway must not leave half of its family in the run's FDR correction)."""
        del self._records[n:]

    def records(self, analysis: str | None = None) -> list[TestRecord]:
        return [r for r in self._records if analysis is None or r.analysis == analysis]

    def to_frame(self) -> pd.DataFrame:
        """All tests with q-values (BH) and ``passed`` (q < alpha within its own family)."""
        rows = []
        for r in self._records:
            d = asdict(r)
            extra = d.pop("extra")
            d.update({f"x_{k}": v for k, v in extra.items()})
            rows.append(d)
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=list(TEST_COLUMNS))
        q = np.full(len(df), np.nan)
        for fam in ("claim", "descriptive"):
            sel = (df["family"] == fam).to_numpy()
            q[sel] = bh_fdr(df.loc[sel, "p"].to_numpy())
        df["q"] = q
        df["q_run"] = bh_fdr(df["p"].to_numpy())
        df["q_analysis"] = df.groupby("analysis")["p"].transform(lambda p: bh_fdr(p.to_numpy()))
        df["passed"] = df["q"] < self.alpha
        cols = [c for c in TEST_COLUMNS if c in df] + [c for c in df if c not in TEST_COLUMNS]
        return df[cols]

    def family_sensitivity(self) -> pd.DataFrame:
        """Number of tests significant at ``alpha`` under each family definition."""
        df = self.to_frame()
        if df.empty:
            return pd.DataFrame(columns=["family_definition", "n_tests", "n_significant"])
        ok = df["p"].notna()
        rows = [
            ("uncorrected", int(ok.sum()), int((df["p"] < self.alpha).sum())),
            ("all tests (BH)", int(ok.sum()), int((df["q_run"] < self.alpha).sum())),
            (
                "claims only (BH; answers the scorecard)",
                int((ok & (df["family"] == "claim")).sum()),
                int(((df["q"] < self.alpha) & (df["family"] == "claim")).sum()),
            ),
            ("per analysis (BH)", int(ok.sum()), int((df["q_analysis"] < self.alpha).sum())),
        ]
        return pd.DataFrame(rows, columns=["family_definition", "n_tests", "n_significant"])
