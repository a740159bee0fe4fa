"""Tiny random scGPT checkpoints in the layout of the released ones (tests, demo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scfm_audit.models.scgpt._checkpoint import (
    SPECIAL_TOKENS,
    VOCAB_FILE,
    Layout,
    to_layout,
    write_checkpoint,
)
from scfm_audit.models.scgpt._modules import ScGPTConfig, ScGPTModule


def _pretrain_args(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    d_hid: int,
    n_bins: int,
    max_seq_len: int,
    flash: bool,
) -> dict[str, Any]:
    """args.json with the key names scGPT's pretrain.py writes (``vars(args)``)."""
    return {
        "data_source": "synthetic",
        "save_dir": "",
        "load_model": None,
        "n_hvg": None,
        "valid_size_or_ratio": 0.003,
        "grad_accu_steps": 1,
        "pad_token": "<pad>",
        "input_style": "binned",
        "input_emb_style": "continuous",
        "n_bins": n_bins,
        "max_seq_len": max_seq_len,
        "training_tasks": "both",
        "mask_ratio": [0.25, 0.5, 0.75],
        "trunc_by_sample": True,
        "vocab_path": VOCAB_FILE,
        "batch_size": 32,
        "eval_batch_size": 64,
        "epochs": 1,
        "lr": 1e-4,
        "scheduler_interval": 100,
        "scheduler_factor": 0.99,
        "warmup_ratio_or_step": 10000.0,
        "no_cls": True,
        "no_cce": True,
        "fp16": True,
        "fast_transformer": flash,
        "nlayers": n_layers,
        "nheads": n_heads,
        "embsize": d_model,
        "d_hid": d_hid,
        "dropout": 0.2,
        "n_layers_cls": 3,
        "log_interval": 100,
        "save_interval": 1000,
        "mask_value": -1,
        "pad_value": -2,
    }


def build_scgpt_checkpoint(
    path: str | Path,
    genes: Sequence[str],
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    d_hid: int = 64,
    n_bins: int = 51,
    max_seq_len: int = 128,
    flash: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny random scGPT checkpoint in the layout of the released ones.

    ``vocab.json``: ``genes`` as ids 0..G-1, then ``<pad>``, ``<cls>``, ``<eoc>`` appended
    (as pretrain.py does). ``args.json``: pretrain.py's keys. ``best_model.pt``: the
    pretrained model's parts (gene/value encoders, ``flag_encoder``, encoder layers,
    expression decoder, inner-product ``mvc_decoder``; no ``cls_decoder``), with
    ``self_attn.Wqkv.*`` keys when ``flash`` else ``self_attn.in_proj_*``. Weights are
    drawn from ``seed`` (biases and LayerNorm affines randomised too, so tests see them);
    the same seed gives the same tensors for both layouts.
    """
    genes = [str(g) for g in genes]
    if len(set(genes)) != len(genes):
        raise ValueError("genes must be unique")
    if clash := set(genes) & set(SPECIAL_TOKENS):
        raise ValueError(f"genes must not include special tokens: {sorted(clash)}")
    vocab = {g: i for i, g in enumerate(genes)}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    args = _pretrain_args(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_hid=d_hid,
        n_bins=n_bins,
        max_seq_len=max_seq_len,
        flash=flash,
    )
    config = ScGPTConfig(
        ntoken=len(vocab),
        d_model=d_model,
        nhead=n_heads,
        d_hid=d_hid,
        nlayers=n_layers,
        pad_id=vocab["<pad>"],
        pad_value=-2.0,
        flag_encoder=True,
        mvc_style="inner product",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ScGPTModule(config)
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.1)
                elif param.ndim == 1:  # LayerNorm weight
                    param.copy_(1.0 + 0.1 * torch.randn_like(param))
    layout: Layout = "flash" if flash else "torch"
    state = {to_layout(k, layout): v for k, v in module.state_dict().items()}
    return write_checkpoint(path, args, vocab, state)
