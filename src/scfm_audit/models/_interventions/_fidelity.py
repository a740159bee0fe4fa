"""How much an intervention changed the model: cosine distances of its outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from scfm_audit.models._interventions._intervention import Intervention


def _cos_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return 1.0 - num / den.clamp(min=1e-12)


def _readouts(out) -> dict[str, torch.Tensor | None]:
    return {
        "hidden": out.hidden.detach().cpu(),
        "cell_embedding": out.cell_embedding.detach().cpu(),
        "gene_predictions": None
        if out.gene_predictions is None
        else out.gene_predictions.detach().cpu(),
        "attention_mask": out.attention_mask.detach().cpu(),
    }


def _compare(batch, base: dict, alt: dict) -> pd.DataFrame:
    mask = base["attention_mask"].to(torch.float64)  # (B, T)
    tok = _cos_dist(base["hidden"], alt["hidden"])  # (B, T)
    hidden = (tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    cols: dict[str, np.ndarray] = {
        "cell": np.asarray(batch.cell_index),
        "hidden": hidden.numpy(),
        "hidden_max": tok.masked_fill(mask == 0, 0).amax(1).numpy(),
        "cell_embedding": _cos_dist(base["cell_embedding"], alt["cell_embedding"]).numpy(),
    }
    if base["gene_predictions"] is not None and alt["gene_predictions"] is not None:
        gp0 = base["gene_predictions"].double() * mask
        gp1 = alt["gene_predictions"].double() * mask
        cols["gene_predictions"] = _cos_dist(gp0, gp1).numpy()
    return pd.DataFrame(cols)


def fidelity_per_cell(
    adapter,
    batches: Iterable,
    intervention: Intervention | Callable[[], contextlib.AbstractContextManager] | Any,
) -> pd.DataFrame:
    """Per-cell cosine distances between the forward pass without and with
    ``intervention``.

    Columns: ``cell`` (obs position), ``hidden`` (last-layer hidden state, cosine
    distance per real token averaged over the cell's real tokens), ``hidden_max`` (largest
    token distance), ``cell_embedding``, and ``gene_predictions`` (the cell's vector of
    predicted values over real tokens) when the model predicts values.

    ``intervention`` is an :class:`Intervention`, a zero-argument callable returning a
    fresh context manager, or a single-use context manager such as
    ``adapter.hooks(...)`` (then all baseline outputs are kept on the CPU until the
    intervened pass, so prefer the first two for many cells).
    """
    frames = []
    if isinstance(intervention, Intervention) or (
        callable(intervention) and not hasattr(intervention, "__enter__")
    ):
        for batch in batches:
            base = _readouts(adapter.forward(batch))
            with intervention if isinstance(intervention, Intervention) else intervention():
                alt = _readouts(adapter.forward(batch))
            frames.append(_compare(batch, base, alt))
    else:
        batches = list(batches)
        bases = [_readouts(adapter.forward(b)) for b in batches]
        with intervention:
            for b, base in zip(batches, bases):
                frames.append(_compare(b, base, _readouts(adapter.forward(b))))
    if not frames:
        raise ValueError("fidelity: no batches given.")
    return pd.concat(frames, ignore_index=True)


def fidelity(
    adapter,
    batches: Iterable,
    intervention: Intervention | Callable[[], contextlib.AbstractContextManager] | Any,
    *,
    tol: float = 1e-6,
) -> pd.DataFrame:
    """How much ``intervention`` changed the model: one row per readout (``hidden``,
    ``hidden_max``, ``cell_embedding``, ``gene_predictions``) with the per-cell cosine
    distance's ``mean``, ``median``, ``max``, ``n_cells`` and ``frac_changed`` (share of
    cells with distance > ``tol``). A fidelity near 0 means the intervention did not
    change the model — any null result downstream is then uninformative.
    """
    per_cell = fidelity_per_cell(adapter, batches, intervention)
    desc = getattr(intervention, "description", None)
    rows = []
    for col in per_cell.columns.drop("cell"):
        v = per_cell[col].to_numpy(dtype=float)
        rows.append(
            {
                "readout": col,
                "n_cells": len(v),
                "mean": float(np.mean(v)),
                "median": float(np.median(v)),
                "max": float(np.max(v)),
                "frac_changed": float(np.mean(v > tol)),
                "intervention": desc,
                "model": adapter.name,
            }
        )
    return pd.DataFrame(rows)
