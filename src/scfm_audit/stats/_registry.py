"""The run's test registry: every p-value of every analysis, one row each, BH-corrected
across the run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from scfm_audit.stats._fdr import bh_fdr

Family = Literal["confirmatory", "descriptive"]
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
    "p_floor",
    "n",
    "direction",
    "family",
    "seed",
    "q",
    "q_confirmatory",
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
    for an AUROC, 0 for a difference). ``p_floor`` is the smallest p the test could give
    (Monte-Carlo tests: ``1/(B+1)``, doubled when two-sided; NaN for analytic tests): a p
    at its floor that is not significant after BH means "too few draws", not "no effect". ``family`` is "confirmatory" (a pre-declared hypothesis that feeds a verdict)
    or "descriptive". q-values are filled in by :meth:`TestRegistry.finalise`.
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
    n: int = 0
    direction: Direction = "greater"
    family: Family = "confirmatory"
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
        if self.family not in ("confirmatory", "descriptive"):
            raise ValueError(f"family must be 'confirmatory' or 'descriptive', got {self.family!r}")
        if self.direction not in ("greater", "less", "two-sided"):
            raise ValueError(f"direction must be greater/less/two-sided, got {self.direction!r}")
        self.p = float(self.p)


class TestRegistry:
    """Collects :class:`TestRecord`s from every analysis of a run.

    BH-FDR is applied by :meth:`finalise` across the whole run (``q``), within the
    confirmatory family (``q_confirmatory``) and within each analysis (``q_analysis``) so
    that the sensitivity of conclusions to the family definition can be reported.
    Tests with NaN p (not computable, e.g. too few observations) are kept with NaN q.
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

    def extend(self, records) -> None:
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
        """All tests with q-values (BH) and ``passed`` (q < alpha on the run-wide family)."""
        rows = []
        for r in self._records:
            d = asdict(r)
            extra = d.pop("extra")
            d.update({f"x_{k}": v for k, v in extra.items()})
            rows.append(d)
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=list(TEST_COLUMNS))
        df["q"] = bh_fdr(df["p"].to_numpy())
        conf = (df["family"] == "confirmatory").to_numpy()
        qc = np.full(len(df), np.nan)
        qc[conf] = bh_fdr(df.loc[conf, "p"].to_numpy())
        df["q_confirmatory"] = qc
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
            ("all tests (BH)", int(ok.sum()), int((df["q"] < self.alpha).sum())),
            (
                "confirmatory only (BH)",
                int((ok & (df["family"] == "confirmatory")).sum()),
                int((df["q_confirmatory"] < self.alpha).sum()),
            ),
            ("per analysis (BH)", int(ok.sum()), int((df["q_analysis"] < self.alpha).sum())),
        ]
        return pd.DataFrame(rows, columns=["family_definition", "n_tests", "n_significant"])
