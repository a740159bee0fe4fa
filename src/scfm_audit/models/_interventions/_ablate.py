"""Head ablations (zero, mean, uniform attention) and MLP zeroing as interventions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch

from scfm_audit.models._hooks import HookFn, site_name
from scfm_audit.models._interventions._intervention import Intervention

AblationMethod = Literal["zero", "mean", "uniform"]


_HEAD_RE = re.compile(
    r"^\s*(?:layers?\.(\d+)\.(?:attn\.)?head\.(\d+)|L(\d+)[./]?H(\d+))\s*$", re.IGNORECASE
)


def parse_heads(
    heads: Iterable[tuple[int, int] | str], *, n_layers: int, n_heads: int
) -> list[tuple[int, int]]:
    """Heads as sorted unique ``(layer, head)`` pairs.

    Accepts tuples and the strings ``"layer.3.head.5"``, ``"layers.3.attn.head.5"`` and
    ``"L3H5"`` / ``"L3/H5"`` (the :attr:`EdgeScores.label` form). Negative layers count
    from the end.
    """
    if isinstance(heads, str) or (
        isinstance(heads, tuple)
        and len(heads) == 2
        and all(isinstance(x, int | np.integer) for x in heads)
    ):
        heads = [cast("tuple[int, int] | str", heads)]  # a single head
    out = set()
    for item in heads:
        if isinstance(item, str):
            m = _HEAD_RE.match(item)
            if m is None:
                raise ValueError(
                    f"cannot parse head {item!r}; write 'layer.3.head.5', "
                    "'layers.3.attn.head.5', 'L3H5' or (3, 5)."
                )
            g = [x for x in m.groups() if x is not None]
            layer, head = int(g[0]), int(g[1])
        else:
            try:
                layer, head = (int(x) for x in item)
            except (TypeError, ValueError):
                raise ValueError(f"a head is (layer, head) or a string, got {item!r}.") from None
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"head {item!r}: layer out of range (model has {n_layers}).")
        if not 0 <= head < n_heads:
            raise ValueError(f"head {item!r}: head out of range (model has {n_heads} per layer).")
        out.add((layer % n_layers, head))
    if not out:
        raise ValueError("no heads given.")
    return sorted(out)


def _by_layer(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    d: dict[int, list[int]] = {}
    for layer, h in heads:
        d.setdefault(layer, []).append(h)
    return d


def _fmt_heads(heads: list[tuple[int, int]]) -> str:
    return ", ".join(f"L{layer}H{h}" for layer, h in heads)


def ablate_heads(
    adapter,
    heads: Iterable[tuple[int, int] | str],
    *,
    method: AblationMethod = "zero",
    reference: Mapping[Any, torch.Tensor] | None = None,
) -> Intervention:
    """Ablate attention heads while the returned context manager is active.

    Parameters
    ----------
    heads
        ``(layer, head)`` pairs or strings (see :func:`parse_heads`).
    method
        ``"zero"``: head masking, the head's output ``layers.L.attn.z[..., h, :]`` is set
        to 0 (Hugging Face ``head_mask``). ``"mean"``: it is replaced by the head's mean
        output over a reference set (``reference`` from :func:`compute_head_means`).
        ``"uniform"``: the head's attention pattern ``layers.L.attn.pattern[:, h]`` is
        replaced by 1/n over the real key tokens (``ctx.attention_mask``; specials count
        as real, padding gets 0), values kept.
    reference
        Required for ``"mean"``: mapping ``(layer, head)`` → (d_head,) mean output.
    """
    hs = parse_heads(heads, n_layers=adapter.n_layers, n_heads=adapter.n_heads)
    fns: list[tuple[str, HookFn]] = []
    if method == "zero":
        for layer, idx in _by_layer(hs).items():
            fns.append((site_name(layer, "attn.z"), _zero_heads_hook(idx)))
    elif method == "mean":
        if reference is None:
            raise ValueError("method='mean' needs reference=compute_head_means(adapter, batches).")
        ref = {
            parse_heads([k], n_layers=adapter.n_layers, n_heads=adapter.n_heads)[0]: v
            for k, v in reference.items()
        }
        missing = [h for h in hs if h not in ref]
        if missing:
            raise ValueError(f"reference has no mean for heads {_fmt_heads(missing)}.")
        for layer, idx in _by_layer(hs).items():
            means = torch.stack([torch.as_tensor(ref[(layer, h)]) for h in idx])
            fns.append((site_name(layer, "attn.z"), _mean_heads_hook(idx, means)))
    elif method == "uniform":
        for layer, idx in _by_layer(hs).items():
            fns.append((site_name(layer, "attn.pattern"), _uniform_heads_hook(idx)))
    else:
        raise ValueError(f"method must be 'zero', 'mean' or 'uniform', got {method!r}.")
    return Intervention(adapter, fns, description=f"{method}-ablate {_fmt_heads(hs)}")


def _zero_heads_hook(idx: list[int]) -> HookFn:
    def hook(z: torch.Tensor, *, site: str, ctx) -> torch.Tensor:  # z (B, T, H, d_head)
        out = z.clone()
        out[:, :, idx, :] = 0
        return out

    return hook


def _mean_heads_hook(idx: list[int], means: torch.Tensor) -> HookFn:
    def hook(z: torch.Tensor, *, site: str, ctx) -> torch.Tensor:  # z (B, T, H, d_head)
        out = z.clone()
        out[:, :, idx, :] = means.to(device=z.device, dtype=z.dtype)
        return out

    return hook


def _uniform_heads_hook(idx: list[int]) -> HookFn:
    def hook(p: torch.Tensor, *, site: str, ctx) -> torch.Tensor:  # p (B, H, T, T)
        B, _, T, _ = p.shape
        mask = ctx.attention_mask
        if mask is None:
            mask = torch.ones((B, T), dtype=torch.bool, device=p.device)
        real = mask.to(device=p.device, dtype=p.dtype)
        u = real / real.sum(1, keepdim=True).clamp(min=1)  # (B, T) over keys
        out = p.clone()
        out[:, idx] = u[:, None, None, :].expand(B, len(idx), T, T)
        return out

    return hook


def compute_head_means(
    adapter, batches: Iterable, *, layers: Sequence[int] | None = None
) -> dict[tuple[int, int], torch.Tensor]:
    """Mean output ``z`` (d_head,) of every head over the real tokens of ``batches``.

    Returns ``{(layer, head): tensor}`` (float64, CPU) for :func:`ablate_heads` with
    ``method="mean"``. Hooks active around the call (other interventions) are applied.
    """
    layer_list = (
        list(range(adapter.n_layers))
        if layers is None
        else [int(L) % adapter.n_layers for L in layers]
    )
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, float] = {}

    def observe(z: torch.Tensor, *, site: str, ctx) -> None:
        layer = int(site.split(".")[1])
        B, T = z.shape[:2]
        m = ctx.attention_mask
        m = torch.ones((B, T), device=z.device) if m is None else m.to(z.device, z.dtype)
        if z.dtype in (torch.bfloat16, torch.float16):  # sum a low-precision forward in fp32
            s = (z * m[:, :, None, None]).sum((0, 1), dtype=torch.float32)
            n = float(m.sum(dtype=torch.float32))
        else:
            s, n = (z * m[:, :, None, None]).sum((0, 1)), float(m.sum())
        sums[layer] = sums.get(layer, 0) + s.to(torch.float64).cpu()
        counts[layer] = counts.get(layer, 0.0) + n

    n_batches = 0
    with adapter.hooks([(site_name(L, "attn.z"), observe) for L in layer_list]):
        for batch in batches:
            adapter.forward(batch)
            n_batches += 1
    if not n_batches or not any(counts.values()):
        raise ValueError("compute_head_means: the reference batches are empty.")
    return {(L, h): sums[L][h] / counts[L] for L in layer_list for h in range(adapter.n_heads)}


# -- MLP ---------------------------------------------------------------------------------------
def zero_mlp(adapter, layers: int | Iterable[int]) -> Intervention:
    """Zero the feed-forward output ``layers.L.mlp.out`` of ``layers`` (before the
    residual add), while the returned context manager is active."""
    raw = [layers] if isinstance(layers, int | np.integer) else list(layers)
    n = adapter.n_layers
    if not raw:
        raise ValueError("zero_mlp: no layers given.")
    bad = [L for L in raw if not -n <= int(L) < n]
    if bad:
        raise ValueError(f"zero_mlp: layers {bad} out of range (model has {n}).")
    ls = sorted({int(L) % n for L in raw})

    def hook(x: torch.Tensor, *, site: str, ctx) -> torch.Tensor:
        return torch.zeros_like(x)

    return Intervention(
        adapter,
        [(site_name(L, "mlp.out"), hook) for L in ls],
        description=f"zero MLP of layer{'s' if len(ls) > 1 else ''} " + ", ".join(map(str, ls)),
    )
