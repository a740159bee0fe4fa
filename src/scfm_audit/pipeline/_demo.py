"""The built-in demo: the whole framework on the synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scfm_audit import __version__
from scfm_audit.pipeline._config import AuditConfig, config_from_dict

#: simulator settings of the demo benchmark (small enough for 2 cores in minutes)
DEMO_SIMULATION: dict[str, Any] = {
    "n_cells": 3000,
    "n_genes": 300,
    "n_tfs": 30,
    "module_strength": 2.0,
    "seed": 0,
}
QUICK_SIMULATION: dict[str, Any] = {
    "n_cells": 1200,
    "n_genes": 200,
    "n_tfs": 20,
    "module_strength": 2.0,
    "seed": 0,
}


#: How the demo (and the acceptance test of the demo recipe, ``tests/test_train.py``) reads
#: attention (see ``edges/_attention.py``): softmax probabilities relative to uniform
#: attention over the cell, since plain probabilities scale as 1/(cell length) and that
#: alone correlates with |co-expression| (a random-initialised Geneformer scores +0.21
#: on the test benchmark); then the average product correction, which removes each
#: gene's background (e.g. genes at the rank positions attention favours).
ATTENTION_READING: dict[str, Any] = {"score": "softmax_relative", "correction": "apc"}

#: the demo models shipped as package data (trained once by ``SHIPPED_COMMAND``)
SHIPPED_MODELS = "demo_models"
SHIPPED_COMMAND = "scfm-audit train-demo-models --out demo_models --seed 0"
PROVENANCE_FILE = "PROVENANCE.json"
_FAMILIES = {"scgpt_demo": "scgpt", "geneformer_demo": "geneformer"}


def demo_models_key(*, quick: bool, seed: int) -> dict[str, Any]:
    """What a set of demo models depends on: benchmark, training settings and seed."""
    from scfm_audit.models._train import DEMO_TRAINING

    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    return {
        "simulation": dict(sim),
        "training": DEMO_TRAINING["quick" if quick else "full"],
        "seed": seed,
    }


def shipped_demo_models() -> Path | None:
    """Folder of the shipped demo checkpoints (package data), or None if absent."""
    from importlib.resources import files

    root = files("scfm_audit") / "data" / SHIPPED_MODELS
    p = Path(str(root))
    return p if (p / PROVENANCE_FILE).is_file() else None


def write_provenance(folder: str | Path, *, quick: bool, seed: int, command: str) -> Path:
    """``PROVENANCE.json`` beside a set of demo models: the command and seed that made
    them, the settings key (:func:`demo_models_key`), each model's held-out loss against
    its baseline, the torch build, and every file's size and SHA-256."""
    import hashlib
    import json

    import torch

    from scfm_audit._io import atomic_write_text
    from scfm_audit.models._train import LOG_FILE
    from scfm_audit.pipeline._cache import stable_hash

    folder = Path(folder)
    files, models = {}, {}
    for name in _FAMILIES:
        for f in sorted((folder / name).iterdir()):
            if f.is_file():
                files[f"{name}/{f.name}"] = {
                    "bytes": f.stat().st_size,
                    "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                }
        log = json.loads((folder / name / LOG_FILE).read_text())
        models[name] = {
            k: log[k]
            for k in (
                "family",
                "steps",
                "eval_loss_final",
                "baseline_loss",
                "baseline",
                "chance_loss",
                "learned",
                "seconds",
            )
        }
    key = demo_models_key(quick=quick, seed=seed)
    prov = {
        "command": command,
        "seed": seed,
        "quick": quick,
        "key": stable_hash(key),
        **key,
        "torch_version": torch.__version__,
        "models": models,
        "files": files,
    }
    out = folder / PROVENANCE_FILE
    atomic_write_text(out, json.dumps(prov, indent=2))
    return out


def _shipped_matches(folder: Path, *, quick: bool, seed: int) -> bool:
    import json

    from scfm_audit.pipeline._cache import stable_hash

    prov = json.loads((folder / PROVENANCE_FILE).read_text())
    want = stable_hash(demo_models_key(quick=quick, seed=seed))
    return prov.get("key") == want and all((folder / n).is_dir() for n in _FAMILIES)


def demo_config_dict(
    out: str | Path, *, quick: bool = False, models: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The demo audit as a plain dict (what ``examples/demo.yaml`` holds).

    ``models`` (name → {family, path}) adds attention edges of those checkpoints.
    """
    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    edges: dict[str, Any] = {
        "spearman": {"scorer": "coexpression", "method": "spearman", "max_cells": 1000},
        "pearson": {"scorer": "coexpression", "method": "pearson", "max_cells": 1000},
    }
    attention_cells = 300 if quick else 600
    if models:  # co-expression on exactly the attention's cells (same seeded subsample)
        edges["spearman_attention_cells"] = {
            "scorer": "coexpression",
            "method": "spearman",
            "max_cells": attention_cells,
        }
    for name in models or {}:
        edges[f"{name}_attention"] = {
            "scorer": "attention",
            "model": name,
            **ATTENTION_READING,
            "max_cells": attention_cells,
            "per_head": True,
            # batches of cells of similar length: a quarter less padded attention to
            # compute and fold on CPU (sums equal within float rounding)
            "length_buckets": True,
        }
    return {
        "seed": 0,
        "output": str(out),
        "datasets": {
            "sim": {"simulate": dict(sim)},
            "sim_null": {"simulate": {**sim, "regulation_strength": 0.0, "seed": 1}},
            # the same network and genes (same seed) screened by CRISPRa: a second context
            "sim_crispra": {"simulate": {**sim, "modality": "CRISPRa"}},
        },
        "references": {
            "sim_grn": {"format": "simulated", "dataset": "sim", "network": "grn"},
            "sim_ppi": {"format": "simulated", "dataset": "sim", "network": "ppi"},
            "null_grn": {"format": "simulated", "dataset": "sim_null", "network": "grn"},
        },
        "models": dict(models or {}),
        "edges": edges,
        "analyses": demo_analyses(quick=quick, models=bool(models)),
    }


def demo_analyses(*, quick: bool, models: bool) -> dict[str, Any]:
    """Every registered analysis' demo block (``register_analysis(..., demo=...)``), in
    catalogue order (category, then name): adding an analysis adds its block."""
    from scfm_audit.analyses._contract import ANALYSES

    out: dict[str, Any] = {}
    specs = sorted((ANALYSES.get(n) for n in ANALYSES.names()), key=lambda s: (s.category, s.name))
    for spec in specs:
        if spec.demo is not None:
            out.update(spec.demo(quick=quick, models=models) or {})
    return out


def ensure_demo_models(
    out: str | Path, *, quick: bool = False, seed: int = 0, retrain: bool = False
) -> dict[str, dict[str, Any]]:
    """Small scGPT- and Geneformer-architecture models trained on the demo benchmark,
    in their real checkpoint layouts under ``<out>/models``. Returns the config
    ``models`` section.

    The full demo's models are shipped as package data (``data/demo_models``, made by
    :data:`SHIPPED_COMMAND`; training them takes longer than the demo may): they are
    copied when their recorded settings (:func:`demo_models_key`) equal the current
    ones. Otherwise (``quick``, another ``seed``, changed settings, or ``retrain``) the
    models are trained once into ``<out>/models`` and then reused while the settings
    are unchanged.
    """
    import json
    import shutil

    from scfm_audit._io import atomic_write_text
    from scfm_audit.data._simulate import SimulationParams, simulate_perturbseq
    from scfm_audit.models._train import train_demo_models
    from scfm_audit.pipeline._cache import stable_hash

    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    folder = Path(out) / "models"
    stamp = folder / "demo_models.json"
    shipped = shipped_demo_models()
    use_shipped = (
        not retrain and shipped is not None and _shipped_matches(shipped, quick=quick, seed=seed)
    )
    key = stable_hash(
        {
            **demo_models_key(quick=quick, seed=seed),
            "version": __version__,
            "source": "shipped" if use_shipped else "trained",
        }
    )
    fresh = stamp.exists() and json.loads(stamp.read_text()).get("key") == key
    if retrain or not (fresh and all((folder / name).is_dir() for name in _FAMILIES)):
        tmp = folder.parent / f".models-tmp-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        if use_shipped and shipped is not None:
            tmp.mkdir(parents=True)
            for name in _FAMILIES:
                shutil.copytree(shipped / name, tmp / name)
        else:
            bench = simulate_perturbseq(SimulationParams(**sim))
            trained = train_demo_models(bench.adata, tmp, quick=quick, seed=seed)
            if {Path(trained[f]).name for f in _FAMILIES.values()} != set(_FAMILIES):
                raise RuntimeError(f"unexpected demo model folders: {trained}")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # the whole folder appears at once: a killed training leaves none
        atomic_write_text(
            stamp,
            json.dumps(
                {"key": key, "simulation": sim, "source": "shipped" if use_shipped else "trained"}
            ),
        )
    return {name: {"family": fam, "path": str(folder / name)} for name, fam in _FAMILIES.items()}


def demo_config(
    out: str | Path, *, quick: bool = False, models: dict[str, dict[str, Any]] | None = None
) -> AuditConfig:
    return config_from_dict(demo_config_dict(out, quick=quick, models=models))
