"""The model's own cell embeddings (what CSSI stratifies on, as in the paper)."""

from __future__ import annotations

import numpy as np


def cell_embeddings(
    adapter, adata, *, cells=None, batch_size: int = 32, counts: str = "X"
) -> np.ndarray:
    """(n_cells × d_model) float64 cell embeddings of ``cells`` (obs positions; all when
    None), in that order: the family's own embedding from :class:`ModelOutput`
    (scGPT: the ``<cls>`` position; Geneformer: mean over gene tokens)."""
    idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
    out = [
        adapter.forward(batch).cell_embedding.float().cpu().numpy()
        for batch in adapter.iter_batches(adata, batch_size=batch_size, cells=idx, counts=counts)
    ]
    if not out:
        return np.zeros((0, adapter.d_model))
    return np.concatenate(out).astype(np.float64)
