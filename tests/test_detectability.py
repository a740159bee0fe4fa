"""Detectability: the closed form of the recovery test's power, its parts, and its check
against simulation with the real recovery test (``edge_recovery``).

Specification: Hanley–McNeil at AUROC ½ is the Mann–Whitney null variance; cell noise
attenuates an effect towards ½ and more cells undo it; "cells needed" inverts the power;
split halves recover the per-cell noise of edge scores; the closed-form power lies within
±0.1 of the simulated power of the real test over a grid of planted effects × cells.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scfm_audit.data._hub_reference import hub_reference
from scfm_audit.evaluate._detectability import (
    attenuated_auroc,
    cells_needed,
    detectable_effect,
    detection_power,
    hanley_mcneil_var,
    noise_from_halves,
    null_structure,
    power_at_cells,
    simulate_power,
)
from scfm_audit.evaluate._recovery import candidate_pairs


@pytest.fixture(scope="module")
def hub_pairs():
    """A heavy-tailed directed reference on 150 genes: ~4,500 candidates, ~440 edges."""
    ref = hub_reference(150, seed=0, directed=True)
    return candidate_pairs(pd.Index([f"g{i}" for i in range(150)]), ref)


def test_hanley_mcneil_at_half_is_the_mann_whitney_null_variance():
    for n1, n0 in [(5, 7), (40, 2000), (300, 300)]:
        assert hanley_mcneil_var(0.5, n1, n0) == pytest.approx((n1 + n0 + 1) / (12 * n1 * n0))
    assert hanley_mcneil_var(0.9, 40, 400) < hanley_mcneil_var(0.5, 40, 400)
    with pytest.raises(ValueError):
        hanley_mcneil_var(0.5, 0, 10)


def test_cell_noise_attenuates_the_effect_towards_one_half():
    assert attenuated_auroc(0.1, math.inf, 50.0) == pytest.approx(0.6)
    assert attenuated_auroc(0.1, 1e9, 50.0) == pytest.approx(0.6, abs=1e-6)
    assert attenuated_auroc(0.1, 10, 0.0) == pytest.approx(0.6)
    a = [attenuated_auroc(0.1, n, 100.0) for n in (10, 100, 1000, 10_000)]
    assert 0.5 < a[0] < a[1] < a[2] < a[3] < 0.6


def test_power_is_alpha_at_no_effect_and_falls_with_more_claims():
    assert detection_power(0.0, 50, 2000) == pytest.approx(0.05, abs=1e-3)
    assert detection_power(0.0, 50, 2000, n_claims=10) == pytest.approx(0.005, abs=1e-4)
    p1 = detection_power(0.05, 50, 2000)
    assert detection_power(0.05, 50, 2000, n_claims=20) < p1 < detection_power(0.05, 200, 2000)
    # a null that keeps part of the effect, or a wider null (hub dependence), costs power
    assert detection_power(0.05, 50, 2000, retention=0.3) < p1
    assert detection_power(0.05, 50, 2000, design_effect=2.0) < p1


def test_detectable_effect_and_cells_needed_invert_the_power():
    kw = dict(n_pos=80, n_neg=3000, alpha=0.05, n_claims=10)
    d_n, d_inf = detectable_effect(**kw, power=0.8, n_cells=200, noise_ratio=300.0)
    assert detection_power(d_n, **kw) == pytest.approx(0.8, abs=1e-4)
    assert d_inf > d_n  # with noise, the noiseless effect must be larger
    assert power_at_cells(d_inf, 200, noise_ratio=300.0, **kw) == pytest.approx(0.8, abs=1e-3)
    n_star = cells_needed(0.15, noise_ratio=300.0, power=0.8, **kw)
    assert power_at_cells(0.15, n_star, noise_ratio=300.0, **kw) == pytest.approx(0.8, abs=1e-3)
    # the reference, not the cells, limits: an effect below the noiseless detectable size
    d0, _ = detectable_effect(**kw, power=0.8)
    assert cells_needed(d0 * 0.9, noise_ratio=300.0, power=0.8, **kw) == math.inf


def test_split_halves_recover_the_per_cell_noise():
    """Scores = means of per-cell contributions (truth + noise of variance σ² = 4 per
    cell): the halves give σ² and the truth's within-class variance τ² = 1."""
    rng = np.random.default_rng(0)
    n_cells, n_pairs = 200, 3000
    label = rng.random(n_pairs) < 0.1
    truth = rng.standard_normal(n_pairs) + 1.0 * label
    cells = truth + 2.0 * rng.standard_normal((n_cells, n_pairs))
    half = rng.permutation(n_cells) < n_cells // 2
    est = noise_from_halves(
        cells.mean(0), cells[half].mean(0), cells[~half].mean(0), label, n_cells
    )
    assert est["noise_var"] == pytest.approx(4.0, rel=0.1)
    assert est["signal_var"] == pytest.approx(1.0, rel=0.1)
    assert est["noise_ratio"] == pytest.approx(4.0, rel=0.15)
    assert est["reliability"] == pytest.approx(1 / (1 + 4 / 200), abs=0.02)


def test_null_structure_of_a_hub_reference(hub_pairs):
    ns = null_structure(hub_pairs, n_draws=200, seed=0)
    # degree-matched relabelling fixes hubs of unique degree: part of the effect stays in
    # the null's centre, and the null is narrower than Hanley-McNeil's
    assert 0.1 < ns["retention"] < 0.9
    assert ns["design_effect"] < 1.0
    free = null_structure(hub_pairs, null="node_permutation", n_draws=200, seed=0)
    assert abs(free["retention"]) < 0.05 and free["design_effect"] == pytest.approx(1, abs=0.25)


def test_closed_form_within_0_1_of_the_simulated_power_small(hub_pairs):
    """Planted effect × cells, power of the real recovery test by Monte Carlo (α = 0.05,
    one claim); two points here (low and high power), the grid is the slow test below."""
    sim = pd.concat(
        [
            simulate_power(
                hub_pairs, deltas=[d], cells=[n], noise_ratio=100.0, n_rep=100, n_perm=199, seed=1
            )
            for d, n in ((0.03, 100), (0.06, 400))
        ]
    )
    assert (sim["mean_auroc"] - sim["auroc_closed"]).abs().max() < 0.01
    assert (sim["power_closed"] - sim["power_sim"]).abs().max() <= 0.1
    assert sim["power_sim"].iloc[0] < 0.4 < 0.6 < sim["power_sim"].iloc[1]


@pytest.mark.slow
def test_closed_form_within_0_1_of_the_simulated_power_grid(hub_pairs):
    """Planted effect {0.03, 0.06} × cells {25, 100, 400} (noise ratio 100), 150
    replicates each with 999 relabelling draws (fewer draws coarsen the Monte-Carlo p and
    cost power that the normal approximation does not model)."""
    sim = simulate_power(
        hub_pairs,
        deltas=[0.03, 0.06],
        cells=[25, 100, 400],
        noise_ratio=100.0,
        n_rep=150,
        n_perm=999,
        seed=2,
    )
    diff = (sim["power_closed"] - sim["power_sim"]).abs()
    assert diff.max() <= 0.1, sim.to_string()
