"""Residual-stream caching: running layers L.. from the cached state entering L equals the
full forward pass (both families, with and without interventions at or after L), and an
intervention below L is refused rather than silently skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scfm_audit.models import ablate_heads, zero_mlp
from scfm_audit.models._masked import masked_inputs, masked_loss_per_cell
from scfm_audit.models.geneformer import GeneformerAdapter, build_geneformer_checkpoint
from scfm_audit.models.scgpt import ScGPTAdapter, build_scgpt_checkpoint


@pytest.fixture(scope="module")
def adata(tiny_bench):
    return tiny_bench.adata[:24].copy()


@pytest.fixture(scope="module", params=["scgpt", "geneformer"])
def model(request, adata, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    genes = list(adata.var_names)
    if request.param == "scgpt":
        path = build_scgpt_checkpoint(root / "m", genes, n_layers=3, seed=1)
        return ScGPTAdapter.load(path, device="cpu")
    ids = [f"ENSG{i:011d}" for i in range(len(genes))]
    adata.var["ensembl_id"] = ids
    path = build_geneformer_checkpoint(
        root / "m", ids, dict.fromkeys(ids, 1.0), version="V2", n_layers=3, seed=1
    )
    m = GeneformerAdapter.load(path, device="cpu")
    m.emb_layer = -1  # the cell embedding reads a layer below the last: states must carry it
    return m


@pytest.fixture(scope="module")
def masked(model, adata):
    return masked_inputs(model, model.tokenize(adata, np.arange(12)), ratio=0.3, seed=5)


def _close(a, b):
    for f in ("hidden", "cell_embedding", "gene_predictions", "logits"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=f)


def _logits(model) -> bool:
    return model.family == "geneformer"


@pytest.mark.parametrize(
    "make",
    [
        None,
        lambda m: ablate_heads(m, [(1, 0), (2, 3)], method="zero"),
        lambda m: ablate_heads(m, [(1, 2)], method="uniform"),
        lambda m: zero_mlp(m, [2]),
    ],
    ids=["none", "zero", "uniform", "mlp"],
)
def test_forward_from_equals_full_forward(model, masked, make):
    b = masked.batch
    cache = model.residual_cache(b, [0, 1, 2], return_logits=_logits(model))
    full0 = model.forward(b, return_logits=_logits(model))
    _close(cache.output, full0)  # the cached baseline is the baseline
    iv = None if make is None else make(model)
    with iv if iv is not None else torch.no_grad():
        full = model.forward(b, return_logits=_logits(model))
        for L in (1, 2) if iv is None else range(min(iv.layers) + 1):
            out = model.forward_from(
                b, L, cache.hidden_in[L], return_logits=_logits(model), states=cache.hidden_in
            )
            _close(out, full)
            _close(model.forward_cached(cache, L), full)
            np.testing.assert_allclose(
                masked_loss_per_cell(model.forward_cached(cache, L), masked),
                masked_loss_per_cell(full, masked),
                rtol=1e-6,
            )
    if iv is not None:  # the intervention did change the model, so equality is not trivial
        assert not torch.allclose(full.hidden, full0.hidden)


def test_intervention_below_start_is_refused(model, masked):
    cache = model.residual_cache(masked.batch, [2], return_logits=_logits(model))
    with ablate_heads(model, [(0, 1)]), pytest.raises(ValueError, match="skips layers below"):
        model.forward_cached(cache, 2)
    with pytest.raises(ValueError, match="holds layers"):
        model.forward_cached(cache, 1)


def test_masked_loss_is_seeded_and_per_cell(model, masked, adata):
    again = masked_inputs(model, model.tokenize(adata, np.arange(12)), ratio=0.3, seed=5)
    assert torch.equal(again.sel, masked.sel)
    assert masked.sel.any(1).all()
    out = model.forward(masked.batch, return_logits=_logits(model))
    loss = masked_loss_per_cell(out, masked)
    assert loss.shape == (12,) and np.isfinite(loss).all() and (loss >= 0).all()
