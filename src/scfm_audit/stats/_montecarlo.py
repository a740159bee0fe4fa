"""Monte-Carlo p-values that refine themselves, and permutations within classes.

Why adaptive: a permutation p-value can never fall below its floor ``1 / (B + 1)``. With
BH over ``m`` tests a p must reach about ``α / m`` to count, so a strong effect tested
with too few draws reads as "not significant". :func:`adaptive_mc_pvalue` draws in
stages and goes on to the next, larger stage only while the p-value so far is below
``extend_below``; weak effects stop after the first stage (cheap), strong ones get the
resolution they need.

Validity of the staged p-value: let ``p_k`` be the ordinary +1-corrected Monte-Carlo p
after stage ``k`` (valid on its own: the draws of every stage are exchangeable with the
observed statistic under H0). The procedure reports ``p_k`` at the first stage where
``p_k > c`` (``c = extend_below``) or at the last stage. For ``t ≤ c``, reporting
``p ≤ t`` implies the procedure reached the last stage with ``p_last ≤ t``, so
``P(p ≤ t) ≤ P(p_last ≤ t) ≤ t``; for ``t > c``, ``{p ≤ t}`` is contained in
``{p_1 ≤ t}``, so ``P(p ≤ t) ≤ t``. The staged p-value is therefore valid at every level. The same holds with a threshold that
differs by stage: a stage at its floor (no draw as extreme, so ``p_k`` = ``1/(B_k+1)``, which
may exceed ``c`` when the first stage is small) always goes on — stage ``k`` continues while
``p_k ≤ max(c, floor_k)``, and for any ``t`` the event ``p ≤ t`` lies inside ``p_j ≤ t`` for
the first stage ``j`` whose threshold is below ``t`` (or the last stage).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scfm_audit.stats._tests import StatTestResult

from scfm_audit.stats._resampling import Alternative, Seed, _check_alternative, _rng

__all__ = ["MonteCarloP", "adaptive_mc_pvalue", "attainable_floor", "permute_within_classes"]


@dataclass(frozen=True)
class MonteCarloP:
    """A Monte-Carlo p-value with what it took to get it.

    ``p`` for ``alternative``; ``p_greater`` / ``p_less`` the two one-sided p-values
    from the same draws; ``n_draws`` null draws used; ``p_floor = 1 / (n_draws + 1)``, the
    smallest p these draws can give (doubled for two-sided); ``at_floor``: no null draw was
    as extreme as the observed value, so the true p may be smaller than reported;
    ``null`` the draws themselves.

    The floor accounts for a degenerate null (e.g. a degree-matched relabelling where
    every class is a singleton gives every draw equal to the observed value): see
    :func:`attainable_floor`.
    """

    p: float
    p_greater: float
    p_less: float
    n_draws: int
    p_floor: float
    at_floor: bool
    null: np.ndarray
    alternative: Alternative

    def result(
        self,
        observed: float,
        *,
        test: str,
        effect_name: str,
        h0: str,
        null_name: str = "",
        ci: tuple[float, float] = (float("nan"), float("nan")),
        n: int = 0,
        reason: str = "",
    ) -> StatTestResult:
        """This p-value as a typed :class:`~scfm_audit.stats._tests.StatTestResult`: the
        estimate ``observed`` against the null's own centre (the draws' mean, not a
        textbook value: a null that keeps hubs is not centred on AUROC 0.5), both tails,
        the attainable floor and the null's spread."""
        from scfm_audit.stats._tests import StatTestResult

        valid = self.null[~np.isnan(self.null)] if self.null.size else self.null
        centre = float(valid.mean()) if valid.size else float("nan")
        scale = float(valid.std()) if valid.size > 1 else float("nan")
        return StatTestResult(
            statistic=float(observed),
            p=self.p,
            effect=float(observed),
            n=n,
            test=f"{test} ({self.n_draws} draws, {self.alternative})",
            statistic_name=effect_name,
            effect_name=effect_name,
            alternative=self.alternative,
            ci_low=ci[0],
            ci_high=ci[1],
            p_greater=self.p_greater,
            p_less=self.p_less,
            null_value=centre,
            p_floor=self.p_floor,
            null_scale=scale,
            h0=h0,
            null_name=null_name,
            reason=reason,
        )


def attainable_floor(null: np.ndarray, alternative: Alternative) -> float:
    """The smallest p a Monte-Carlo test with these draws can give: ``1/(B+1)`` per tail
    (doubled for two-sided), unless the null is degenerate. A point mass gives 1. A null
    whose support is small and well sampled (≤ 20 distinct values, each drawn ≥ 5 times,
    e.g. a relabelling with few distinct outcomes) gives the share of draws tied at its
    extreme: the observed statistic is itself a value of the permutation distribution,
    so no p can fall below that atom. A wide support keeps the count floor (the observed
    value may lie beyond every sampled draw)."""
    valid = null[~np.isnan(null)]
    n = valid.size
    if n == 0:
        return float("nan")
    values, counts = np.unique(valid, return_counts=True)
    if values.size == 1:  # a point mass: nothing can be more extreme
        return 1.0
    up = lo = 1.0 / (n + 1.0)
    if values.size <= 20 and counts.min() >= 5:
        up, lo = counts[-1] / (n + 1.0), counts[0] / (n + 1.0)
    floor = {"greater": up, "less": lo, "two-sided": 2 * min(up, lo)}[alternative]
    return float(min(1.0, floor))


def _tails(observed: float, null: np.ndarray) -> tuple[float, float, int]:
    gamma = abs(observed) * 100 * np.finfo(np.float64).eps if np.isfinite(observed) else 0.0
    valid = null[~np.isnan(null)]
    n = len(valid)
    g = (1.0 + np.sum(valid >= observed - gamma)) / (1.0 + n)
    ll = (1.0 + np.sum(valid <= observed + gamma)) / (1.0 + n)
    return float(g), float(ll), n


def adaptive_mc_pvalue(
    draw: Callable[[int, np.random.Generator], np.ndarray],
    observed: float,
    *,
    stages: Sequence[int] = (999, 9_999),
    extend_below: float = 0.05,
    alternative: Alternative = "two-sided",
    seed: Seed,
) -> MonteCarloP:
    """Staged Monte-Carlo p-value of ``observed`` (see the module docstring for validity).

    Inputs: ``draw(k, rng)`` returns ``k`` statistics computed on independent draws from
    the null (exchangeable with ``observed`` under H0); ``stages`` the cumulative numbers
    of draws (increasing); the next stage is drawn only while the current p is below
    ``extend_below``; ``alternative``: "greater", "less" or "two-sided" (twice the smaller
    tail, capped at 1); ``seed``.

    Output: :class:`MonteCarloP`. A NaN ``observed`` gives NaN p with no draws.
    """
    _check_alternative(alternative)
    stages = [int(s) for s in stages]
    if (
        not stages
        or any(s <= 0 for s in stages)
        or any(b <= a for a, b in itertools.pairwise(stages))
    ):
        raise ValueError(f"stages must be increasing positive draw counts, got {stages}.")
    observed = float(observed)
    if np.isnan(observed):
        nan = float("nan")
        return MonteCarloP(nan, nan, nan, 0, nan, False, np.empty(0), alternative)
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater/less/two-sided, got {alternative!r}")
    rng = _rng(seed)
    chunks: list[np.ndarray] = []
    have = 0
    for target in stages:
        chunks.append(np.asarray(draw(target - have, rng), dtype=np.float64).ravel())
        have = target
        null = np.concatenate(chunks)
        g, ll, n = _tails(observed, null)
        p = {"greater": g, "less": ll, "two-sided": min(1.0, 2 * min(g, ll))}[alternative]
        floor = attainable_floor(null, alternative)
        at_floor = p <= floor * (1 + 1e-9)
        # more draws lower the count floor 1/(B+1), never an atom's share
        count_floor = (2.0 if alternative == "two-sided" else 1.0) / (n + 1.0)
        if p > extend_below and not p <= count_floor * (1 + 1e-9):
            break
    return MonteCarloP(p, g, ll, n, floor, bool(at_floor), null, alternative)


def permute_within_classes(
    classes: np.ndarray, n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_draws`` random permutations of ``range(len(classes))`` that map every element to
    one of the same class: ``out[b, i]`` is the position whose label element ``i`` takes in
    draw ``b``. Output ``(n_draws, n)`` int64. One class = an ordinary permutation."""
    classes = np.asarray(classes)
    n = len(classes)
    _, code = np.unique(classes, return_inverse=True)
    order0 = np.argsort(code, kind="stable")  # positions grouped by class
    # sorting by (class, uniform key) shuffles within classes; ties impossible (floats)
    keys = code[None, :] + rng.random((n_draws, n))
    shuffled = np.argsort(keys, axis=1, kind="stable")
    out = np.empty((n_draws, n), dtype=np.int64)
    out[:, order0] = shuffled  # element order0[k] goes to the k-th slot of its class
    return out
