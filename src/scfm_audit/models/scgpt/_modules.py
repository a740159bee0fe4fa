"""scGPT's ``TransformerModel`` in plain PyTorch, with the checkpoint's parameter names.

Upstream ``scgpt/model/model.py`` → what is reproduced here: ``GeneEncoder`` (embedding +
LayerNorm), ``ContinuousValueEncoder`` (``clamp(max=512)`` → Linear(1, d) → ReLU →
Linear(d, d) → LayerNorm), ``CategoryValueEncoder``, the ``scaling`` style (token
embedding × value), token + value embeddings summed, optional ``bn`` BatchNorm on the sum,
``ExprDecoder`` (Linear-LeakyReLU-Linear-LeakyReLU-Linear), ``ClsDecoder``, ``MVCDecoder``,
``AdversarialDiscriminator``; cell embedding = ``<cls>`` position. Encoder layers:
``nn.TransformerEncoderLayer(d, nhead, d_hid, batch_first=True)`` (post-norm, ReLU,
LayerNorm eps 1e-5) or ``FlashTransformerEncoderLayer`` (same maths, packed ``Wqkv``),
run through the shared functional layer (``_transformer.encoder_layer``) so every hook
site is available. The ``dev-temp`` branch (the code that trained the released weights,
``use_generative_training=True``) adds a ``flag_encoder`` Embedding(2, d), has no
``cls_decoder`` when ``n_cls == 1`` and an ``mvc_decoder``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from scfm_audit.models._hooks import HookContext, HookPoint, make_hook_points
from scfm_audit.models._transformer import LayerWeights, encoder_layer

VALUE_MAX = 512  # ContinuousValueEncoder(max_value=512)
LN_EPS = 1e-5  # nn.LayerNorm / TransformerEncoderLayer default


@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture of one checkpoint (from ``args.json``, ``vocab.json`` and, for the
    optional heads, the keys present in ``best_model.pt``)."""

    ntoken: int
    d_model: int
    nhead: int
    d_hid: int
    nlayers: int
    pad_id: int
    pad_value: float = -2.0
    input_emb_style: str = "continuous"  # continuous | category | scaling
    n_input_bins: int | None = None  # category style: n_bins + 2
    explicit_zero_prob: bool = False
    flag_encoder: bool = False  # dev-temp generative pretraining
    bn: bool = False  # BatchNorm1d on the input embeddings
    cls_head: tuple[int, int] | None = None  # (nlayers_cls, n_cls)
    dab_head: tuple[int, int] | None = None  # (nlayers, n_batches)
    mvc_style: str | None = None  # "inner product" | "concat query" | "sum query"
    mvc_zero_prob: bool = False


class _GeneEncoder(nn.Module):
    def __init__(self, ntoken: int, d: int, padding_idx: int | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(ntoken, d, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(ids))


class _ContinuousValueEncoder(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, d)
        self.linear2 = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(x.unsqueeze(-1), max=VALUE_MAX)
        return self.norm(self.linear2(F.relu(self.linear1(x))))


class _CategoryValueEncoder(nn.Module):
    def __init__(self, n_bins: int, d: int, padding_idx: int | None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_bins, d, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(x.long()))


class _SelfAttention(nn.Module):
    """Parameters of ``nn.MultiheadAttention`` (packed q/k/v); the computation itself is
    done by ``_transformer.self_attention``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, d_hid: int) -> None:
        super().__init__()
        self.self_attn = _SelfAttention(d)
        self.linear1 = nn.Linear(d, d_hid)
        self.linear2 = nn.Linear(d_hid, d)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)


class _Encoder(nn.Module):
    def __init__(self, n: int, d: int, d_hid: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(d, d_hid) for _ in range(n))


def _mlp3(d: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, d), nn.LeakyReLU(), nn.Linear(d, 1)
    )


class _ExprDecoder(nn.Module):
    def __init__(self, d: int, explicit_zero_prob: bool) -> None:
        super().__init__()
        self.fc = _mlp3(d)
        self.zero_logit = _mlp3(d) if explicit_zero_prob else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pred": self.fc(x).squeeze(-1)}
        if self.zero_logit is not None:
            out["zero_probs"] = torch.sigmoid(self.zero_logit(x).squeeze(-1))
        return out


class _MLPHead(nn.Module):
    """``ClsDecoder`` / ``AdversarialDiscriminator``: (Linear, act, LayerNorm) × (n-1) + out."""

    def __init__(self, d: int, n_out: int, nlayers: int, act: type[nn.Module]) -> None:
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(nlayers - 1):
            self._decoder.extend([nn.Linear(d, d), act(), nn.LayerNorm(d)])
        self.out_layer = nn.Linear(d, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class _MVCDecoder(nn.Module):
    def __init__(self, d: int, style: str, zero_prob: bool) -> None:
        super().__init__()
        self.style = style
        if style.startswith("inner product"):
            self.gene2query = nn.Linear(d, d)
            self.W = nn.Linear(d, d, bias=False)
            self.W_zero_logit = nn.Linear(d, d) if zero_prob else None
        elif style in ("concat query", "sum query"):
            self.gene2query = nn.Linear(d, 64 if style == "concat query" else d)
            self.fc1 = nn.Linear(d + 64 if style == "concat query" else d, 64)
            self.hidden_activation = nn.PReLU()
            self.fc2 = nn.Linear(64, 1)
        else:
            raise ValueError(f"unknown MVC decoder style {style!r}")

    def forward(self, cell_emb: torch.Tensor, gene_embs: torch.Tensor) -> torch.Tensor:
        q = torch.sigmoid(self.gene2query(gene_embs))
        if self.style.startswith("inner product"):
            return torch.bmm(self.W(q), cell_emb.unsqueeze(2)).squeeze(2)
        if self.style == "concat query":
            c = cell_emb.unsqueeze(1).expand(-1, gene_embs.shape[1], -1)
            return self.fc2(self.hidden_activation(self.fc1(torch.cat([c, q], 2)))).squeeze(2)
        return self.fc2(self.hidden_activation(self.fc1(cell_emb.unsqueeze(1) + q))).squeeze(2)


class ScGPTModule(nn.Module):
    """scGPT's ``TransformerModel`` with the checkpoint's parameter names.

    ``forward(input_ids, values, attention_mask)`` (all (B, T); mask True = real token)
    returns ``{"hidden" (B, T, D), "pred" (B, T), "cell_emb" (B, D)}``; dropout is not
    applied (the shared functional layer has none), everything else is differentiable, so
    a trainer can optimise this module directly.
    """

    def __init__(self, config: ScGPTConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        d = c.d_model
        self.encoder = _GeneEncoder(c.ntoken, d, c.pad_id)
        if c.flag_encoder:
            self.flag_encoder = nn.Embedding(2, d)
        if c.input_emb_style == "continuous":
            self.value_encoder: nn.Module = _ContinuousValueEncoder(d)
        elif c.input_emb_style == "category":
            if not c.n_input_bins:
                raise ValueError("category input embedding needs n_input_bins")
            pad = int(c.pad_value)
            self.value_encoder = _CategoryValueEncoder(
                c.n_input_bins, d, pad if 0 <= pad < c.n_input_bins else None
            )
        elif c.input_emb_style == "scaling":
            self.value_encoder = nn.Identity()
        else:
            raise ValueError(f"unknown input_emb_style {c.input_emb_style!r}")
        if c.bn:
            self.bn = nn.BatchNorm1d(d, eps=6.1e-5)
        self.transformer_encoder = _Encoder(c.nlayers, d, c.d_hid)
        self.decoder = _ExprDecoder(d, c.explicit_zero_prob)
        if c.cls_head is not None:
            self.cls_decoder = _MLPHead(d, c.cls_head[1], c.cls_head[0], nn.ReLU)
        if c.mvc_style is not None:
            self.mvc_decoder = _MVCDecoder(d, c.mvc_style, c.mvc_zero_prob)
        if c.dab_head is not None:
            self.grad_reverse_discriminator = _MLPHead(
                d, c.dab_head[1], c.dab_head[0], nn.LeakyReLU
            )
        # TransformerModel.init_weights
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)
        self._idle_hooks = make_hook_points(c.nlayers)

    # -- pieces ----------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Input of the first encoder layer (B, T, D): ``TransformerModel._encode`` up to
        the transformer."""
        src = self.encoder(input_ids)
        if self.config.input_emb_style == "scaling":
            total = src * values.to(src.dtype).unsqueeze(2)
        else:
            total = src + self.value_encoder(values.to(src.dtype))
        if self.config.bn:
            total = self.bn(total.permute(0, 2, 1)).permute(0, 2, 1)
        return total

    def layer_weights(self, i: int) -> LayerWeights:
        """Views of layer ``i``'s parameters for ``encoder_layer`` (post-norm, ReLU)."""
        lay = cast(_EncoderLayer, self.transformer_encoder.layers[i])  # a ModuleList item
        (q, qb), (k, kb), (v, vb) = LayerWeights.split_packed(
            lay.self_attn.in_proj_weight, lay.self_attn.in_proj_bias
        )
        return LayerWeights(
            q_w=q,
            q_b=qb,
            k_w=k,
            k_b=kb,
            v_w=v,
            v_b=vb,
            o_w=lay.self_attn.out_proj.weight,
            o_b=lay.self_attn.out_proj.bias,
            ln1_w=lay.norm1.weight,
            ln1_b=lay.norm1.bias,
            ff1_w=lay.linear1.weight,
            ff1_b=lay.linear1.bias,
            ff2_w=lay.linear2.weight,
            ff2_b=lay.linear2.bias,
            ln2_w=lay.norm2.weight,
            ln2_b=lay.norm2.bias,
            n_heads=self.config.nhead,
            activation=F.relu,
            ln_eps=LN_EPS,
            norm_first=False,
        )

    def mvc(self, cell_emb: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """MVC / GEPC head: expression of each token's gene predicted from the cell
        embedding (B, D) and the gene-token embeddings (B, T)."""
        if not hasattr(self, "mvc_decoder"):
            raise AttributeError("this checkpoint has no mvc_decoder")
        return self.mvc_decoder(cell_emb, self.encoder(input_ids))

    def forward(
        self,
        input_ids: torch.Tensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        hook_points: Mapping[str, HookPoint] | None = None,
        start_layer: int = 0,
        hidden: torch.Tensor | None = None,
        capture: dict[int, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``start_layer`` > 0 runs layers ``start_layer``.. from ``hidden`` (the state
        entering it); ``capture``'s keys are layers whose entering state is stored in it."""
        mask = attention_mask.bool()
        ctx = HookContext(attention_mask=mask)
        hp = self._idle_hooks if hook_points is None else hook_points
        if start_layer:
            if hidden is None:
                raise ValueError("start_layer > 0 needs the hidden state entering it")
            x = hidden
        else:
            x = self.embed(input_ids, values) if hidden is None else hidden
        for i in range(start_layer, self.config.nlayers):
            if capture is not None and i in capture:
                capture[i] = x
            x = encoder_layer(x, self.layer_weights(i), hp, i, ctx)
        return {"hidden": x, "pred": self.decoder(x)["pred"], "cell_emb": x[:, 0]}


# ---------------------------------------------------------------------------------------
# checkpoint files
