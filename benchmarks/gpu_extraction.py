"""Benchmark: attention extraction at scGPT size on a GPU (or, ``--small``, on a CPU).

Model: a scGPT checkpoint with random weights written in the real layout by
``build_scgpt_checkpoint`` and loaded by ``ScGPTAdapter.load`` — by default 12 layers × 8
heads, d_model 512, d_hid 512, 1,200 tokens per cell (scGPT_human's sizes). Cells:
synthetic counts over 5,000 genes, each cell expressing 150–2,400 of them (log-uniform),
so half the cells are cut to 1,200 tokens (scGPT's random sub-sampling) and the rest
spread below.
Accumulators: every gene pair of the 5,000 genes, every layer (pooled over heads unless
``--per-head``), float32, exact (no top-k).

Printed:

* the environment: torch, device, forward dtype, CPU threads and the BLAS / OpenMP
  libraries threadpoolctl sees (the CPU kernels), on CUDA the GPU and its TF32 flags;
* cells/s of the extraction (``extract_attention_accumulator``, tokenization included)
  and of a bare forward pass over the very same batches (no hooks, all layers), their
  ratio, and the time of tokenization alone;
* peak device memory of both (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
  process's peak RSS, Python included) next to the memory model's prediction
  (``models/_device.py``) for the largest batch;
* the padding fraction of the batches without and with length buckets;
* the projected time for 100,000 cells;
* the memory-traffic limit of the pair scatter: bytes moved per cell (head sum, gather,
  ``index_add_``'s index and value reads, and its read-modify-write of the accumulator —
  8 bytes ideally, 64 bytes when every atomic reads and writes its own 32-byte sector, the
  realistic case for a 100 MB accumulator that does not fit in L2; 128 bytes for a
  64-byte cache line on CPU) over the device's
  bandwidth (a table for H100 / H200 / A100, else a measured copy bandwidth), as the
  cells/s no implementation of this scatter can exceed on that device.

Examples::

    python benchmarks/gpu_extraction.py                   # the GPU benchmark
    python benchmarks/gpu_extraction.py --small           # CI size, CPU, seconds
    python benchmarks/gpu_extraction.py --dtype float32 --batch-size 32 --cells 512
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from scfm_audit.edges._attention import extract_attention_accumulator
from scfm_audit.models import ScGPTAdapter, build_scgpt_checkpoint
from scfm_audit.models._device import (
    attention_batch_bytes,
    padding_fraction,
    plan_batches,
    resolve_device,
    resolve_dtype,
)

#: HBM bandwidth (bytes/s) by device-name fragment, most specific first (vendor specs)
BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5, HBM3
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB, SXM4 or PCIe
)
SIZES = {
    "gpu": dict(layers=12, heads=8, d_model=512, tokens=1200, cells=2048, genes=5000),
    "small": dict(layers=2, heads=8, d_model=128, tokens=200, cells=32, genes=1000),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CI size (2 layers, 200 tokens, 32 cells)")
    for name in ("layers", "heads", "d-model", "tokens", "cells", "genes"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:<i> (default: auto)")
    p.add_argument("--dtype", default=None, help="forward dtype (default: bf16 on CUDA)")
    p.add_argument("--batch-size", default="auto", help="an integer or 'auto' (default)")
    p.add_argument("--no-buckets", action="store_true", help="stream cells unsorted")
    p.add_argument("--per-head", action="store_true", help="one accumulator per head")
    p.add_argument("--repeats", type=int, default=None, help="best of (default 3 small, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    size = SIZES["small" if args.small else "gpu"]
    for k, v in size.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.repeats is None:
        args.repeats = 3 if args.small else 1
    args.device = resolve_device(args.device)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.type == "cuda" else "float32"
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    return args


def synthetic_cells(n_cells: int, n_genes: int, tokens: int, seed: int) -> ad.AnnData:
    """Counts 1 + Poisson(2) on a random subset of genes per cell, ``tokens``/8 to
    2·``tokens`` genes per cell, log-uniform (half the cells are cut to ``tokens``)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(max(tokens // 8, 2)), np.log(2 * tokens)
    nnz = np.exp(rng.uniform(lo, hi, size=n_cells)).astype(np.int64).clip(max=n_genes)
    rows = np.repeat(np.arange(n_cells), nnz)
    cols = np.concatenate([rng.choice(n_genes, size=k, replace=False) for k in nnz])
    vals = 1 + rng.poisson(2.0, size=rows.size).astype(np.float32)
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_cells, n_genes))
    adata = ad.AnnData(X)
    adata.var_names = [f"G{i:05d}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    return adata


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    from threadpoolctl import threadpool_info

    env = {
        "torch": torch.__version__,
        "device": str(device),
        "forward_dtype": str(dtype).removeprefix("torch."),
        "accumulator_dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "torch_blas": _torch_blas(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "threadpools": [
            {
                k: lib.get(k)
                for k in ("user_api", "internal_api", "num_threads", "version", "architecture")
                if lib.get(k) is not None
            }
            for lib in threadpool_info()
        ],
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def _torch_blas() -> str:
    """The BLAS torch's CPU matmuls call (linked into torch, so threadpoolctl may not
    list it), from ``torch.__config__.show()``."""
    for part in torch.__config__.show().replace("\n", ",").split(","):
        if "BLAS_INFO" in part:
            return part.split("=", 1)[1].strip()
    return "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return 0


def peak(device: torch.device, base: int) -> tuple[str, int]:
    if device.type == "cuda":
        sync(device)
        return "device peak above start", torch.cuda.max_memory_allocated(device) - base
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the process's lifetime peak
    return "process peak RSS so far (CPU, Python included)", kib * 1024


def bandwidth(device: torch.device) -> tuple[float | None, float]:
    """(table value or None, measured copy bandwidth) in bytes/s."""
    table = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = next((bw for key, bw in BANDWIDTH if key in name), None)
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return table, 2 * n * 4 / best  # read + write


def scatter_bytes(
    lengths: np.ndarray, *, layers: int, heads: int, e: int, per_head: bool, granule: int
):
    """Bytes per cell moved by the pair scatter: (ideal, granular) — see the module
    docstring; ``granule`` is the memory transaction of one random add (GPU: a 32-byte
    sector; CPU: a 64-byte cache line), read and written. ``lengths`` include ``<cls>``,
    whose pairs are dropped."""
    pairs = float(np.mean((lengths - 1.0) ** 2))
    if per_head:  # per head: strided copy (r e, w e), gather (sel 4, r e, w e), cast (r e, w 4)
        stream = heads * (2 * e + 4 + 2 * e + e + 4 + 4 + 4)  # + index_add_ lin 4, value 4
        rmw = heads
    else:  # head sum (r H·e, w 4), gather (sel 4, r 4, w 4), index_add_ (lin 4, value 4)
        stream = heads * e + 4 + 12 + 8
        rmw = 1
    count = 4 + 4  # coverage count once per batch: lin 4, ones 4 (+ its RMW below)
    ideal = pairs * (layers * (stream + 8 * rmw) + count + 8)
    sector = pairs * (layers * (stream + 2 * granule * rmw) + count + 2 * granule)
    return ideal, sector


def main() -> None:
    args = parse()
    device, dtype = args.device, resolve_dtype(args.dtype)
    torch.manual_seed(args.seed)
    print("environment")
    for k, v in environment(device, dtype).items():
        print(f"  {k:18s} {json.dumps(v) if isinstance(v, list | dict) else v}")

    adata = synthetic_cells(args.cells, args.genes, args.tokens, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scgpt_checkpoint(
            Path(tmp) / "scgpt_random",
            list(adata.var_names),
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            d_hid=args.d_model,
            max_seq_len=args.tokens,
            seed=args.seed,
        )
        model = ScGPTAdapter.load(path, device=device, dtype=args.dtype)
    print(
        f"model    scGPT layout, random weights: {args.layers} layers × {args.heads} heads, "
        f"d_model {args.d_model}, {args.tokens} tokens/cell, forward {args.dtype}"
    )
    print(f"data     {args.cells} synthetic cells × {args.genes} genes (all accumulated)")

    cells = np.arange(adata.n_obs)
    lengths = model.token_counts(adata, cells)
    buckets = not args.no_buckets
    kw = dict(per_head=args.per_head, score="softmax", progress=False, length_buckets=buckets)

    # warm-up (kernels, allocator): a few cells, not timed
    extract_attention_accumulator(model, adata, cells=cells[:4], batch_size=4, **kw)

    plans: list[dict] = []
    orig = model.iter_batches

    def recording(adata_, **k):  # the batches the engine streams, for the bare pass
        plans.append(k)
        yield from orig(adata_, **k)

    def extract() -> float:
        sync(device)
        t0 = time.perf_counter()
        acc = extract_attention_accumulator(model, adata, batch_size=args.batch_size, **kw)
        sync(device)
        nbytes.append(acc.nbytes)
        return time.perf_counter() - t0

    def bare() -> float:
        sync(device)
        t0 = time.perf_counter()
        for batch in orig(adata, **plans[0]):
            model.forward(batch)
        sync(device)
        return time.perf_counter() - t0

    nbytes: list[int] = []
    model.iter_batches = recording  # type: ignore[method-assign]
    base = reset_peak(device)
    times_extract = [extract()]
    mem_label, mem_extract = peak(device, base)
    model.iter_batches = orig  # type: ignore[method-assign]
    base = reset_peak(device)
    times_bare = [bare()]
    _, mem_bare = peak(device, base)
    for _ in range(args.repeats - 1):  # interleaved, so both see the same machine load
        times_extract.append(extract())
        times_bare.append(bare())
    t_extract, t_bare = min(times_extract), min(times_bare)
    plan_kw = plans[0]
    if "plan" in plan_kw:
        sizes = [len(b) for b in plan_kw["plan"]]
    else:
        b = plan_kw["batch_size"]
        sizes = [min(b, args.cells - s) for s in range(0, args.cells, b)]
    acc_bytes = nbytes[0]
    t0 = time.perf_counter()
    for _batch in orig(adata, **plan_kw):
        pass
    sync(device)
    t_tok = time.perf_counter() - t0

    # padding with the engine's batch sizes, unsorted vs length buckets
    first = sizes[0]
    unsorted = plan_batches(lengths, batch_size=first, sort=False)
    bucketed = plan_batches(lengths, batch_size=first, sort=True)
    e = torch.empty((), dtype=dtype).element_size()
    model_peak = attention_batch_bytes(
        max(sizes),
        int(lengths.max()),
        n_heads=args.heads,
        d_model=args.d_model,
        d_ff=args.d_model,
        element_size=e,
    )
    table_bw, copy_bw = bandwidth(device)
    bw = table_bw or copy_bw
    granule = 32 if device.type == "cuda" else 64
    ideal, sector = scatter_bytes(
        lengths,
        layers=args.layers,
        heads=args.heads,
        e=e,
        per_head=args.per_head,
        granule=granule,
    )
    rate = args.cells / t_extract
    results = {
        "cells": args.cells,
        "batch_size": args.batch_size,
        "batch_sizes": sorted(set(sizes)),
        "length_buckets": buckets,
        "extract_s": t_extract,
        "extract_cells_per_s": rate,
        "bare_forward_s": t_bare,
        "bare_cells_per_s": args.cells / t_bare,
        "ratio_extract_to_bare": t_extract / t_bare,
        "tokenize_s": t_tok,
        "memory_kind": mem_label,
        "peak_extract_bytes": mem_extract,
        "peak_bare_bytes": mem_bare,
        "accumulator_bytes": acc_bytes,
        "memory_model_batch_bytes": model_peak,
        "padding_unsorted": padding_fraction(lengths, unsorted),
        "padding_buckets": padding_fraction(lengths, bucketed),
        "attention_padding_unsorted": padding_fraction(lengths, unsorted, power=2),
        "attention_padding_buckets": padding_fraction(lengths, bucketed, power=2),
        "projected_100k_cells_s": 100_000 / rate,
        "bandwidth_table": table_bw,
        "bandwidth_copy_measured": copy_bw,
        "scatter_bytes_per_cell_ideal": ideal,
        "scatter_bytes_per_cell_sector": sector,
        "scatter_limit_cells_per_s_ideal": bw / ideal,
        "scatter_limit_cells_per_s_sector": bw / sector,
    }
    mib = 2**20
    print("results")
    print(
        f"  batches            {len(sizes)} of {sorted(set(sizes))} cells "
        f"(batch_size={args.batch_size}, length buckets {'on' if buckets else 'off'})"
    )
    print(f"  timing             best of {args.repeats}")
    print(f"  extraction         {t_extract:8.2f} s   {rate:10.1f} cells/s")
    print(f"  bare forward       {t_bare:8.2f} s   {args.cells / t_bare:10.1f} cells/s")
    print(f"  ratio              {t_extract / t_bare:8.2f} × the bare forward pass")
    print(f"  tokenization only  {t_tok:8.2f} s   (inside both timings)")
    print(
        f"  {mem_label}: extraction {mem_extract / mib:,.0f} MiB, bare {mem_bare / mib:,.0f} "
        f"MiB; accumulators {acc_bytes / mib:,.0f} MiB"
    )
    print(
        f"  memory model       {model_peak / mib:,.0f} MiB for the largest batch "
        f"({max(sizes)} cells × {int(lengths.max())} tokens), on top of weights and sums"
    )
    print(
        f"  padding            tokens {results['padding_unsorted']:.1%} unsorted → "
        f"{results['padding_buckets']:.1%} with length buckets; attention entries "
        f"{results['attention_padding_unsorted']:.1%} → "
        f"{results['attention_padding_buckets']:.1%} ({first}-cell batches)"
    )
    print(f"  100,000 cells      {100_000 / rate / 3600:8.2f} h projected at this rate")
    src = "spec table" if table_bw else "measured copy; device not in the table"
    unit = "32-byte sector per atomic" if device.type == "cuda" else "64-byte line per add"
    print(f"  bandwidth          {bw / 1e9:,.0f} GB/s ({src}; copy {copy_bw / 1e9:,.0f} GB/s)")
    print(
        f"  scatter traffic    {ideal / mib:,.1f} MiB/cell ideal, {sector / mib:,.1f} MiB/cell "
        f"with a {unit}"
    )
    print(
        f"  scatter limit      {bw / ideal:,.0f} cells/s ideal, {bw / sector:,.0f} cells/s "
        f"granule-bound; measured is {rate / (bw / sector):.1%} of the latter"
    )
    if device.type != "cuda":
        print("  note               CPU run: no GPU numbers exist from this run.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
