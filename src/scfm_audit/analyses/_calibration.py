"""The calibration harness: every analysis proves its test on simulated nulls and planted
effects before it judges a real model.

An analysis registers a :class:`Calibration` beside itself: its scenarios (``null``
configurations, where its verdict test must reject at most at the nominal rate, and
``planted`` ones at several strengths, where it must find the effect) and a
``replicate(scenario, seed)`` function that simulates one data set, runs the analysis'
own kernel and returns the verdict test's p-value, the estimate and its CI.
:func:`calibrate` runs replicates and reports, per scenario:

* rejection rate with a Clopper–Pearson interval — type-I error on nulls (any
  significant answer, either direction), power on planted effects (significant in the
  planted direction);
* CI coverage of the scenario's true value, with its Clopper–Pearson interval, where the
  truth is known (e.g. AUROC 0.5 for a reference placed independently of the data).

A contract test keeps every registered analysis covered; ``synthetic_controls`` runs the
harness inside an audit, and ``benchmarks/calibration.py`` runs it at full size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from scfm_audit._registry import Registry

__all__ = [
    "CALIBRATIONS",
    "EXEMPT",
    "Calibration",
    "ReplicateOutcome",
    "Scenario",
    "calibrate",
    "clopper_pearson",
    "register_calibration",
]


@dataclass(frozen=True)
class Scenario:
    """One simulator configuration. ``kind``: "null" (no effect; the verdict test must
    keep its level) or "planted" (an effect of ``strength``). ``truth``: the estimand's
    true value when known (for CI coverage), else None. ``params``: what ``replicate``
    needs (sizes, strengths)."""

    name: str
    kind: Literal["null", "planted"]
    description: str
    strength: float | None = None
    truth: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicateOutcome:
    """One replicate: the verdict test's ``p``, the ``estimate`` with its CI, the value
    of the estimate under H0 (``null_value``, the null's own centre) and ``side``, the
    side of the tested statistic ("greater" / "less" / "none"; from the test's tails —
    :meth:`of` fills it from a typed result; empty: the estimate against ``null_value``)."""

    p: float
    estimate: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    null_value: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # other tests' p, for comparison
    side: str = ""

    @classmethod
    def of(cls, result: Any, extra: dict[str, float] | None = None) -> ReplicateOutcome:
        """The outcome of the claim's own typed test (a ``StatTestResult``): its p, its
        estimate and CI, its null's centre and its tested side."""
        return cls(
            p=result.p,
            estimate=result.effect,
            ci_low=result.ci_low,
            ci_high=result.ci_high,
            null_value=result.null_value,
            extra=dict(extra or {}),
            side=result.side,
        )

    def tested_side(self) -> str:
        from scfm_audit.stats._tests import tested_side

        return self.side or tested_side(math.nan, math.nan, self.estimate, self.null_value)


@dataclass(frozen=True)
class Calibration:
    """An analysis' calibration: its scenarios and one replicate's computation."""

    analysis: str
    scenarios: tuple[Scenario, ...]
    replicate: Callable[[Scenario, int], ReplicateOutcome]
    claimed: Literal["greater", "less"] = "greater"

    def scenario(self, name: str) -> Scenario:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise KeyError(f"{self.analysis} has no calibration scenario {name!r}")


CALIBRATIONS: Registry[Calibration] = Registry("calibration", modules=("scfm_audit.analyses",))

# Analyses that need no calibration of their own, and why (the contract test reads this).
EXEMPT = {"synthetic_controls": "it is the calibration harness; it makes no claim about a model"}


def register_calibration(
    analysis: str,
    scenarios: list[Scenario] | tuple[Scenario, ...],
    *,
    claimed: Literal["greater", "less"] = "greater",
) -> Callable[[Callable], Callable]:
    """Decorator registering ``replicate(scenario, seed) -> ReplicateOutcome`` as the
    calibration of ``analysis``; it needs at least one null and one planted scenario."""
    kinds = {s.kind for s in scenarios}
    if kinds != {"null", "planted"}:
        raise ValueError(
            f"the calibration of {analysis} needs null and planted scenarios, got {kinds}"
        )

    def deco(fn: Callable) -> Callable:
        CALIBRATIONS.add(analysis, Calibration(analysis, tuple(scenarios), fn, claimed))
        return fn

    return deco


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided interval of a binomial proportion."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="beta")
    return float(lo), float(hi)


def _replicate_batch(
    seeds: list[int], *, replicate: Callable[[Scenario, int], ReplicateOutcome], scenario: Scenario
) -> list[ReplicateOutcome]:
    """One task: the replicates of ``seeds`` (each seeded by its own seed only)."""
    return [replicate(scenario, s) for s in seeds]


def _run_replicates(
    cal: Calibration, sc: Scenario, seeds: list[int], progress: Callable | None
) -> list[ReplicateOutcome]:
    """Every replicate of ``sc``, in seed order: here, or as batches of replicates on the
    run's executor (replicate ``i`` has seed ``seeds[i]`` wherever it runs, so the
    outcomes are the same)."""
    from scfm_audit._executor import current_executor

    description = f"calibrating {cal.analysis}: {sc.name}"
    executor = current_executor()
    if executor is None:
        it: Any = range(len(seeds))
        if progress is not None:
            it = progress(it, description=description)
        return [cal.replicate(sc, seeds[i]) for i in it]
    from scfm_audit._executor import tracked

    # here one replicate per item; on a cluster a few batches per worker thread (the
    # replicates' costs vary)
    par = executor.parallelism
    size = 1 if par <= 1 else max(1, -(-len(seeds) // (4 * par)))
    batches = [seeds[a : a + size] for a in range(0, len(seeds), size)]
    parts = executor.map_ordered(
        _replicate_batch,
        batches,
        shared={"replicate": cal.replicate, "scenario": sc},
        label=f"calibration-{cal.analysis}-{sc.name}",
    )
    outs: list[ReplicateOutcome] = []
    for _, part in tracked(parts, len(batches), progress, description):
        outs.extend(part)
    if len(outs) != len(seeds):
        from scfm_audit._executor import ExecutorError

        raise ExecutorError(f"{description}: {len(outs)} of {len(seeds)} replicates came back.")
    return outs


def calibrate(
    analysis: str,
    *,
    n_replicates: int,
    seed: int | tuple[int, ...] = 0,
    alpha: float = 0.05,
    scenarios: Sequence[str | Scenario] | None = None,
    progress: Callable | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``n_replicates`` replicates of each scenario of ``analysis``' calibration.

    ``scenarios``: names of registered scenarios, or :class:`Scenario` objects (variants
    of a registered scenario, e.g. with another reference template).

    Output: one row per scenario — ``analysis, scenario, kind, strength, n, rejections,
    rate, rate_low, rate_high`` (Clopper–Pearson 95%; the rate is type-I error for a null
    scenario, power for a planted one), ``coverage, coverage_low, coverage_high`` (when
    the truth is known), ``truth``, ``mean_estimate``, ``description``, and
    ``rate[<test>]`` for other tests a replicate reports; second, the replicates themselves
    (one row each). Replicate ``i`` of a scenario uses
    seed ``(seed, scenario name, i)``, so results do not depend on which other scenarios
    run, their order, or the machine; ``seed`` may be a tuple (e.g. ``(seed, chunk)``).
    """
    cal = CALIBRATIONS.get(analysis)
    chosen = (
        [s if isinstance(s, Scenario) else cal.scenario(s) for s in scenarios]
        if scenarios
        else list(cal.scenarios)
    )
    rows, reps = [], []
    for sc in chosen:
        key = [*(seed if isinstance(seed, tuple) else (seed,)), zlib.crc32(sc.name.encode())]
        seeds = np.random.SeedSequence(key).generate_state(n_replicates)
        outs = _run_replicates(cal, sc, [int(x) for x in seeds], progress)
        df = pd.DataFrame([{**o.__dict__, "side": o.tested_side(), **o.extra} for o in outs]).drop(
            columns="extra"
        )
        df.insert(0, "scenario", sc.name)
        reps.append(df)
        valid = df["p"].notna()
        sig = valid & (df["p"] < alpha)
        if sc.kind == "planted":  # power: significant on the planted side of the test
            sig &= df["side"] == cal.claimed
        n = int(valid.sum())
        k = int(sig.sum())
        lo, hi = clopper_pearson(k, n)
        row = {
            "analysis": analysis,
            "scenario": sc.name,
            "kind": sc.kind,
            "strength": sc.strength,
            "n": n,
            "rejections": k,
            "rate": k / n if n else math.nan,
            "rate_low": lo,
            "rate_high": hi,
            "coverage": math.nan,
            "coverage_low": math.nan,
            "coverage_high": math.nan,
            "truth": sc.truth,
            "mean_estimate": float(df["estimate"].mean()),
            "description": sc.description,
        }
        for col in df.columns:
            if col.startswith("p_"):  # other tests, for comparison: any significant answer
                row[f"rate[{col[2:]}]"] = float((df[col] < alpha).mean())
        if sc.truth is not None:
            has_ci = df["ci_low"].notna() & df["ci_high"].notna()
            cov = has_ci & (df["ci_low"] <= sc.truth) & (sc.truth <= df["ci_high"])
            m, c = int(has_ci.sum()), int(cov.sum())
            clo, chi = clopper_pearson(c, m)
            row.update(coverage=c / m if m else math.nan, coverage_low=clo, coverage_high=chi)
        rows.append(row)
    replicates = pd.concat(reps, ignore_index=True) if reps else pd.DataFrame()
    replicates.insert(0, "analysis", analysis)
    return pd.DataFrame(rows), replicates
