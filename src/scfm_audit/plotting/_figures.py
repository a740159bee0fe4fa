"""Figure helpers shared by the analyses.

Every helper returns a :class:`matplotlib.figure.Figure` drawn on the Agg canvas (no
pyplot state, nothing to close, safe in worker processes and headless runs), with
labelled axes, a title and the Okabe–Ito colour-blind-safe palette. The runner saves
them as PNG and the report embeds them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

log = logging.getLogger("scfm_audit")

#: Okabe & Ito (2008) colour-blind-safe palette (yellow last: weak on white).
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

_PRETTY = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "epr": "early-precision ratio",
    "layer": "layer",
    "head": "head",
    "delta_auroc": "ΔAUROC",
}


def _pretty(name: str) -> str:
    return _PRETTY.get(name, name.replace("_", " "))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _style(i: int) -> dict[str, Any]:
    """Colour, line style and marker for series ``i`` (redundant encodings, so series
    stay distinguishable in greyscale and for every colour-vision deficiency)."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "linestyle": _LINESTYLES[(i // len(PALETTE)) % len(_LINESTYLES)],
        "marker": _MARKERS[i % len(_MARKERS)],
    }


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` points of a curve (both ends kept)."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[idx], y[idx]


# ----------------------------------------------------------------------------------------
def roc_pr_figure(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    title: str | None = None,
) -> Figure:
    """ROC and precision–recall curves side by side.

    Parameters
    ----------
    curves
        ``label -> (y_true, scores)``: binary labels (1 = reference edge / responder) and
        scores (higher = more likely positive). Pairs with a non-finite score are dropped;
        a curve with only one class is listed as undefined.
    title
        Figure title.

    Returns
    -------
    Figure with two axes: ROC (with the chance diagonal, AUROC in the legend) and PR
    (with each curve's positive rate as the no-skill line, AUPRC = average precision in
    the legend).
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    fig = _new_figure(11.0, 5.6)
    ax_roc, ax_pr = fig.subplots(1, 2)
    ax_roc.plot([0, 1], [0, 1], color="0.55", linestyle=":", linewidth=1, label="chance (0.5)")
    rates: list[float] = []
    for i, (label, (y_true, scores)) in enumerate(curves.items()):
        y = np.asarray(y_true, dtype=float).ravel()
        s = np.asarray(scores, dtype=float).ravel()
        if y.shape != s.shape:
            raise ValueError(
                f"roc_pr_figure: curve {label!r} has {y.size} labels but {s.size} scores."
            )
        keep = np.isfinite(s) & np.isfinite(y)
        y, s = y[keep].astype(int), s[keep]
        st = _style(i)
        if y.size == 0 or y.min() == y.max():
            ax_roc.plot([], [], color=st["color"], label=f"{label}: undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        auc = roc_auc_score(y, s)
        ap = average_precision_score(y, s)
        rate = float(y.mean())
        fpr, tpr = _thin(fpr, tpr)
        rec, prec = _thin(rec[::-1], prec[::-1])
        ax_roc.plot(
            fpr,
            tpr,
            color=st["color"],
            linestyle=st["linestyle"],
            linewidth=1.6,
            label=f"{label} (AUROC {auc:.3f})",
        )
        ax_pr.plot(
            rec,
            prec,
            color=st["color"],
            linestyle=st["linestyle"],
            linewidth=1.6,
            drawstyle="steps-pre",
            label=f"{label} (AUPRC {ap:.3f})",
        )
        rates.append(rate)
        ax_pr.axhline(rate, color=st["color"], linestyle=":", linewidth=1, alpha=0.8)
    if rates:
        same = np.allclose(rates, rates[0])
        desc = f"positive rate ({rates[0]:.3g})" if same else "positive rate (dotted, per curve)"
        ax_pr.plot([], [], color="0.4", linestyle=":", linewidth=1, label=desc)
    ax_roc.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        title="ROC",
    )
    ax_pr.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="precision–recall"
    )
    for ax in (ax_roc, ax_pr):
        ax.set_aspect("equal", adjustable="box")
        ax.grid(True, color="0.92", linewidth=0.8)
        # below the axes: a legend inside would hide the curves (PR starts top left, ROC
        # ends top right, either may run anywhere)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            fontsize=8,
            frameon=False,
            ncol=1,
        )
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------
def _probability_range(values: np.ndarray, chance: float | None) -> tuple[float, float] | None:
    """A fixed y-range for a [0, 1] metric around chance 0.5 (AUROC): at least 0.3–0.8,
    widened in steps of 0.1 to hold every value (CIs included), within [0, 1]."""
    v = values[np.isfinite(values)]
    if chance != 0.5 or v.size == 0 or v.min() < 0 or v.max() > 1:
        return None
    lo = min(0.3, np.floor(v.min() * 10) / 10)
    hi = max(0.8, np.ceil(v.max() * 10) / 10)
    return float(max(lo, 0.0)) - 0.01, float(min(hi, 1.0)) + 0.01


def _mean_duplicates(
    df: pd.DataFrame, keys: list[str], cols: list[str]
) -> tuple[pd.DataFrame, int]:
    """Average ``cols`` over rows sharing ``keys``; return the frame and the largest
    number of rows merged into one (1 = no duplicates)."""
    sizes = df.groupby(keys, dropna=False, sort=False).size()
    most = int(sizes.max()) if len(sizes) else 1
    if most <= 1:
        return df, 1
    out = df.groupby(keys, dropna=False, sort=False)[cols].mean().reset_index()
    return out, most


def metric_by_layer_figure(
    df: pd.DataFrame,
    *,
    x: str = "layer",
    y: str = "auroc",
    hue: str | None = "method",
    ci: tuple[str, str] | None = ("ci_low", "ci_high"),
    chance: float | None = 0.5,
    col: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """A metric against layer (or any ordered ``x``): one line per ``hue`` value with its
    CI band, optionally one panel per ``col`` value (e.g. per reference).

    Parameters
    ----------
    df
        Long table with columns ``x``, ``y`` (and ``hue``, ``col``, the two ``ci``
        columns when given). Rows with a missing ``x`` or ``y`` are dropped; several rows
        per (col, hue, x) are averaged and the figure says so.
    ci
        Lower and upper CI columns, drawn as a shaded band; ``None`` for no band.
    chance
        Level drawn as a dotted line (0.5 for AUROC); ``None`` for none.
    ylim
        Fixed y-range. Default: for a metric on [0, 1] with chance 0.5 (AUROC), a range
        of at least 0.3–0.8 that always contains 0.5, so that noise of ±0.01 does not
        fill the axes; otherwise matplotlib's auto-scale.

    Returns
    -------
    Figure with one axes per ``col`` value (one axes without ``col``); the legend sits
    to the right of the last one, never over the lines.
    """
    needed = [c for c in (x, y, hue, col, *(ci or ())) if c is not None]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(
            f"metric_by_layer_figure: columns {missing} not in the table "
            f"(it has {list(df.columns)})."
        )
    data = df.dropna(subset=[x, y]).copy()
    hue_col = hue if hue is not None else "__all__"
    if hue is None:
        data[hue_col] = y
    panel_col = col if col is not None else "__panel__"
    if col is None:
        data[panel_col] = ""
    value_cols = [y, *(ci or ())]
    data[value_cols] = data[value_cols].astype(float)
    data, merged = _mean_duplicates(data, [panel_col, hue_col, x], value_cols)
    panels = list(dict.fromkeys(data[panel_col]))
    hues = list(dict.fromkeys(data[hue_col]))
    n = max(len(panels), 1)
    fig = _new_figure(min(4.8 * n + 1.2, 16.0), 4.2)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True, squeeze=False)[0])
    for ax, panel in zip(axes, panels or [""]):
        sub = data[data[panel_col] == panel] if panels else data
        for i, h in enumerate(hues):
            d = sub[sub[hue_col] == h].sort_values(x)
            if d.empty:
                continue
            st = _style(i)
            xs = d[x].to_numpy(dtype=float)
            ax.plot(
                xs,
                d[y].to_numpy(dtype=float),
                color=st["color"],
                linestyle=st["linestyle"],
                marker=st["marker"],
                markersize=4,
                linewidth=1.6,
                label=str(h) if hue is not None else None,
            )
            if ci is not None:
                lo = d[ci[0]].to_numpy(dtype=float)
                hi = d[ci[1]].to_numpy(dtype=float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    ax.fill_between(
                        xs[ok], lo[ok], hi[ok], color=st["color"], alpha=0.15, linewidth=0
                    )
        if chance is not None:
            ax.axhline(
                chance, color="0.45", linestyle=":", linewidth=1, label=f"chance ({chance:g})"
            )
        ax.set_xlabel(xlabel or _pretty(x))
        if col is not None:
            ax.set_title(f"{col} = {panel}", fontsize=10)
        if np.issubdtype(np.asarray(data[x]).dtype, np.number):
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, color="0.92", linewidth=0.8)
    axes[0].set_ylabel(ylabel or _pretty(y))
    if ylim is None:
        ylim = _probability_range(data[value_cols].to_numpy(dtype=float), chance)
    if ylim is not None:
        axes[0].set_ylim(*ylim)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        legend_title = _pretty(hue) if hue else None
        if ci is not None:
            legend_title = f"{legend_title} (band: CI)" if legend_title else "band: CI"
        axes[-1].legend(
            handles,
            labels,
            fontsize=8,
            frameon=True,
            framealpha=0.9,
            title=legend_title,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
        )
    if merged > 1:
        axes[0].annotate(
            f"mean of up to {merged} rows per point",
            xy=(0.01, 0.96),
            xycoords="axes fraction",
            fontsize=7,
            color="0.35",
            va="top",
        )
        log.warning("metric_by_layer_figure: up to %d rows per (%s, %s) averaged", merged, hue, x)
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------
def head_heatmap(
    df: pd.DataFrame,
    *,
    value: str = "auroc",
    layer: str = "layer",
    head: str = "head",
    mark: str | None = None,
    center: float | Literal["auto"] | None = "auto",
    min_span: float = 0.1,
    title: str | None = None,
    label: str | None = None,
) -> Figure:
    """Layer × head heatmap of ``value`` with a colour bar.

    Parameters
    ----------
    df
        One row per (layer, head) (several rows per cell are averaged and the figure
        says so).
    mark
        Boolean column; its true cells (e.g. heads significant after FDR) get a black
        box and a dot.
    center
        Value at the middle of a diverging colour map (e.g. 0.5 for AUROC); ``None``
        uses the sequential viridis map; ``"auto"``: 0.5 when ``value`` is an AUROC, so
        that chance is white and noise around it stays pale.
    min_span
        With ``center``: the colour map spans at least ``center ± min_span`` (AUROC: 0.4
        to 0.6), so that heads within noise of chance stay pale instead of being
        stretched to the darkest colours.

    Returns
    -------
    Figure with two axes (the heatmap and its colour bar).
    """
    missing = [c for c in (value, layer, head, mark) if c is not None and c not in df.columns]
    if missing:
        raise ValueError(
            f"head_heatmap: columns {missing} not in the table (it has {list(df.columns)})."
        )
    if center == "auto":
        center = 0.5 if "auroc" in value.lower() else None
    data = df.dropna(subset=[layer, head]).copy()
    data[value] = data[value].astype(float)
    cols = [value]
    if mark is not None:
        data[mark] = data[mark].fillna(False).astype(float)
        cols.append(mark)
    data, merged = _mean_duplicates(data, [layer, head], cols)
    grid = data.pivot(index=layer, columns=head, values=value).sort_index().sort_index(axis=1)
    n_layers, n_heads = grid.shape
    fig = _new_figure(
        min(max(3.2 + 0.42 * n_heads, 4.8), 14.0), min(max(1.6 + 0.34 * n_layers, 3.2), 12.0)
    )
    ax = fig.subplots()
    z = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    if center is not None and z.count():
        span = max(float(np.nanmax(np.abs(z.compressed() - center))), min_span)
        norm = TwoSlopeNorm(vcenter=center, vmin=center - span, vmax=center + span)
        im = ax.imshow(z, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    else:
        im = ax.imshow(z, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_heads), [str(_as_int(h)) for h in grid.columns])
    ax.set_yticks(range(n_layers), [str(_as_int(v)) for v in grid.index])
    ax.set_xlabel(_pretty(head))
    ax.set_ylabel(_pretty(layer))
    if n_heads * n_layers <= 96 and z.count():
        # set by imshow from the data (or the TwoSlopeNorm above)
        lo, hi = cast(float, im.norm.vmin), cast(float, im.norm.vmax)
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(v):
                frac = (v - lo) / (hi - lo) if hi > lo else 0.5
                dark = frac < 0.35 if center is None else abs(frac - 0.5) > 0.3
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    if mark is not None:
        m = data.pivot(index=layer, columns=head, values=mark).reindex_like(grid)
        ii, jj = np.nonzero(m.to_numpy(dtype=float) > 0.5)
        for i, j in zip(ii, jj):
            ax.add_patch(_box(int(j), int(i)))
        fig.supxlabel(
            f"boxed: {_pretty(mark)} ({len(ii)} of {z.count()} cells)", fontsize=8, color="0.25"
        )
    cbar = fig.colorbar(im, ax=ax, shrink=0.9)
    cbar.set_label(label or _pretty(value))
    if merged > 1:
        ax.annotate(
            f"mean of up to {merged} rows per cell",
            xy=(0, 1.01),
            xycoords="axes fraction",
            fontsize=7,
            color="0.35",
        )
        log.warning("head_heatmap: up to %d rows per (layer, head) averaged", merged)
    if title:
        ax.set_title(title, pad=14 if merged > 1 else 6)
    return fig


def _box(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.46, y - 0.46), 0.92, 0.92, fill=False, edgecolor="black", linewidth=1.8)


def _as_int(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() else v


# ----------------------------------------------------------------------------------------
def null_distribution_figure(
    null: np.ndarray,
    observed: float,
    *,
    title: str | None = None,
    xlabel: str = "statistic",
    direction: str = "greater",
    p: float | None = None,
    bins: int | str = "auto",
) -> Figure:
    """Histogram of a permutation / resampling null with the observed value.

    ``p`` is shown as given (pass the p-value the analysis registered); otherwise the
    empirical p is computed with the +1 correction, ``(1 + #{null ≥ observed}) /
    (1 + n)`` for ``direction="greater"`` (≤ for "less", twice the smaller tail, capped at
    1, for "two-sided").

    Returns
    -------
    Figure with one axes.
    """
    if direction not in ("greater", "less", "two-sided"):
        raise ValueError(f"direction must be greater/less/two-sided, got {direction!r}")
    z = np.asarray(null, dtype=float).ravel()
    z = z[np.isfinite(z)]
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    n = z.size
    if p is None and n:
        ge = (1 + np.sum(z >= observed)) / (1 + n)
        le = (1 + np.sum(z <= observed)) / (1 + n)
        p = {"greater": ge, "less": le, "two-sided": min(1.0, 2 * min(ge, le))}[direction]
    if n:
        ax.hist(
            z,
            bins=bins,
            color=PALETTE[5],
            edgecolor="white",
            linewidth=0.4,
            label=f"null (n = {n:,})",
        )
    p_txt = "undefined" if p is None or not np.isfinite(p) else f"{p:.3g}"
    ax.axvline(
        observed,
        color=PALETTE[1],
        linewidth=2,
        label=f"observed = {observed:.4g}\np = {p_txt} ({direction})",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(True, axis="y", color="0.92", linewidth=0.8)
    ax.legend(fontsize=8, frameon=True, framealpha=0.9)
    ax.set_title(title or "null distribution")
    return fig


# ----------------------------------------------------------------------------------------
def forest_figure(
    df: pd.DataFrame,
    *,
    label: str,
    effect: str,
    ci_low: str,
    ci_high: str,
    ref: float | None = 0.0,
    hue: str | None = None,
    mark: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
) -> Figure:
    """Forest plot: one row per ``label`` with its effect and CI, a reference line at
    ``ref`` (0 for differences, 1 for ratios).

    ``hue`` colours rows by a grouping column; ``mark`` (boolean column, e.g. q < α)
    fills the point (open points are not significant). Rows are drawn top to bottom in
    table order.

    Returns
    -------
    Figure with one axes.
    """
    missing = [
        c
        for c in (label, effect, ci_low, ci_high, hue, mark)
        if c is not None and c not in df.columns
    ]
    if missing:
        raise ValueError(
            f"forest_figure: columns {missing} not in the table (it has {list(df.columns)})."
        )
    n = len(df)
    fig = _new_figure(7.0, min(max(1.4 + 0.32 * n, 2.6), 30.0))
    ax = fig.subplots()
    ys = np.arange(n)[::-1]
    groups = list(dict.fromkeys(df[hue])) if hue is not None else [None]
    eff = df[effect].to_numpy(dtype=float)
    lo = df[ci_low].to_numpy(dtype=float)
    hi = df[ci_high].to_numpy(dtype=float)
    filled = (
        df[mark].fillna(False).to_numpy(dtype=bool) if mark is not None else np.ones(n, dtype=bool)
    )
    for gi, g in enumerate(groups):
        sel = np.ones(n, dtype=bool) if hue is None else (df[hue] == g).to_numpy()
        st = _style(gi)
        has_ci = sel & np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(ys[has_ci], lo[has_ci], hi[has_ci], color=st["color"], linewidth=1.8)
        labelled = False
        for fill in (True, False):
            s = sel & (filled == fill)
            if s.any():
                legend_label = str(g) if hue is not None and not labelled else None
                labelled = True
                ax.plot(
                    eff[s],
                    ys[s],
                    linestyle="none",
                    marker=st["marker"],
                    markersize=6,
                    color=st["color"],
                    markerfacecolor=st["color"] if fill else "white",
                    markeredgewidth=1.5,
                    label=legend_label,  # once per group, filled or not
                )
    if ref is not None:
        ax.axvline(ref, color="0.45", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [str(v) for v in df[label]])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(xlabel or _pretty(effect) + " (CI)")
    ax.set_ylabel(_pretty(label))
    ax.grid(True, axis="x", color="0.92", linewidth=0.8)
    if hue is not None:
        ax.legend(fontsize=8, frameon=True, framealpha=0.9, title=_pretty(hue), title_fontsize=8)
    if mark is not None:
        ax.annotate(
            f"filled: {_pretty(mark)}",
            xy=(1, 1.01),
            xycoords="axes fraction",
            ha="right",
            fontsize=7,
            color="0.35",
        )
    ax.set_title(title or f"{_pretty(effect)} with CI")
    return fig


def nulls_figure(
    panels: dict[str, tuple[float, dict[str, np.ndarray]]],
    *,
    title: str | None = None,
    xlabel: str = "AUROC",
    chance: float | None = 0.5,
) -> Figure:
    """Several null distributions of one statistic against its observed value, one panel
    per score set: ``panels[label] = (observed, {null name: draws})``. Nulls are drawn as
    density outlines on a shared x-axis, so a null that is too narrow (e.g. a label
    shuffle that ignores dependent edges) is visible at a glance."""
    k = max(1, len(panels))
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = _new_figure(3.6 * cols, 2.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True)).ravel()
    allv = [obs for obs, _ in panels.values()] + [
        v for _, d in panels.values() for z in d.values() for v in np.asarray(z)[np.isfinite(z)]
    ]
    lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, 60)
    for ax, (label, (observed, nulls)) in zip(axes, panels.items()):
        for i, (name, draws) in enumerate(nulls.items()):
            z = np.asarray(draws, dtype=float)
            z = z[np.isfinite(z)]
            if z.size:
                ax.hist(
                    z,
                    bins=bins,
                    density=True,
                    histtype="step",
                    linewidth=1.4,
                    color=PALETTE[i % len(PALETTE)],
                    label=f"{_pretty(name)} ({z.size:,})",
                )
        if chance is not None:
            ax.axvline(chance, color="0.6", linestyle=":", linewidth=1)
        ax.axvline(observed, color="black", linewidth=2, label=f"observed {observed:.3f}")
        ax.set_title(label, fontsize=9)
        ax.set_yticks([])
        ax.legend(fontsize=6.5, frameon=True, framealpha=0.9, loc="upper left")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel(xlabel)
    fig.suptitle(title or "null distributions", fontsize=10)
    return fig


# ------------------------------------------------------------ attention vs co-expression
def hexbin_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    gridsize: int = 40,
    max_cols: int = 4,
) -> Figure:
    """One hexbin panel per entry of ``panels`` (``name -> (x, y)``, e.g. per layer:
    |co-expression| against attention over every gene pair), log-scaled counts, with each
    panel's Spearman ρ in its title. Returns a matplotlib Figure."""
    from scipy.stats import spearmanr

    names = list(panels)
    n = max(1, len(names))
    cols = min(max_cols, n)
    rows = -(-n // cols)
    fig = _new_figure(2.6 * cols + 0.6, 2.4 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        x, y = (np.asarray(v, float) for v in panels[name])
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) < 2:
            ax.set_title(f"{name}: no data", fontsize=9)
            continue
        ax.hexbin(x, y, gridsize=gridsize, bins="log", cmap="viridis", mincnt=1)
        rho = spearmanr(x, y).statistic
        ax.set_title(f"{name}  (ρ = {rho:.2f}, {len(x):,} pairs)", fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel(xlabel)
    for ax in axes[::cols]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title or f"{ylabel} vs {xlabel}", fontsize=10)
    return fig


# ------------------------------------------------------------------------------ scaling
def scaling_figure(curve, fits, *, title: str | None = None) -> Figure:
    """Recovery versus number of cells: one panel per metric (AUROC, top-K F1), one series
    per source (and layer), the mean over repeats ± sd as points with error bars and the
    lowest-AIC curve fit as a line. ``curve``: rows ``source, layer, n_cells, auroc,
    auroc_sd, f1, f1_sd``; ``fits``: rows of :func:`scfm_audit.evaluate._scaling.fit_curves`
    with ``layer, metric`` (empty: no lines). x on a log scale. Returns a Figure."""
    import pandas as pd

    from scfm_audit.evaluate._scaling import CURVES, predict

    fig = _new_figure(9.0, 3.6)
    axes = fig.subplots(1, 2)
    series = curve[["source", "layer"]].drop_duplicates().itertuples(index=False)
    series = list(series)
    for ax, metric, name in zip(axes, ("auroc", "f1"), ("AUROC", "top-K F1"), strict=True):
        for i, (src, layer) in enumerate(series):
            lay = pd.isna(layer)
            sub = curve[
                (curve["source"] == src)
                & (curve["layer"].isna() if lay else curve["layer"] == layer)
            ]
            sub = sub.sort_values("n_cells")
            st = _style(i)
            label = src + ("" if lay else f" L{int(layer)}")
            f = fits[(fits["metric"] == metric) & fits["best"]] if len(fits) else fits
            if len(f):
                f = f[f["layer"].isna()] if lay else f[f["layer"] == layer]
                if "source" in f:
                    f = f[f["source"] == src]
            if len(f):
                r = f.iloc[0]
                pnames = CURVES[r["model"]][1]
                xs = np.geomspace(sub["n_cells"].min(), sub["n_cells"].max(), 100)
                ys = predict(r["model"], {k: r[k] for k in pnames}, xs)
                ax.plot(xs, ys, color=st.get("color"), linewidth=1)
                label += f" ({r['model'].replace('_', ' ')}, R² {r['r2']:.2f})"
            ax.errorbar(
                sub["n_cells"],
                sub[metric],
                yerr=sub[f"{metric}_sd"],
                fmt=st["marker"],
                markersize=3.5,
                capsize=2,
                color=st.get("color"),
                label=label,
            )
        ax.set_xscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel(name)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(title or "recovery vs number of cells", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------
def ablation_figure(
    random: pd.DataFrame,
    marks: pd.DataFrame,
    *,
    title: str | None = None,
    ylabel: str = "masked-loss increase",
    seed: int = 0,
) -> Figure:
    """Degradation per channel against the random-set distribution (head ablation).

    ``random``: one row per random head set (``channel``, ``value``), drawn as a jittered
    strip with a box per channel; ``marks``: conditions to mark (``channel``, ``label``,
    ``value``; e.g. the regulatory heads, top-k, bottom-k, a full layer, MLP zeroing),
    one marker style per label. Channels are the union of both, in order of appearance.
    """
    channels = list(dict.fromkeys([*random.get("channel", []), *marks.get("channel", [])]))
    fig = _new_figure(max(4.8, 1.6 * len(channels) + 2.5), 4.2)
    ax = fig.subplots()
    rng = np.random.default_rng(seed)
    for i, ch in enumerate(channels):
        v = random.loc[random["channel"] == ch, "value"].to_numpy(float) if len(random) else []
        v = np.asarray(v)[np.isfinite(v)]
        if v.size:
            ax.boxplot(
                [v],
                positions=[i],
                widths=0.5,
                showfliers=False,
                medianprops={"color": "0.3"},
                boxprops={"color": "0.6"},
                whiskerprops={"color": "0.6"},
                capprops={"color": "0.6"},
            )
            ax.scatter(
                i + rng.uniform(-0.18, 0.18, v.size),
                v,
                s=9,
                color=PALETTE[5],
                alpha=0.7,
                label="random sets" if i == 0 else None,
                zorder=2,
            )
    for j, (label, g) in enumerate(marks.groupby("label", sort=False) if len(marks) else []):
        st = _style(j)
        xs = [channels.index(c) for c in g["channel"]]
        ax.scatter(
            np.asarray(xs) + 0.3,
            g["value"],
            marker=st["marker"],
            color=st["color"],
            s=46,
            edgecolor="black",
            linewidth=0.5,
            label=label,
            zorder=3,
        )
    ax.axhline(0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(channels)), channels)
    ax.set_xlabel("channel")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", color="0.92", linewidth=0.8)
    ax.legend(fontsize=7, frameon=True, framealpha=0.9, loc="best")
    ax.set_title(title or "head ablation")
    return fig


def distribution_figure(
    df: pd.DataFrame,
    *,
    group: str,
    value: str = "auroc",
    col: str | None = None,
    chance: float | None = 0.5,
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """One box per ``group`` value (e.g. per scorer) with every observation drawn over it
    as a jittered point (e.g. one per perturbation), one panel per ``col`` value.

    ``df``: long table with columns ``group``, ``value`` (and ``col``); rows with a
    missing value are dropped. Groups keep their order of first appearance. ``chance``
    is drawn as a dotted line (0.5 for AUROC; None for none). Returns the Figure.
    """
    data = df.dropna(subset=[value])
    panels = list(dict.fromkeys(data[col])) if col else [None]
    groups = list(dict.fromkeys(data[group]))
    fig = _new_figure(max(4.0, 0.55 * len(groups) * len(panels) + 2), 3.8)
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)  # jitter only: fixed so figures are reproducible
    for ax, panel in zip(axes, panels, strict=False):
        sub = data if panel is None else data[data[col] == panel]
        vals = [sub.loc[sub[group] == g, value].to_numpy(float) for g in groups]
        keep = [i for i, v in enumerate(vals) if len(v)]
        if keep:
            ax.boxplot([vals[i] for i in keep], positions=keep, widths=0.6, showfliers=False)
            for i in keep:
                x = i + rng.uniform(-0.18, 0.18, size=len(vals[i]))
                ax.scatter(x, vals[i], s=8, alpha=0.55, color=_style(i)["color"], zorder=3)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=7)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1)
        if panel is not None:
            ax.set_title(str(panel), fontsize=9)
    axes[0].set_ylabel(ylabel or _pretty(value))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def perturbation_bars_figure(
    df: pd.DataFrame,
    *,
    value: str,
    label: str = "perturbation",
    hue: str | None = None,
    thresholds: Sequence[float] = (),
    title: str | None = None,
    ylabel: str | None = None,
    max_bars: int = 80,
) -> Figure:
    """One bar per perturbation (``label``) with height ``value``, sorted by value,
    coloured by ``hue`` (e.g. on-target status or arm); dotted lines at ``thresholds``.
    Screens with more than ``max_bars`` perturbations are drawn as a sorted profile
    (no per-bar labels)."""
    missing = [c for c in (value, label, hue) if c is not None and c not in df.columns]
    if missing:
        raise ValueError(
            f"perturbation_bars_figure: columns {missing} not in the table "
            f"(it has {list(df.columns)})."
        )
    d = df.sort_values(value, kind="stable").reset_index(drop=True)
    n = len(d)
    fig = _new_figure(min(max(4.0, 0.18 * min(n, max_bars) + 2.5), 14.0), 3.6)
    ax = fig.subplots()
    groups = list(dict.fromkeys(d[hue].astype(str))) if hue is not None else [None]
    x = np.arange(n)
    for gi, g in enumerate(groups):
        sel = np.ones(n, dtype=bool) if g is None else (d[hue].astype(str) == g).to_numpy()
        ax.bar(
            x[sel],
            d[value].to_numpy(float)[sel],
            width=0.85 if n <= max_bars else 1.0,
            color=PALETTE[gi % len(PALETTE)],
            label=None if g is None else g,
        )
    for t in thresholds:
        ax.axhline(t, color="0.45", linestyle=":", linewidth=1)
    if n <= max_bars:
        ax.set_xticks(x, d[label].astype(str), rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} perturbations, sorted")
    ax.set_ylabel(ylabel or _pretty(value))
    if hue is not None:
        ax.legend(fontsize=8, title=_pretty(hue), title_fontsize=8)
    ax.set_title(title or _pretty(value))
    return fig


def sweep_heatmap(
    df: pd.DataFrame,
    *,
    value: str,
    rows: Sequence[str],
    col: str,
    title: str | None = None,
) -> Figure:
    """Heat map of ``value`` over a parameter grid: one row per combination of ``rows``
    (e.g. control cells × HVGs), one column per level of ``col`` (e.g. LFC threshold),
    each cell annotated with its value."""
    missing = [c for c in (value, col, *rows) if c not in df.columns]
    if missing:
        raise ValueError(
            f"sweep_heatmap: columns {missing} not in the table (it has {list(df.columns)})."
        )
    piv = df.pivot_table(index=list(rows), columns=col, values=value, aggfunc="first")
    fig = _new_figure(1.6 + 1.0 * piv.shape[1], 1.2 + 0.4 * piv.shape[0])
    ax = fig.subplots()
    im = ax.imshow(piv.to_numpy(float), aspect="auto", cmap="viridis")
    for (i, j), v in np.ndenumerate(piv.to_numpy(float)):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(np.arange(piv.shape[1]), [f"{c:g}" for c in piv.columns])
    ax.set_yticks(
        np.arange(piv.shape[0]),
        [" · ".join(str(x) for x in (k if isinstance(k, tuple) else (k,))) for k in piv.index],
    )
    ax.set_xlabel(_pretty(col))
    ax.set_ylabel(" · ".join(_pretty(r) for r in rows))
    fig.colorbar(im, ax=ax, label=_pretty(value))
    ax.set_title(title or _pretty(value))
    return fig


def cssi_figures(table: pd.DataFrame, scan: pd.DataFrame, *, variant: str) -> dict:
    """CSSI's figures: improvement over pooled by layer (or a forest for unlayered
    sources) with vertex-bootstrap CIs, and recovery against the number of strata K."""

    figs: dict[str, Figure] = {}
    if table.empty:
        return figs
    for (ds, en), sub in table.groupby(["dataset", "edges"]):
        if sub["layer"].notna().any():
            for metric, k, ref in (("auroc", "diff", 0.0), ("f1", "ratio", 1.0)):
                figs[f"improvement_{metric}_{ds}_{en}"] = metric_by_layer_figure(
                    sub,
                    x="layer",
                    y=f"{metric}_{k}",
                    hue="reference",
                    ci=(f"{metric}_{k}_ci_low", f"{metric}_{k}_ci_high"),
                    chance=ref,
                    title=f"CSSI-{variant} vs pooled, {en} on {ds}",
                    ylabel="ΔAUROC (CSSI − pooled)" if k == "diff" else "F1 ratio (CSSI / pooled)",
                )
        else:
            long = pd.concat(
                [
                    sub.assign(
                        label=sub["reference"] + f" · {m.upper()}",
                        eff=sub[f"{m}_{k}"] - r,
                        lo=sub[f"{m}_{k}_ci_low"] - r,
                        hi=sub[f"{m}_{k}_ci_high"] - r,
                    )
                    for m, k, r in (("auroc", "diff", 0.0), ("f1", "ratio", 1.0))
                ]
            )
            figs[f"improvement_{ds}_{en}"] = forest_figure(
                long,
                label="label",
                effect="eff",
                ci_low="lo",
                ci_high="hi",
                ref=0.0,
                title=f"CSSI-{variant} vs pooled, {en} on {ds}",
                xlabel="ΔAUROC  /  F1 ratio − 1 (95% vertex-bootstrap CI)",
            )
    if len(scan):
        for (ds, en), sub in scan.groupby(["dataset", "edges"]):
            sub = sub.copy()
            if sub["layer"].notna().any():  # one layer for the scan figure: the last
                sub = sub[sub["layer"] == sub["layer"].max()]
            figs[f"k_scan_{ds}_{en}"] = metric_by_layer_figure(
                sub,
                x="K",
                y="value",
                hue="series",
                col="reference",
                ci=None,
                chance=None,
                title=f"AUROC and top-K F1 vs K (k-means), {en} on {ds}",
                xlabel="K strata",
                ylabel="recovery",
            )
    return figs


# ------------------------------------------------------------------------ quality control
def leakage_figure(
    panels: Mapping[str, Mapping[str, tuple[float, np.ndarray]]],
    *,
    title: str | None = None,
    xlabel: str = "balanced accuracy",
) -> Figure:
    """Observed statistic against its own null, one row per feature set, one panel per
    score set: ``panels[label][feature set] = (observed, null draws)``. Each null is a
    box (whiskers 2.5–97.5 %), the observed value a black dot."""
    k = max(1, len(panels))
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = _new_figure(3.8 * cols, 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True)).ravel()
    for ax, (label, sets) in zip(axes, panels.items()):
        names = list(sets)
        for i, name in enumerate(names):
            obs, draws = sets[name]
            z = np.asarray(draws, dtype=float)
            z = z[np.isfinite(z)]
            if z.size:
                ax.boxplot(
                    [z], positions=[i], vert=False, widths=0.5, whis=(2.5, 97.5), showfliers=False
                )
            ax.plot([obs], [i], "o", color="black", zorder=3)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([_pretty(n) for n in names], fontsize=7)
        ax.set_title(label, fontsize=9)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel(xlabel)
    fig.suptitle(title or "observed against null", fontsize=10)
    return fig


def reliability_figure(curves: Mapping[str, pd.DataFrame], *, title: str | None = None) -> Figure:
    """Reliability diagram: per panel (a score set), one line per probability map
    (``curves[label]`` long table ``map, bin_mean, observed, n``), mean predicted
    probability of a bin against the observed frequency, point size ∝ bin count; the
    diagonal is perfect calibration."""
    k = max(1, len(curves))
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = _new_figure(3.6 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (label, df) in zip(axes, curves.items()):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        for i, (name, sub) in enumerate(df.groupby("map", sort=False)):
            sub = sub[sub["n"] > 0]
            st = _style(i)
            ax.plot(
                sub["bin_mean"], sub["observed"], color=st["color"], linewidth=1.2, label=str(name)
            )
            ax.scatter(
                sub["bin_mean"],
                sub["observed"],
                s=8 + 60 * sub["n"] / sub["n"].max(),
                color=st["color"],
                zorder=3,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability", fontsize=8)
        ax.set_ylabel("observed responder rate", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=6.5, loc="upper left")
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(title or "reliability", fontsize=10)
    return fig
