"""Shared plumbing of the analyses that re-score an edge source on subsets of its cells
(``cssi``: strata; ``scaling``: nested subsamples): the source's scorer, model, options
and cells, as the runner computed its pooled scores."""

from __future__ import annotations

from typing import Any

import numpy as np


def edge_setup(ctx, en: str, ds: str) -> tuple[str, str | None, dict[str, Any], np.ndarray]:
    """The edge source's scorer, model, options and cells (those the pooled scores used).
    Contexts without the runner's resources: co-expression with the pooled method, all
    cells."""
    res = getattr(ctx, "resources", None)
    if res is not None and hasattr(res, "edge_cells"):
        e = res.cfg.edges[en]
        return e.scorer, e.model, dict(e.options()), res.edge_cells(en, ds)
    pooled = ctx.edge_scores(en, ds)[0]  # contexts without the runner: all cells
    return "coexpression", None, {"method": pooled.method}, np.arange(ctx.dataset(ds).n_obs)
