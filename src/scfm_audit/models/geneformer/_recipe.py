"""The Geneformer demo recipe: masked gene modelling (BERT masked-LM, as
``DataCollatorForLanguageModeling``), through the shared trainer.

Cells are rank-value tokenized by :meth:`GeneformerAdapter.tokenize` with gene medians
computed from the data (:func:`~scfm_audit.models._trainer.gene_medians_from_counts`). Each
gene token is selected with probability ``mask_ratio`` (0.15); a selected token becomes
``<mask>`` (80 %), a random gene token (10 %; upstream draws from the whole vocabulary,
specials included) or stays (10 %); cross-entropy of the masked-LM logits at the selected
positions. Full sequences (absolute positions must match the tokenizer's ranks).
"""

import math
import tempfile
from pathlib import Path
from typing import Literal

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
    _fit,
    _fixed_threads,
    _holdout,
    _n_params,
    _rows,
    gene_medians_from_counts,
    now,
)
from scfm_audit.models.geneformer._adapter import GeneformerAdapter
from scfm_audit.models.geneformer._build import build_geneformer_checkpoint
from scfm_audit.models.geneformer._tokenize import var_ids


def _gf_mask(
    ids: torch.Tensor,
    cand: torch.Tensor,
    ratio: float,
    mask_id: int,
    gene_ids: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of the candidate positions: (new input ids, selected positions)."""
    sel = (torch.rand(ids.shape, generator=gen) < ratio) & cand
    u = torch.rand(ids.shape, generator=gen)
    rnd = gene_ids[torch.randint(len(gene_ids), ids.shape, generator=gen)]
    new = ids.clone()
    new[sel & (u < 0.8)] = mask_id
    swap = sel & (u >= 0.8) & (u < 0.9)
    new[swap] = rnd[swap]
    return new, sel


def _gf_baselines(
    data: TokenizedBatch,
    train_cells: np.ndarray,
    eval_batch: TokenizedBatch,
    sel: torch.Tensor,
    gene_tok: torch.Tensor,
) -> tuple[float, float]:
    """(chance, per-rank-frequency) cross-entropy at the masked evaluation positions
    ``sel``: uniform over the ``V`` gene tokens (ln V), or each position's gene frequency
    in the training cells with add-one smoothing over the gene tokens (the context-free
    predictor: it knows the rank, not the other genes)."""
    V = len(gene_tok)
    col = torch.full((int(gene_tok.max()) + 1,), -1, dtype=torch.long)
    col[gene_tok] = torch.arange(V)
    rows = _rows(data, train_cells)
    T = max(rows.input_ids.shape[1], eval_batch.input_ids.shape[1])
    counts = torch.ones(T, V, dtype=torch.float64)
    ids = rows.input_ids.clamp(max=len(col) - 1)
    c = col[ids]
    ok = rows.attention_mask & (c >= 0) & (rows.input_ids < len(col))
    pos = torch.arange(rows.input_ids.shape[1]).expand_as(ids)
    counts.index_put_(
        (pos[ok], c[ok]), torch.ones(int(ok.sum()), dtype=torch.float64), accumulate=True
    )
    logp = (counts / counts.sum(1, keepdim=True)).log()
    epos = torch.arange(eval_batch.input_ids.shape[1]).expand_as(eval_batch.input_ids)[sel]
    etok = col[eval_batch.input_ids[sel]]
    baseline = float(-logp[epos, etok].mean())
    return math.log(V), baseline


def train_geneformer_demo(
    adata,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    n_layers: int = 4,
    n_heads: int = 4,
    intermediate_size: int = 128,
    version: Literal["V1", "V2"] = "V1",
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 2e-3,
    mask_ratio: float = 0.15,
    seed: int = 0,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
) -> TrainReport:
    """Train a fresh Geneformer-architecture ``BertForMaskedLM`` on ``adata`` by masked
    gene modelling and save it to ``out_dir`` in the real layout (``config.json``,
    ``model.safetensors``, token and gene-median dictionary pickles) with a
    ``train_log.json``.

    Parameters
    ----------
    adata
        Raw counts in ``X``; all cells are used. The vocabulary is the dataset's Ensembl ids
        (``var`` column ``ensembl_id`` / ``gene_ids`` / ``feature_id``, or Ensembl
        ``var_names``); the gene medians are computed from the data
        (:func:`gene_medians_from_counts`).
    hidden_size, n_layers, n_heads, intermediate_size, version
        Architecture and token conventions (V1: no special tokens, input 2048; V2:
        ``<cls>``/``<eos>``, input 4096).
    epochs, batch_size, lr, mask_ratio
        Optimisation (see the module docstring).
    seed, max_seconds, max_steps, device, progress
        As :func:`train_scgpt_demo`.
    """
    started = now()
    _check_common(epochs, batch_size, lr, mask_ratio, adata)
    raw, _ = var_ids(adata, None)
    ids = [str(g).strip().upper() for g in raw]
    if len(set(ids)) != len(ids):
        raise ValueError("the dataset's Ensembl ids must be unique to train a demo Geneformer")
    med = gene_medians_from_counts(adata)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ck = build_geneformer_checkpoint(
            Path(tmp) / "init",
            ids,
            dict(zip(ids, med.tolist())),
            version=version,
            hidden_size=hidden_size,
            n_layers=n_layers,
            n_heads=n_heads,
            intermediate_size=intermediate_size,
            seed=seed,
        )
        adapter = GeneformerAdapter.load(ck, device=device, name=out_dir.name)
    data = adapter.tokenize(adata)
    lengths = data.attention_mask.sum(1).numpy()
    module = adapter.module
    module.eval()
    specials = {int(t) for k, t in adapter.token_dictionary.items() if str(k).startswith("<")}
    gene_tok = torch.tensor(
        sorted(int(t) for t in adapter.token_dictionary.values() if int(t) not in specials),
        dtype=torch.long,
    )
    special_t = torch.tensor(sorted(specials), dtype=torch.long)
    mask_id = int(adapter.token_dictionary["<mask>"])

    def masked_ids(b: TokenizedBatch, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cand = b.attention_mask & ~torch.isin(b.input_ids, special_t)
        new, sel = _gf_mask(b.input_ids, cand, mask_ratio, mask_id, gene_tok, g)
        if not sel.any():  # a tiny batch drew no position: take one candidate
            first = cand.flatten().nonzero()[:1]
            sel.view(-1)[first] = True
            new.view(-1)[first] = mask_id
        return new, sel

    def loss_on(b: TokenizedBatch, new: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        masked = TokenizedBatch(
            input_ids=new,
            attention_mask=b.attention_mask,
            gene_index=b.gene_index,
            cell_index=b.cell_index,
        )
        out = adapter._forward(masked.to(adapter.device), return_logits=True)
        if out.logits is None:
            raise ValueError(f"{adapter.name} has no masked-LM head to train")
        s = sel.to(adapter.device)
        return F.cross_entropy(out.logits[s], b.input_ids.to(adapter.device)[s])

    train_cells, eval_cells, held_out = _holdout(adata.n_obs, seed)
    eval_batch = _rows(data, eval_cells)
    eval_new, eval_sel = masked_ids(eval_batch, torch.Generator().manual_seed(seed + 7919))
    chance, baseline = _gf_baselines(data, train_cells, eval_batch, eval_sel, gene_tok)

    def eval_fn() -> float:
        with torch.no_grad():
            return float(loss_on(eval_batch, eval_new, eval_sel))

    def loss_fn(idx: np.ndarray, g: torch.Generator) -> torch.Tensor:
        b = _rows(data, idx)
        return loss_on(b, *masked_ids(b, g))

    with torch.random.fork_rng(devices=[]), _fixed_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        fit = _fit(
            name="Geneformer (masked genes)",
            module=module,
            cells=train_cells,
            lengths=lengths,
            loss_fn=loss_fn,
            eval_fn=eval_fn,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            gen=torch.Generator().manual_seed(seed),
            max_seconds=max_seconds,
            max_steps=max_steps,
            progress=progress,
            started=started,
        )
    adapter.save_pretrained(out_dir)
    report = TrainReport(
        family="geneformer",
        path=out_dir,
        objective="masked gene modelling (cross-entropy on masked rank-value tokens)",
        n_cells=int(adata.n_obs),
        n_genes=len(ids),
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
        baseline="per-rank-position gene frequency",
        n_eval_cells=len(eval_cells),
        eval_held_out=held_out,
        params=dict(
            hidden_size=hidden_size,
            n_layers=n_layers,
            n_heads=n_heads,
            intermediate_size=intermediate_size,
            version=version,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            mask_ratio=mask_ratio,
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
            masking="80% <mask> / 10% random gene / 10% unchanged",
            gene_medians="non-zero median of counts / n_counts × 10,000, from the data",
            device=str(adapter.device),
        ),
        adapter=adapter,
    )
    report.write(out_dir)
    return report
