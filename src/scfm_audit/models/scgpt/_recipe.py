"""The scGPT demo recipe: masked value modelling, as scGPT's pretraining
(``random_mask_value`` + ``masked_mse_loss``), through the shared trainer.

Cells are tokenized by :meth:`ScGPTAdapter.tokenize` (``<cls>`` + the non-zero genes,
per-cell binned values). Each step sees at most ``train_seq_len`` tokens per cell:
``<cls>`` plus a random subset of the genes in random order, as scGPT's
``DataCollator(sampling=True)`` does for cells longer than its ``max_length`` (the saved
``max_seq_len`` still covers every non-zero gene, so the audit sees whole cells; scGPT has
no positional encoding). In every cell ``floor(mask_ratio · n)`` of the ``n`` gene tokens
(never ``<cls>`` or padding) get the input value ``mask_value = -1`` (upstream
``args.json``), and the expression decoder's output at those positions is regressed on
their binned values: MSE over masked positions. The MVC / generative objectives of scGPT's
pretraining are not used (those heads keep their initial weights).

Initialisation (the architecture and parameter shapes are unchanged): the first layer of
the value encoder gets ReLU kinks spread over the bin range (see
:func:`_init_value_encoder`; with the default initialisation bins 5 … 50 embed almost
identically and the model starts blind to values), and the expression decoder's output
bias starts at the mean bin. Both only shorten the start of training.
"""

import tempfile
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from scfm_audit.models._base import TokenizedBatch
from scfm_audit.models._trainer import (
    CELLS_NOTE,
    CLIP_NORM,
    TRAIN_THREADS,
    WARMUP_FRACTION,
    WEIGHT_DECAY,
    TrainReport,
    _check_common,
    _counts,
    _fit,
    _fixed_threads,
    _holdout,
    _n_params,
    _rows,
    now,
)
from scfm_audit.models.scgpt._adapter import ScGPTAdapter
from scfm_audit.models.scgpt._build import build_scgpt_checkpoint

SCGPT_MASK_VALUE = -1.0  # args.json "mask_value"


def _subsample(batch: TokenizedBatch, length: int | None, gen: torch.Generator) -> TokenizedBatch:
    """At most ``length`` tokens per cell: ``<cls>`` plus a random subset of the gene
    tokens in random order (scGPT's ``DataCollator`` with ``sampling=True``)."""
    if length is None or batch.seq_len <= length:
        return batch
    mask = batch.attention_mask
    r = torch.rand(mask.shape, generator=gen)
    r[:, 0] = -1.0  # <cls> stays first
    r[~mask] = 2.0  # padding last
    order = r.argsort(1)[:, :length]
    new_mask = mask.gather(1, order)
    T = int(new_mask.sum(1).max())
    order, new_mask = order[:, :T], new_mask[:, :T]
    return TokenizedBatch(
        input_ids=batch.input_ids.gather(1, order),
        attention_mask=new_mask,
        gene_index=batch.gene_index.gather(1, order),
        cell_index=batch.cell_index,
        values=batch.value_tensor().gather(1, order),
    )


def _scgpt_mask(mask: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Positions to mask: per row ``floor(ratio · n)`` of the ``n`` gene tokens (position 0
    is ``<cls>``), uniformly without replacement (``random_mask_value``)."""
    cand = mask.clone()
    cand[:, 0] = False
    k = torch.floor(cand.sum(1).float() * ratio).long()
    r = torch.rand(cand.shape, generator=gen)
    r[~cand] = 2.0
    rank = r.argsort(1).argsort(1)
    return (rank < k[:, None]) & cand


def _scgpt_loss(adapter, batch: TokenizedBatch, sel: torch.Tensor) -> torch.Tensor:
    """MSE of the expression decoder at the masked positions ``sel``."""
    vals = batch.value_tensor().clone()
    target = vals[sel]
    vals[sel] = SCGPT_MASK_VALUE
    masked = TokenizedBatch(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        gene_index=batch.gene_index,
        cell_index=batch.cell_index,
        values=vals,
    )
    out = adapter._forward(masked.to(adapter.device))
    pred = out.gene_predictions[sel.to(adapter.device)]
    return F.mse_loss(pred, target.to(adapter.device))


def _scgpt_baselines(
    data: TokenizedBatch, train_cells: np.ndarray, eval_batch: TokenizedBatch, sel: torch.Tensor
) -> tuple[float, float]:
    """(chance, per-gene-mean) MSE at the masked evaluation positions ``sel``: every value
    predicted by the mean bin of the training cells' gene tokens, or by that gene's mean
    bin (the global mean for a gene never seen in training)."""
    rows = _rows(data, train_cells)
    real = rows.attention_mask.clone()
    real[:, 0] = False  # <cls>
    g, v = rows.gene_index[real].long(), rows.value_tensor()[real].double()
    overall = float(v.mean())
    n_genes = int(max(int(data.gene_index.max()), 0)) + 1
    total = torch.zeros(n_genes, dtype=torch.float64).index_add_(0, g, v)
    count = torch.zeros(n_genes, dtype=torch.float64).index_add_(0, g, torch.ones_like(v))
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, overall))
    target = eval_batch.value_tensor()[sel].double()
    chance = float(((target - overall) ** 2).mean())
    baseline = float(((target - mean[eval_batch.gene_index[sel].long()]) ** 2).mean())
    return chance, baseline


def _init_value_encoder(module, n_bins: int, gen: torch.Generator) -> None:
    """Spread the kinks of the value encoder's first ReLU layer over the bin range.

    ``ContinuousValueEncoder`` is ``LayerNorm(Linear(ReLU(Linear(x))))`` of the raw bin
    number. With the default initialisation every hidden unit is linear in ``x`` beyond
    ``x ≈ 1``, so after the LayerNorm bins 5 … 50 embed almost identically (cosine
    > 0.99) and training starts blind to expression values. Here unit ``k`` gets
    ``w_k = ±U(0.5, 1.5)`` and ``b_k = −w_k · t_k`` with ``t_k ~ U(−2, n_bins)``: a ReLU
    basis with kinks across the bins. Same architecture and shapes.
    """
    ve = getattr(module, "value_encoder", None)
    lin = getattr(ve, "linear1", None)
    if lin is None:  # category / scaling input styles: nothing to do
        return
    d = lin.weight.shape[0]
    sign = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0)
    w = sign * (0.5 + torch.rand(d, generator=gen))
    t = -2.0 + (n_bins + 2.0) * torch.rand(d, generator=gen)
    with torch.no_grad():
        lin.weight.copy_(w[:, None])
        lin.bias.copy_(-w * t)


def train_scgpt_demo(
    adata,
    out_dir: str | Path,
    *,
    d_model: int = 64,
    n_layers: int = 4,
    n_heads: int = 4,
    d_hid: int = 128,
    n_bins: int = 51,
    max_seq_len: int | None = None,
    train_seq_len: int | None = 128,
    epochs: int = 6,
    batch_size: int = 16,
    lr: float = 2e-3,
    mask_ratio: float = 0.4,
    seed: int = 0,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
) -> TrainReport:
    """Train a fresh scGPT-architecture model on ``adata`` by masked value modelling and
    save it to ``out_dir`` in the real layout (``args.json``, ``vocab.json``,
    ``best_model.pt``) with a ``train_log.json``.

    Parameters
    ----------
    adata
        Raw counts in ``X``; all cells are used. The vocabulary is ``var_names`` (scGPT
        matches gene symbols).
    d_model, n_layers, n_heads, d_hid, n_bins
        Architecture (``args.json`` ``embsize``, ``nlayers``, ``nheads``, ``d_hid``,
        ``n_bins``).
    max_seq_len
        Saved in ``args.json`` (the length the audit tokenizes at); default 1 + the largest
        number of non-zero genes of a cell, so no cell is cut.
    train_seq_len
        Tokens per cell during training (``<cls>`` + a random gene subset, upstream's
        collator sampling); None = whole cells.
    epochs, batch_size, lr, mask_ratio
        Optimisation (see the module docstring); ``mask_ratio`` of the gene tokens of each
        cell get ``mask_value = -1``.
    seed
        Initial weights, cell order, gene sub-samples, masks.
    max_seconds
        Safety budget: training that exceeds it raises :class:`TrainingBudgetExceeded`
        and saves nothing (a budget never changes the result of a run that finishes).
    max_steps
        Stop after this many optimiser steps (the schedule still spans ``epochs``; the
        log records ``complete: false``). For reproducibility checks.
    device
        Where to train (default CPU; the checkpoint is saved from CPU tensors either way).
    progress
        Show a progress bar.
    """
    started = now()
    _check_common(epochs, batch_size, lr, mask_ratio, adata)
    X = _counts(adata)
    nnz = np.diff(X.indptr) if X.has_canonical_format else np.asarray((X != 0).sum(1)).ravel()
    if max_seq_len is None:
        max_seq_len = int(nnz.max()) + 1
    if train_seq_len is not None and train_seq_len < 2:
        raise ValueError(f"train_seq_len must be ≥ 2 (<cls> + one gene), got {train_seq_len}")
    genes = [str(g) for g in adata.var_names]
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ck = build_scgpt_checkpoint(
            Path(tmp) / "init",
            genes,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_hid=d_hid,
            n_bins=n_bins,
            max_seq_len=max_seq_len,
            seed=seed,
        )
        adapter = ScGPTAdapter.load(ck, device=device, name=out_dir.name, seed=seed)
    data = adapter.tokenize(adata)
    lengths = data.attention_mask.sum(1).numpy()
    module = adapter.module
    module.eval()  # no dropout / batch-norm statistics; gradients flow regardless
    gen = torch.Generator().manual_seed(seed)
    _init_value_encoder(module, n_bins, gen)
    real = data.attention_mask.clone()
    real[:, 0] = False
    with torch.no_grad():  # the expression decoder starts at the mean bin
        last = cast(torch.nn.Linear, module.decoder.fc[-1])
        last.bias.fill_(float(data.value_tensor()[real].mean()))

    train_cells, eval_cells, held_out = _holdout(adata.n_obs, seed)
    eval_gen = torch.Generator().manual_seed(seed + 7919)
    eval_batch = _subsample(_rows(data, eval_cells), train_seq_len, eval_gen)
    eval_sel = _scgpt_mask(eval_batch.attention_mask, mask_ratio, eval_gen)
    chance, baseline = _scgpt_baselines(data, train_cells, eval_batch, eval_sel)

    def eval_fn() -> float:
        with torch.no_grad():
            return float(_scgpt_loss(adapter, eval_batch, eval_sel))

    def loss_fn(idx: np.ndarray, g: torch.Generator) -> torch.Tensor:
        b = _subsample(_rows(data, idx), train_seq_len, g)
        return _scgpt_loss(adapter, b, _scgpt_mask(b.attention_mask, mask_ratio, g))

    with torch.random.fork_rng(devices=[]), _fixed_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        fit = _fit(
            name="scGPT (masked values)",
            module=module,
            cells=train_cells,
            lengths=lengths,
            loss_fn=loss_fn,
            eval_fn=eval_fn,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            gen=gen,
            max_seconds=max_seconds,
            max_steps=max_steps,
            progress=progress,
            started=started,
        )
    adapter.args.update(
        data_source="scfm-audit demo (synthetic benchmark, all cells)",
        epochs=fit.epochs,
        lr=lr,
        batch_size=batch_size,
        mask_ratio=mask_ratio,
        training_tasks="mlm",
    )
    adapter.save_pretrained(out_dir)
    report = TrainReport(
        family="scgpt",
        path=out_dir,
        objective="masked value modelling (MSE on masked bins)",
        n_cells=int(adata.n_obs),
        n_genes=len(genes),
        n_params=_n_params(module),
        epochs=fit.epochs,
        steps=fit.steps,
        loss_per_epoch=fit.losses,
        eval_loss_initial=fit.eval_losses[0],
        eval_loss_final=fit.eval_losses[-1],
        seconds=now() - started,
        complete=fit.complete,
        loss_per_step=fit.step_losses,
        eval_loss_per_epoch=fit.eval_losses,
        chance_loss=chance,
        baseline_loss=baseline,
        baseline="per-gene mean bin",
        n_eval_cells=len(eval_cells),
        eval_held_out=held_out,
        params=dict(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_hid=d_hid,
            n_bins=n_bins,
            max_seq_len=max_seq_len,
            train_seq_len=train_seq_len,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            mask_ratio=mask_ratio,
            mask_value=SCGPT_MASK_VALUE,
            seed=seed,
            max_seconds=max_seconds,
            max_steps=max_steps,
            optimizer="AdamW",
            weight_decay=WEIGHT_DECAY,
            clip_norm=CLIP_NORM,
            warmup_fraction=WARMUP_FRACTION,
            schedule="linear warm-up, cosine decay",
            cells=CELLS_NOTE,
            threads=TRAIN_THREADS,
            init="build_scgpt_checkpoint(seed) + value-encoder kinks + decoder bias at "
            "the mean bin",
            device=str(adapter.device),
        ),
        adapter=adapter,
    )
    report.write(out_dir)
    return report
