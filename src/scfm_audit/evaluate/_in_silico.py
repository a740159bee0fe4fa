"""In-silico perturbation by the model itself (a kernel of ``in_silico_perturbation`` and
of ``head_ablation``'s readout (b)); its comparison with observed effects is in
:mod:`scfm_audit.evaluate._in_silico_compare` (re-exported here).

:func:`in_silico_effects` knocks down (``delete``: the gene's token removed; only cells
whose input carries it, ``n_cells`` says how many) or overexpresses (``overexpress``:
scGPT top bin, token appended where absent; Geneformer first rank) each perturbed gene
and reads how the model's output moves, the unperturbed pass once per batch. Readouts:

* ``expression`` (a value head, scGPT: ``ModelOutput.gene_predictions``): change of the
  reconstructed expression of each gene (perturbed − baseline, on the model's input-value
  scale) averaged over the cells where the gene has a token before and after. **Signed.**
* ``embedding`` (Geneformer): ``1 − cos(h_g, h'_g)`` of gene g's contextual embedding
  before and after, as Geneformer's ``InSilicoPerturber`` scores genes (``emb_mode``
  gene; reported there as the similarity). **Unsigned**: no up or down.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

    from scfm_audit._typing import ProgressFn
    from scfm_audit.data._dataset import DatasetSpec
    from scfm_audit.models._base import ModelAdapter, TokenizedBatch
    from scfm_audit.models._hooks import HookContext

from scfm_audit.evaluate import _in_silico_compare
from scfm_audit.evaluate._in_silico_compare import *  # noqa: F403  (re-exported)

__all__ = ["in_silico_effects", "perturbable", *_in_silico_compare.__all__]

Mode = Literal["delete", "overexpress"]
Readout = Literal["auto", "expression", "embedding"]

EFFECT_COLUMNS = ["perturbation", "gene", "predicted_shift", "n_cells", "n_cells_gene"]


# ----------------------------------------------------------------------------- effects
def perturbable(
    adapter: ModelAdapter, adata: AnnData, perturbations: Iterable[str]
) -> tuple[list[str], dict[str, str]]:
    """Split ``perturbations`` (labels naming ``var_names``) into those ``adapter`` can
    perturb and the others, with the reason (not a gene of the dataset / not in the
    model's vocabulary). Nothing is dropped silently: the caller reports the second."""
    report = adapter.vocabulary_report(adata)
    missing = set(map(str, report.missing))
    var = pd.Index(adata.var_names).astype(str)
    ok, skipped = [], {}
    for g in dict.fromkeys(map(str, perturbations)):
        if g not in var:
            skipped[g] = "not a gene of the dataset (var_names)"
        elif g in missing:
            skipped[g] = f"not in the vocabulary of {adapter.name}"
        else:
            ok.append(g)
    return ok, skipped


def _take_rows(batch: TokenizedBatch, rows: np.ndarray) -> TokenizedBatch:
    """The cells ``rows`` of a TokenizedBatch, trailing all-padding columns cut."""
    import torch

    from scfm_audit.models._base import TokenizedBatch

    r = np.asarray(rows)
    tr = torch.as_tensor(r, device=batch.input_ids.device)
    mask = batch.attention_mask[tr]
    T = int(mask.sum(1).max().item()) if len(r) else 0
    T = max(T, 1)
    return TokenizedBatch(
        input_ids=batch.input_ids[tr, :T],
        attention_mask=mask[:, :T],
        gene_index=batch.gene_index[tr, :T],
        cell_index=np.asarray(batch.cell_index)[r],
        values=None if batch.values is None else batch.values[tr, :T],
    )


def _positions(batch: TokenizedBatch, n_genes: int) -> np.ndarray:
    """(B, G) token position of each dataset gene in each cell (-1 where absent)."""
    gidx = batch.gene_index.detach().cpu().numpy()
    mask = batch.attention_mask.detach().cpu().numpy().astype(bool)
    pos = np.full((gidx.shape[0], n_genes), -1, dtype=np.int64)
    b, t = np.nonzero(mask & (gidx >= 0))
    pos[b, gidx[b, t]] = t
    return pos


class _Reader:
    """Runs the forward pass and returns the readout tensor of a batch: (B, T) predicted
    values (expression) or (B, T, D) gene embeddings of the chosen layer (embedding)."""

    def __init__(
        self, adapter: ModelAdapter, readout: Readout, embedding_layer: int | None
    ) -> None:
        self.adapter = adapter
        self.readout = readout
        emb = getattr(adapter, "emb_layer", 0) if embedding_layer is None else embedding_layer
        n = adapter.n_layers
        if not -n < int(emb) <= 0:
            raise ValueError(
                f"embedding_layer={emb} must lie in [-{n - 1}, 0] (0: last layer, -1: the "
                "one before, as Geneformer's emb_layer)"
            )
        self.site = None if int(emb) == 0 else f"layers.{n + int(emb) - 1}.resid_post"
        self.embedding_layer = int(emb)

    def __call__(self, batch: TokenizedBatch) -> np.ndarray:
        if self.readout == "expression":
            out = self.adapter.forward(batch)
            if out.gene_predictions is None:
                raise ValueError(
                    f"{self.adapter.name} has no expression read-out (gene_predictions); "
                    "use readout='embedding'."
                )
            values: np.ndarray = out.gene_predictions.detach().float().cpu().numpy()
            return values
        if self.site is None:
            hidden: np.ndarray = self.adapter.forward(batch).hidden.detach().float().cpu().numpy()
            return hidden
        seen: dict[str, torch.Tensor] = {}

        def grab(x: torch.Tensor, *, site: str, ctx: HookContext) -> None:
            seen["x"] = x.detach()

        with self.adapter.hooks({self.site: grab}):
            self.adapter.forward(batch)
        grabbed: np.ndarray = seen["x"].float().cpu().numpy()
        return grabbed


def _shift(
    base: np.ndarray, pert: np.ndarray, pos_b: np.ndarray, pos_p: np.ndarray, signed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: sum over cells of the readout change and the number of cells, over the
    (cell, gene) pairs present before and after."""
    G = pos_b.shape[1]
    b, g = np.nonzero((pos_b >= 0) & (pos_p >= 0))
    if b.size == 0:
        return np.zeros(G), np.zeros(G, dtype=np.int64)
    x0, x1 = base[b, pos_b[b, g]], pert[b, pos_p[b, g]]
    if signed:
        d = x1.astype(np.float64) - x0
    else:
        num = np.sum(x0 * x1, axis=-1, dtype=np.float64)
        den = np.linalg.norm(x0, axis=-1) * np.linalg.norm(x1, axis=-1)
        d = 1.0 - np.divide(num, den, out=np.ones_like(num), where=den > 0)
    return np.bincount(g, weights=d, minlength=G), np.bincount(g, minlength=G)


def in_silico_effects(
    adapter: ModelAdapter,
    adata: AnnData,
    spec: DatasetSpec | None = None,
    *,
    perturbations: Sequence[str],
    cells: np.ndarray,
    mode: Mode = "delete",
    batch_size: int = 32,
    readout: Readout = "auto",
    embedding_layer: int | None = None,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """The model's own in-silico perturbation of each gene of ``perturbations``.

    Inputs: a model ``adapter`` (:class:`~scfm_audit.models.ModelAdapter`), ``adata`` with
    raw counts where ``spec`` says (``spec.counts``; default ``X``), ``perturbations``
    (gene names in ``var_names`` the model can perturb, see :func:`perturbable`),
    ``cells`` (obs positions, e.g. a seeded subsample of control cells), ``mode``
    (``delete`` / ``overexpress``), ``readout`` (``auto``: ``expression`` when the model
    has a value head, else ``embedding``; see the module docstring), ``embedding_layer``
    (embedding readout: 0 last layer, −1 the one before; default the adapter's
    ``emb_layer``), ``progress(iterable, description=, total=)`` (optional).

    Output: long DataFrame, one row per (perturbation, gene of ``var_names``):
    ``predicted_shift`` (mean over the cells where the gene was read before and after;
    NaN where none, e.g. the deleted gene itself), ``n_cells`` (cells perturbed: for
    ``delete`` those whose input carries the gene), ``n_cells_gene`` (cells behind this
    gene's mean). ``attrs`` records mode, readout, ``signed``, embedding layer, model,
    number of cells and batch size.
    """
    if mode not in ("delete", "overexpress"):
        raise ValueError(f"mode must be 'delete' or 'overexpress', got {mode!r}")
    if readout not in ("auto", "expression", "embedding"):
        raise ValueError(f"readout must be 'auto', 'expression' or 'embedding', got {readout!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    counts = getattr(spec, "counts", "X") if spec is not None else "X"
    cells = np.asarray(cells, dtype=np.int64)
    var = pd.Index(adata.var_names).astype(str)
    perts = [str(g) for g in perturbations]
    pos_of = var.get_indexer(pd.Index(perts))
    if (pos_of < 0).any():
        bad = [g for g, i in zip(perts, pos_of) if i < 0]
        raise ValueError(
            f"perturbations not among the dataset's genes: {bad[:10]}; pass var_names "
            "(perturbable() says which labels the model can perturb)."
        )
    G, P = len(var), len(perts)
    sums = np.zeros((P, G))
    counts_g = np.zeros((P, G), dtype=np.int64)
    n_cells = np.zeros(P, dtype=np.int64)
    reader: _Reader | None = None
    batches = list(range(0, len(cells), batch_size))
    steps: Iterable[tuple[int, int]] = ((b, j) for b in batches for j in range(P))
    if progress is not None:
        steps = progress(steps, description=f"in-silico {mode} ({P} genes)", total=len(batches) * P)
    cur: int | None = None
    base = pos_b = np.empty((0, 0))  # set with the first batch (cur is None)
    for start, j in steps:
        if cur != start:  # baseline once per batch, reused for every perturbation
            batch = adapter.tokenize(adata, cells[start : start + batch_size], counts=counts)
            batch = batch.to(adapter.device)
            if reader is None:
                if readout == "auto":
                    probe = adapter.forward(_take_rows(batch, np.arange(min(1, len(batch)))))
                    readout = "expression" if probe.gene_predictions is not None else "embedding"
                reader = _Reader(adapter, readout, embedding_layer)
            base = reader(batch)
            pos_b = _positions(batch, G)
            cur = start
        assert reader is not None  # made with the first batch
        rows = np.arange(len(batch))
        if mode == "delete":
            rows = np.flatnonzero(pos_b[:, pos_of[j]] >= 0)
            if rows.size == 0:
                continue
        sub = batch if rows.size == len(batch) else _take_rows(batch, rows)
        pert = adapter.perturb(sub, int(pos_of[j]), mode=mode)
        s, c = _shift(
            base[rows], reader(pert), pos_b[rows], _positions(pert, G), readout == "expression"
        )
        sums[j] += s
        counts_g[j] += c
        n_cells[j] += rows.size
    if reader is None:
        readout = "expression" if readout == "auto" else readout
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts_g > 0, sums / np.maximum(counts_g, 1), np.nan)
    out = pd.DataFrame(
        {
            "perturbation": np.repeat(np.asarray(perts, dtype=object), G),
            "gene": np.tile(np.asarray(var, dtype=object), P),
            "predicted_shift": mean.ravel(),
            "n_cells": np.repeat(n_cells, G),
            "n_cells_gene": counts_g.ravel(),
        }
    )
    out.attrs.update(
        mode=mode,
        readout=readout,
        signed=readout == "expression",
        embedding_layer=None if reader is None else reader.embedding_layer,
        model=getattr(adapter, "name", None),
        n_cells_total=len(cells),
        batch_size=int(batch_size),
    )
    return out
