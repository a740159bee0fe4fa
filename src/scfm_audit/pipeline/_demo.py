"""The built-in demo: the whole framework on the synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scfm_audit.pipeline._config import AuditConfig, config_from_dict

#: simulator settings of the demo benchmark (small enough for 2 cores in minutes)
DEMO_SIMULATION: dict[str, Any] = {"n_cells": 3000, "n_genes": 300, "n_tfs": 30, "seed": 0}
QUICK_SIMULATION: dict[str, Any] = {"n_cells": 1200, "n_genes": 200, "n_tfs": 20, "seed": 0}


def demo_config_dict(
    out: str | Path, *, quick: bool = False, models: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The demo audit as a plain dict (what ``examples/demo.yaml`` holds).

    ``models`` (name → {family, path}) adds attention edges of those checkpoints.
    """
    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    n_boot, n_perm, n_rewire = (200, 200, 50) if quick else (1000, 1000, 200)
    edges: dict[str, Any] = {
        "spearman": {"scorer": "coexpression", "method": "spearman", "max_cells": 1000},
        "pearson": {"scorer": "coexpression", "method": "pearson", "max_cells": 1000},
    }
    for name in models or {}:
        edges[f"{name}_attention"] = {
            "scorer": "attention",
            "model": name,
            "max_cells": 300 if quick else 600,
            "per_head": True,
        }
    return {
        "seed": 0,
        "output": str(out),
        "datasets": {
            "sim": {"simulate": dict(sim)},
            "sim_null": {"simulate": {**sim, "regulation_strength": 0.0, "seed": 1}},
        },
        "references": {
            "sim_grn": {"format": "simulated", "dataset": "sim", "network": "grn"},
            "sim_ppi": {"format": "simulated", "dataset": "sim", "network": "ppi"},
            "null_grn": {"format": "simulated", "dataset": "sim_null", "network": "grn"},
        },
        "models": dict(models or {}),
        "edges": edges,
        "analyses": {
            "grn_recovery": {
                "datasets": ["sim"],
                "references": ["sim_grn", "sim_ppi"],
                "n_boot": n_boot,
                "n_perm": n_perm,
                "n_rewire": n_rewire,
            },
            # the same analysis on data simulated without regulation: p must not be small
            "grn_recovery@null": {
                "datasets": ["sim_null"],
                "references": ["null_grn"],
                "n_boot": n_boot,
                "n_perm": n_perm,
                "n_rewire": n_rewire,
            },
        },
    }


def demo_config(
    out: str | Path, *, quick: bool = False, models: dict[str, dict[str, Any]] | None = None
) -> AuditConfig:
    return config_from_dict(demo_config_dict(out, quick=quick, models=models))
