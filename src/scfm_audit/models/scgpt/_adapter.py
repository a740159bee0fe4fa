"""scGPT behind the shared adapter protocol: scGPT's own tokenization, a hooked forward,
in-silico perturbation.

Tokenization as ``scgpt/tasks/cell_emb.py`` + ``scgpt/data_collator.py`` (inference):
genes matched by symbol and the data subset to in-vocabulary genes; per cell the non-zero
genes in ``var`` order, values binned per cell over those non-zero values
(``preprocess.binning`` / ``_digitize``: ``n_bins - 1`` quantile edges, ties spread at
random), ``<cls>`` prepended with value ``pad_value``, cells longer than ``max_length``
randomly sub-sampled (``<cls>`` kept, order permuted), padded with ``<pad>`` /
``pad_value`` to the longest cell of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scfm_audit.models._base import (
    MODEL_FAMILIES,
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
)
from scfm_audit.models._device import BatchSize, ForwardDtype
from scfm_audit.models.scgpt._checkpoint import (
    SPECIAL_TOKENS,
    Layout,
    read_checkpoint,
    to_layout,
    write_checkpoint,
)
from scfm_audit.models.scgpt._modules import ScGPTModule

NORMALIZE_TARGET = 1e4  # Preprocessor(normalize_total=1e4)

ValueTransform = Literal["raw", "log1p", "normalize_total"]
Truncation = Literal["sample", "first"]


def bin_expression(
    values: np.ndarray, n_bins: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """scGPT's per-cell value binning of the non-zero values of one cell.

    ``preprocess.binning`` / ``_digitize``: ``n_bins - 1`` edges at evenly spaced quantiles
    of the cell's values; a value's bin is the number of edges ≤ it; a value that equals
    one or more edges (ties, e.g. many genes with count 1) gets a uniformly random bin
    among those edges (upstream draws from the global ``np.random``; here from ``rng``).
    Bins run 1..n_bins-1 (0 is reserved for zero expression). ``values`` must be
    non-zero; upstream bins float32 values, so callers should pass float32.
    """
    x = np.asarray(values)
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng() if rng is None else rng
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(x, edges)  # edges <= x
    right = np.digitize(x, edges, right=True)  # edges < x
    return np.ceil(rng.random(x.size) * (right - left) + left).astype(np.int64)


def _rows(adata, cells: np.ndarray, counts: str):
    if counts == "X":
        X = adata.X
        if X is None:
            raise ValueError("adata.X is empty; pass counts=<layer name>.")
    elif counts in adata.layers:
        X = adata.layers[counts]
    else:
        raise ValueError(
            f"counts layer {counts!r} not found; available: 'X', "
            f"{', '.join(map(repr, adata.layers.keys())) or '(no layers)'}."
        )
    if adata.isbacked and counts == "X":
        order = np.argsort(cells, kind="stable")
        block = X[cells[order]]
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        X = block[inv]
    else:
        X = X[cells]
    return sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)


# ---------------------------------------------------------------------------------------
# the adapter


@MODEL_FAMILIES.register("scgpt")
class ScGPTAdapter(ModelAdapter):
    """scGPT behind the shared adapter protocol.

    Tokenizer options (recorded in :meth:`describe`):

    ``value_transform``
        what is binned: ``"raw"`` counts (default; scGPT's own ``tasks.embed_data`` and its
        pretraining collator bin the raw non-zero counts), ``"log1p"``
        (``normalize_total(1e4)`` then ``log1p``, as the fine-tuning / attention-GRN
        tutorials' ``Preprocessor``), or ``"normalize_total"``. Binning is a per-cell
        quantile transform, so per-cell scaling does not change bins; log1p only moves
        values that sit exactly between quantile edges.
    ``include_zero_genes``
        False (default, ``embed_data``): only non-zero genes; True: every in-vocabulary
        gene, zeros with value 0 (``tokenize_and_pad_batch(include_zero_gene=True)`` as in
        the GRN tutorial).
    ``max_seq_len``
        maximal length including ``<cls>`` (default args.json ``max_seq_len``, the length
        the model was trained at; ``embed_data`` uses 1200, the same for scGPT_human).
    ``truncation``
        ``"sample"`` (upstream: a random subset in random order, ``<cls>`` kept) or
        ``"first"`` (the first genes in ``var`` order).
    ``cls_value``
        value of the ``<cls>`` token: None → args.json ``pad_value`` (pretraining and
        ``embed_data``); the fine-tuning tutorials use 0.
    ``seed``
        seeds the binning tie-breaks and the sampling, per cell
        (``np.random.default_rng((seed, obs_position))``): a cell's tokens do not depend on
        the batch it is in.
    ``gene_symbol_column``
        ``var`` column holding gene symbols (default ``var_names``).

    Numerics (not tokenizer options): ``dtype`` the forward dtype (``"float32"`` default,
    ``"bfloat16"``, ``"float16"``: the weights are cast once and every forward pass runs
    in it); ``batch_size`` the default cells per attention-extraction batch (an integer
    or ``"auto"``: from free device memory).
    """

    family = "scgpt"

    def __init__(
        self,
        module: ScGPTModule,
        vocab: Mapping[str, int],
        args: Mapping[str, Any],
        *,
        name: str = "scgpt",
        device: str | torch.device | None = None,
        layout: Layout = "torch",
        value_transform: ValueTransform = "raw",
        include_zero_genes: bool = False,
        max_seq_len: int | None = None,
        truncation: Truncation = "sample",
        cls_value: float | None = None,
        seed: int = 0,
        gene_symbol_column: str | None = None,
        dtype: ForwardDtype = "float32",
        batch_size: BatchSize | None = None,
    ) -> None:
        self.module = module
        self.vocab = dict(vocab)
        self.args = dict(args)
        self.name = name
        self.layout = layout
        c = module.config
        self.n_layers, self.n_heads, self.d_model = c.nlayers, c.nhead, c.d_model
        self.d_ff = c.d_hid
        self.device = default_device(device)
        self.module.to(self.device).eval()
        self._set_numerics(dtype, batch_size)
        self.value_transform = value_transform
        self.include_zero_genes = include_zero_genes
        self.max_seq_len = int(max_seq_len or self.args.get("max_seq_len", 1200))
        self.truncation = truncation
        self.cls_value = cls_value
        self.seed = seed
        self.gene_symbol_column = gene_symbol_column
        self.pad_token = str(self.args.get("pad_token", "<pad>"))
        self.n_bins = int(self.args.get("n_bins", 51))
        self._var_cache: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._check_options()
        self._init_hooks()

    # -- construction ----------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        name: str | None = None,
        **options: Any,
    ) -> ScGPTAdapter:
        """Load a scGPT checkpoint folder (``args.json``, ``vocab.json``, ``best_model.pt``;
        plain or flash-attention state dict). ``options`` are the tokenizer options of the
        class docstring. Raises :class:`CheckpointError` naming the file, key or shape at
        fault."""
        path = Path(path)
        module, vocab, args, layout = read_checkpoint(path)
        return cls(
            module, vocab, args, name=name or path.name, device=device, layout=layout, **options
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``args.json``, ``vocab.json`` and ``best_model.pt`` in the layout the
        checkpoint was loaded from (``Wqkv`` keys for flash checkpoints)."""
        state = {to_layout(k, self.layout): v for k, v in self.module.state_dict().items()}
        write_checkpoint(path, self.args, self.vocab, state)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            layout=self.layout,
            n_bins=self.n_bins,
            input_style=self.args.get("input_style", "binned"),
            input_emb_style=self.module.config.input_emb_style,
            value_transform=self.value_transform,
            include_zero_genes=self.include_zero_genes,
            max_seq_len=self.max_seq_len,
            truncation=self.truncation,
            cls_value=self._cls_value,
            seed=self.seed,
            gene_symbol_column=self.gene_symbol_column,
        )
        return d

    # -- data --------------------------------------------------------------------------
    def _check_options(self) -> None:
        if self.value_transform not in ("raw", "log1p", "normalize_total"):
            raise ValueError(
                f"value_transform must be 'raw', 'log1p' or 'normalize_total', "
                f"got {self.value_transform!r}"
            )
        if self.truncation not in ("sample", "first"):
            raise ValueError(f"truncation must be 'sample' or 'first', got {self.truncation!r}")
        if self.max_seq_len < 2:
            raise ValueError(
                f"max_seq_len must be at least 2 (<cls> + one gene), got {self.max_seq_len}"
            )

    @property
    def _cls_value(self) -> float:
        return float(self.module.config.pad_value if self.cls_value is None else self.cls_value)

    def _symbols(self, adata) -> pd.Index:
        col = self.gene_symbol_column
        if col is None:
            return pd.Index(adata.var_names)
        if col not in adata.var.columns:
            raise ValueError(
                f"gene_symbol_column {col!r} is not a column of adata.var "
                f"(columns: {', '.join(map(str, adata.var.columns)) or 'none'})."
            )
        return pd.Index(adata.var[col].astype(str))

    def _var_token_ids(self, adata) -> np.ndarray:
        """Token id of every ``var`` gene (-1 outside the vocabulary or a special token)."""
        key = (
            adata.var_names if self.gene_symbol_column is None else adata.var,
            self.gene_symbol_column,
        )
        c = self._var_cache
        if c is not None and c[0][0] is key[0] and c[0][1] == key[1]:
            ids = c[2]
        else:
            syms = self._symbols(adata)
            ids = np.fromiter(
                (-1 if s in SPECIAL_TOKENS else self.vocab.get(s, -1) for s in syms),
                dtype=np.int64,
                count=len(syms),
            )
            self._var_cache = (key, np.asarray(syms, dtype=object), ids)
        return ids

    def vocabulary_report(self, adata, *, counts: str = "X") -> VocabularyReport:
        """Genes of ``adata`` in the vocabulary and the share of all counts they carry."""
        ids = self._var_token_ids(adata)
        inv = ids >= 0
        tot = np.zeros(adata.n_vars)
        for start in range(0, adata.n_obs, 10_000):
            X = _rows(adata, np.arange(start, min(start + 10_000, adata.n_obs)), counts)
            tot += np.asarray(X.sum(axis=0)).ravel()
        total = float(tot.sum())
        syms = self._symbols(adata)
        return VocabularyReport(
            model=self.name,
            n_genes=int(adata.n_vars),
            n_in_vocab=int(inv.sum()),
            fraction_genes=float(inv.mean()) if adata.n_vars else 0.0,
            fraction_counts=float(tot[inv].sum() / total) if total > 0 else 0.0,
            missing=[str(s) for s in syms[~inv]],
        )

    def token_counts(self, adata, cells: np.ndarray, *, counts: str = "X") -> np.ndarray:
        """Tokens :meth:`tokenize` gives each cell (``<cls>`` included): 1 + its non-zero
        in-vocabulary genes (every in-vocabulary gene with ``include_zero_genes``), at most
        ``max_seq_len`` — counted from the count matrix, without binning."""
        self._check_options()
        idx = np.asarray(cells, dtype=np.int64)
        var_pos = np.flatnonzero(self._var_token_ids(adata) >= 0)
        if self.include_zero_genes:
            n = np.full(idx.size, var_pos.size, dtype=np.int64)
        else:
            n = np.zeros(idx.size, dtype=np.int64)
            for start in range(0, idx.size, 4096):
                X = _rows(adata, idx[start : start + 4096], counts)[:, var_pos]
                nz = (X != 0).sum(axis=1)
                n[start : start + 4096] = np.asarray(nz).ravel()
        return 1 + np.minimum(n, self.max_seq_len - 1)

    def tokenize(
        self, adata, cells: np.ndarray | None = None, *, counts: str = "X"
    ) -> TokenizedBatch:
        """Tokenize cells as scGPT's inference pipeline does (class docstring).

        Returns ``input_ids`` (B, T) with ``<cls>`` first, ``values`` (B, T) binned values
        (``<cls>``: ``cls_value``; padding: ``pad_value``), ``attention_mask`` (B, T),
        ``gene_index`` (B, T) positions in ``adata.var_names`` (-1 for ``<cls>``/pad);
        T = the longest cell of the batch, at most ``max_seq_len``.
        """
        self._check_options()
        cells = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
        if cells.dtype == bool:
            cells = np.flatnonzero(cells)
        cells = cells.astype(np.int64)
        if cells.size and (cells.min() < 0 or cells.max() >= adata.n_obs):
            raise ValueError(f"cell positions must lie in [0, {adata.n_obs})")
        var_ids = self._var_token_ids(adata)
        var_pos = np.flatnonzero(var_ids >= 0)
        if var_pos.size == 0:
            raise ValueError(
                "none of the dataset's genes is in the scGPT vocabulary; scGPT matches gene "
                "symbols: check var_names or set gene_symbol_column."
            )
        tok_ids = var_ids[var_pos]
        X = _rows(adata, cells, counts)[:, var_pos]  # embed_data: in-vocab genes only
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            X.sort_indices()
        binned = str(self.args.get("input_style", "binned")) == "binned"
        cls_id, pad_id = self.vocab["<cls>"], self.vocab[self.pad_token]
        L = self.max_seq_len
        seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for r, cell in enumerate(cells):
            if sp.issparse(X):
                lo, hi = X.indptr[r], X.indptr[r + 1]
                nz, x = X.indices[lo:hi], np.asarray(X.data[lo:hi], dtype=np.float64)
            else:
                x = np.asarray(X[r], dtype=np.float64)
                nz = np.arange(x.size)
            nz, x = nz[x != 0], x[x != 0]  # np.nonzero(row) in var order
            rng = np.random.default_rng((self.seed, int(cell)))
            if self.value_transform != "raw" and x.size:
                x = x / x.sum() * NORMALIZE_TARGET
                if self.value_transform == "log1p":
                    x = np.log1p(x)
            x = x.astype(np.float32)  # upstream bins float32 tensors
            v = bin_expression(x, self.n_bins, rng).astype(np.float32) if binned else x
            vals = np.zeros(var_pos.size, dtype=np.float32)  # zero genes: value 0
            vals[nz] = v
            keep = np.arange(var_pos.size) if self.include_zero_genes else nz
            if keep.size > L - 1:
                if self.truncation == "sample":  # DataCollator._sample: randperm, <cls> kept
                    keep = keep[rng.permutation(keep.size)[: L - 1]]
                else:
                    keep = keep[: L - 1]
            seqs.append((tok_ids[keep], vals[keep], var_pos[keep]))
        T = 1 + max((s[0].size for s in seqs), default=0)
        B = len(seqs)
        ids = np.full((B, T), pad_id, dtype=np.int64)
        values = np.full((B, T), self.module.config.pad_value, dtype=np.float32)
        gidx = np.full((B, T), -1, dtype=np.int64)
        mask = np.zeros((B, T), dtype=bool)
        for b, (t, v, g) in enumerate(seqs):
            n = t.size + 1
            ids[b, 0], values[b, 0], mask[b, :n] = cls_id, self._cls_value, True
            ids[b, 1:n], values[b, 1:n], gidx[b, 1:n] = t, v, g
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            gene_index=torch.from_numpy(gidx),
            cell_index=cells,
            values=torch.from_numpy(values),
        )

    # -- model -------------------------------------------------------------------------
    def embed(self, batch: TokenizedBatch) -> torch.Tensor:
        """Input of the first encoder layer (B, T, D) (differentiable)."""
        batch = batch.to(self.device)
        return self.module.embed(batch.input_ids, batch.value_tensor())

    def _forward(
        self,
        batch: TokenizedBatch,
        *,
        return_logits: bool = False,
        start_layer: int = 0,
        hidden: torch.Tensor | None = None,
        states: Mapping[int, torch.Tensor] | None = None,
        capture: dict[int, torch.Tensor] | None = None,
    ) -> ModelOutput:
        if batch.values is None:
            raise ValueError("scGPT needs token values (TokenizedBatch.values is None)")
        out = self.module(
            batch.input_ids,
            batch.values,
            batch.attention_mask,
            hook_points=self.hook_points,
            start_layer=start_layer,
            hidden=hidden,
            capture=capture,
        )
        return ModelOutput(
            hidden=out["hidden"],
            cell_embedding=out["cell_emb"],
            attention_mask=batch.attention_mask.bool(),
            gene_predictions=out["pred"],
        )

    # -- interventions -------------------------------------------------------------------
    def _resolve_gene(self, batch: TokenizedBatch, gene: str | int) -> tuple[int, int]:
        """(token id, var position or -1) of ``gene`` (a symbol or a dataset gene index)."""
        ids, gidx = batch.input_ids.cpu(), batch.gene_index.cpu()
        cache = self._var_cache
        if isinstance(gene, str):
            if gene not in self.vocab or gene in SPECIAL_TOKENS:
                raise ValueError(f"gene {gene!r} is not in the scGPT vocabulary")
            tok = self.vocab[gene]
            hit = gidx[ids == tok]
            if hit.numel():
                return tok, int(hit[0])
            if cache is not None:
                found = np.flatnonzero(cache[1] == gene)
                if found.size:
                    return tok, int(found[0])
            return tok, -1
        pos = int(gene)
        hit = ids[gidx == pos]
        if hit.numel():
            return int(hit[0]), pos
        if cache is not None and 0 <= pos < cache[2].size and cache[2][pos] >= 0:
            return int(cache[2][pos]), pos
        raise ValueError(
            f"dataset gene index {pos} is not in this batch and cannot be mapped to a token "
            "(tokenize the dataset first, or pass the gene symbol)."
        )

    def perturb(
        self,
        batch: TokenizedBatch,
        gene: str | int,
        *,
        mode: Literal["delete", "overexpress"],
    ) -> TokenizedBatch:
        """In-silico perturbation of ``gene`` in every cell of ``batch`` (a new batch).

        ``delete``: its token is removed, later tokens shift left, the row is re-padded
        (``<pad>``, ``pad_value``). ``overexpress``: its value is set to the top bin
        ``n_bins - 1``; in cells where it has no token (not expressed, or not sampled) the
        token is appended after the cell's last real token (the sequence grows by one
        column when a full row needs it; scGPT has no positional encoding).
        """
        if mode not in ("delete", "overexpress"):
            raise ValueError(f"mode must be 'delete' or 'overexpress', got {mode!r}")
        tok, pos = self._resolve_gene(batch, gene)
        dev = batch.input_ids.device
        ids = batch.input_ids.cpu().numpy().copy()
        vals = batch.value_tensor().cpu().numpy().copy()
        gidx = batch.gene_index.cpu().numpy().copy()
        mask = batch.attention_mask.cpu().numpy().astype(bool).copy()
        pad_id, pad_val = self.vocab[self.pad_token], self.module.config.pad_value
        hit = (ids == tok) & mask
        hit[:, 0] = False  # never the <cls> position
        if mode == "delete":
            keep = ~hit
            for b in np.flatnonzero(hit.any(axis=1)):
                k = np.flatnonzero(keep[b])
                n = k.size
                for arr, fill in ((ids, pad_id), (vals, pad_val), (gidx, -1), (mask, False)):
                    row = arr[b, k].copy()
                    arr[b, :] = fill
                    arr[b, :n] = row
        else:
            top = float(self.n_bins - 1)
            vals[hit] = top
            absent = np.flatnonzero(~hit.any(axis=1))
            lens = mask.sum(axis=1)
            if absent.size and (lens[absent] >= ids.shape[1]).any():
                B = ids.shape[0]
                ids = np.concatenate([ids, np.full((B, 1), pad_id, ids.dtype)], axis=1)
                vals = np.concatenate([vals, np.full((B, 1), pad_val, vals.dtype)], axis=1)
                gidx = np.concatenate([gidx, np.full((B, 1), -1, gidx.dtype)], axis=1)
                mask = np.concatenate([mask, np.zeros((B, 1), bool)], axis=1)
            for b in absent:
                n = lens[b]
                ids[b, n], vals[b, n], gidx[b, n], mask[b, n] = tok, top, pos, True
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids).to(dev),
            attention_mask=torch.from_numpy(mask).to(dev),
            gene_index=torch.from_numpy(gidx).to(dev),
            cell_index=batch.cell_index,
            values=torch.from_numpy(vals).to(dev),
        )
