"""The built-in demo: the whole framework on the synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scfm_audit import __version__
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
    n_boot, n_perm, n_rewire = (200, 199, 50) if quick else (1000, 999, 200)
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
                "edges": ["spearman", "pearson"],
                "references": ["null_grn"],
                "n_boot": n_boot,
                "n_perm": n_perm,
                "n_rewire": n_rewire,
            },
            "layer_organisation": {"datasets": ["sim"], "n_boot": 200 if quick else 500},
            "head_specialisation": {
                "datasets": ["sim"],
                "references": ["sim_grn", "sim_ppi"],
                "n_boot": 50 if quick else 200,
            },
            # the inference itself, checked on simulated nulls and planted effects
            "synthetic_controls": {"n_replicates": 10 if quick else 40},
        },
    }


def ensure_demo_models(
    out: str | Path, *, quick: bool = False, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Small scGPT- and Geneformer-architecture models trained on the demo benchmark,
    in their real checkpoint layouts under ``<out>/models`` (trained once, then reused
    while the benchmark settings are unchanged). Returns the config ``models`` section.
    """
    import json
    import shutil

    from scfm_audit.data._simulate import SimulationParams, simulate_perturbseq
    from scfm_audit.models._train import train_demo_models
    from scfm_audit.pipeline._cache import stable_hash
    from scfm_audit.pipeline._io import atomic_write_text

    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    folder = Path(out) / "models"
    stamp = folder / "demo_models.json"
    key = stable_hash({"sim": sim, "quick": quick, "seed": seed, "version": __version__})
    families = {"scgpt_demo": "scgpt", "geneformer_demo": "geneformer"}
    fresh = stamp.exists() and json.loads(stamp.read_text()).get("key") == key
    if not (fresh and all((folder / name).is_dir() for name in families)):
        tmp = folder.parent / f".models-tmp-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        bench = simulate_perturbseq(SimulationParams(**sim))
        trained = train_demo_models(bench.adata, tmp, quick=quick, seed=seed)
        if {Path(trained[f]).name for f in families.values()} != set(families):
            raise RuntimeError(f"unexpected demo model folders: {trained}")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # the whole folder appears at once: a killed training leaves none
        atomic_write_text(stamp, json.dumps({"key": key, "simulation": sim}))
    return {name: {"family": fam, "path": str(folder / name)} for name, fam in families.items()}


def demo_config(
    out: str | Path, *, quick: bool = False, models: dict[str, dict[str, Any]] | None = None
) -> AuditConfig:
    return config_from_dict(demo_config_dict(out, quick=quick, models=models))
