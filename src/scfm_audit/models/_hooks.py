"""Named hook points (TransformerLens style) shared by every model adapter.

Every adapter computes its transformer layers through :func:`encoder_layer` (see
``_transformer.py``), which passes each intermediate tensor through a named
:class:`HookPoint`. Canonical site names, with the tensor shape each one sees::

    layers.{L}.attn.scores     (B, H, T, T)  q·kᵀ/√d_head, before masking and softmax
    layers.{L}.attn.pattern    (B, H, T, T)  softmax attention probabilities (rows = queries)
    layers.{L}.attn.z          (B, T, H, d_head)  per-head output, before the output projection
    layers.{L}.attn.out        (B, T, D)     attention block output (after out-projection)
    layers.{L}.mlp.out         (B, T, D)     feed-forward block output (before residual add)
    layers.{L}.resid_post      (B, T, D)     hidden state leaving layer L

A hook is ``fn(tensor, *, site: str, ctx: HookContext) -> Tensor | None``; returning a
tensor replaces the activation (an intervention), returning None only observes it.
``ctx`` carries the batch's ``attention_mask`` (B, T; True = real token, specials
included) so interventions such as uniform attention know which keys are real.
Hooks are only ever attached through :func:`hooks`, a context manager that removes them
in ``finally``: no global hook state survives an exception.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import torch

SITE_KINDS = (
    "attn.scores",
    "attn.pattern",
    "attn.z",
    "attn.out",
    "mlp.out",
    "resid_post",
)


@dataclass
class HookContext:
    """What a hook may need besides the tensor: the batch's real-token mask."""

    attention_mask: torch.Tensor | None = None  # (B, T) bool, True = real token
    extra: dict = field(default_factory=dict)


HookFn = Callable[..., torch.Tensor | None]


class HookPoint:
    """A named site in the forward pass; runs its hooks in registration order."""

    __slots__ = ("_fns", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self._fns)

    def __call__(self, x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        for fn in self._fns:
            out = fn(x, site=self.name, ctx=ctx)
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(
                        f"hook on {self.name} returned shape {tuple(out.shape)}, "
                        f"expected {tuple(x.shape)}"
                    )
                x = out
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self._fns)} hooks)"


def site_name(layer: int, kind: str) -> str:
    if kind not in SITE_KINDS:
        raise ValueError(f"unknown site kind {kind!r}; known: {', '.join(SITE_KINDS)}")
    return f"layers.{layer}.{kind}"


def make_hook_points(n_layers: int) -> dict[str, HookPoint]:
    return {
        site_name(L, k): HookPoint(site_name(L, k)) for L in range(n_layers) for k in SITE_KINDS
    }


def resolve_sites(points: Mapping[str, HookPoint], pattern: str) -> list[str]:
    """Site names matching ``pattern`` (exact name or glob, e.g. ``layers.*.attn.pattern``)."""
    if pattern in points:
        return [pattern]
    hits = [n for n in points if fnmatch.fnmatchcase(n, pattern)]
    if not hits:
        import difflib

        close = difflib.get_close_matches(pattern, list(points), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no hook site matches {pattern!r}.{hint}")
    return hits


@contextlib.contextmanager
def hooks(
    points: Mapping[str, HookPoint] | object,
    fns: Mapping[str, HookFn] | list[tuple[str, HookFn]],
) -> Iterator[None]:
    """Attach hooks for the duration of the ``with`` block; always detached afterwards.

    ``points`` is a mapping of site name → HookPoint or any object with a
    ``hook_points`` mapping (a model adapter). ``fns`` maps a site name or glob to a hook;
    a list of pairs allows several hooks on one site. Composable: nested ``with`` blocks
    stack hooks, innermost last.
    """
    pts = cast("Mapping[str, HookPoint]", getattr(points, "hook_points", points))
    pairs = list(fns.items()) if isinstance(fns, Mapping) else list(fns)
    attached: list[tuple[HookPoint, HookFn]] = []
    try:
        for pattern, fn in pairs:
            for name in resolve_sites(pts, pattern):
                pts[name]._fns.append(fn)
                attached.append((pts[name], fn))
        yield
    finally:
        for hp, fn in reversed(attached):
            # remove this exact registration (the same fn may be attached twice)
            for i in range(len(hp._fns) - 1, -1, -1):
                if hp._fns[i] is fn:
                    del hp._fns[i]
                    break
