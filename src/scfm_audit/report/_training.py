"""Report block: how each trained model of the run learned (training curve, held-out
loss against chance and a context-free baseline), read from the ``train_log.json`` that
:mod:`scfm_audit.models._trainer` writes beside a checkpoint. Models without a log
(downloaded checkpoints) are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger("scfm_audit")

__all__ = ["read_train_log", "training_curve_figure", "training_summaries"]

LOG_FILE = "train_log.json"


def read_train_log(model_path: str | Path) -> dict[str, Any] | None:
    """The ``train_log.json`` of a checkpoint folder, or None when absent or unreadable."""
    p = Path(model_path) / LOG_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        log.warning("could not read %s: %s", p, e)
        return None


def _moving_average(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def training_curve_figure(name: str, tlog: dict[str, Any]) -> Figure:
    """Training loss per step (raw and moving average), held-out masked loss before
    training and after each epoch, and the chance and baseline losses as horizontal
    lines. Input: a parsed ``train_log.json``; output: an Agg figure."""
    fig = Figure(figsize=(6.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.asarray(tlog.get("loss_per_step") or [], dtype=float)
    if steps.size:
        x = np.arange(1, steps.size + 1)
        ax.plot(x, steps, color="0.8", lw=0.6, label="training loss (per step)")
        k = max(1, steps.size // 50)
        ma = _moving_average(steps, k)
        ax.plot(x[k - 1 :], ma, color="C0", lw=1.3, label=f"training loss ({k}-step mean)")
    ev = np.asarray(tlog.get("eval_loss_per_epoch") or [], dtype=float)
    if ev.size:
        n_steps = int(tlog.get("steps") or 0)
        n_ep = max(ev.size - 1, 1)
        ex = np.linspace(0, n_steps, n_ep + 1)[: ev.size]
        held = "held-out" if tlog.get("eval_held_out") else "evaluation (not held out)"
        ax.plot(ex, ev, "o-", color="C3", ms=3, lw=1.2, label=f"{held} masked loss")
    for key, style, label in (
        ("chance_loss", ":", "chance"),
        ("baseline_loss", "--", str(tlog.get("baseline") or "baseline")),
    ):
        v = tlog.get(key)
        if v is not None and np.isfinite(v):
            ax.axhline(v, color="k", ls=style, lw=1.0, label=f"{label} ({v:.4g})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("masked loss")
    verdict = "beats the baseline" if tlog.get("learned") else "does NOT beat the baseline"
    ax.set_title(f"{name} ({tlog.get('family', '?')}): {verdict}", fontsize=10)
    # below the axes: inside, the legend sits on the chance / baseline lines, which lie
    # near the top when a model's loss is close to chance (Geneformer's rank tokens)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def training_summaries(models: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per configured model with a ``train_log.json``: name, family, the
    figure, and the numbers the report prints (strings). ``models``: the config's
    ``models`` section (name → object or dict with ``path``)."""
    out = []
    for name, m in (models or {}).items():
        path = m.get("path") if isinstance(m, dict) else getattr(m, "path", None)
        tlog = read_train_log(path) if path is not None else None
        if tlog is None:
            continue
        out.append(
            {
                "name": name,
                "family": str(tlog.get("family", "?")),
                "figure": training_curve_figure(name, tlog),
                "steps": str(tlog.get("steps", "?")),
                "seed": str((tlog.get("params") or {}).get("seed", "?")),
                "eval_initial": f"{tlog.get('eval_loss_initial', float('nan')):.4g}",
                "eval_final": f"{tlog.get('eval_loss_final', float('nan')):.4g}",
                "chance": f"{tlog.get('chance_loss', float('nan')):.4g}",
                "baseline": f"{tlog.get('baseline_loss', float('nan')):.4g}",
                "baseline_name": str(tlog.get("baseline", "")),
                "held_out": bool(tlog.get("eval_held_out")),
                "n_eval_cells": str(tlog.get("n_eval_cells", "?")),
                "learned": bool(tlog.get("learned")),
            }
        )
    return out
