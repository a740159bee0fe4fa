"""The demo's shipped checkpoints (package data ``scfm_audit/data/demo_models``).

Training the demo models to the quality the demo needs takes longer than the demo may,
so they are trained once by ``scfm-audit train-demo-models`` and shipped with the command,
seed, settings and file hashes recorded beside them (``PROVENANCE.json``). These tests
check that they are what that record says: the settings are the current ones, the files
are intact and small, both models beat their baselines on held-out cells, and re-training
the first steps from the recorded seed gives the logged losses (tolerance 1e-5 relative,
for other torch builds; on the build that made them the losses are bitwise equal).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from scfm_audit.data._simulate import simulate_perturbseq
from scfm_audit.models._train import (
    DEMO_RECIPE,
    DEMO_TRAINING,
    LOG_FILE,
    batches_per_epoch,
    train_geneformer_demo,
    train_scgpt_demo,
)
from scfm_audit.pipeline._cache import stable_hash
from scfm_audit.pipeline._demo import (
    DEMO_SIMULATION,
    PROVENANCE_FILE,
    demo_models_key,
    ensure_demo_models,
    shipped_demo_models,
)

NAMES = {"scgpt": "scgpt_demo", "geneformer": "geneformer_demo"}
MiB = 2**20


@pytest.fixture(scope="module")
def shipped():
    folder = shipped_demo_models()
    assert folder is not None, "the demo checkpoints are not shipped as package data"
    return folder, json.loads((folder / PROVENANCE_FILE).read_text())


def test_shipped_models_match_the_current_settings(shipped):
    folder, prov = shipped
    seed = prov["seed"]
    assert prov["key"] == stable_hash(demo_models_key(quick=False, seed=seed)), (
        "DEMO_SIMULATION or DEMO_TRAINING changed since the demo models were shipped: "
        f"re-run `{prov['command']}` into src/scfm_audit/data/demo_models"
    )
    assert prov["command"].startswith("scfm-audit train-demo-models")
    assert f"--seed {seed}" in prov["command"] and prov["quick"] is False
    assert prov["simulation"] == DEMO_SIMULATION and prov["training"] == DEMO_TRAINING["full"]
    total = 0
    for rel, meta in prov["files"].items():
        data = (folder / rel).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"]
        total += len(data)
    for name in NAMES.values():
        listed = {r.split("/", 1)[1] for r in prov["files"] if r.startswith(name + "/")}
        assert listed == {f.name for f in (folder / name).iterdir()}
        assert sum(f.stat().st_size for f in (folder / name).iterdir()) < 5 * MiB
    assert total < 20 * MiB


def test_shipped_models_learned(shipped):
    folder, prov = shipped
    for family, name in NAMES.items():
        log = json.loads((folder / name / LOG_FILE).read_text())
        assert log["family"] == family and log["complete"] is True
        assert log["params"]["seed"] == prov["seed"]
        assert log["eval_held_out"] is True
        assert log["eval_loss_final"] < log["baseline_loss"] < log["chance_loss"]
        assert log["learned"] is True and prov["models"][name]["learned"] is True


def test_shipped_models_are_the_certified_recipe(shipped):
    """The shipped demo models were trained with the recipe the acceptance test
    certifies (``tests/test_train.py``): every setting of :data:`DEMO_RECIPE` is in their
    logs, and their number of optimiser steps is the recipe's to within half an epoch."""
    folder, _ = shipped
    for family, name in NAMES.items():
        log = json.loads((folder / name / LOG_FILE).read_text())
        recipe = dict(DEMO_RECIPE[family])
        steps = recipe.pop("steps")
        assert {k: log["params"][k] for k in recipe} == recipe
        per_epoch = batches_per_epoch(log["n_cells"], recipe["batch_size"])
        assert log["steps"] == log["params"]["epochs"] * per_epoch
        assert abs(log["steps"] - steps) <= per_epoch / 2


@pytest.fixture(scope="module")
def demo_bench():
    return simulate_perturbseq(**DEMO_SIMULATION).adata


@pytest.mark.slow
@pytest.mark.parametrize("family", list(NAMES))
def test_first_steps_of_the_shipped_training_reproduce(shipped, demo_bench, tmp_path, family):
    folder, prov = shipped
    log = json.loads((folder / NAMES[family] / LOG_FILE).read_text())
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    rep = fn(
        demo_bench,
        tmp_path / family,
        **prov["training"][family],
        seed=prov["seed"],
        max_steps=3,
        progress=False,
    )
    assert rep.steps == 3 and len(log["loss_per_step"]) == log["steps"] > 3
    assert rep.loss_per_step == pytest.approx(log["loss_per_step"][:3], rel=1e-5)
    assert rep.eval_loss_initial == pytest.approx(log["eval_loss_initial"], rel=1e-5)
    assert rep.baseline_loss == pytest.approx(log["baseline_loss"], rel=1e-9)


class _Trained(Exception):
    pass


def _no_training(*args, **kwargs):
    raise _Trained


def test_demo_uses_the_shipped_models_without_training(shipped, tmp_path, monkeypatch):
    import scfm_audit.models._train as train

    folder, _ = shipped
    monkeypatch.setattr(train, "train_demo_models", _no_training)
    models = ensure_demo_models(tmp_path)
    assert {m["family"] for m in models.values()} == set(NAMES)
    for name, m in models.items():
        for f in (folder / name).iterdir():
            assert (tmp_path / "models" / name / f.name).read_bytes() == f.read_bytes()
        assert m["path"] == str(tmp_path / "models" / name)
    stamp = json.loads((tmp_path / "models" / "demo_models.json").read_text())
    assert stamp["source"] == "shipped"
    assert ensure_demo_models(tmp_path) == models  # reused
    # --retrain, or settings the shipped models were not made with: training is asked for
    with pytest.raises(_Trained):
        ensure_demo_models(tmp_path, retrain=True)
    monkeypatch.setitem(DEMO_TRAINING["full"]["scgpt"], "epochs", 1)
    with pytest.raises(_Trained):
        ensure_demo_models(tmp_path / "other")
