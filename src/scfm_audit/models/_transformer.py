"""One functional transformer-encoder layer with named hook sites.

Both model families are encoder stacks of the same shape (multi-head self-attention and
a two-layer feed-forward block, each wrapped in a residual connection and LayerNorm;
post-norm in BERT / Geneformer and in scGPT's default, pre-norm optional in scGPT). The
adapters keep the checkpoint's own module tree (so real state dicts load with strict
key checking) and hand this function *views* of their weights through
:class:`LayerWeights`; the computation, and therefore every hook site, is identical for
all families.

Attention is computed explicitly (softmax(q·kᵀ/√d)) rather than through a fused kernel,
because the probabilities themselves are the object of study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scfm_audit.models._hooks import HookContext, HookPoint


@dataclass
class LayerWeights:
    """Views of one layer's parameters (no copies). Linear weights are (out, in)."""

    q_w: torch.Tensor
    q_b: torch.Tensor | None
    k_w: torch.Tensor
    k_b: torch.Tensor | None
    v_w: torch.Tensor
    v_b: torch.Tensor | None
    o_w: torch.Tensor
    o_b: torch.Tensor | None
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ff1_w: torch.Tensor
    ff1_b: torch.Tensor | None
    ff2_w: torch.Tensor
    ff2_b: torch.Tensor | None
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    n_heads: int
    activation: Callable[[torch.Tensor], torch.Tensor] = F.relu
    ln_eps: float = 1e-5
    norm_first: bool = False

    @staticmethod
    def split_packed(w: torch.Tensor, b: torch.Tensor | None):
        """Split a packed (3·D, D) q/k/v projection (``in_proj_weight`` / ``Wqkv``)."""
        q, k, v = w.chunk(3, dim=0)
        if b is None:
            return (q, None), (k, None), (v, None)
        qb, kb, vb = b.chunk(3, dim=0)
        return (q, qb), (k, kb), (v, vb)


def self_attention(
    x: torch.Tensor,
    w: LayerWeights,
    hp: Mapping[str, HookPoint],
    layer: int,
    ctx: HookContext,
) -> torch.Tensor:
    """Multi-head self-attention of ``x`` (B, T, D); keys where ``ctx.attention_mask`` is
    False (padding) get zero probability."""
    B, T, D = x.shape
    H = w.n_heads
    dh = D // H
    q = F.linear(x, w.q_w, w.q_b).view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
    k = F.linear(x, w.k_w, w.k_b).view(B, T, H, dh).transpose(1, 2)
    v = F.linear(x, w.v_w, w.v_b).view(B, T, H, dh).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(dh))  # (B, H, T, T)
    site = f"layers.{layer}"
    scores = hp[f"{site}.attn.scores"](scores, ctx)
    if ctx.attention_mask is not None:
        key_pad = ~ctx.attention_mask[:, None, None, :]
        scores = scores.masked_fill(key_pad, float("-inf"))
    pattern = torch.softmax(scores, dim=-1)
    # a fully padded query row (should not happen: the cls token is always real) → zeros
    pattern = torch.nan_to_num(pattern, nan=0.0)
    pattern = hp[f"{site}.attn.pattern"](pattern, ctx)
    z = torch.matmul(pattern, v).transpose(1, 2)  # (B, T, H, dh)
    z = hp[f"{site}.attn.z"](z, ctx)
    out = F.linear(z.reshape(B, T, D), w.o_w, w.o_b)
    return hp[f"{site}.attn.out"](out, ctx)


def feed_forward(
    x: torch.Tensor, w: LayerWeights, hp: Mapping[str, HookPoint], layer: int, ctx: HookContext
) -> torch.Tensor:
    h = w.activation(F.linear(x, w.ff1_w, w.ff1_b))
    out = F.linear(h, w.ff2_w, w.ff2_b)
    return hp[f"layers.{layer}.mlp.out"](out, ctx)


def encoder_layer(
    x: torch.Tensor,
    w: LayerWeights,
    hp: Mapping[str, HookPoint],
    layer: int,
    ctx: HookContext,
) -> torch.Tensor:
    """One encoder layer (dropout off: evaluation only). Post-norm:
    ``x = LN1(x + attn(x)); x = LN2(x + ff(x))``; pre-norm:
    ``x = x + attn(LN1(x)); x = x + ff(LN2(x))``."""
    D = x.shape[-1]
    if w.norm_first:
        x = x + self_attention(F.layer_norm(x, (D,), w.ln1_w, w.ln1_b, w.ln_eps), w, hp, layer, ctx)
        x = x + feed_forward(F.layer_norm(x, (D,), w.ln2_w, w.ln2_b, w.ln_eps), w, hp, layer, ctx)
    else:
        x = F.layer_norm(x + self_attention(x, w, hp, layer, ctx), (D,), w.ln1_w, w.ln1_b, w.ln_eps)
        x = F.layer_norm(x + feed_forward(x, w, hp, layer, ctx), (D,), w.ln2_w, w.ln2_b, w.ln_eps)
    return hp[f"layers.{layer}.resid_post"](x, ctx)
