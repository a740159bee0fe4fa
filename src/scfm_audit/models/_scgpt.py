"""scGPT adapter: the real checkpoint format, scGPT's own tokenization, a hooked forward.

A scGPT checkpoint is a folder with ``args.json`` (the pretraining / fine-tuning
arguments), ``vocab.json`` (gene symbol → token id) and ``best_model.pt`` (a state dict of
``scgpt.model.TransformerModel``). :class:`ScGPTModule` re-implements that model in plain
PyTorch with the same parameter names and shapes, so the published weights load with
strict key checking, and :class:`ScGPTAdapter` runs it through the shared functional
encoder layer (``_transformer.encoder_layer``) so every hook site is available.

Fidelity notes (upstream file → what is reproduced here):

* ``scgpt/model/model.py``: ``GeneEncoder`` (embedding + LayerNorm), ``ContinuousValueEncoder``
  (``clamp(max=512)`` → Linear(1, d) → ReLU → Linear(d, d) → LayerNorm), ``CategoryValueEncoder``,
  the ``scaling`` style (token embedding × value), token + value embeddings summed, optional
  ``bn`` BatchNorm on the sum, ``ExprDecoder`` (Linear-LeakyReLU-Linear-LeakyReLU-Linear),
  ``ClsDecoder``, ``MVCDecoder``, ``AdversarialDiscriminator``; cell embedding = ``<cls>``
  position. Encoder layers: ``nn.TransformerEncoderLayer(d, nhead, d_hid, batch_first=True)``
  (post-norm, ReLU, LayerNorm eps 1e-5) or ``FlashTransformerEncoderLayer`` (same maths, packed
  ``Wqkv``). Non-flash scGPT ignores ``pre_norm``; the flash "pre" scheme is not a standard
  pre-norm layer and is refused.
* ``dev-temp`` branch ``scgpt/model/model.py`` (the code that trained the released weights,
  ``use_generative_training=True``): a ``flag_encoder`` Embedding(2, d), no ``cls_decoder``
  when ``n_cls == 1``, an ``mvc_decoder``; layers from ``flash_layers.FlashscGPTLayer`` whose
  only parameters are ``self_attn.Wqkv``/``self_attn.out_proj`` + the usual FFN and norms.
* ``scgpt/utils/util.py::load_pretrained``: ``self_attn.Wqkv.*`` / ``self_attn._impl.Wqkv.*``
  → ``self_attn.in_proj_*`` and ``self_attn._impl.out_proj.*`` → ``self_attn.out_proj.*``.
* ``scgpt/tasks/cell_emb.py`` + ``scgpt/data_collator.py`` (inference tokenization): genes
  matched by symbol and the data subset to in-vocabulary genes; per cell the non-zero genes
  in ``var`` order, values binned per cell over those non-zero values
  (``preprocess.binning`` / ``_digitize``: ``n_bins - 1`` quantile edges, ties spread at
  random), ``<cls>`` prepended with value ``pad_value``, cells longer than ``max_length``
  randomly sub-sampled (``<cls>`` kept, order permuted), padded with ``<pad>`` /
  ``pad_value`` to the longest cell of the batch. Special tokens ``<pad>``, ``<cls>``,
  ``<eoc>`` are appended to the vocabulary when absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from scfm_audit.models._base import (
    MODEL_FAMILIES,
    CheckpointError,
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
    unreadable_weights,
)
from scfm_audit.models._hooks import HookContext, HookPoint, make_hook_points
from scfm_audit.models._transformer import LayerWeights, encoder_layer

__all__ = [
    "ScGPTAdapter",
    "ScGPTConfig",
    "ScGPTModule",
    "bin_expression",
    "build_scgpt_checkpoint",
]

ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "best_model.pt"
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")  # cell_emb.py / pretrain.py, appended if absent
VALUE_MAX = 512  # ContinuousValueEncoder(max_value=512)
LN_EPS = 1e-5  # nn.LayerNorm / TransformerEncoderLayer default
NORMALIZE_TARGET = 1e4  # Preprocessor(normalize_total=1e4)

ValueTransform = Literal["raw", "log1p", "normalize_total"]
Truncation = Literal["sample", "first"]
Layout = Literal["torch", "flash", "flash_impl"]


# ---------------------------------------------------------------------------------------
# the model, with the parameter names of scgpt.model.TransformerModel


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
        lay = self.transformer_encoder.layers[i]
        (q, qb), (k, kb), (v, vb) = LayerWeights.split_packed(
            lay.self_attn.in_proj_weight, lay.self_attn.in_proj_bias
        )
        return LayerWeights(
            q_w=q, q_b=qb, k_w=k, k_b=kb, v_w=v, v_b=vb,
            o_w=lay.self_attn.out_proj.weight, o_b=lay.self_attn.out_proj.bias,
            ln1_w=lay.norm1.weight, ln1_b=lay.norm1.bias,
            ff1_w=lay.linear1.weight, ff1_b=lay.linear1.bias,
            ff2_w=lay.linear2.weight, ff2_b=lay.linear2.bias,
            ln2_w=lay.norm2.weight, ln2_b=lay.norm2.bias,
            n_heads=self.config.nhead, activation=F.relu, ln_eps=LN_EPS, norm_first=False,
        )  # fmt: skip

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


_WQKV = re.compile(r"\.self_attn\.(?:_impl\.)?Wqkv\.(weight|bias)$")
_IMPL_OUT = re.compile(r"\.self_attn\._impl\.out_proj\.")
_LAYER = re.compile(r"^transformer_encoder\.layers\.(\d+)\.")

# what each top-level part of a state dict is, for error messages
_MEANING = {
    "encoder": "gene-token embedding (GeneEncoder)",
    "flag_encoder": "generative-pretraining flag embedding",
    "value_encoder": "expression-value encoder",
    "transformer_encoder": "transformer encoder layers",
    "decoder": "expression decoder (GEP head)",
    "cls_decoder": "cell-type classifier head (ClsDecoder)",
    "mvc_decoder": "MVC / GEPC head (MVCDecoder)",
    "grad_reverse_discriminator": "batch discriminator (DAB)",
    "bn": "BatchNorm on the input embeddings",
    "batch_encoder": "batch-label encoder (use_batch_labels fine-tuning): batch-conditioned "
    "scGPT models are not supported",
    "dsbn": "domain-specific batch norm (DSBN fine-tuning): needs batch labels, not supported",
    "pert_encoder": "perturbation-flag encoder of TransformerGenerator (the perturbation "
    "model), not a TransformerModel checkpoint",
}


def _detect_layout(keys: Iterable[str]) -> Layout:
    keys = list(keys)
    if any("self_attn._impl.Wqkv." in k for k in keys):
        return "flash_impl"
    if any(".self_attn.Wqkv." in k for k in keys):
        return "flash"
    return "torch"


def _to_internal(key: str) -> str:
    key = _WQKV.sub(lambda m: f".self_attn.in_proj_{m.group(1)}", key)
    return _IMPL_OUT.sub(".self_attn.out_proj.", key)


def _to_layout(key: str, layout: Layout) -> str:
    if layout == "torch":
        return key
    pre = "self_attn._impl." if layout == "flash_impl" else "self_attn."
    key = re.sub(r"\.self_attn\.in_proj_(weight|bias)$", rf".{pre}Wqkv.\1", key)
    if layout == "flash_impl":
        key = key.replace(".self_attn.out_proj.", ".self_attn._impl.out_proj.")
    return key


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"scGPT checkpoint folder {path.parent} has no {path.name} ({what}); a scGPT "
            f"checkpoint needs {ARGS_FILE}, {VOCAB_FILE} and {WEIGHTS_FILE}."
        )
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def _read_vocab(path: Path) -> dict[str, int]:
    raw = _read_json(path, "gene symbol → token id")
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path} must be a non-empty JSON object of token → id.")
    vocab = {str(t): int(i) for t, i in raw.items()}
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise CheckpointError(
            f"{path}: token ids must be 0..{len(ids) - 1} without gaps or repeats "
            "(scGPT's GeneVocab requires consecutive indices)."
        )
    for tok in SPECIAL_TOKENS:  # cell_emb.embed_data: vocab.append_token(s) if absent
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def _arg(args: Mapping[str, Any], *names: str, path: Path) -> Any:
    for n in names:
        if n in args:
            return args[n]
    raise CheckpointError(
        f"{path / ARGS_FILE} has no {' / '.join(repr(n) for n in names)}; it is needed to "
        "build the model (keys as written by scGPT's pretrain.py: embsize, nheads, d_hid, "
        "nlayers, n_bins, pad_value, ...)."
    )


def _config_from(
    args: Mapping[str, Any], vocab: Mapping[str, int], keys: set[str], shapes: Mapping, path: Path
) -> ScGPTConfig:
    """Architecture from args.json/vocab.json; optional heads from the state-dict keys."""
    d = int(_arg(args, "embsize", "d_model", path=path))
    nhead = int(_arg(args, "nheads", "nhead", path=path))
    if nhead <= 0 or d % nhead:
        raise CheckpointError(
            f"{path / ARGS_FILE}: embsize={d} is not divisible by nheads={nhead}."
        )
    style = str(args.get("input_emb_style", "continuous"))
    n_bins = int(args.get("n_bins", 51))
    pad_token = str(args.get("pad_token", "<pad>"))
    if pad_token not in vocab:
        raise CheckpointError(f"pad_token {pad_token!r} of args.json is not in {VOCAB_FILE}.")
    pad_value = args.get("pad_value", n_bins if style == "category" else -2)

    def head(prefix: str) -> tuple[int, int] | None:
        if not any(k.startswith(prefix + ".") for k in keys):
            return None
        idx = [int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\._decoder\.(\d+)\.", k))]
        n_out = shapes.get(f"{prefix}.out_layer.weight", (1,))[0]
        return (max(idx) // 3 + 2 if idx else 1), int(n_out)

    mvc_style = None
    if any(k.startswith("mvc_decoder.") for k in keys):
        if "mvc_decoder.fc1.weight" in keys and "mvc_decoder.W.weight" not in keys:
            in_f = shapes["mvc_decoder.fc1.weight"][1]
            mvc_style = "concat query" if in_f == d + 64 else "sum query"
        else:
            mvc_style = str(args.get("mvc_decoder_style", "inner product"))
            if not mvc_style.startswith("inner product"):
                mvc_style = "inner product"
    ezp = args.get("explicit_zero_prob")
    ezp = any(k.startswith("decoder.zero_logit.") for k in keys) if ezp is None else bool(ezp)
    return ScGPTConfig(
        ntoken=len(vocab),
        d_model=d,
        nhead=nhead,
        d_hid=int(_arg(args, "d_hid", path=path)),
        nlayers=int(_arg(args, "nlayers", path=path)),
        pad_id=vocab[pad_token],
        pad_value=float(pad_value),
        input_emb_style=style,
        n_input_bins=n_bins + 2 if style == "category" else None,
        explicit_zero_prob=ezp,
        flag_encoder="flag_encoder.weight" in keys,
        bn=any(k.startswith("bn.") for k in keys),
        cls_head=head("cls_decoder"),
        dab_head=head("grad_reverse_discriminator"),
        mvc_style=mvc_style,
        mvc_zero_prob=mvc_style is not None
        and mvc_style.startswith("inner product")
        and ("mvc_decoder.W_zero_logit.weight" in keys or ezp),
    )


def _group(key: str) -> str:
    m = _LAYER.match(key)
    return f"transformer_encoder.layers.{m.group(1)}" if m else key.split(".", 1)[0]


def _describe_keys(keys: Sequence[str], kind: str, nlayers: int, layout: Layout) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        groups[_group(k)].append(_to_layout(k, layout))
    lines = [f"  {kind} keys ({len(keys)}):"]
    for g, ks in groups.items():
        if g.startswith("transformer_encoder.layers."):
            n = int(g.rsplit(".", 1)[1])
            what = f"encoder layer {n}" + (
                f", but args.json nlayers={nlayers}" if n >= nlayers else ""
            )
        else:
            what = _MEANING.get(g, "not part of scGPT's TransformerModel")
        shown = ", ".join(ks[:4]) + (f", ... (+{len(ks) - 4})" if len(ks) > 4 else "")
        lines.append(f"    {g}.* — {what}: {shown}")
    return lines


def _shape_source(key: str, args: Mapping[str, Any], n_vocab: int) -> str:
    emb = f"embsize={args.get('embsize', args.get('d_model'))}"
    if key.startswith("encoder.embedding."):
        return f"{VOCAB_FILE} ({n_vocab} tokens incl. specials) and args.json {emb}"
    if re.search(r"layers\.\d+\.linear[12]\.", key):
        return f"args.json d_hid={args.get('d_hid')}, {emb}"
    if key.startswith("value_encoder.embedding."):
        return f"args.json n_bins={args.get('n_bins')} (category input: n_bins + 2 rows), {emb}"
    return f"args.json {emb}"


def _check_state(
    state: Mapping[str, torch.Tensor],
    module: ScGPTModule,
    args: Mapping[str, Any],
    layout: Layout,
    path: Path,
) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        lines = [
            f"{path / WEIGHTS_FILE} does not match the scGPT model that {ARGS_FILE} and "
            f"{VOCAB_FILE} describe:"
        ]
        if missing:
            lines += _describe_keys(missing, "missing", module.config.nlayers, layout)
        if unexpected:
            lines += _describe_keys(unexpected, "unexpected", module.config.nlayers, layout)
        raise CheckpointError("\n".join(lines))
    bad = [
        f"  {_to_layout(k, layout)}: checkpoint {tuple(state[k].shape)} but expected "
        f"{tuple(v.shape)} from {_shape_source(k, args, module.config.ntoken)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            f"{path / WEIGHTS_FILE}: tensor shapes disagree with {ARGS_FILE}/{VOCAB_FILE}:\n"
            + "\n".join(bad[:8])
            + (f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else "")
        )


def _write_checkpoint(
    path: str | Path,
    args: Mapping[str, Any],
    vocab: Mapping[str, int],
    state: Mapping[str, torch.Tensor],
) -> Path:
    """Write the three files into a temporary folder next to ``path``, then move them in:
    a new folder is renamed into place as a whole; into an existing folder each file is
    moved with an atomic ``os.replace`` (other files there are left alone)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with (tmp / ARGS_FILE).open("w") as f:
            json.dump(dict(args), f, indent=2)
        with (tmp / VOCAB_FILE).open("w") as f:
            json.dump(dict(sorted(vocab.items(), key=lambda kv: kv[1])), f, indent=2)
        torch.save(
            OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in state.items()),
            tmp / WEIGHTS_FILE,
        )
        if path.exists():
            for name in (WEIGHTS_FILE, VOCAB_FILE, ARGS_FILE):
                os.replace(tmp / name, path / name)
            tmp.rmdir()
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ---------------------------------------------------------------------------------------
# tokenization helpers


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
    ) -> None:
        self.module = module
        self.vocab = dict(vocab)
        self.args = dict(args)
        self.name = name
        self.layout = layout
        c = module.config
        self.n_layers, self.n_heads, self.d_model = c.nlayers, c.nhead, c.d_model
        self.device = default_device(device)
        self.module.to(self.device).eval()
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
        if not path.is_dir():
            raise CheckpointError(f"scGPT checkpoint folder {path} does not exist.")
        args = _read_json(path / ARGS_FILE, "model arguments")
        if not isinstance(args, dict):
            raise CheckpointError(f"{path / ARGS_FILE} must be a JSON object.")
        vocab = _read_vocab(path / VOCAB_FILE)
        wfile = path / WEIGHTS_FILE
        if not wfile.is_file():
            raise CheckpointError(
                f"scGPT checkpoint folder {path} has no {WEIGHTS_FILE} (the weights)."
            )
        try:
            raw = torch.load(wfile, map_location="cpu", weights_only=True)
        except Exception as e:
            raise unreadable_weights(wfile, e) from None
        if not isinstance(raw, Mapping) or not all(torch.is_tensor(v) for v in raw.values()):
            raise CheckpointError(f"{wfile} is not a state dict (a mapping name → tensor).")
        if raw and all(k.startswith("module.") for k in raw):  # saved from DDP
            raw = {k[len("module.") :]: v for k, v in raw.items()}
        layout = _detect_layout(raw)
        if args.get("pre_norm") and layout != "torch":
            raise CheckpointError(
                f"{path / ARGS_FILE} has pre_norm=true with a flash-attention state dict: "
                "scGPT's flash 'pre' layer normalises the residual stream itself "
                "(x = norm1(x); x = x + attn(x); ...), not a standard pre-norm layer; "
                "this variant is not supported."
            )
        state = {_to_internal(k): v for k, v in raw.items()}
        keys = set(state)
        config = _config_from(
            args, vocab, keys, {k: tuple(v.shape) for k, v in state.items()}, path
        )
        module = ScGPTModule(config)
        _check_state(state, module, args, layout, path)
        module.load_state_dict(state, strict=True)
        return cls(
            module, vocab, args, name=name or path.name, device=device, layout=layout, **options
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``args.json``, ``vocab.json`` and ``best_model.pt`` in the layout the
        checkpoint was loaded from (``Wqkv`` keys for flash checkpoints)."""
        state = {_to_layout(k, self.layout): v for k, v in self.module.state_dict().items()}
        _write_checkpoint(path, self.args, self.vocab, state)

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
        key = (adata.var_names if self.gene_symbol_column is None else adata.var,
               self.gene_symbol_column)  # fmt: skip
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
        return self.module.embed(batch.input_ids, batch.values)

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
                pos = np.flatnonzero(cache[1] == gene)
                if pos.size:
                    return tok, int(pos[0])
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
        vals = batch.values.cpu().numpy().copy()
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


# ---------------------------------------------------------------------------------------
# tiny random checkpoints in the real layout


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
    }  # fmt: skip


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
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_hid=d_hid, n_bins=n_bins,
        max_seq_len=max_seq_len, flash=flash,
    )  # fmt: skip
    config = ScGPTConfig(
        ntoken=len(vocab), d_model=d_model, nhead=n_heads, d_hid=d_hid, nlayers=n_layers,
        pad_id=vocab["<pad>"], pad_value=-2.0, flag_encoder=True, mvc_style="inner product",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = ScGPTModule(config)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
                elif p.ndim == 1:  # LayerNorm weight
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
    layout: Layout = "flash" if flash else "torch"
    state = {_to_layout(k, layout): v for k, v in module.state_dict().items()}
    return _write_checkpoint(path, args, vocab, state)
