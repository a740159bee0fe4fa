"""Ablation conditions (head sets: random, entropy-matched, top / bottom; MLP blocks) as
tasks on a run's executor (local or a Dask cluster).

The conditions are cut into consecutive chunks of :data:`CONDITIONS_PER_TASK`; a task
runs :func:`~scfm_audit.evaluate._ablation.masked_loss_conditions` for its chunk (the
baseline pass of each batch, then each condition from the cached residual stream) on its
worker's copy of the model, and the chunks' losses are concatenated in condition order.
A condition's per-cell loss depends only on the model, the masked batch and the
condition, so the result is the same whichever executor ran it; the chunks are fixed by
the number of conditions alone. The random head sets themselves are drawn before, from
the run's seed (the draw never depends on scheduling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from scfm_audit._executor import Executor, ExecutorError, ModelSource, model_source, worker_model

if TYPE_CHECKING:
    from scfm_audit.evaluate._ablation import ConditionLosses

__all__ = ["CONDITIONS_PER_TASK", "distributed_conditions"]

#: conditions per task (each task also runs the baseline pass of every batch once)
CONDITIONS_PER_TASK = 8


def _on_cpu(mb: Any) -> Any:
    """A masked batch with its tensors on the CPU (what travels to workers)."""
    return replace(mb, batch=mb.batch.to("cpu"), sel=mb.sel.cpu(), target=mb.target.cpu())


def _conditions_task(
    conditions: list[Any],
    *,
    model: ModelSource,
    batches: list[Any],
    head_means: Any,
    use_cache: bool,
) -> ConditionLosses:
    from scfm_audit.evaluate._ablation import masked_loss_conditions

    with worker_model(model) as adapter:
        return masked_loss_conditions(
            adapter, batches, conditions, head_means=head_means, use_cache=use_cache
        )


def distributed_conditions(
    executor: Executor,
    adapter: Any,
    batches: Sequence[Any],
    conditions: Sequence[Any],
    *,
    head_means: Any = None,
    use_cache: bool = True,
) -> ConditionLosses:
    """:func:`~scfm_audit.evaluate._ablation.masked_loss_conditions`, its conditions in
    chunks as tasks on ``executor`` (see the module docstring)."""
    from scfm_audit.evaluate._ablation import ConditionLosses

    conds = list(conditions)
    chunks = [conds[a : a + CONDITIONS_PER_TASK] for a in range(0, len(conds), CONDITIONS_PER_TASK)]
    means = head_means
    if isinstance(means, dict):
        means = {k: v.cpu() if hasattr(v, "cpu") else v for k, v in means.items()}
    parts: list[ConditionLosses] = []
    for i, part in executor.map_ordered(
        _conditions_task,
        chunks,
        shared={
            "model": model_source(adapter),
            "batches": [_on_cpu(mb) for mb in batches],
            "head_means": means,
            "use_cache": use_cache,
        },
        label=f"ablation-{getattr(adapter, 'name', 'model')}",
    ):
        if i != len(parts):
            raise ExecutorError(f"ablation: chunk {i} arrived in place of {len(parts)}.")
        parts.append(part)
    if len(parts) != len(chunks) or sum(len(p.conditions) for p in parts) != len(conds):
        raise ExecutorError(
            f"ablation: {len(parts)} of {len(chunks)} chunks of conditions came back; a "
            "partial result is never used."
        )
    first = parts[0]
    return ConditionLosses(
        conditions=conds,
        baseline=first.baseline,
        loss=np.concatenate([p.loss for p in parts], axis=0),
        hidden=np.concatenate([p.hidden for p in parts], axis=0),
        output=np.concatenate([p.output for p in parts], axis=0),
        cells=first.cells,
        layer_passes=sum(p.layer_passes for p in parts),
        full_passes=sum(p.full_passes for p in parts),
    )
