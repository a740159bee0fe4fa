"""Benjamini–Hochberg false discovery rate."""

from __future__ import annotations

import numpy as np


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values for ``p``; NaN entries stay NaN and are not counted in m."""
    # imported here, as statsmodels is elsewhere: at import time it costs ~70 MiB (it
    # pulls in polars) in every process that imports scfm_audit.stats or evaluate
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q
