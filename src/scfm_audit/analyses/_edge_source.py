"""Shared plumbing of the analyses that re-score an edge source on subsets of its cells
(``cssi``: strata; ``scaling``: nested subsamples): the source's scorer, model, options
and cells, as the runner computed its pooled scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from scfm_audit.analyses._contract import AnalysisContext


def edge_setup(
    ctx: AnalysisContext, en: str, ds: str
) -> tuple[str, str | None, dict[str, Any], np.ndarray]:
    """The edge source's scorer, model, options and cells (those the pooled scores used)."""
    e = ctx.edge_source(en)
    return e.scorer, e.model, dict(e.options()), ctx.edge_cells(en, ds)


_READOUT = ("normalisation", "symmetrise", "correction")


def attention_options(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An attention source's options split into those of the extraction pass
    (``extract_attention_accumulator``) and those of the read-out
    (``AttentionAccumulator.to_edge_scores``: normalisation, symmetrise, correction);
    ``per_head`` and ``layers`` are dropped (the caller chooses them)."""
    o = {k: v for k, v in opts.items() if k not in ("per_head", "layers")}
    readout = {k: o.pop(k) for k in _READOUT if k in o}
    return o, readout
