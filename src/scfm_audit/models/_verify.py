"""Check a checkpoint folder's declared architecture against its weights before loading.

A config file (scGPT ``args.json``, Geneformer's Hugging Face ``config.json``) that
disagrees with the weights describes a model that does not exist: heads would be selected,
ablated and reported on a wrong split of the attention. :func:`verify_checkpoint` reads the
config and the *shapes* of the state dict (no weights are materialised: safetensors
headers, or a memory-mapped ``torch.load``) and raises :class:`CheckpointMismatch` naming
both numbers when they disagree.

What the shapes can and cannot say. Packed attention projections (scGPT's ``Wqkv`` /
``in_proj_weight`` of shape ``(3·d, d)``, BERT's ``query``/``key``/``value`` of shape
``(d, d)``) fix the model width ``d`` and the number of layers, not how ``d`` is split into
heads. So the head count is verified against what does fix it: it must divide the width
the weights have, and it must equal the head count recorded at training time in
``train_log.json`` (written by ``scfm-audit train-demo-models``) when the folder has one.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scfm_audit.models._base import CheckpointError

#: written next to the weights by models/_train.py (a constant here avoids importing torch)
TRAIN_LOG = "train_log.json"


class CheckpointMismatch(CheckpointError):
    """The checkpoint's config contradicts its weights or its training log."""


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint folder declares and what its weights hold (None: not known)."""

    family: str
    n_layers: int | None
    n_heads: int | None
    d_model: int | None
    weight_layers: int | None = None
    weight_d_model: int | None = None


_SCGPT_QKV = re.compile(
    r"transformer_encoder\.layers\.(\d+)\.self_attn\.(?:_impl\.)?"
    r"(?:Wqkv\.weight|in_proj_weight)$"
)
_BERT_Q = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.self\.query\.weight$")


def verify_checkpoint(family: str, path: str | Path) -> Architecture | None:
    """Compare a checkpoint folder's declared layers / heads / width with its weights'
    shapes and its ``train_log.json``; raise :class:`CheckpointMismatch` naming both numbers
    on a contradiction. Returns what was read, or None when the folder's layout is not one
    this module reads (the family's loader then reports what is missing)."""
    p = Path(path)
    if p.is_file():
        raise CheckpointMismatch(
            f"model path {str(p)!r} is a file; give the checkpoint folder that holds it."
        )
    if not p.is_dir():
        return None
    if family == "scgpt":
        arch = _scgpt(p)
    elif family == "geneformer":
        arch = _geneformer(p)
    else:
        return None
    if arch is None:
        return None
    _compare(arch, p)
    return arch


def _compare(a: Architecture, p: Path) -> None:
    cfg = "args.json" if a.family == "scgpt" else "config.json"
    names = {
        "layers": "nlayers" if a.family == "scgpt" else "num_hidden_layers",
        "heads": "nheads" if a.family == "scgpt" else "num_attention_heads",
        "width": "embsize" if a.family == "scgpt" else "hidden_size",
    }
    problems = []
    if a.weight_layers is not None and a.n_layers is not None and a.weight_layers != a.n_layers:
        problems.append(
            f"{cfg} says {names['layers']}={a.n_layers} but the weights hold "
            f"{a.weight_layers} encoder layers"
        )
    if a.weight_d_model is not None and a.d_model is not None and a.weight_d_model != a.d_model:
        problems.append(
            f"{cfg} says {names['width']}={a.d_model} but the weights' attention "
            f"projections are {a.weight_d_model} wide"
        )
    d = a.weight_d_model or a.d_model
    if a.n_heads is not None:
        if a.n_heads < 1:
            problems.append(f"{cfg} says {names['heads']}={a.n_heads}; a model has ≥ 1 head")
        elif d is not None and d % a.n_heads:
            problems.append(
                f"{cfg} says {names['heads']}={a.n_heads} but the weights are {d} wide, "
                f"which {a.n_heads} heads cannot split"
            )
    log = _train_log(p)
    if log is not None:
        logged_params = log.get("params")
        params = logged_params if isinstance(logged_params, dict) else {}
        for what, declared in (("heads", a.n_heads), ("layers", a.n_layers)):
            logged = params.get(f"n_{what}")
            if isinstance(logged, int) and declared is not None and logged != declared:
                problems.append(
                    f"{cfg} says {names[what]}={declared} but {TRAIN_LOG} records the model "
                    f"was trained with n_{what}={logged}"
                )
    if problems:
        raise CheckpointMismatch(
            f"checkpoint {str(p)!r} contradicts itself: " + "; ".join(problems) + ". "
            f"Heads and layers would be selected and ablated on a model that does not exist; "
            f"fix {cfg} to match the weights (or use the folder the weights came from)."
        )


def _train_log(p: Path) -> dict[str, Any] | None:
    f = p / TRAIN_LOG
    if not f.is_file():
        return None
    try:
        out = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def _json(f: Path) -> dict[str, Any] | None:
    try:
        out = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the loader reports unreadable files with its own message
    return out if isinstance(out, dict) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _scgpt(p: Path) -> Architecture | None:
    args = _json(p / "args.json")
    if args is None:
        return None
    shapes = _torch_shapes(p / "best_model.pt")
    layers, width = _layers_and_width(shapes, _SCGPT_QKV, packed=True)
    return Architecture(
        "scgpt",
        n_layers=_int(args.get("nlayers")),
        n_heads=_int(args.get("nheads", args.get("nhead"))),
        d_model=_int(args.get("embsize", args.get("d_model"))),
        weight_layers=layers,
        weight_d_model=width,
    )


def _geneformer(p: Path) -> Architecture | None:
    cfg = _json(p / "config.json")
    if cfg is None:
        return None
    shapes: dict[str, tuple[int, ...]] | None = None
    if (p / "model.safetensors").is_file():
        shapes = _safetensors_shapes(p / "model.safetensors")
    elif (p / "pytorch_model.bin").is_file():
        shapes = _torch_shapes(p / "pytorch_model.bin")
    layers, width = _layers_and_width(shapes, _BERT_Q, packed=False)
    return Architecture(
        "geneformer",
        n_layers=_int(cfg.get("num_hidden_layers")),
        n_heads=_int(cfg.get("num_attention_heads")),
        d_model=_int(cfg.get("hidden_size")),
        weight_layers=layers,
        weight_d_model=width,
    )


def _layers_and_width(
    shapes: dict[str, tuple[int, ...]] | None, pattern: re.Pattern, *, packed: bool
) -> tuple[int | None, int | None]:
    if not shapes:
        return None, None
    layers: set[int] = set()
    width = None
    for k, shape in shapes.items():
        m = pattern.search(k)
        if m is None or len(shape) != 2:
            continue
        layers.add(int(m.group(1)))
        width = shape[1] if packed else shape[0]
    if not layers:
        return None, None
    return max(layers) + 1, width


def _safetensors_shapes(f: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes from a safetensors header (8-byte length + JSON), nothing else read."""
    try:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return {
        k: tuple(v["shape"])
        for k, v in header.items()
        if isinstance(v, dict) and isinstance(v.get("shape"), list)
    }


def _torch_shapes(f: Path) -> dict[str, tuple[int, ...]] | None:
    """Shapes of a torch state dict, memory-mapped (weights are not read into memory)."""
    if not f.is_file():
        return None
    try:
        import torch

        try:
            obj = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception:  # corrupt or unreadable: the loader reports it with its own message
        return None
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return None
    return {str(k): tuple(v.shape) for k, v in obj.items() if hasattr(v, "shape")}
