"""The one place where tests become scorecard answers.

A claim is answered by exactly one registered test. Its q comes from Benjamini–Hochberg
over the run's claim tests only (descriptive tests have their own correction and never
answer a claim). The answer is four-valued:

* ``yes``: q < α and the tested statistic lies on the claimed side of the null's own
  centre (read from the test's one-sided tails, not from an estimate it did not test);
* ``opposite``: q < α on the other side; a one-sided test cannot give it, and says
  "opposite not tested" instead;
* ``no evidence``: q ≥ α although the test could have reached α;
* ``n/a``: not assessable, with the reason: no p, a model that did not learn, or a test
  whose attainable floor cannot reach α among the run's claims (its q with p at its
  floor is ≥ α): exact tests with few distinct sets, Monte-Carlo tests with too few
  draws, degenerate nulls.

No analysis decides a direction, a null value, a floor or a family itself: they give
typed results (:class:`~scfm_audit.stats._tests.StatTestResult`) and this module answers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scfm_audit.stats._fdr import bh_fdr
from scfm_audit.stats._tests import StatTestResult, tested_side

ANSWERS = ("yes", "opposite", "no evidence", "n/a")

#: the sentence the report and the terminal print about the claim family
FAMILY_SENTENCE = (
    "Each answer comes from one test, Benjamini–Hochberg-corrected over this run's claim "
    "tests only (descriptive tests have their own correction and never answer a claim)."
)


def floor_q(p: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """For each test ``i``: its BH q if its p were at its attainable ``floor`` and every
    other p as observed — the best q it could have had in this family. NaN p stays NaN;
    a NaN floor counts as 0 (a continuous test)."""
    p = np.asarray(p, dtype=float)
    f = np.nan_to_num(np.asarray(floor, dtype=float), nan=0.0)
    out = np.full(p.shape, np.nan)
    for i in np.flatnonzero(~np.isnan(p)):
        alt = p.copy()
        alt[i] = min(f[i], p[i])
        out[i] = bh_fdr(alt)[i]
    return out


def answer(
    *,
    p: float,
    q: float,
    q_at_floor: float,
    p_floor: float,
    alpha: float,
    side: str,
    alternative: str,
    claimed: str,
    reason: str = "",
    n_claims: int = 1,
) -> tuple[str, str]:
    """The four-valued answer to one claim, and why (see the module docstring).

    ``side``: where the tested statistic lies ("greater", "less", "none");
    ``alternative``: what the test can answer ("two-sided", or one-sided "greater" /
    "less": then significance can only be on that side); ``claimed``: the claim's side.
    """
    if claimed not in ("greater", "less"):
        raise ValueError(f"claimed must be 'greater' or 'less', got {claimed!r}")
    if math.isnan(p) or math.isnan(q):
        return "n/a", reason or "not assessable: the test could not be computed"
    if not q_at_floor < alpha:
        why = (
            f"cannot reach significance: the smallest p this test can give is "
            f"{p_floor:.3g}, which gives q = {q_at_floor:.3g} ≥ α = {alpha:g} among the "
            f"run's {n_claims} claim tests"
        )
        return "n/a", f"{why} ({reason})" if reason else why
    one_sided = alternative in ("greater", "less")
    if q < alpha:
        tested = alternative if one_sided else side
        if tested == claimed:
            return "yes", reason
        if tested == "none":
            return "no evidence", "significant, but the statistic equals its null centre"
        return "opposite", reason or "significant on the side opposite to the claim"
    if one_sided and alternative == claimed:
        said = "opposite not tested (one-sided test)"
        return "no evidence", f"{said}; {reason}" if reason else said
    return "no evidence", reason


def answer_claims(claims: pd.DataFrame, *, alpha: float) -> pd.DataFrame:
    """Answer every claim of a run.

    Input: one row per claim with ``p``, ``p_floor``, ``p_greater``, ``p_less``,
    ``effect``, ``null_value``, ``direction`` (the test's alternative), ``claimed`` and
    ``reason``. Output: a copy with ``q`` (BH over these claims only), ``q_at_floor``,
    ``side`` (the tested statistic's side), ``answer`` and ``reason``.
    """
    out = claims.copy()
    if out.empty:
        for c in ("q", "q_at_floor", "side", "answer"):
            out[c] = pd.Series(dtype=float if c.startswith("q") else object)
        return out
    p = out["p"].to_numpy(dtype=float)
    out["q"] = bh_fdr(p)
    out["q_at_floor"] = floor_q(p, out["p_floor"].to_numpy(dtype=float))
    out["side"] = [
        tested_side(pg, pl, e, nv)
        for pg, pl, e, nv in zip(
            out["p_greater"], out["p_less"], out["effect"], out["null_value"], strict=True
        )
    ]
    n = int((~np.isnan(p)).sum())
    answers = [
        answer(
            p=r.p,
            q=r.q,
            q_at_floor=r.q_at_floor,
            p_floor=r.p_floor,
            alpha=alpha,
            side=r.side,
            alternative=r.direction,
            claimed=r.claimed,
            reason=r.reason if isinstance(r.reason, str) else "",
            n_claims=n,
        )
        for r in out.itertuples()
    ]
    out["answer"] = [a for a, _ in answers]
    out["reason"] = [w for _, w in answers]
    return out


def answer_result(
    result: StatTestResult,
    *,
    claimed: str = "greater",
    alpha: float = 0.05,
    others: tuple[float, ...] = (),
) -> tuple[str, str]:
    """The answer one typed result (:class:`~scfm_audit.stats._tests.StatTestResult`)
    gets as a claim beside other claims with p-values ``others`` (none: a family of one).
    Returns ``(answer, reason)``."""
    nan = math.nan
    row = {
        "p": result.p,
        "p_floor": result.p_floor,
        "p_greater": result.p_greater,
        "p_less": result.p_less,
        "effect": result.effect,
        "null_value": result.null_value,
        "direction": result.alternative,
        "claimed": claimed,
        "reason": result.reason,
    }
    rest = [
        {
            **row,
            "p": float(p),
            "p_floor": 0.0,
            "p_greater": nan,
            "p_less": nan,
            "effect": nan,
            "reason": "",
        }
        for p in others
    ]
    out = answer_claims(pd.DataFrame([row, *rest]), alpha=alpha)
    return str(out["answer"].iloc[0]), str(out["reason"].iloc[0])
