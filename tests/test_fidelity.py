"""The adapters' outputs on the tests' real-format checkpoints are bitwise those stored in
``tests/data/model_fidelity.npz`` (made before the model families became packages; see
``tests/_fidelity.py``). A refactoring of ``models/`` must not change a single bit of the
tokens, the forward outputs, the attention patterns, the interventions, the in-silico
perturbations or the attention edges."""

from __future__ import annotations

import numpy as np
import pytest

from _fidelity import STORED, compute


@pytest.fixture(scope="module")
def recomputed() -> dict[str, np.ndarray]:
    return compute()


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    with np.load(STORED) as f:
        return {k: f[k] for k in f.files}


def test_same_arrays_are_recorded(recomputed, stored):
    assert sorted(recomputed) == sorted(stored)
    families = {k.split("/")[0] for k in stored}
    assert families == {
        "scgpt_torch",
        "scgpt_flash",
        "scgpt_options",
        "geneformer_V1",
        "geneformer_V2",
    }


@pytest.mark.parametrize(
    "checkpoint",
    ["scgpt_torch", "scgpt_flash", "scgpt_options", "geneformer_V1", "geneformer_V2"],
)
def test_outputs_are_bitwise_unchanged(recomputed, stored, checkpoint):
    keys = sorted(k for k in stored if k.startswith(checkpoint + "/"))
    assert len(keys) >= 25
    changed = [
        k
        for k in keys
        if recomputed[k].dtype != stored[k].dtype
        or not np.array_equal(recomputed[k], stored[k], equal_nan=True)
    ]
    assert not changed, f"outputs differ from the stored ones: {changed}"


def test_interventions_and_perturbations_change_the_outputs(stored):
    """The stored cases are not degenerate: each intervention moves the hidden states."""
    for ckpt in ("scgpt_torch", "geneformer_V2"):
        base = stored[f"{ckpt}/forward/hidden"]
        for case in ("zero_heads", "uniform_head", "zero_mlp", "cached_from_1"):
            assert not np.array_equal(stored[f"{ckpt}/{case}/hidden"], base), (ckpt, case)
        # the flash key layout loads the very same weights as the torch layout
    np.testing.assert_array_equal(
        stored["scgpt_flash/forward/hidden"], stored["scgpt_torch/forward/hidden"]
    )
