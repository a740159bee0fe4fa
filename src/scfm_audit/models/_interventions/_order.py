"""Whether an intervention can structurally change a readout (forward order of sites)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scfm_audit.models._hooks import site_name
from scfm_audit.models._interventions._intervention import Intervention, site_key


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
    rk = site_key(readout)
    up = tuple(s for s in sites if site_key(s) < rk)
    same = tuple(s for s in sites if site_key(s) == rk)
    inert = tuple(s for s in sites if site_key(s) > rk)
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
