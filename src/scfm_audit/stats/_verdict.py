"""Four-valued scorecard answers from one BH-corrected test."""

from __future__ import annotations

import math

ANSWERS = ("yes", "opposite", "no evidence", "n/a")


def four_valued_answer(
    *,
    p: float,
    q: float,
    alpha: float,
    effect: float,
    null_value: float,
    claimed: str = "greater",
    p_floor: float = math.nan,
    reason: str = "",
) -> tuple[str, str]:
    """The answer to a directional claim, and why.

    * ``yes``: q < α and the effect lies on the claimed side of ``null_value``;
    * ``opposite``: q < α and the effect lies on the other side (e.g. AUROC 0.24 for
      "recovers": a strong anti-recovery, not a plain no);
    * ``no evidence``: q ≥ α;
    * ``n/a``: not assessable — no p (``reason`` says why), or a p at its Monte-Carlo floor
      ``p_floor`` that is not significant after correction (too few draws to tell).

    Inputs: ``claimed`` "greater" or "less". Output ``(answer, reason)``.
    """
    if claimed not in ("greater", "less"):
        raise ValueError(f"claimed must be 'greater' or 'less', got {claimed!r}")
    if any(math.isnan(x) for x in (p, q)):
        return "n/a", reason or "not assessable: the test could not be computed"
    if q < alpha:
        if math.isnan(effect) or effect == null_value:
            return "no evidence", "significant, but the effect equals its null value"
        above = effect > null_value
        if above == (claimed == "greater"):
            return "yes", reason
        return "opposite", reason or "significant in the direction opposite to the claim"
    if not math.isnan(p_floor) and p <= p_floor * (1 + 1e-9):
        return "n/a", (
            f"p = {p:.2g} is the smallest its Monte-Carlo draws allow and is not significant "
            "after correction: draw more permutations (raise n_perm / n_perm_max)"
        )
    return "no evidence", reason
