"""A "no evidence" below the detectable size says so (the scorecard reads the
detectability analysis' table for the same dataset, source, reference and layer)."""

from __future__ import annotations

import math

import pandas as pd

from scfm_audit.analyses._run import power_notes
from scfm_audit.report._standards import standards_matrix


def _scorecard() -> pd.DataFrame:
    base = {
        "analysis": "grn_recovery",
        "model": "scgpt",
        "dataset": "sim",
        "reference": "trrust",
        "effect_name": "AUROC",
        "layer": 3,
        "method": "attention[scgpt]/L3",
        "q": 0.4,
        "effect": 0.55,
        "ci_low": 0.5,
        "ci_high": 0.6,
    }
    return pd.DataFrame(
        [
            {**base, "claim": "attention[scgpt] recovers trrust", "answer": "no evidence"},
            {**base, "claim": "attention[scgpt] recovers trrust", "answer": "yes", "q": 0.01},
            # another layer than the one sized: not annotated
            {
                **base,
                "claim": "other layer",
                "answer": "no evidence",
                "layer": 5,
                "method": "attention[scgpt]/L5",
            },
            # not the recovery test's AUROC: detectability says nothing about it
            {**base, "claim": "stable", "answer": "no evidence", "effect_name": "top-k Jaccard"},
        ]
    )


def _detectability(power_at_effect: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": "sim",
                "source": "attention[scgpt]",
                "reference": "trrust",
                "layer": 3,
                "n_cells": 400,
                "detectable_delta_at_n": 0.081,
                "power": 0.8,
                "power_at_effect": power_at_effect,
                "effect": 0.05,
                "cells_needed": 2600.0,
            }
        ]
    )


def test_no_evidence_below_the_detectable_size_says_so():
    out = power_notes(_scorecard(), _detectability(power_at_effect=0.31))
    first = out.iloc[0]
    assert first["detectable_effect"] == 0.081
    assert first["power_note"].startswith("below the detectable size")
    assert "400 cells" in first["power_note"] and "2600 cells" in first["power_note"]
    # a "yes", another layer, another effect scale: untouched
    assert out["power_note"].iloc[1:].eq("").all()
    assert out["detectable_effect"].iloc[1:].isna().all()


def test_an_adequately_sized_run_is_not_called_underpowered():
    out = power_notes(_scorecard(), _detectability(power_at_effect=0.93))
    assert out.iloc[0]["power_note"].startswith("at or above the detectable size")


def test_without_detectability_nothing_is_added():
    out = power_notes(_scorecard(), None)
    assert out["power_note"].eq("").all() and out["detectable_effect"].isna().all()
    assert math.isnan(out.iloc[0]["detectable_effect"])


def test_the_standards_cell_carries_the_note():
    sc = power_notes(_scorecard().iloc[[0]], _detectability(power_at_effect=0.31))
    m = standards_matrix(sc)
    claims = m.loc[m["answer"] == "no evidence", "claims"]
    assert len(claims) == 1 and "below the detectable size" in claims.iloc[0]
