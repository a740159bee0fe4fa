"""Detectability: how many cells an audit needs before "no evidence" means anything.

The model (closed form; every approximation stated):

* **Effect.** ``Δ`` = AUROC − ½ of an edge source against a reference *with infinitely
  many cells* (the source's true ranking ability). Binormal equal-variance model of the
  true pair scores: positives and negatives differ by ``δ = √2 · Φ⁻¹(½ + Δ)`` within-class
  standard deviations.
* **Noise from cells.** A pair's score from ``n`` cells is its true score plus sampling
  noise of variance ``σ² / n`` (scores are means of per-cell contributions, so the
  variance ∝ 1/n); ``v = σ² / τ²`` is the per-cell noise variance over the within-class
  variance ``τ²`` of the true scores (the *noise ratio*). With ``n`` cells the separation
  shrinks to ``δ_n = δ / √(1 + v/n)`` and the expected AUROC to ``A_n = Φ(δ_n / √2)``:
  few cells pull every source towards AUROC ½. ``v`` is estimated from the run's own
  data by split halves (:func:`noise_from_halves`).
* **Test.** The recovery test (``evaluate._recovery.edge_recovery``: the AUROC against a
  degree-preserving relabelling null) at level ``α / m``: Benjamini–Hochberg over ``m``
  claims of which one is true rejects it when ``p ≤ α·1/m`` — exact for one true claim
  among ``m``, conservative when several are true (BH's threshold is then ``α·k/m``).
  Two-sided, normal approximation: the AUROC's standard error is Hanley & McNeil's
  (1982) times ``√deff``, a design effect for the dependence among edges sharing hub genes
  (``deff`` = the relabelling null's variance over Hanley–McNeil's at ½; 1 for
  independent pairs). Power =
  ``Φ((Δ_n − z·SE₀)/SE₁) + Φ((−Δ_n − z·SE₀)/SE₁)``, ``z = z_{1 − α/(2m)}``, SE₀ at
  AUROC ½, SE₁ at ``A_n``.
* **Answers.** :func:`detectable_effect` — the smallest ``Δ_n`` (and the ``Δ`` it needs
  with ``n`` cells) detected with the target power; :func:`cells_needed` — ``n* = v /
  ((δ/δ*)² − 1)``, infinite when even noiseless scores on this reference cannot reach the
  power (the reference, not the cells, limits: too few positives).

:func:`simulate_power` checks the closed form against simulation: planted binormal scores
on the real candidate universe, the noise of ``n`` cells, and the real recovery test.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import norm

if TYPE_CHECKING:
    from scfm_audit.evaluate._recovery import CandidatePairs

__all__ = [
    "attenuated_auroc",
    "cells_needed",
    "detectable_effect",
    "detection_power",
    "hanley_mcneil_var",
    "noise_from_halves",
    "null_structure",
    "power_at_cells",
    "simulate_power",
    "simulated_recovery",
]


def hanley_mcneil_var(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) variance of an AUROC estimate with ``n_pos`` positives and
    ``n_neg`` negatives (independent observations):
    ``[A(1−A) + (n₁−1)(Q₁−A²) + (n₀−1)(Q₂−A²)] / (n₁ n₀)``, ``Q₁ = A/(2−A)``,
    ``Q₂ = 2A²/(1+A)``."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need ≥ 1 positive and negative, got {n_pos} and {n_neg}.")
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)


def _separation(delta: float) -> float:
    return math.sqrt(2.0) * float(norm.ppf(0.5 + delta))


def attenuated_auroc(delta: float, n_cells: float, noise_ratio: float) -> float:
    """Expected AUROC with ``n_cells`` cells of a source whose noiseless AUROC is ½ + Δ
    (binormal; per-cell noise ratio ``v``): ``Φ(δ / √(2 (1 + v/n)))``."""
    if not 0 <= delta < 0.5:
        raise ValueError(f"delta must lie in [0, 0.5), got {delta}.")
    if n_cells <= 0:
        return 0.5
    shrink = math.sqrt(1.0 + noise_ratio / n_cells) if math.isfinite(noise_ratio) else math.inf
    return float(norm.cdf(_separation(delta) / shrink / math.sqrt(2.0)))


def detection_power(
    delta_n: float,
    n_pos: int,
    n_neg: int,
    *,
    alpha: float = 0.05,
    n_claims: int = 1,
    design_effect: float = 1.0,
    retention: float = 0.0,
    retention_sd: float = 0.0,
) -> float:
    """Power of the two-sided recovery test at level ``α / n_claims`` to detect an expected
    AUROC of ½ + ``delta_n`` (normal approximation, Hanley–McNeil SE × √deff), against a
    null whose centre keeps the share ``retention`` of the effect (:func:`null_structure`:
    a relabelling that fixes hub genes maps part of a hub's edges onto its true edges) and
    whose spread grows by ``delta_n · retention_sd`` (that share varies between draws)."""
    z = norm.ppf(1 - alpha / (2 * n_claims))
    d = math.sqrt(design_effect)
    se0 = math.hypot(
        d * math.sqrt(hanley_mcneil_var(0.5, n_pos, n_neg)), abs(delta_n) * retention_sd
    )
    se1 = d * math.sqrt(hanley_mcneil_var(0.5 + abs(delta_n), n_pos, n_neg))
    x = abs(delta_n) * (1.0 - retention)
    return float(norm.cdf((x - z * se0) / se1) + norm.cdf((-x - z * se0) / se1))


def power_at_cells(
    delta: float,
    n_cells: float,
    *,
    noise_ratio: float,
    n_pos: int,
    n_neg: int,
    alpha: float = 0.05,
    n_claims: int = 1,
    design_effect: float = 1.0,
    retention: float = 0.0,
    retention_sd: float = 0.0,
) -> float:
    """Power to detect a noiseless effect ``delta`` with ``n_cells`` cells (see the
    module docstring)."""
    a_n = attenuated_auroc(delta, n_cells, noise_ratio)
    return detection_power(
        a_n - 0.5,
        n_pos,
        n_neg,
        alpha=alpha,
        n_claims=n_claims,
        design_effect=design_effect,
        retention=retention,
        retention_sd=retention_sd,
    )


def detectable_effect(
    n_pos: int,
    n_neg: int,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    n_claims: int = 1,
    design_effect: float = 1.0,
    retention: float = 0.0,
    retention_sd: float = 0.0,
    n_cells: float = math.inf,
    noise_ratio: float = 0.0,
) -> tuple[float, float]:
    """The smallest effect detected with ``power``: ``(Δ_n, Δ)`` — the expected AUROC − ½
    at ``n_cells`` (what the run's estimate would show) and the noiseless effect that
    gives it with ``n_cells`` cells of per-cell noise ratio ``noise_ratio`` (NaN when no
    effect below ½ is detectable: a reference too small for the power)."""

    def gap(x: float) -> float:
        return (
            detection_power(
                x,
                n_pos,
                n_neg,
                alpha=alpha,
                n_claims=n_claims,
                design_effect=design_effect,
                retention=retention,
                retention_sd=retention_sd,
            )
            - power
        )

    hi = 0.5 - 1e-9
    if gap(hi) < 0:
        return math.nan, math.nan
    d_n = float(optimize.brentq(gap, 0.0, hi, xtol=1e-7))
    if not math.isfinite(n_cells):
        return d_n, d_n
    shrink = math.sqrt(1.0 + noise_ratio / n_cells)
    p = norm.cdf(_separation(d_n) * shrink / math.sqrt(2.0))
    return d_n, float(p - 0.5) if p < 1.0 - 1e-12 else math.nan


def cells_needed(
    delta: float,
    *,
    noise_ratio: float,
    n_pos: int,
    n_neg: int,
    power: float = 0.8,
    alpha: float = 0.05,
    n_claims: int = 1,
    design_effect: float = 1.0,
    retention: float = 0.0,
    retention_sd: float = 0.0,
) -> float:
    """Cells needed to detect a noiseless effect ``delta`` with ``power``:
    ``n* = v / ((δ/δ*)² − 1)`` with ``δ*`` the separation of the detectable ``Δ_n``;
    ``inf`` when noiseless scores on this reference cannot reach the power."""
    d_n, _ = detectable_effect(
        n_pos,
        n_neg,
        power=power,
        alpha=alpha,
        n_claims=n_claims,
        design_effect=design_effect,
        retention=retention,
        retention_sd=retention_sd,
    )
    if not math.isfinite(d_n) or delta <= d_n:
        return math.inf
    ratio = (_separation(delta) / _separation(d_n)) ** 2
    return float(noise_ratio / (ratio - 1.0))


def null_structure(
    pairs: CandidatePairs, *, null: str = "degree_permutation", n_draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """How the recovery test's relabelling null treats this reference, for the closed form.

    ``retention`` κ: the expected share of an effect that the null's own centre keeps —
    relabelled positives that land on true positives (a hub gene of unique degree is a
    fixed point of the degree-matched relabelling, so part of its edges map onto its own
    edges): ``κ = f − (1 − f)·n₁/n₀`` with ``f`` the mean share of relabelled positives
    that are true positives; ``retention_sd`` its spread between draws (it widens the
    null under an effect). ``design_effect``: the null's AUROC variance over
    Hanley–McNeil's at ½, for independent pair scores (``(null SD / SE₀)²``; < 1 when fixed
    points shrink the null). ``null``: "degree_permutation" or "node_permutation".
    """
    from scfm_audit.evaluate._recovery import (
        gene_roles,
        nan_lowest_ranks,
        rank_matrix,
        relabelled_auroc_null,
    )
    from scfm_audit.stats._montecarlo import permute_within_classes

    match = {"degree_permutation": "degree", "node_permutation": "role"}[null]
    rng = np.random.default_rng(seed)
    perms = permute_within_classes(gene_roles(pairs, match=match), n_draws, rng)
    n = len(pairs.genes)
    n1 = pairs.n_pos
    n0 = len(pairs) - n1
    s, t = pairs.source[pairs.label], pairs.target[pairs.label]
    true = np.zeros((n, n), dtype=bool)
    true[s, t] = True
    if not pairs.directed:
        true[t, s] = True
    f_draw = true[perms[:, s], perms[:, t]].mean(axis=1)
    k_draw = f_draw - (1.0 - f_draw) * n1 / n0
    f, kappa = float(f_draw.mean()), float(k_draw.mean())
    # the null's variance depends on the scores of fixed points: average over 10 score sets
    var = []
    for chunk in np.array_split(perms, min(10, n_draws)):
        R = rank_matrix(nan_lowest_ranks(rng.standard_normal(len(pairs))), pairs)
        var.append(relabelled_auroc_null(R, pairs, chunk).var(ddof=1))
    deff = float(np.mean(var)) / hanley_mcneil_var(0.5, n1, n0)
    return {
        "retention": kappa,
        "retention_sd": float(k_draw.std()),
        "design_effect": deff,
        "overlap": f,
    }


def noise_from_halves(
    full: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, label: np.ndarray, n_cells: int
) -> dict[str, float]:
    """The per-cell noise of edge scores from two disjoint halves of ``n_cells`` cells.

    Each half's score = truth + noise of variance ``2σ²/n``, so ``Var(a − b) = 4σ²/n``
    over pairs: ``σ² = n · Var(a − b) / 4``. The true scores' within-class variance is the
    full-data scores' pooled within-class variance less their noise ``σ²/n``:
    ``τ² = Var_within(full) − σ²/n``. Output: ``noise_var`` (σ², per cell), ``signal_var``
    (τ²), ``noise_ratio`` (``v = σ²/τ²``; inf when τ² ≤ 0: no signal resolved),
    ``reliability`` (``τ² / (τ² + σ²/n)``, the share of the full scores' variance that is
    not cell noise). Pairs with a NaN in any of the three are ignored.
    """
    full, a, b = (np.asarray(x, dtype=float) for x in (full, half_a, half_b))
    y = np.asarray(label, dtype=bool)
    ok = np.isfinite(full) & np.isfinite(a) & np.isfinite(b)
    nan = math.nan
    if ok.sum() < 3 or n_cells < 2:
        return dict(noise_var=nan, signal_var=nan, noise_ratio=nan, reliability=nan)
    sig2 = n_cells * float(np.var(a[ok] - b[ok], ddof=1)) / 4.0
    parts = [full[ok & cls] for cls in (y, ~y)]
    num = sum((len(x) - 1) * np.var(x, ddof=1) for x in parts if len(x) > 1)
    den = sum(len(x) - 1 for x in parts if len(x) > 1)
    within = float(num / den) if den > 0 else float(np.var(full[ok], ddof=1))
    tau2 = within - sig2 / n_cells
    v = sig2 / tau2 if tau2 > 0 else math.inf
    rel = tau2 / within if within > 0 and tau2 > 0 else 0.0
    return dict(noise_var=sig2, signal_var=tau2, noise_ratio=v, reliability=rel)


def simulated_recovery(
    pairs: CandidatePairs,
    *,
    delta: float,
    noise_ratio: float,
    n_cells: float,
    rng: np.random.Generator,
    n_perm: int = 199,
    n_perm_max: int = 0,
    n_boot: int = 1,
) -> dict[str, Any]:
    """One replicate of the detectability scenario: planted binormal pair scores with the
    noise of ``n_cells`` cells on the candidate universe ``pairs`` (see
    :func:`simulate_power`), tested by the real recovery test; its result dict."""
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.evaluate._recovery import edge_recovery

    G = len(pairs.genes)
    s = rng.standard_normal(len(pairs)) + _separation(delta) * pairs.label
    s = s + rng.standard_normal(len(pairs)) * math.sqrt(noise_ratio / n_cells)
    M = np.full((G, G), np.nan)
    M[pairs.source, pairs.target] = s
    if not pairs.directed:
        M[pairs.target, pairs.source] = s
    es = EdgeScores(M, pairs.genes, method="simulated", directed=pairs.directed)
    return edge_recovery(
        es,
        pairs,
        n_boot=n_boot,
        n_perm=n_perm,
        n_perm_max=n_perm_max,
        transform="raw",
        seed=int(rng.integers(2**31)),
    )


def simulate_power(
    pairs: CandidatePairs,
    *,
    deltas: list[float],
    cells: list[float],
    noise_ratio: float,
    n_rep: int,
    alpha: float = 0.05,
    n_claims: int = 1,
    n_perm: int = 199,
    n_perm_max: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Power by Monte Carlo on a scenario grid (planted effect × cells), beside the closed
    form.

    For each ``(Δ, n)`` and replicate: true pair scores ``N(0, 1)`` on the candidate
    universe ``pairs`` (a :class:`~scfm_audit.evaluate._recovery.CandidatePairs`), shifted
    by ``δ = √2 Φ⁻¹(½ + Δ)`` on its positives; observed scores = truth + the mean of ``n``
    cells' noise of variance ``noise_ratio`` (drawn as one normal of variance
    ``noise_ratio / n``: exact for Gaussian per-cell noise); then the real recovery test
    (``edge_recovery``, degree-preserving relabelling null, ``n_perm`` draws, extended to
    ``n_perm_max`` while p < 0.05 as the run's test does). Detected:
    ``p < α / n_claims`` on the planted side. Output: one row per grid point with
    ``delta, n_cells, power_sim`` (and its Clopper–Pearson 95% interval), ``power_closed``
    (with the null's retention and design effect from :func:`null_structure`: the planted
    pair scores are independent), ``mean_auroc``,
    ``auroc_closed`` (the attenuated AUROC), ``n_rep``.
    """
    from statsmodels.stats.proportion import proportion_confint

    def clopper_pearson(k: int, n: int) -> tuple[float, float]:
        lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
        return float(lo), float(hi)

    n1 = pairs.n_pos
    n0 = len(pairs) - n1
    ns = null_structure(pairs, n_draws=2000, seed=seed)
    rows = []
    ss = np.random.SeedSequence(seed)
    for delta in deltas:
        for n in cells:
            rng = np.random.default_rng(ss.spawn(1)[0])
            hits, aucs = 0, []
            for _ in range(n_rep):
                out = simulated_recovery(
                    pairs,
                    delta=delta,
                    noise_ratio=noise_ratio,
                    n_cells=n,
                    rng=rng,
                    n_perm=n_perm,
                    n_perm_max=n_perm_max,
                )
                aucs.append(out["auroc"])
                hits += bool(out["p"] < alpha / n_claims and out["p_greater"] < out["p_less"])
            lo, hi = clopper_pearson(hits, n_rep)
            rows.append(
                {
                    "delta": delta,
                    "n_cells": n,
                    "power_sim": hits / n_rep,
                    "power_sim_low": lo,
                    "power_sim_high": hi,
                    "power_closed": power_at_cells(
                        delta,
                        n,
                        noise_ratio=noise_ratio,
                        n_pos=n1,
                        n_neg=n0,
                        alpha=alpha,
                        n_claims=n_claims,
                        design_effect=ns["design_effect"],
                        retention=ns["retention"],
                        retention_sd=ns["retention_sd"],
                    ),
                    "mean_auroc": float(np.mean(aucs)),
                    "auroc_closed": attenuated_auroc(delta, n, noise_ratio),
                    "n_rep": n_rep,
                }
            )
    return pd.DataFrame(rows)
