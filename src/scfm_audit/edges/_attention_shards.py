"""Attention extraction as cell shards on a run's executor (local or a Dask cluster).

The cells are cut into consecutive shards of ``executor.shard_cells`` cells (rounded up
to a multiple of the batch size, so every batch holds the cells a single pass would give
it); each shard is one task that streams its cells through the model into its own
accumulator (:func:`~scfm_audit.edges._attention.extract_attention_accumulator`, grouped
when CSSI strata or nested scaling buckets are given) and returns it on the CPU. The
shards' accumulators are sums and counts, merged by addition in shard order
(:func:`~scfm_audit._executor.fold_ordered`): integer coverage counts are exact, and the
float sums are added in one fixed order, so a local run and a cluster run of the same
config give the same bits. The merged accumulator must hold every cell, or the run stops.

Where the model comes from: a model the runner loaded from a checkpoint is loaded by
each worker process once (keyed by checkpoint and options) and kept for later tasks;
any other model object is sent to every worker once. The dataset (the edge source's
cells, already in memory) is sent to every worker once: scGPT's value binning is seeded
by each cell's position in it, so a shard reads its cells at their own positions.

A model with hooks attached (an intervention being applied) is extracted in this process
in one pass under either executor: a worker's copy of the model would not carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from scfm_audit._executor import (
    Executor,
    ExecutorError,
    ModelSource,
    fold_ordered,
    model_source,
    worker_model,
)

__all__ = ["has_active_hooks", "shard_plan", "sharded_accumulator"]


def has_active_hooks(adapter: Any) -> bool:
    """Whether any hook is attached to the model now (an intervention in force)."""
    points = getattr(adapter, "hook_points", None) or {}
    return any(hp.active for hp in points.values())


def shard_plan(n_cells: int, *, shard_cells: int, batch_size: int | str) -> list[slice]:
    """Consecutive slices of ``n_cells`` positions, ``shard_cells`` rounded up to a
    multiple of ``batch_size`` each (``"auto"``: as is; the last shorter): a function of
    the data and the parameters only, never of the cluster."""
    step = 1 if batch_size == "auto" else int(batch_size)
    if shard_cells < 1 or step < 1:
        raise ValueError("shard_cells and batch_size must be ≥ 1.")
    size = -(-int(shard_cells) // step) * step
    return [slice(a, min(a + size, n_cells)) for a in range(0, n_cells, size)]


def _on_cpu(acc: Any) -> Any:
    """The accumulator with its tensors moved to the CPU (results travel and merge there)."""
    cpu = torch.device("cpu")
    if acc.sum.device != cpu:
        acc.sum = acc.sum.to(cpu)
        acc.count = acc.count.to(cpu)
        acc.device = cpu
    return acc


def _shard_task(
    item: tuple[np.ndarray, np.ndarray | None],
    *,
    model: ModelSource,
    adata: Any,
    options: dict[str, Any],
) -> Any:
    """One shard: its cells (obs positions of ``adata``) and their groups (or None)."""
    from scfm_audit.edges._attention import extract_attention_accumulator

    cells, groups = item
    with worker_model(model) as adapter:
        acc = extract_attention_accumulator(
            adapter, adata, cells=cells, groups=groups, progress=False, **options
        )
    return _on_cpu(acc)


def sharded_accumulator(
    executor: Executor,
    adapter: Any,
    adata: Any,
    *,
    cells: Any = None,
    groups: np.ndarray | Sequence[int] | None = None,
    n_groups: int | None = None,
    batch_size: int | str | None = None,
    progress: bool = True,
    **options: Any,
) -> Any:
    """:func:`~scfm_audit.edges._attention.extract_attention_accumulator` (same
    parameters) as shard tasks on ``executor``; the merged accumulator, on the CPU."""
    from scfm_audit.edges._attention import CPU_BATCH_SIZE, _progress, _resolve_cells

    if batch_size is None:  # as the one-pass engine resolves it (the model's, else 16)
        batch_size = getattr(adapter, "batch_size", None) or CPU_BATCH_SIZE
    cell_idx = _resolve_cells(adata, cells)
    if len(cell_idx) == 0:
        raise ValueError("no cells to extract attention from.")
    g: np.ndarray | None = None
    if groups is not None:
        g = np.asarray(groups, dtype=np.int64).reshape(-1)
        if g.shape[0] != len(cell_idx):
            raise ValueError(f"groups has {g.shape[0]} entries for {len(cell_idx)} cells.")
        # every shard needs the run's number of groups, not its own maximum
        n_groups = int(n_groups) if n_groups is not None else int(g.max(initial=-1)) + 1
    plan = shard_plan(len(cell_idx), shard_cells=executor.shard_cells, batch_size=batch_size)
    items = [(cell_idx[s], None if g is None else g[s]) for s in plan]
    task_options = {**options, "batch_size": batch_size}
    if g is not None:
        task_options["n_groups"] = n_groups
    name = getattr(adapter, "name", "model")
    with _progress(progress) as bar:
        task = bar.add_task(f"attention {name} ({len(plan)} shards)", total=len(cell_idx))
        acc = fold_ordered(
            executor,
            _shard_task,
            items,
            lambda a, b: a.merge(b),
            shared={"model": model_source(adapter), "adata": adata, "options": task_options},
            on_done=lambda i: bar.advance(task, len(items[i][0])),
            label=f"attention-{name}",
        )
    if acc.n_cells != len(cell_idx):
        raise ExecutorError(
            f"attention {name}: the merged shards hold {acc.n_cells} cells, "
            f"{len(cell_idx)} were sent; a partial accumulator is never used."
        )
    acc.params.update({"shards": len(plan), "shard_cells": plan[0].stop - plan[0].start})
    return acc
