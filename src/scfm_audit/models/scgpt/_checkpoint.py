"""scGPT checkpoint folders: reading, key layouts, validation with precise errors, writing.

A scGPT checkpoint is a folder with ``args.json`` (the pretraining / fine-tuning
arguments), ``vocab.json`` (gene symbol → token id) and ``best_model.pt`` (a state dict of
``scgpt.model.TransformerModel``), loaded with strict key checking into
:class:`~scfm_audit.models.scgpt._modules.ScGPTModule`.

Key layouts (``scgpt/utils/util.py::load_pretrained``): ``torch`` (``self_attn.in_proj_*``),
``flash`` (``self_attn.Wqkv.*``) and ``flash_impl`` (``self_attn._impl.Wqkv.*`` and
``self_attn._impl.out_proj.*``); flash keys are mapped to the torch names on reading and
back on writing, so a checkpoint is saved in the layout it was loaded from. Non-flash scGPT
ignores ``pre_norm``; the flash "pre" scheme is not a standard pre-norm layer and is
refused. Special tokens ``<pad>``, ``<cls>``, ``<eoc>`` are appended to the vocabulary
when absent (``cell_emb.py`` / ``pretrain.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from scfm_audit.models._base import (
    CheckpointError,
    unreadable_weights,
)
from scfm_audit.models.scgpt._modules import ScGPTConfig, ScGPTModule

ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "best_model.pt"
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")  # cell_emb.py / pretrain.py, appended if absent

Layout = Literal["torch", "flash", "flash_impl"]

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


def to_layout(key: str, layout: Layout) -> str:
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
        groups[_group(k)].append(to_layout(k, layout))
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
        f"  {to_layout(k, layout)}: checkpoint {tuple(state[k].shape)} but expected "
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


def write_checkpoint(
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
# reading a checkpoint folder


def read_checkpoint(path: Path) -> tuple[ScGPTModule, dict[str, int], dict[str, Any], Layout]:
    """The module (weights loaded strictly), vocabulary, arguments and key layout of the
    scGPT checkpoint folder ``path``. Raises :class:`CheckpointError` naming the file, key
    or shape at fault."""
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
    config = _config_from(args, vocab, keys, {k: tuple(v.shape) for k, v in state.items()}, path)
    module = ScGPTModule(config)
    _check_state(state, module, args, layout, path)
    module.load_state_dict(state, strict=True)
    return module, vocab, args, layout
