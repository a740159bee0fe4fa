"""A minimal :class:`ModelAdapter` for tests: no checkpoint format, random weights.

Tokenization: ``<cls>`` followed by the cell's non-zero genes in dataset (``var_names``)
order, truncated to ``max_len`` tokens, right-padded to the longest cell of the batch (or
to ``pad_to``). Token values are ``log1p(count)`` (0 for ``<cls>`` and padding). The
forward pass is a random gene embedding plus value embedding, followed by ``n_layers``
:func:`encoder_layer` calls with random :class:`LayerWeights` — the very function the real
adapters run, so every hook site behaves as in scGPT / Geneformer.

Outputs: ``hidden`` the last layer, ``cell_embedding`` the ``<cls>`` position,
``gene_predictions`` a random linear read-out of every token.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scfm_audit.models._base import (
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
)
from scfm_audit.models._hooks import HookContext
from scfm_audit.models._transformer import LayerWeights, encoder_layer

PAD, CLS = 0, 1


class ToyAdapter(ModelAdapter):
    """Random toy encoder over the gene vocabulary ``genes``."""

    family = "toy"

    def __init__(
        self,
        genes,
        *,
        n_layers: int = 2,
        n_heads: int = 2,
        d_model: int = 16,
        d_ff: int = 32,
        norm_first: bool = False,
        max_len: int | None = None,
        pad_to: int | None = None,
        gain: float = 2.0,
        seed: int = 0,
        device: str | torch.device | None = "cpu",
        name: str = "toy",
    ) -> None:
        if d_model % n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        self.name = name
        self.genes = pd.Index(genes).astype(str)
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model
        self.max_len, self.pad_to = max_len, pad_to
        self.device = default_device(device)
        g = torch.Generator().manual_seed(seed)
        D, F = d_model, d_ff

        def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * scale).to(self.device)

        self.embedding = rnd(len(self.genes) + 2, D)
        self.value_w = rnd(D)
        self.pred_w = rnd(D, scale=1 / math.sqrt(D))
        s = gain / math.sqrt(D)
        self.weights = [
            LayerWeights(
                q_w=rnd(D, D, scale=s),
                q_b=rnd(D, scale=0.1),
                k_w=rnd(D, D, scale=s),
                k_b=rnd(D, scale=0.1),
                v_w=rnd(D, D, scale=s),
                v_b=rnd(D, scale=0.1),
                o_w=rnd(D, D, scale=s),
                o_b=rnd(D, scale=0.1),
                ln1_w=1 + rnd(D, scale=0.1),
                ln1_b=rnd(D, scale=0.1),
                ff1_w=rnd(F, D, scale=1 / math.sqrt(D)),
                ff1_b=rnd(F, scale=0.1),
                ff2_w=rnd(D, F, scale=1 / math.sqrt(F)),
                ff2_b=rnd(D, scale=0.1),
                ln2_w=1 + rnd(D, scale=0.1),
                ln2_b=rnd(D, scale=0.1),
                n_heads=n_heads,
                norm_first=norm_first,
            )
            for _ in range(n_layers)
        ]
        self._init_hooks()

    # -- protocol ------------------------------------------------------------------------
    @classmethod
    def load(cls, path, *, device=None, name=None) -> ToyAdapter:
        state = torch.load(Path(path) / "toy.pt", weights_only=False)
        kw = state["kwargs"]
        return cls(state["genes"], device=device, name=name or kw.pop("name"), **kw)

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(
            {"genes": list(self.genes), "kwargs": {"name": self.name}}, Path(path) / "toy.pt"
        )

    def vocabulary_report(self, adata) -> VocabularyReport:
        ok = pd.Index(adata.var_names).isin(self.genes)
        return VocabularyReport(
            self.name,
            adata.n_vars,
            int(ok.sum()),
            float(ok.mean()),
            1.0,
            list(adata.var_names[~ok]),
        )

    def tokenize(self, adata, cells=None, *, counts: str = "X") -> TokenizedBatch:
        X = adata.X if counts == "X" else adata.layers[counts]
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
        rows = X[idx]
        rows = rows.toarray() if sp.issparse(rows) else np.asarray(rows)
        vocab_id = self.genes.get_indexer(pd.Index(adata.var_names))  # dataset pos → model
        per_cell = []
        for r in rows:
            pos = np.flatnonzero((r != 0) & (vocab_id >= 0))
            if self.max_len is not None:
                pos = pos[: self.max_len - 1]
            per_cell.append(pos)
        T = max(len(p) for p in per_cell) + 1 if per_cell else 1
        if self.pad_to is not None:
            T = max(T, self.pad_to)
        B = len(idx)
        ids = np.full((B, T), PAD, np.int64)
        gidx = np.full((B, T), -1, np.int64)
        vals = np.zeros((B, T), np.float32)
        mask = np.zeros((B, T), bool)
        for b, pos in enumerate(per_cell):
            n = len(pos)
            ids[b, 0], mask[b, : n + 1] = CLS, True
            ids[b, 1 : n + 1] = vocab_id[pos] + 2
            gidx[b, 1 : n + 1] = pos
            vals[b, 1 : n + 1] = np.log1p(rows[b, pos])
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            gene_index=torch.from_numpy(gidx),
            cell_index=idx,
            values=torch.from_numpy(vals),
        )

    def _forward(
        self,
        batch: TokenizedBatch,
        *,
        return_logits: bool = False,
        start_layer: int = 0,
        hidden=None,
        states=None,
        capture=None,
    ) -> ModelOutput:
        if start_layer:
            x = hidden
        else:
            x = self.embedding[batch.input_ids]
            if batch.values is not None:
                x = x + batch.values[..., None] * self.value_w
        ctx = HookContext(attention_mask=batch.attention_mask)
        for L, w in enumerate(self.weights):
            if L < start_layer:
                continue
            if capture is not None and L in capture:
                capture[L] = x
            x = encoder_layer(x, w, self.hook_points, L, ctx)
        return ModelOutput(
            hidden=x,
            cell_embedding=x[:, 0],
            attention_mask=batch.attention_mask,
            gene_predictions=x @ self.pred_w,
        )

    def perturb(
        self, batch: TokenizedBatch, gene, *, mode: Literal["delete", "overexpress"]
    ) -> TokenizedBatch:
        g = int(gene)
        hit = batch.gene_index == g
        if mode == "overexpress":
            vals = batch.values.clone()
            vals[hit] = vals.max()
            return TokenizedBatch(
                batch.input_ids, batch.attention_mask, batch.gene_index, batch.cell_index, vals
            )
        keep = ~hit
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        take = lambda t: torch.gather(t, 1, order)  # noqa: E731
        mask = take(batch.attention_mask & keep)
        gidx = take(torch.where(keep, batch.gene_index, -1))
        ids = take(torch.where(keep, batch.input_ids, PAD))
        vals = take(torch.where(keep, batch.values, 0.0))
        return TokenizedBatch(ids, mask, gidx, batch.cell_index, vals)


def toy_adata(n_cells: int = 12, n_genes: int = 30, *, density: float = 0.4, seed: int = 0):
    """Random sparse counts (every cell has at least two expressed genes)."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    X[:, :2] = np.maximum(X[:, :2], 1)
    X = X.astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )
