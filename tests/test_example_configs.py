"""``examples/replogle_k562.yaml`` — the paper's K562 design — runs as written on a file of
the real scPerturb layout (a simulated screen stands in for the Replogle data), with real
checkpoint layouts (Geneformer V2 file names, scGPT folder) at the paths it names. Only the
sizes are shrunk for the test (cells, draws, sweep levels); every key the example sets is
otherwise used as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).parents[1] / "examples" / "replogle_k562.yaml"

#: sizes only: what makes the test take seconds instead of hours
SHRINK = {
    "edges": {"max_cells": 120, "n_top_genes": 80},
    "analyses": {
        "perturbation_responders": {
            "sweep_lfc": [0.5],
            "sweep_control_cells": [60, 10000],
            "sweep_hvgs": [60],
            "sweep_reference": [0.5, 60, 60],
            "n_boot": 100,
        },
        "perturbation_prediction": {"n_boot": 100, "cv_folds": 3},
        "incremental_value": {"n_boot": 50, "gbm_max_iter": 10, "n_splits": 3},
        "context_dependence": {"n_boot": 100},
        "in_silico_perturbation": {
            "max_cells": 16,
            "max_perturbations": 4,
            "n_perm": 99,
            "n_perm_max": 0,
            "n_boot": 100,
        },
        "head_specialisation": {"n_boot": 20, "n_perm": 99, "n_perm_max": 0},
        "head_ablation": {
            "ks": [2],
            "n_random": 19,
            "n_random_other": 3,
            "n_cells": 8,
            "n_reference_cells": 8,
            "prediction_cells": 16,
            "in_silico_cells": 8,
            "in_silico_perturbations": 3,
            "n_boot": 50,
            "selection_n_perm": 99,
            "selection_n_perm_max": 0,
            "n_entropy_matched": 2,
        },
    },
}


def _scperturb_screen(path: Path) -> tuple[object, object]:
    """A simulated CRISPRi screen written as scPerturb writes Replogle 2022: raw counts in X,
    symbols in var_names with an ``ensembl_id`` column, obs ``perturbation`` ('control' for
    non-targeting), ``perturbation_type``, ``gem_group``."""
    from scfm_audit.data import simulate_perturbseq

    bench = simulate_perturbseq(
        n_cells=1400,
        n_genes=80,
        n_tfs=12,
        n_perturbations=14,
        module_strength=2.0,
        regulation_strength=1.5,
        seed=3,
    )
    adata = bench.adata.copy()
    obs = adata.obs
    adata.obs = obs.assign(
        perturbation=obs["perturbation"].astype(str).replace("non-targeting", "control"),
        perturbation_type=obs["modality"].astype(str),
        gem_group=obs["donor"].astype(str),
        celltype="K562",
        nperts=(obs["perturbation"].astype(str) != "non-targeting").astype(int),
    )[["perturbation", "perturbation_type", "gem_group", "celltype", "nperts"]]
    path.parent.mkdir(parents=True)
    adata.write_h5ad(path)
    return bench, adata


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    from scfm_audit.models import build_geneformer_checkpoint, build_scgpt_checkpoint

    root = tmp_path_factory.mktemp("replogle")
    cfg = yaml.safe_load(EXAMPLE.read_text())
    bench, adata = _scperturb_screen(root / cfg["datasets"]["k562"]["path"])
    trrust = root / cfg["references"]["trrust"]["path"]
    trrust.parent.mkdir(parents=True)
    e = bench.grn.edges
    mode = e["sign"].map({1: "Activation", -1: "Repression"}).fillna("Unknown")
    trrust.write_text(
        "".join(f"{s}\t{t}\t{m}\t1\n" for s, t, m in zip(e["source"], e["target"], mode))
    )
    build_geneformer_checkpoint(
        root / cfg["models"]["geneformer"]["path"],
        list(adata.var["ensembl_id"]),
        version="V2",
        n_layers=2,
        seed=0,
    )
    build_scgpt_checkpoint(
        root / cfg["models"]["scgpt"]["path"], list(adata.var_names), n_layers=2, seed=0
    )
    shutil.copy(EXAMPLE, root / EXAMPLE.name)
    return root


def test_the_example_validates_as_written(example_folder):
    """The unmodified example, beside files of the real layouts, passes ``validate``."""
    from scfm_audit.pipeline._validate import validate_config

    checks = validate_config(example_folder / EXAMPLE.name)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed


@pytest.mark.slow
def test_the_example_runs_the_paper_design(example_folder):
    """Every analysis of the example runs, and the perturbation claims of both models reach
    the scorecard (answered or n/a with a reason, never silently absent)."""
    from scfm_audit.pipeline import config_from_dict, run_audit

    raw = yaml.safe_load((example_folder / EXAMPLE.name).read_text())
    for e in raw["edges"].values():
        e.update(SHRINK["edges"])
    for name, over in SHRINK["analyses"].items():
        raw["analyses"][name].update(over)
    raw["output"] = str(example_folder / "out")
    run = run_audit(config_from_dict(raw, base=example_folder), quiet=True)
    assert not run.errors, run.errors
    assert set(run.results) == set(raw["analyses"])
    verdicts = run.verdicts()
    claims = " | ".join(verdicts["claim"])
    for model in ("geneformer", "scgpt"):
        assert model in claims
    for analysis in (
        "perturbation_prediction",
        "incremental_value",
        "head_ablation",
        "perturbation_responders",
        "in_silico_perturbation",
    ):
        assert (verdicts["analysis"] == analysis).any(), analysis
