"""Where and in which precision a model runs, and how many cells fit in one batch.

Devices
-------
:func:`resolve_device` turns a device spec (``None`` / ``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:i"``, ``"mps"``) into a :class:`torch.device`, or raises one line naming what is
wrong and how to fix it (CUDA requested on a machine without it, an index beyond the
GPUs present). ``worker=k`` gives each worker of a pool its own GPU: ``"cuda"`` →
``cuda:{k mod n_gpus}``.

Forward dtype
-------------
:data:`FORWARD_DTYPES`: ``float32`` (default), ``bfloat16``, ``float16``. The adapter holds
its weights in that dtype and the whole forward pass runs in it (the same dtype path on
CPU and CUDA, so the CPU tests measure the error a GPU run makes); attention is cast up
to float32 before it is summed (see ``edges/_attention.py``).

Batch size from free memory
---------------------------
:func:`attention_batch_bytes` is the memory model of one extraction batch of ``B`` cells
padded to ``T`` tokens, on a model with ``H`` heads, width ``D``, feed-forward width
``F``, forward element size ``e`` bytes (4, or 2 for bf16/fp16)::

    bytes(B, T) = B · ( T² · (3·H·e + 8 + 16 + s·H + r)  +  T · (8·D + F) · e )

* ``3·H·e·T²``: the (B, H, T, T) tensors alive at once inside a layer's attention — the
  masked scores (kept until the layer ends), the softmax output and, transiently,
  ``nan_to_num``'s copy of it (``models/_transformer.py``);
* ``8·T²``: the batch's pair index (``lin`` and ``sel``, int32), alive for the batch;
* ``16·T²``: the fold's transients per layer (head sum in float32, gathered values);
* ``s·H·T²``: the score kind's float32 copy (``softmax_relative`` with a bf16/fp16 forward:
  s = 4; ``scgpt_grn``: s = 4, its float32 output) — 0 otherwise;
* ``r·T²``: ``scgpt_grn``'s int64 rank buffers of one head (r = 32), 0 otherwise;
* ``(8·D + F)·e·T``: hidden-size activations (input, q, k, v, z, attention output,
  residual, norm) and the feed-forward hidden layer.

Weights, accumulators and the allocator's own state are already resident when the free
memory is read, so they are not in the model. :func:`auto_batch_size` takes the largest
``B`` with ``bytes(B, T) ≤ fraction · free`` (``fraction`` = 0.8 leaves room for
fragmentation and for what the model leaves out: cuBLAS workspaces, small tensors); free =
``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds reserved but
unused. On CPU it returns a fixed default (16): host memory is rarely the limit and the
thread pool, not the batch, sets the speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

__all__ = [
    "CPU_BATCH_SIZE",
    "FORWARD_DTYPES",
    "BatchSize",
    "ForwardDtype",
    "attention_batch_bytes",
    "auto_batch_size",
    "check_dtype_on_device",
    "device_available",
    "free_device_memory",
    "padding_fraction",
    "parse_device",
    "plan_batches",
    "resolve_device",
    "resolve_dtype",
]

ForwardDtype = Literal["float32", "bfloat16", "float16"]
BatchSize = int | Literal["auto"]

#: forward dtype name → torch dtype
FORWARD_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: dtypes cast up to float32 before anything is summed
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: batch size on CPU, and the extraction default when nothing is configured
CPU_BATCH_SIZE = 16


# -- devices ----------------------------------------------------------------------------------
def resolve_device(
    spec: str | torch.device | None = None, *, worker: int | None = None
) -> torch.device:
    """The torch device of ``spec``; one-line ``ValueError`` naming the problem and the fix.

    ``None`` / ``"auto"``: CUDA when available (``cuda:{worker mod n}`` for a worker),
    else CPU. ``"cuda"`` with ``worker=k``: ``cuda:{k mod n_gpus}``, so that the workers of
    a pool spread over the GPUs; an explicit ``"cuda:i"`` is kept as it is.
    """
    if isinstance(spec, torch.device):
        dev = spec
    else:
        parsed = parse_device(spec)
        dev = parsed or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                f"this torch ({torch.__version__}) is a CPU-only build"
                if torch.version.cuda is None
                else f"torch {torch.__version__} finds no usable GPU"
            )
            raise ValueError(
                f"device {str(spec if spec is not None else dev)!r} requested but CUDA is not "
                f"available ({build}); set device: cpu, or run on a machine with an NVIDIA GPU "
                "and a CUDA build of torch."
            )
        n = torch.cuda.device_count()
        if dev.index is None and worker is not None:
            dev = torch.device("cuda", int(worker) % n)
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"device 'cuda:{dev.index}' requested but this machine has {n} GPU(s); use "
                f"cuda:0 … cuda:{n - 1}, or 'cuda' to spread workers over all of them."
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available; set device: cpu.")
    elif dev.type != "cpu":
        raise ValueError(
            f"device {str(dev)!r} is not supported; use 'cpu', 'cuda', 'cuda:<index>' or 'auto'."
        )
    return dev


def parse_device(spec: str | None) -> torch.device | None:
    """The device ``spec`` names (None for ``auto`` / None), without asking whether this
    machine has it: a config is read where it is written (a login node, say) and the
    device is looked for where the model is loaded. One-line ``ValueError`` for a name
    that is no device."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return None
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device {spec!r} is not a device; use 'cpu', 'cuda', 'cuda:<index>' or 'auto'."
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device {str(dev)!r} is not supported; use 'cpu', 'cuda', 'cuda:<index>' or 'auto'."
        )
    return dev


def device_available(spec: str | None) -> bool:
    """Whether this machine can load a model on ``spec`` (:func:`resolve_device` passes)."""
    try:
        resolve_device(spec)
    except ValueError:
        return False
    return True


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The forward dtype named ``dtype`` (None → float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in FORWARD_DTYPES.values():
            raise ValueError(f"forward dtype {dtype} is not one of {', '.join(FORWARD_DTYPES)}.")
        return dtype
    key = str(dtype).removeprefix("torch.")
    key = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(
        key, key
    )
    if key not in FORWARD_DTYPES:
        raise ValueError(
            f"forward dtype {dtype!r} is not one of {', '.join(map(repr, FORWARD_DTYPES))}."
        )
    return FORWARD_DTYPES[key]


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """One-line error when ``device`` cannot run ``dtype`` (bfloat16 on a GPU older than
    Ampere)."""
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"dtype 'bfloat16' requested but {torch.cuda.get_device_name(device)} has no "
            "bfloat16 support; use dtype: float16 (or float32)."
        )


# -- memory model and batch size --------------------------------------------------------------
def attention_batch_bytes(
    batch: int,
    seq_len: int,
    *,
    n_heads: int,
    d_model: int,
    d_ff: int,
    element_size: int = 4,
    score: str = "softmax",
) -> int:
    """Peak transient bytes of one attention-extraction batch (module docstring)."""
    B, T, H, e = int(batch), int(seq_len), int(n_heads), int(element_size)
    extra = 0
    if score == "softmax_relative" and e < 4:
        extra = 4 * H
    elif score == "scgpt_grn":
        extra = 4 * H + 32
    per_cell = T * T * (3 * H * e + 8 + 16 + extra) + T * (8 * d_model + d_ff) * e
    return B * per_cell


def free_device_memory(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can use: ``torch.cuda.mem_get_info``'s free
    memory plus what PyTorch's caching allocator holds reserved but unallocated."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(int(cached), 0)


def auto_batch_size(
    seq_len: int,
    *,
    n_heads: int,
    d_model: int,
    d_ff: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    score: str = "softmax",
    free_bytes: int | None = None,
    fraction: float = 0.8,
    max_batch: int = 1024,
) -> int:
    """Cells per batch at ``seq_len`` tokens: on CUDA the largest ``B`` (1 … ``max_batch``)
    whose :func:`attention_batch_bytes` fits in ``fraction`` of the free device memory
    (``free_bytes`` overrides the measurement); elsewhere :data:`CPU_BATCH_SIZE`."""
    dev = torch.device(device)
    if dev.type != "cuda" and free_bytes is None:
        return CPU_BATCH_SIZE
    free = free_device_memory(dev) if free_bytes is None else int(free_bytes)
    one = attention_batch_bytes(
        1,
        max(int(seq_len), 1),
        n_heads=n_heads,
        d_model=d_model,
        d_ff=d_ff,
        element_size=torch.empty((), dtype=dtype).element_size(),
        score=score,
    )
    return int(min(max(int(fraction * free) // one, 1), max_batch))


# -- batches ----------------------------------------------------------------------------------
def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    batch_size: int | Callable[[int], int],
    sort: bool,
) -> list[np.ndarray]:
    """Batches of positions ``0 … n−1`` into ``lengths`` (token counts of the cells).

    ``sort``: cells longest first (stable), so a batch pads to nearly its own cells'
    lengths and the largest batch comes first (an out-of-memory shows at once);
    otherwise the given order. ``batch_size``: cells per batch, or a function of the
    batch's padded length (its first cell's when sorted; the longest of all otherwise)
    giving the cells that fit — e.g. :func:`auto_batch_size`.
    """
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    order = np.argsort(-lens, kind="stable") if sort else np.arange(lens.size)
    fixed = None if callable(batch_size) else int(batch_size)
    if fixed is not None and fixed < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {fixed}.")
    if fixed is None and not sort and lens.size:
        fixed = max(int(batch_size(int(lens.max()))), 1)  # type: ignore[operator]
    out: list[np.ndarray] = []
    start = 0
    while start < order.size:
        size = fixed if fixed is not None else max(int(batch_size(int(lens[order[start]]))), 1)  # type: ignore[operator]
        out.append(order[start : start + size])
        start += size
    return out


def padding_fraction(
    lengths: Sequence[int] | np.ndarray, batches: Sequence[np.ndarray], *, power: int = 1
) -> float:
    """Share of the token slots of ``batches`` that are padding: 1 − Σ lengthᵖ / Σ (cells ×
    longest cellᵖ), both over the batches' cells. ``power=2``: the share of the attention
    matrices' entries (the work and memory of a layer's attention) that are padding."""
    lens = np.asarray(lengths, dtype=np.float64)
    used = [np.asarray(b, dtype=np.int64) for b in batches if len(b)]
    slots = sum(b.size * float(lens[b].max()) ** power for b in used)
    tokens = sum(float((lens[b] ** power).sum()) for b in used)
    return 0.0 if slots == 0 else 1.0 - tokens / slots
