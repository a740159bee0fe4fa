"""Interventions on a model's heads and MLP blocks, built on the canonical hook sites.

Every intervention is an :class:`Intervention`: a reversible, re-enterable context
manager that attaches its hooks through ``adapter.hooks(...)`` on entry and removes them on
exit — also when the ``with`` block raises. Interventions compose: nest ``with`` blocks
or combine them with ``a & b`` / :func:`compose`.

The paper's three channels plus mean-ablation::

    ablate_heads(adapter, [(3, 5)], method="zero")      # head masking: z[..., h, :] = 0
    ablate_heads(adapter, [(3, 5)], method="mean",      # z[..., h, :] = mean over a
                 reference=compute_head_means(adapter, batches))  # reference set
    ablate_heads(adapter, [(3, 5)], method="uniform")   # pattern rows = 1/n over real keys
    zero_mlp(adapter, [3])                              # MLP output of layer 3 = 0

Order matters: an intervention at or after the site a readout reads cannot change that
readout (zeroing a head of layer 5 cannot change the attention read at layer 5 or
earlier). :func:`check_intervention_order` / :func:`intervention_order` say so
explicitly; :func:`fidelity` measures how much an intervention changed the model's
hidden states and outputs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from scfm_audit.models._hooks import SITE_KINDS, HookFn, site_name

__all__ = [
    "Intervention",
    "InterventionOrder",
    "ablate_heads",
    "check_intervention_order",
    "compose",
    "compute_head_means",
    "fidelity",
    "fidelity_per_cell",
    "intervention_order",
    "parse_heads",
    "zero_mlp",
]

AblationMethod = Literal["zero", "mean", "uniform"]


# -- the intervention object ----------------------------------------------------------------
class Intervention:
    """Hooks that change the forward pass while the ``with`` block is active.

    ``fns`` is a list of (site name, hook) pairs; ``description`` a short label used in
    tables. Re-enterable (each ``with`` attaches fresh registrations) and safe to nest.
    """

    def __init__(self, adapter, fns: Sequence[tuple[str, HookFn]], *, description: str) -> None:
        self.adapter = adapter
        self.fns = list(fns)
        self.description = description
        for site, _ in self.fns:
            if site not in adapter.hook_points:
                raise ValueError(f"{site!r} is not a hook site of {adapter.name}.")
        self._active: list[contextlib.AbstractContextManager] = []

    @property
    def sites(self) -> list[str]:
        """Hook sites the intervention replaces, in forward order."""
        return sorted({s for s, _ in self.fns}, key=_site_key)

    @property
    def layers(self) -> list[int]:
        return sorted({_site_key(s)[0] for s in self.sites})

    def __enter__(self) -> Intervention:
        cm = self.adapter.hooks(self.fns)
        cm.__enter__()
        self._active.append(cm)
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._active.pop().__exit__(*exc)

    def __and__(self, other: Intervention) -> Intervention:
        return compose(self, other)

    def __repr__(self) -> str:
        return f"Intervention({self.description})"


def compose(*interventions: Intervention) -> Intervention:
    """One intervention applying all of ``interventions`` (hooks in the given order)."""
    if not interventions:
        raise ValueError("compose needs at least one intervention.")
    adapter = interventions[0].adapter
    if any(iv.adapter is not adapter for iv in interventions):
        raise ValueError("cannot compose interventions on different models.")
    fns = [pair for iv in interventions for pair in iv.fns]
    return Intervention(
        adapter, fns, description=" + ".join(iv.description for iv in interventions)
    )


# -- heads ------------------------------------------------------------------------------------
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
        heads = [heads]  # a single head
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
        s = (z * m[:, :, None, None]).sum((0, 1)).to(torch.float64).cpu()
        sums[layer] = sums.get(layer, 0) + s
        counts[layer] = counts.get(layer, 0.0) + float(m.sum())

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


# -- order ---------------------------------------------------------------------------------------
_ORDER = {k: i for i, k in enumerate(SITE_KINDS)}  # forward order of sites within a layer


def _site_key(site: str) -> tuple[int, int]:
    parts = site.split(".")
    return int(parts[1]), _ORDER[".".join(parts[2:])]


@dataclass(frozen=True)
class InterventionOrder:
    """Whether an intervention can change a readout, site by site.

    ``upstream``: intervention sites computed before the readout (they can change it);
    ``same_site``: sites that replace the very tensor read (they change the readout by
    construction, not through the model); ``inert``: sites computed after the readout
    (structurally unable to change it).
    """

    readout: str
    upstream: tuple[str, ...]
    same_site: tuple[str, ...]
    inert: tuple[str, ...]
    message: str

    @property
    def can_affect(self) -> bool:
        """True when at least one intervention site lies upstream of the readout."""
        return bool(self.upstream)

    def __str__(self) -> str:
        return self.message


def check_intervention_order(
    adapter,
    intervention: Intervention | int | Iterable[int],
    readout_layer: int | None,
    *,
    intervention_site: str = "attn.z",
    readout_site: str = "attn.pattern",
) -> InterventionOrder:
    """Can ``intervention`` structurally change a readout taken at ``readout_layer``?

    ``intervention`` is an :class:`Intervention` (its own sites are used) or layer
    numbers (sites ``layers.L.{intervention_site}``; ``attn.z`` = head ablation,
    ``attn.pattern`` = uniform attention, ``mlp.out`` = MLP zeroing).
    ``readout_layer`` is the layer whose ``readout_site`` the readout uses (attention
    edges read at layer R: ``attn.pattern`` / ``attn.scores``); None means the model's
    final outputs (every site is upstream). Within a layer the forward order is
    scores → pattern → z → attn.out → mlp.out → resid_post.
    """
    n = adapter.n_layers
    if isinstance(intervention, Intervention):
        sites = intervention.sites
    else:
        raw = [intervention] if isinstance(intervention, int | np.integer) else intervention
        sites = [site_name(int(L) % n, intervention_site) for L in raw]
    if not sites:
        raise ValueError("the intervention has no sites.")
    if readout_layer is None:
        return InterventionOrder(
            readout="model outputs",
            upstream=tuple(sites),
            same_site=(),
            inert=(),
            message=(
                f"Readout: model outputs (after layer {n - 1}). Every intervention site "
                f"({', '.join(sites)}) is upstream: the intervention can change it."
            ),
        )
    if not -n <= int(readout_layer) < n:
        raise ValueError(f"readout_layer {readout_layer} out of range (model has {n}).")
    readout = site_name(int(readout_layer) % n, readout_site)
    rk = _site_key(readout)
    up = tuple(s for s in sites if _site_key(s) < rk)
    same = tuple(s for s in sites if _site_key(s) == rk)
    inert = tuple(s for s in sites if _site_key(s) > rk)
    parts = [f"Readout: {readout}."]
    if up:
        parts.append(f"Upstream, can change the readout: {', '.join(up)}.")
    if same:
        parts.append(
            f"Same site, overwrites the tensor read (a change by construction, not "
            f"through the model): {', '.join(same)}."
        )
    if inert:
        parts.append(
            f"At or after the readout, structurally unable to change it: {', '.join(inert)}."
        )
    if not up:
        parts.append(
            "This condition cannot change the readout through the model: a null result "
            "here is structural, not evidence that the ablated components are unused."
        )
    return InterventionOrder(
        readout=readout, upstream=up, same_site=same, inert=inert, message=" ".join(parts)
    )


def intervention_order(
    adapter,
    intervention: Intervention | int | Iterable[int],
    readout_layer: int | None,
    *,
    intervention_site: str = "attn.z",
    readout_site: str = "attn.pattern",
) -> str:
    """The sentence of :func:`check_intervention_order` (for reports and logs)."""
    return check_intervention_order(
        adapter,
        intervention,
        readout_layer,
        intervention_site=intervention_site,
        readout_site=readout_site,
    ).message


# -- fidelity ------------------------------------------------------------------------------------
def _cos_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return 1.0 - num / den.clamp(min=1e-12)


def _readouts(out) -> dict[str, torch.Tensor | None]:
    return {
        "hidden": out.hidden.detach().cpu(),
        "cell_embedding": out.cell_embedding.detach().cpu(),
        "gene_predictions": None
        if out.gene_predictions is None
        else out.gene_predictions.detach().cpu(),
        "attention_mask": out.attention_mask.detach().cpu(),
    }


def _compare(batch, base: dict, alt: dict) -> pd.DataFrame:
    mask = base["attention_mask"].to(torch.float64)  # (B, T)
    tok = _cos_dist(base["hidden"], alt["hidden"])  # (B, T)
    hidden = (tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    cols: dict[str, np.ndarray] = {
        "cell": np.asarray(batch.cell_index),
        "hidden": hidden.numpy(),
        "hidden_max": tok.masked_fill(mask == 0, 0).amax(1).numpy(),
        "cell_embedding": _cos_dist(base["cell_embedding"], alt["cell_embedding"]).numpy(),
    }
    if base["gene_predictions"] is not None and alt["gene_predictions"] is not None:
        gp0 = base["gene_predictions"].double() * mask
        gp1 = alt["gene_predictions"].double() * mask
        cols["gene_predictions"] = _cos_dist(gp0, gp1).numpy()
    return pd.DataFrame(cols)


def fidelity_per_cell(
    adapter,
    batches: Iterable,
    intervention: Intervention | Callable[[], contextlib.AbstractContextManager] | Any,
) -> pd.DataFrame:
    """Per-cell cosine distances between the forward pass without and with
    ``intervention``.

    Columns: ``cell`` (obs position), ``hidden`` (last-layer hidden state, cosine
    distance per real token averaged over the cell's real tokens), ``hidden_max`` (largest
    token distance), ``cell_embedding``, and ``gene_predictions`` (the cell's vector of
    predicted values over real tokens) when the model predicts values.

    ``intervention`` is an :class:`Intervention`, a zero-argument callable returning a
    fresh context manager, or a single-use context manager such as
    ``adapter.hooks(...)`` (then all baseline outputs are kept on the CPU until the
    intervened pass, so prefer the first two for many cells).
    """
    frames = []
    if isinstance(intervention, Intervention) or (
        callable(intervention) and not hasattr(intervention, "__enter__")
    ):
        factory = intervention if not isinstance(intervention, Intervention) else None
        for batch in batches:
            base = _readouts(adapter.forward(batch))
            with factory() if factory is not None else intervention:
                alt = _readouts(adapter.forward(batch))
            frames.append(_compare(batch, base, alt))
    else:
        batches = list(batches)
        bases = [_readouts(adapter.forward(b)) for b in batches]
        with intervention:
            for b, base in zip(batches, bases):
                frames.append(_compare(b, base, _readouts(adapter.forward(b))))
    if not frames:
        raise ValueError("fidelity: no batches given.")
    return pd.concat(frames, ignore_index=True)


def fidelity(
    adapter,
    batches: Iterable,
    intervention: Intervention | Callable[[], contextlib.AbstractContextManager] | Any,
    *,
    tol: float = 1e-6,
) -> pd.DataFrame:
    """How much ``intervention`` changed the model: one row per readout (``hidden``,
    ``hidden_max``, ``cell_embedding``, ``gene_predictions``) with the per-cell cosine
    distance's ``mean``, ``median``, ``max``, ``n_cells`` and ``frac_changed`` (share of
    cells with distance > ``tol``). A fidelity near 0 means the intervention did not
    change the model — any null result downstream is then uninformative.
    """
    per_cell = fidelity_per_cell(adapter, batches, intervention)
    desc = getattr(intervention, "description", None)
    rows = []
    for col in per_cell.columns.drop("cell"):
        v = per_cell[col].to_numpy(dtype=float)
        rows.append(
            {
                "readout": col,
                "n_cells": len(v),
                "mean": float(np.mean(v)),
                "median": float(np.median(v)),
                "max": float(np.max(v)),
                "frac_changed": float(np.mean(v > tol)),
                "intervention": desc,
                "model": adapter.name,
            }
        )
    return pd.DataFrame(rows)
