"""The edge-scorer registry.

A scorer is a function ``fn(adata, *, genes=None, seed=0, **params) -> list[EdgeScores]``:
AnnData in, one :class:`~scfm_audit.edges._scores.EdgeScores` per layer / head (model
scorers) or per variant (gene-level baselines) out. Model-free scorers return a list too, so
that every scorer has the same signature. Built-in scorers live in the modules listed below
and are imported the first time the registry is queried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from scfm_audit._registry import Registry

if TYPE_CHECKING:
    from scfm_audit.edges._scores import EdgeScores

EdgeScorer = Callable[..., "list[EdgeScores]"]

EDGE_SCORERS: Registry[EdgeScorer] = Registry(
    "edge scorer",
    modules=(
        "scfm_audit.edges._coexpression",
        "scfm_audit.edges._gene_level",
        "scfm_audit.edges._attention",
    ),
)


def register_scorer(name: str) -> Callable[[EdgeScorer], EdgeScorer]:
    """Decorator registering an edge scorer under ``name`` (an error if already taken).

    The decorated function must accept ``(adata, *, genes=None, seed=0, **params)`` and
    return a ``list[EdgeScores]``.
    """
    return EDGE_SCORERS.register(name)
