"""What the model adapters compute on the tests' real-format checkpoints, as arrays.

:func:`compute` builds tiny scGPT (``torch`` and ``flash`` key layouts, two tokenizer
settings) and Geneformer (V1, V2) checkpoints with fixed seeds, tokenizes a small simulated
dataset, and records the tokens, the forward outputs, every layer's attention pattern,
three head/MLP interventions, two in-silico perturbations, a residual-cache restart and
the attention edges of :func:`scfm_audit.edges.extract_attention_edges`.

``tests/data/model_fidelity.npz`` holds these arrays as they were before the model
families were split into packages; ``tests/test_fidelity.py`` recomputes them and asserts
bitwise equality, so any refactoring of ``models/`` that changes a single bit fails.
Regenerate (only for an intended numeric change) with ``python tests/_fidelity.py``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

STORED = Path(__file__).parent / "data" / "model_fidelity.npz"
N_CELLS = 6
SIM = {
    "n_cells": 40,
    "n_genes": 24,
    "n_tfs": 4,
    "n_perturbations": 3,
    "n_modules": 3,
    "module_size": 6,
    "seed": 3,
}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Reductions split across threads may round differently: pin to one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _np(x: torch.Tensor | None) -> np.ndarray | None:
    return None if x is None else x.detach().cpu().numpy().copy()


def _record(out: dict[str, np.ndarray], prefix: str, model, adata) -> None:
    from scfm_audit.edges import extract_attention_edges
    from scfm_audit.models import ablate_heads, zero_mlp

    cells = np.arange(N_CELLS)
    batch = model.tokenize(adata, cells)
    out[f"{prefix}/input_ids"] = _np(batch.input_ids)
    out[f"{prefix}/attention_mask"] = _np(batch.attention_mask)
    out[f"{prefix}/gene_index"] = _np(batch.gene_index)
    if batch.values is not None:
        out[f"{prefix}/values"] = _np(batch.values)

    def put(tag: str, o) -> None:
        for field in ("hidden", "cell_embedding", "gene_predictions", "logits"):
            v = _np(getattr(o, field))
            if v is not None:
                out[f"{prefix}/{tag}/{field}"] = v

    patterns: dict[str, torch.Tensor] = {}

    def grab(x, *, site, ctx):
        patterns[site] = x.detach().clone()

    logits = model.family == "geneformer"
    with model.hooks({"layers.*.attn.pattern": grab}):
        put("forward", model.forward(batch, return_logits=logits))
    for site, p in sorted(patterns.items()):
        out[f"{prefix}/{site}"] = _np(p[:4])  # four cells keep the file small

    with ablate_heads(model, [(0, 1), (1, 2)], method="zero"):
        put("zero_heads", model.forward(batch, return_logits=logits))
    with ablate_heads(model, ["L1H0"], method="uniform"):
        put("uniform_head", model.forward(batch, return_logits=logits))
    with zero_mlp(model, 0):
        put("zero_mlp", model.forward(batch, return_logits=logits))

    gene = adata.var_names[int(batch.gene_index[0, 2])]
    for mode in ("delete", "overexpress"):
        pert = model.perturb(batch, gene, mode=mode)
        out[f"{prefix}/{mode}/input_ids"] = _np(pert.input_ids)
        put(mode, model.forward(pert, return_logits=logits))

    cache = model.residual_cache(batch, [1], return_logits=logits)
    with ablate_heads(model, [(1, 3)], method="zero"):
        put("cached_from_1", model.forward_cached(cache, 1))

    edges = extract_attention_edges(
        model, adata, cells=cells, layers=[0, 1], per_head=False, batch_size=4, progress=False
    )
    for e in edges:
        out[f"{prefix}/edges/layer{e.layer}"] = np.asarray(e.scores, dtype=np.float64)


def compute() -> dict[str, np.ndarray]:
    """Every recorded array, keyed ``<checkpoint>/<what>``."""
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.models import (
        GeneformerAdapter,
        ScGPTAdapter,
        build_geneformer_checkpoint,
        build_scgpt_checkpoint,
    )

    adata = simulate_perturbseq(**SIM).adata[: 2 * N_CELLS].copy()
    genes = list(adata.var_names)
    ids = [f"ENSG{i:011d}" for i in range(len(genes))]
    adata.var["ensembl_id"] = ids
    medians = {e: 0.5 + (i % 7) / 2 for i, e in enumerate(ids[:-2])}  # last two: no median
    out: dict[str, np.ndarray] = {}
    with _one_thread(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for flash in (False, True):
            path = build_scgpt_checkpoint(root / f"scgpt_{flash}", genes, seed=1, flash=flash)
            model = ScGPTAdapter.load(path, device="cpu")
            _record(out, "scgpt_flash" if flash else "scgpt_torch", model, adata)
        path = build_scgpt_checkpoint(root / "scgpt_opts", genes[2:], seed=2, n_layers=2)
        model = ScGPTAdapter.load(
            path, device="cpu", value_transform="log1p", max_seq_len=9, include_zero_genes=True
        )
        _record(out, "scgpt_options", model, adata)
        for version, seed in (("V1", 4), ("V2", 5)):
            path = build_geneformer_checkpoint(
                root / f"gf_{version}", ids, medians, version=version, seed=seed
            )
            with _quiet():
                model = GeneformerAdapter.load(path, device="cpu")
                _record(out, f"geneformer_{version}", model, adata)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # genes without a median
        yield


if __name__ == "__main__":
    arrays = compute()
    np.savez_compressed(STORED, **arrays)
    print(f"{STORED}: {len(arrays)} arrays, {STORED.stat().st_size / 1024:.0f} KiB")
