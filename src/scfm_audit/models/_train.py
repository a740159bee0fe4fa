"""Train small demo models of both families on a dataset (the synthetic benchmark).

Real scGPT / Geneformer weights cannot be downloaded here, so the demo trains small models
of exactly the released architectures, from scratch, with each family's own pretraining
objective (``models/scgpt/_recipe.py``: masked value modelling;
``models/geneformer/_recipe.py``: masked gene modelling), through the shared loop of
:mod:`scfm_audit.models._trainer`, and saves them in the released checkpoint layouts; the
audit then has models whose attention was shaped by data rather than by a random
initialisation. Each model's ``train_log.json`` says whether it beat its context-free
baseline on held-out cells (``learned``); read it before crediting its attention.

The trained attention depends chaotically on float rounding, so the same recipe on another
processor gives a different model; the record of how the recipe was chosen and validated
is in ``docs/validation/demo-models.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scfm_audit.models._trainer import (
    LOG_FILE,
    TRAIN_THREADS,
    TrainingBudgetExceeded,
    TrainReport,
    _holdout,
    _steps_per_epoch,
    cpu_signature,
    gene_medians_from_counts,
)
from scfm_audit.models.geneformer._recipe import train_geneformer_demo
from scfm_audit.models.scgpt._recipe import train_scgpt_demo

__all__ = [
    "DEMO_RECIPE",
    "DEMO_TRAINING",
    "LOG_FILE",
    "TRAIN_THREADS",
    "TrainReport",
    "TrainingBudgetExceeded",
    "batches_per_epoch",
    "cpu_signature",
    "gene_medians_from_counts",
    "recipe_settings",
    "train_demo_models",
    "train_geneformer_demo",
    "train_scgpt_demo",
]


#: The demo recipe, per family: everything a demo model's training depends on except the
#: data and the seed, with the training length as a number of optimiser ``steps``. The
#: shipped demo models (:data:`DEMO_TRAINING` ``"full"``) and the acceptance test
#: (``tests/test_train.py``, 1,200 cells × 40 genes) train with it; only ``epochs``
#: differs, set by :func:`recipe_settings` so that both take about ``steps`` steps. How it
#: was chosen and what it achieved: ``docs/validation/demo-models.md``.
DEMO_RECIPE: dict[str, dict[str, Any]] = {
    "scgpt": {
        "d_model": 16,
        "n_layers": 4,
        "n_heads": 4,
        "d_hid": 32,
        "n_bins": 11,
        "train_seq_len": 128,
        "batch_size": 16,
        "lr": 2e-3,
        "mask_ratio": 0.6,
        "steps": 5440,
    },
    "geneformer": {
        "hidden_size": 64,
        "n_layers": 2,
        "n_heads": 4,
        "intermediate_size": 128,
        "batch_size": 16,
        "lr": 2e-3,
        "mask_ratio": 0.15,
        "steps": 4080,
    },
}


def batches_per_epoch(n_cells: int, batch_size: int) -> int:
    """Optimiser steps in one epoch over a dataset of ``n_cells`` cells: the training cells
    left after the held-out evaluation cells, in the batches :func:`_fit` counts."""
    n_train = len(_holdout(n_cells, 0)[0])  # the held-out count does not depend on the seed
    return _steps_per_epoch(n_train, batch_size)


def recipe_settings(family: str, n_cells: int, *, steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``train_<family>_demo`` that apply :data:`DEMO_RECIPE` to a
    dataset of ``n_cells`` cells: the recipe with ``epochs`` = the number of whole epochs
    closest to its ``steps`` (or ``steps`` given here), at least one."""
    if family not in DEMO_RECIPE:
        raise ValueError(f"family must be one of {sorted(DEMO_RECIPE)}, got {family!r}")
    kw = dict(DEMO_RECIPE[family])
    recipe_steps = kw.pop("steps")
    target = recipe_steps if steps is None else steps
    kw["epochs"] = max(1, round(target / batches_per_epoch(n_cells, kw["batch_size"])))
    return kw


#: Settings of the demo models per benchmark size (``"quick"`` for ``--quick``): the
#: recipe, with epochs for the demo benchmark (3,000 cells) and, for ``--quick``, a
#: shorter run on the quick benchmark (1,200 cells; not certified by the acceptance test).
#: Fixed step counts, no time budget (results must not depend on machine load).
DEMO_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "full": {family: recipe_settings(family, 3000) for family in DEMO_RECIPE},
    "quick": {
        "scgpt": recipe_settings("scgpt", 1200, steps=816),
        "geneformer": recipe_settings("geneformer", 1200, steps=544),
    },
}


def train_demo_models(
    adata,
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Path]:
    """Train the demo scGPT and Geneformer models on all cells of ``adata`` into
    ``out_dir/scgpt_demo`` and ``out_dir/geneformer_demo``; returns family → folder.

    Settings: :data:`DEMO_TRAINING` (``quick`` for the quick benchmark). Each folder holds
    the family's real checkpoint layout and a ``train_log.json``.
    """
    out_dir = Path(out_dir)
    cfg = DEMO_TRAINING["quick" if quick else "full"]
    scgpt = train_scgpt_demo(
        adata, out_dir / "scgpt_demo", seed=seed, progress=progress, **cfg["scgpt"]
    )
    geneformer = train_geneformer_demo(
        adata, out_dir / "geneformer_demo", seed=seed, progress=progress, **cfg["geneformer"]
    )
    return {"scgpt": scgpt.path, "geneformer": geneformer.path}
