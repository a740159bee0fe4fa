"""Shared fixtures: small simulated benchmarks and tiny audit configs."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

TINY_SIM = {"n_cells": 600, "n_genes": 120, "n_tfs": 12, "n_perturbations": 8, "seed": 0}


@pytest.fixture(scope="session")
def tiny_bench():
    from scfm_audit.data import simulate_perturbseq

    return simulate_perturbseq(**TINY_SIM)


def tiny_config(out, **analysis_overrides) -> dict:
    """A complete audit config on a tiny simulated benchmark (plus a null twin)."""
    grn = {
        "datasets": ["sim"],
        "references": ["grn", "ppi"],
        "n_boot": 100,
        "n_perm": 200,
        "n_rewire": 20,
    }
    grn.update(analysis_overrides)
    return {
        "seed": 0,
        "output": str(out),
        "datasets": {
            "sim": {"simulate": dict(TINY_SIM)},
            "null": {"simulate": {**TINY_SIM, "regulation_strength": 0.0, "seed": 1}},
        },
        "references": {
            "grn": {"format": "simulated", "dataset": "sim", "network": "grn"},
            "ppi": {"format": "simulated", "dataset": "sim", "network": "ppi"},
            "null_grn": {"format": "simulated", "dataset": "null", "network": "grn"},
        },
        "edges": {
            "spearman": {"scorer": "coexpression", "method": "spearman", "max_cells": 400},
            "pearson": {"scorer": "coexpression", "method": "pearson", "max_cells": 400},
        },
        "analyses": {
            "grn_recovery": grn,
            "grn_recovery@null": {
                "datasets": ["null"],
                "references": ["null_grn"],
                "n_boot": 100,
                "n_perm": 200,
                "n_rewire": 20,
            },
        },
    }
