"""The masked-modelling readout of a model, per cell: the pretraining objective of each
family evaluated at seeded masked positions (the same positions for every condition, so
that two interventions are compared on identical inputs).

* scGPT (and any family with input values and value predictions): masked-value MSE —
  ``floor(ratio · n)`` gene tokens per cell (never ``<cls>``) get the mask value
  (``SCGPT_MASK_VALUE``, as in pretraining); the loss is the squared error of the
  expression decoder at those positions against the true (binned) values.
* Geneformer: masked-gene cross-entropy — each gene token (never a special token) is
  masked with probability ``ratio`` (at least one per cell) and replaced by ``<mask>``
  (no 80/10/10 random replacement: an evaluation, not training); the loss is the
  cross-entropy of the masked-LM head against the true token at those positions.

:func:`masked_inputs` draws the masks; :func:`masked_loss_per_cell` scores an output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scfm_audit.models._base import ModelOutput, TokenizedBatch

__all__ = ["MaskedBatch", "masked_inputs", "masked_loss_per_cell", "masked_objective"]

SCGPT_MASK_VALUE = -1.0  # args.json "mask_value" (as models/scgpt/_recipe.py)


@dataclass
class MaskedBatch:
    """A batch with masked inputs (``batch``), the masked positions ``sel`` (B, T) and
    the true inputs there (``target``: values or token ids, (B, T))."""

    batch: TokenizedBatch
    sel: torch.Tensor
    target: torch.Tensor
    objective: str


def masked_objective(adapter) -> str:
    """``"masked-gene cross-entropy"`` (Geneformer) or ``"masked-value MSE"``."""
    return (
        "masked-gene cross-entropy"
        if getattr(adapter, "family", "") == "geneformer"
        else "masked-value MSE"
    )


def masked_inputs(adapter, batch: TokenizedBatch, *, ratio: float, seed: int) -> MaskedBatch:
    """Mask ``batch`` for ``adapter``'s objective with a generator seeded by ``seed``."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}.")
    gen = torch.Generator().manual_seed(int(seed))
    ids = batch.input_ids.cpu()
    mask = batch.attention_mask.cpu().bool()
    objective = masked_objective(adapter)
    if objective == "masked-gene cross-entropy":
        mask_id = getattr(adapter, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(f"{adapter.name} has no <mask> token: no masked-gene readout.")
        special = torch.tensor(
            sorted(int(t) for k, t in adapter.token_dictionary.items() if str(k).startswith("<")),
            dtype=ids.dtype,
        )
        cand = mask & ~torch.isin(ids, special)
        sel = (torch.rand(ids.shape, generator=gen) < ratio) & cand
        for b in np.flatnonzero((~sel.any(1) & cand.any(1)).numpy()):  # at least one per cell
            sel[b, int(cand[b].nonzero()[0])] = True
        new = ids.clone()
        new[sel] = int(mask_id)
        masked = TokenizedBatch(
            input_ids=new,
            attention_mask=batch.attention_mask.cpu(),
            gene_index=batch.gene_index.cpu(),
            cell_index=batch.cell_index,
            values=None if batch.values is None else batch.values.cpu(),
        )
        return MaskedBatch(masked, sel, ids.clone(), objective)
    if batch.values is None:
        raise ValueError(f"{adapter.name}: no input values to mask.")
    cand = mask.clone()
    cand[:, 0] = False  # <cls>
    k = torch.floor(cand.sum(1).float() * ratio).long().clamp(min=1)
    r = torch.rand(cand.shape, generator=gen)
    r[~cand] = 2.0
    rank = r.argsort(1).argsort(1)
    sel = (rank < k[:, None]) & cand
    vals = batch.values.cpu().clone()
    target = vals.clone()
    vals[sel] = SCGPT_MASK_VALUE
    masked = TokenizedBatch(
        input_ids=ids,
        attention_mask=batch.attention_mask.cpu(),
        gene_index=batch.gene_index.cpu(),
        cell_index=batch.cell_index,
        values=vals,
    )
    return MaskedBatch(masked, sel, target, objective)


def masked_loss_per_cell(out: ModelOutput, mb: MaskedBatch) -> np.ndarray:
    """Per-cell mean loss at the masked positions (NaN for a cell with none), float64."""
    sel = mb.sel.to(out.hidden.device)
    n = sel.sum(1).to(torch.float64)
    if mb.objective == "masked-gene cross-entropy":
        if out.logits is None:
            raise ValueError("the masked-gene readout needs logits (return_logits=True).")
        logits = out.logits.to(torch.float64)
        tgt = mb.target.to(logits.device).clamp(min=0)
        ce = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # (B, T)
        per = (ce * sel).sum(1) / n
    else:
        if out.gene_predictions is None:
            raise ValueError("the masked-value readout needs value predictions.")
        pred = out.gene_predictions.to(torch.float64)
        err = (pred - mb.target.to(pred.device, torch.float64)) ** 2
        per = (err * sel).sum(1) / n
    per = torch.where(n > 0, per, torch.full_like(per, float("nan")))
    return per.detach().cpu().numpy()
