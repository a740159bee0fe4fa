"""A third model family in the smallest form the adapter protocol allows (the worked
example of ``docs/adding-a-model.md``; ``tests/test_skeleton_family.py`` checks it).

Checkpoint: a folder with ``skeleton.json`` (architecture and the gene vocabulary) and
``weights.pt`` (a state dict of :class:`SkeletonModule`). Tokenization: ``<cls>`` then the
cell's non-zero vocabulary genes ranked by count (ties in ``var`` order), values
``log1p(count)``. Forward: token embedding + value embedding, then the shared
``encoder_layer`` per layer (every hook site exists), cell embedding = ``<cls>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from scfm_audit.models import MODEL_FAMILIES, CheckpointError
from scfm_audit.models._base import (
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
)
from scfm_audit.models._hooks import HookContext
from scfm_audit.models._transformer import LayerWeights, encoder_layer

CONFIG_FILE, WEIGHTS_FILE = "skeleton.json", "weights.pt"
PAD, CLS = 0, 1  # gene g of the vocabulary is token g + 2


# -- _modules.py: the model with the checkpoint's own parameter names ----------------------
class SkeletonLayer(nn.Module):
    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)


class SkeletonModule(nn.Module):
    def __init__(self, n_genes: int, n_layers: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_genes + 2, d_model, padding_idx=PAD)
        self.value = nn.Linear(1, d_model)
        self.layers = nn.ModuleList(SkeletonLayer(d_model, d_ff) for _ in range(n_layers))

    def layer_weights(self, i: int, n_heads: int) -> LayerWeights:
        """Canonical names for layer ``i`` (what lets the shared layer run it)."""
        m = self.layers[i]
        return LayerWeights(
            q_w=m.q.weight,
            q_b=m.q.bias,
            k_w=m.k.weight,
            k_b=m.k.bias,
            v_w=m.v.weight,
            v_b=m.v.bias,
            o_w=m.o.weight,
            o_b=m.o.bias,
            ln1_w=m.ln1.weight,
            ln1_b=m.ln1.bias,
            ff1_w=m.ff1.weight,
            ff1_b=m.ff1.bias,
            ff2_w=m.ff2.weight,
            ff2_b=m.ff2.bias,
            ln2_w=m.ln2.weight,
            ln2_b=m.ln2.bias,
            n_heads=n_heads,
        )


# -- _build.py: a tiny random checkpoint ---------------------------------------------------
def build_skeleton_checkpoint(
    path, genes, *, n_layers: int = 2, n_heads: int = 2, d_model: int = 16, seed: int = 0
) -> Path:
    config = {
        "genes": [str(g) for g in genes],
        "n_layers": n_layers,
        "n_heads": n_heads,
        "d_model": d_model,
        "d_ff": 2 * d_model,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = SkeletonModule(len(genes), n_layers, d_model, 2 * d_model)
    return _write(Path(path), config, module)


def _write(path: Path, config: dict, module: nn.Module) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config))
    torch.save(module.state_dict(), path / WEIGHTS_FILE)
    return path


# -- _adapter.py: the protocol -------------------------------------------------------------
@MODEL_FAMILIES.register("skeleton")
class SkeletonAdapter(ModelAdapter):
    family = "skeleton"

    def __init__(self, module: SkeletonModule, config: dict, *, name: str, device=None):
        self.module, self.config, self.name = module, dict(config), name
        self.genes = pd.Index(config["genes"])
        self.n_layers, self.n_heads = config["n_layers"], config["n_heads"]
        self.d_model = config["d_model"]
        self.device = default_device(device)
        self.module.to(self.device).eval()
        self._init_hooks()  # the hook sites layers.{L}.attn.pattern, ... exist from here

    @classmethod
    def load(cls, path, *, device=None, name=None) -> SkeletonAdapter:
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path} needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
        config = json.loads((path / CONFIG_FILE).read_text())
        module = SkeletonModule(
            len(config["genes"]), config["n_layers"], config["d_model"], config["d_ff"]
        )
        module.load_state_dict(torch.load(path / WEIGHTS_FILE, weights_only=True), strict=True)
        return cls(module, config, name=name or path.name, device=device)

    def save_pretrained(self, path) -> None:
        _write(Path(path), self.config, self.module)

    def vocabulary_report(self, adata) -> VocabularyReport:
        seen = pd.Index(adata.var_names).isin(self.genes)
        counts = np.asarray(adata.X.sum(axis=0)).ravel()
        return VocabularyReport(
            model=self.name,
            n_genes=adata.n_vars,
            n_in_vocab=int(seen.sum()),
            fraction_genes=float(seen.mean()),
            fraction_counts=float(counts[seen].sum() / max(counts.sum(), 1e-12)),
            missing=list(adata.var_names[~seen]),
        )

    def tokenize(self, adata, cells=None, *, counts: str = "X") -> TokenizedBatch:
        X = adata.X if counts == "X" else adata.layers[counts]
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells, dtype=np.int64)
        rows = X[idx].toarray() if sp.issparse(X) else np.asarray(X[idx])
        vocab = self.genes.get_indexer(pd.Index(adata.var_names))  # var position → gene id
        seqs = []
        for r in rows:
            pos = np.flatnonzero((r > 0) & (vocab >= 0))
            seqs.append(pos[np.argsort(-r[pos], kind="stable")])  # rank by count
        T = 1 + max((len(s) for s in seqs), default=0)
        ids, gidx = np.full((len(idx), T), PAD), np.full((len(idx), T), -1)
        vals, mask = np.zeros((len(idx), T), np.float32), np.zeros((len(idx), T), bool)
        for b, pos in enumerate(seqs):
            n = len(pos) + 1
            ids[b, 0], ids[b, 1:n], gidx[b, 1:n] = CLS, vocab[pos] + 2, pos
            vals[b, 1:n], mask[b, :n] = np.log1p(rows[b, pos]), True
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            gene_index=torch.from_numpy(gidx),
            cell_index=idx,
            values=torch.from_numpy(vals),
        )

    def _forward(
        self,
        batch,
        *,
        return_logits=False,
        start_layer=0,
        hidden=None,
        states=None,
        capture=None,
    ) -> ModelOutput:
        mask = batch.attention_mask.bool()
        if start_layer:
            x = hidden
        else:
            x = self.module.embed(batch.input_ids) + self.module.value(batch.values[..., None])
        ctx = HookContext(attention_mask=mask)
        for L in range(start_layer, self.n_layers):
            if capture is not None and L in capture:
                capture[L] = x
            x = encoder_layer(
                x, self.module.layer_weights(L, self.n_heads), self.hook_points, L, ctx
            )
        return ModelOutput(hidden=x, cell_embedding=x[:, 0], attention_mask=mask)

    def perturb(self, batch, gene, *, mode: Literal["delete", "overexpress"]) -> TokenizedBatch:
        """``delete`` only: the gene's token becomes padding (``gene`` = var position)."""
        if mode != "delete":
            raise ValueError("the skeleton family supports mode='delete' only.")
        keep = batch.gene_index != int(gene)
        return TokenizedBatch(
            input_ids=torch.where(keep, batch.input_ids, PAD),
            attention_mask=batch.attention_mask & keep,
            gene_index=batch.gene_index,
            cell_index=batch.cell_index,
            values=batch.values,
        )
