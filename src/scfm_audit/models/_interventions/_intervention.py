"""The :class:`Intervention` object: reversible, re-enterable, composable hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from scfm_audit.models._hooks import SITE_KINDS, HookFn

_ORDER = {k: i for i, k in enumerate(SITE_KINDS)}  # forward order of sites within a layer


def site_key(site: str) -> tuple[int, int]:
    """(layer, position in the forward order within the layer) of a site name."""
    parts = site.split(".")
    return int(parts[1]), _ORDER[".".join(parts[2:])]


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
        return sorted({s for s, _ in self.fns}, key=site_key)

    @property
    def layers(self) -> list[int]:
        return sorted({site_key(s)[0] for s in self.sites})

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
