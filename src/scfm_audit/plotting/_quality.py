"""Figures of the quality-control analyses: split-half overlap against cells
(``stability``) and the matrix of pairwise agreement between contexts
(``cross_context_consistency``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scfm_audit.plotting._figures import _new_figure, _style


def stability_figure(
    curve: pd.DataFrame,
    *,
    x: str = "n_cells",
    y: str = "jaccard",
    series: str = "series",
    ci: tuple[str, str] = ("ci_low", "ci_high"),
    null: str | None = "null_jaccard",
    target: float | None = None,
    title: str | None = None,
) -> Figure:
    """Top-k overlap of two halves against the cells per half (log scale): one line per
    ``series`` (e.g. layer) with its CI band, the level the gene-level null gives (same
    colour, dotted) and the ``target`` overlap of a stable top-k (grey dashes)."""
    missing = [c for c in (x, y, series, *ci) if c not in curve.columns]
    if missing:
        raise ValueError(f"stability_figure: columns {missing} not in the table.")
    fig = _new_figure(6.4, 4.2)
    ax = fig.subplots()
    for i, (name, d) in enumerate(curve.groupby(series, sort=False)):
        d = d.sort_values(x)
        st = _style(i)
        xs = d[x].to_numpy(float)
        ax.plot(
            xs,
            d[y].to_numpy(float),
            color=st["color"],
            marker=st["marker"],
            linestyle="-",
            linewidth=1.6,
            markersize=4,
            label=str(name),
        )
        lo, hi = d[ci[0]].to_numpy(float), d[ci[1]].to_numpy(float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(xs[ok], lo[ok], hi[ok], color=st["color"], alpha=0.15, linewidth=0)
        if null is not None and null in d and np.isfinite(d[null].to_numpy(float)).any():
            ax.plot(xs, d[null].to_numpy(float), color=st["color"], linestyle=":", linewidth=1.2)
    if target is not None:
        ax.axhline(
            target, color="0.45", linestyle="--", linewidth=1, label=f"stable top-k ({target:g})"
        )
    if null is not None:
        ax.plot([], [], color="0.3", linestyle=":", label="gene-level null (relabelled)")
    ax.set_xscale("log")
    ticks = np.unique(curve[x].to_numpy(float))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("cells per half")
    ax.set_ylabel("top-k Jaccard of the two halves")
    ax.set_ylim(0, 1.02)
    ax.grid(True, color="0.92", linewidth=0.8)
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        title="band: 95% CI",
        title_fontsize=8,
    )
    if title:
        fig.suptitle(title)
    return fig


def agreement_heatmap(
    pairs: pd.DataFrame,
    *,
    contexts: Sequence[str],
    value: str = "jaccard",
    null: str | None = "jaccard_null",
    panel: str | None = None,
    title: str | None = None,
    label: str = "top-k Jaccard",
) -> Figure:
    """Matrix of pairwise agreement between contexts: ``pairs`` has one row per pair
    (``context_a``, ``context_b``, ``value``, optionally ``null`` and ``panel``); each
    off-diagonal cell shows the agreement and, beneath it, the gene-level null's level.
    One matrix per ``panel`` value (e.g. layer)."""
    for c in ("context_a", "context_b", value):
        if c not in pairs.columns:
            raise ValueError(f"agreement_heatmap: column {c!r} not in the table.")
    names = list(contexts)
    idx = {c: i for i, c in enumerate(names)}
    panels = list(dict.fromkeys(pairs[panel])) if panel else [None]
    m = len(names)
    size = min(1.0 + 0.75 * m, 7.0)
    fig = _new_figure(min(size * len(panels) + 1.4, 18.0), size + 0.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    vals = pairs[value].to_numpy(float)
    finite = vals[np.isfinite(vals)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1e-9, float(finite.max())) if finite.size else 1.0
    im = None
    for ax, pv in zip(axes, panels, strict=True):
        sub = pairs if pv is None else pairs[pairs[panel] == pv]
        M = np.full((m, m), np.nan)
        N = np.full((m, m), np.nan)
        for r in sub.itertuples(index=False):
            i, j = idx[r.context_a], idx[r.context_b]
            M[i, j] = M[j, i] = float(getattr(r, value))
            if null:
                N[i, j] = N[j, i] = float(getattr(r, null))
        im = ax.imshow(M, cmap="viridis", vmin=vmin, vmax=vmax)
        for i in range(m):
            for j in range(m):
                if i != j and np.isfinite(M[i, j]):
                    txt = f"{M[i, j]:.2f}"
                    if null and np.isfinite(N[i, j]):
                        txt += f"\n({N[i, j]:.2f})"
                    bright = (M[i, j] - vmin) / (vmax - vmin) > 0.6
                    ax.text(
                        j,
                        i,
                        txt,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if bright else "white",
                    )
        ax.set_xticks(range(m), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(m), names, fontsize=8)
        if pv is not None:
            ax.set_title(str(pv), fontsize=9)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes), shrink=0.8)
        cb.set_label(label + (" (in brackets: gene-level null)" if null else ""), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
