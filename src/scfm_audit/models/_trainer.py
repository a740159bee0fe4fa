"""The training loop shared by the demo recipes of every model family.

A recipe (``models/<family>/_recipe.py``) tokenizes the data with its adapter, defines a
loss on a batch of cells and an evaluation loss, and hands them to :func:`_fit`: AdamW
(weight decay 0.01), linear warm-up over the first 5 % of the steps then cosine decay,
gradient-norm clipping at 1.0, batches of similar length. Training runs through the
adapter's differentiable ``_forward`` (the hooked encoder the audit reads); dropout is not
applied (the shared encoder layer has none). Training uses *all* cells, controls and
perturbed: a foundation model is pretrained on atlases holding both kinds of states, and
the audit later runs the model on all of them; the perturbation labels are never shown to
the model.

Determinism: weights come from ``build_*_checkpoint(seed=seed)``; cell order, gene
sub-samples, masks and the held-out cells from ``torch.Generator`` objects seeded with
``seed``; the number of steps is fixed by ``epochs`` (or ``max_steps``). Nothing depends
on the clock: the optional ``max_seconds`` safety budget aborts with
:class:`TrainingBudgetExceeded` and saves nothing. Intra-op threads are fixed to
:data:`TRAIN_THREADS` while training (restored afterwards), so the weights do not depend
on the caller's ``torch.set_num_threads``; the same inputs give bitwise the same model on
the same device and torch build, on a busy or an idle machine (``tests/test_train.py``).

Evaluation: a seeded 10 % of the cells (at most :data:`EVAL_CELLS`) is held out of
training; their masked loss (fixed masks) is recorded before training and after every
epoch, beside the chance and context-free baseline losses on the same masked positions
(:class:`TrainReport`); ``learned`` in ``train_log.json`` says whether the model beat
the baseline, and an audit should not credit the attention of a model that did not.
"""

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from scfm_audit.models._base import ModelAdapter, TokenizedBatch

LOG_FILE = "train_log.json"
WARMUP_FRACTION = 0.05
CLIP_NORM = 1.0
WEIGHT_DECAY = 0.01
EVAL_CELLS = 256  # at most this many held-out cells (10 % of the cells), with fixed masks
EVAL_FRACTION = 0.1
#: intra-op threads while training: CPU kernels may reduce in a thread-count-dependent
#: order, so the thread count is fixed for reproducible weights (restored afterwards)
TRAIN_THREADS = 1
#: the clock of the safety budget (module attribute so tests can slow it down)
_clock = time.perf_counter


def now() -> float:
    """The current time of the safety-budget clock (:data:`_clock`, read at each call)."""
    return _clock()


def cpu_signature() -> str:
    """The CPU kernels training ran on: torch's vector capability (e.g. ``AVX512``) and
    the processor model. Bitwise-equal weights need the same torch build *and* the same
    kernels: MKL and torch pick code paths by CPU, so the same seed gives float-rounding
    differences on another processor (seen: a 1e-7 relative change at step 8 of a scGPT
    demo training, and a different model after 1,360 steps)."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()} / {model}"


class TrainingBudgetExceeded(RuntimeError):
    """Training ran past its ``max_seconds`` safety budget. Nothing is saved: a model
    cut short by wall-clock time would depend on machine load."""


@contextmanager
def _fixed_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(training cells, evaluation cells, whether the evaluation cells are held out):
    a seeded random ``EVAL_FRACTION`` of the cells (at most :data:`EVAL_CELLS`) is held
    out of training; with fewer than 10 cells all cells are used for both."""
    n_eval = min(EVAL_CELLS, int(n * EVAL_FRACTION))
    if n_eval < 1:
        idx = np.arange(n)
        return idx, idx, False
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 104729)).numpy()
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval]), True


@dataclass
class TrainReport:
    """What one training run did (also written to ``train_log.json``).

    ``loss_per_epoch`` / ``loss_per_step``: mean training loss of each epoch / the loss of
    each optimiser step. ``eval_loss_per_epoch``: the masked loss on the evaluation cells
    (held out of training, see :func:`_holdout`; ``eval_held_out``) with the same fixed
    masks every time, before training (index 0) and after each epoch;
    ``eval_loss_initial`` / ``eval_loss_final`` are its ends. On the same masked
    positions: ``chance_loss`` (scGPT: every value predicted by the mean bin of the
    training cells; Geneformer: uniform over the gene tokens, ln V) and ``baseline_loss``
    (the context-free predictor named in ``baseline``: scGPT each gene's mean bin,
    Geneformer each rank position's gene frequency in the training cells). ``learned``
    (in the log): the trained model beats the baseline; ``beat_chance``: it beats chance.
    ``complete``: all ``epochs`` ran (False only with ``max_steps``).
    ``seconds`` is informational; nothing in training depends on the clock.
    ``adapter``: the trained model in memory (not serialised).
    """

    family: str
    path: Path
    objective: str
    n_cells: int
    n_genes: int
    n_params: int
    epochs: int
    steps: int
    loss_per_epoch: list[float]
    eval_loss_initial: float
    eval_loss_final: float
    seconds: float
    complete: bool = True
    loss_per_step: list[float] = field(default_factory=list)
    eval_loss_per_epoch: list[float] = field(default_factory=list)
    chance_loss: float = float("nan")
    baseline_loss: float = float("nan")
    baseline: str = ""
    n_eval_cells: int = 0
    eval_held_out: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    adapter: ModelAdapter | None = field(default=None, repr=False, compare=False)

    @property
    def final_loss(self) -> float:
        return self.loss_per_epoch[-1] if self.loss_per_epoch else float("nan")

    @property
    def beat_chance(self) -> bool:
        """The trained model's evaluation loss is below the chance loss."""
        return bool(self.eval_loss_final < self.chance_loss)

    @property
    def learned(self) -> bool:
        """The trained model's evaluation loss is below both the chance loss and the
        context-free baseline (a model that did not learn: its attention shows nothing)."""
        return bool(self.eval_loss_final < min(self.baseline_loss, self.chance_loss))

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "adapter"}
        d["path"] = str(self.path)
        d["beat_chance"] = self.beat_chance
        d["learned"] = self.learned
        d["torch_version"] = torch.__version__
        d["torch_threads"] = TRAIN_THREADS
        d["cpu"] = cpu_signature()
        return d

    def write(self, folder: str | Path) -> Path:
        log_path = Path(folder) / LOG_FILE
        tmp = log_path.with_name(f".{LOG_FILE}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2))
        tmp.replace(log_path)
        return log_path


CELLS_NOTE = "all but the held-out evaluation cells (controls and perturbed)"

# ---------------------------------------------------------------------------------------
# shared pieces


def _counts(adata) -> sp.csr_matrix:
    X = adata.X
    if X is None:
        raise ValueError("adata.X is empty; training needs raw counts in X.")
    return sp.csr_matrix(X)


def gene_medians_from_counts(adata, n_counts: np.ndarray | None = None) -> np.ndarray:
    """Per gene, the median of its non-zero ``counts / n_counts · 10,000`` values, as in
    Geneformer's gene median dictionary (non-zero median of the normalised expression);
    genes never detected get 1.0.

    ``n_counts`` defaults to ``obs["n_counts"]`` when present, else each cell's total
    (what :meth:`GeneformerAdapter.tokenize` divides by).
    """
    X = _counts(adata).astype(np.float64)
    if n_counts is None:
        if "n_counts" in adata.obs.columns:
            n_counts = adata.obs["n_counts"].to_numpy(dtype=np.float64)
        else:
            n_counts = np.asarray(X.sum(axis=1)).ravel()
    n_counts = np.asarray(n_counts, dtype=np.float64)
    scale = np.divide(1e4, n_counts, out=np.zeros_like(n_counts), where=n_counts > 0)
    Xn = sp.csc_matrix(sp.diags(scale) @ X)
    med = np.ones(X.shape[1])
    for j in range(X.shape[1]):
        v = Xn.data[Xn.indptr[j] : Xn.indptr[j + 1]]
        v = v[v > 0]
        if v.size:
            med[j] = float(np.median(v))
    return med


def _schedule(step: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches in one epoch of :func:`_batches` (its length chunks hold a whole number of
    batches, so only the last batch of an epoch can be short)."""
    return math.ceil(n_train / batch_size)


def _batches(cells: np.ndarray, batch_size: int, lengths: np.ndarray, gen: torch.Generator) -> list:
    """One shuffled epoch over ``cells`` in batches of similar length (within chunks of 50
    batches the cells are sorted by length, as Hugging Face's ``group_by_length``; the
    batches are then shuffled), so little compute goes to padding."""
    perm = cells[torch.randperm(len(cells), generator=gen).numpy()]
    chunk = batch_size * 50
    out = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        out += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = torch.randperm(len(out), generator=gen).numpy()
    return [out[i] for i in order]


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


@dataclass
class _FitResult:
    losses: list[float]
    step_losses: list[float]
    eval_losses: list[float]
    epochs: int
    steps: int
    complete: bool


def _fit(
    *,
    name: str,
    module: torch.nn.Module,
    cells: np.ndarray,
    lengths: np.ndarray,
    loss_fn: Callable[[np.ndarray, torch.Generator], torch.Tensor],
    eval_fn: Callable[[], float],
    epochs: int,
    batch_size: int,
    lr: float,
    gen: torch.Generator,
    max_seconds: float | None,
    max_steps: int | None,
    progress: bool,
    started: float,
) -> _FitResult:
    """The AdamW loop shared by both families: a fixed number of steps (``epochs`` over
    ``cells``, or the first ``max_steps`` of them; the schedule always spans all epochs).
    ``max_seconds`` only aborts (:class:`TrainingBudgetExceeded`); it never changes the
    result of a run that finishes."""
    params = [param for param in module.parameters() if param.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    total = epochs * _steps_per_epoch(len(cells), batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total))
    evals = [eval_fn()]
    losses: list[float] = []
    step_losses: list[float] = []
    step = 0
    stop = max_steps if max_steps is not None else total
    with _progress(progress) as bar:
        task = bar.add_task(name, total=min(stop, total), loss=float("nan"))
        for _ in range(epochs):
            run, n = 0.0, 0
            for idx in _batches(cells, batch_size, lengths, gen):
                if step >= stop:
                    break
                loss = loss_fn(idx, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
                opt.step()
                sched.step()
                step += 1
                step_losses.append(float(loss.detach()))
                run += step_losses[-1]
                n += 1
                bar.update(task, advance=1, loss=run / n)
                if max_seconds is not None and _clock() - started > max_seconds:
                    raise TrainingBudgetExceeded(
                        f"{name}: training exceeded its safety budget of {max_seconds:g} s "
                        f"after {step} of {total} steps; nothing was saved. Raise "
                        "max_seconds (or pass None): a model cut short by the clock would "
                        "depend on machine load."
                    )
            if n:
                losses.append(run / n)
                evals.append(eval_fn())
            if step >= stop:
                break
    return _FitResult(losses, step_losses, evals, len(losses), step, step >= total)


def _check_common(epochs: int, batch_size: int, lr: float, mask_ratio: float, adata) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    if adata.n_obs < 1 or adata.n_vars < 2:
        raise ValueError(f"need at least 1 cell and 2 genes, got {adata.n_obs} × {adata.n_vars}")


def _rows(batch: TokenizedBatch, idx: np.ndarray) -> TokenizedBatch:
    """Rows ``idx`` of a padded batch, cut to their longest sequence."""
    t = torch.as_tensor(idx, dtype=torch.long)
    mask = batch.attention_mask[t]
    T = max(int(mask.sum(1).max()), 1)
    return TokenizedBatch(
        input_ids=batch.input_ids[t, :T],
        attention_mask=mask[:, :T],
        gene_index=batch.gene_index[t, :T],
        cell_index=batch.cell_index[idx],
        values=None if batch.values is None else batch.values[t, :T],
    )


def _n_params(module: torch.nn.Module) -> int:
    return int(sum(param.numel() for param in module.parameters()))
