"""Benchmark: streaming attention extraction vs the naive way vs a bare forward pass.

(a) engine  ``extract_attention_accumulator``: batched forward, one hook per layer folds the
            attention into on-device gene × gene sums (index_add_), nothing kept per cell.
(b) naive   one cell at a time, every layer's attention collected in a list
            (``output_attentions=True`` style), accumulated in numpy by per-cell fancy
            indexing (``acc[np.ix_(g, g)] += A``). Runs on ``--naive-cells`` cells; its time
            is extrapolated linearly to ``--cells``.
(c) bare    the same batched forward pass (attention probabilities computed, nothing kept).

Each approach runs in its own subprocess so that peak memory is measured cleanly: the
peak resident set size above the process's size after building the model and data (CPU,
sampled every 5 ms, with glibc's mmap threshold fixed at 1 MiB so that freed tensors leave
the RSS), or ``torch.cuda.max_memory_allocated`` above the baseline (CUDA).
The model is a random encoder run through the package's own ``encoder_layer``.

Example (CPU)::

    python benchmarks/attention_extraction.py --cells 2000 --tokens 512 --naive-cells 100
    python benchmarks/attention_extraction.py --mem-check --tokens 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scfm_audit.edges._attention import extract_attention_accumulator
from scfm_audit.models._base import ModelAdapter, ModelOutput, TokenizedBatch, VocabularyReport
from scfm_audit.models._hooks import HookContext
from scfm_audit.models._transformer import LayerWeights, encoder_layer


# -- a random model speaking the adapter protocol -------------------------------------------------
class BenchAdapter(ModelAdapter):
    """``<cls>`` + the cell's non-zero genes (dataset order), random weights."""

    family = "bench"

    def __init__(self, n_genes, *, n_layers, n_heads, d_model, max_len, device, seed=0):
        self.name, self.n_layers, self.n_heads, self.d_model = "bench", n_layers, n_heads, d_model
        self.max_len, self.device = max_len, torch.device(device)
        g = torch.Generator().manual_seed(seed)
        D, F = d_model, 4 * d_model

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(self.device)

        self.embedding = rnd(n_genes + 2, D)
        self.value_w = rnd(D)
        s = 2 / math.sqrt(D)
        self.weights = [
            LayerWeights(
                q_w=rnd(D, D, scale=s),
                q_b=rnd(D, scale=0.1),
                k_w=rnd(D, D, scale=s),
                k_b=rnd(D, scale=0.1),
                v_w=rnd(D, D, scale=s),
                v_b=rnd(D, scale=0.1),
                o_w=rnd(D, D, scale=s),
                o_b=rnd(D, scale=0.1),
                ln1_w=torch.ones(D).to(device),
                ln1_b=rnd(D, scale=0.1),
                ff1_w=rnd(F, D, scale=1 / math.sqrt(D)),
                ff1_b=rnd(F, scale=0.1),
                ff2_w=rnd(D, F, scale=1 / math.sqrt(F)),
                ff2_b=rnd(D, scale=0.1),
                ln2_w=torch.ones(D).to(device),
                ln2_b=rnd(D, scale=0.1),
                n_heads=n_heads,
            )
            for _ in range(n_layers)
        ]
        self._init_hooks()

    @classmethod
    def load(cls, path, *, device=None, name=None):
        raise NotImplementedError

    def save_pretrained(self, path):
        raise NotImplementedError

    def vocabulary_report(self, adata):
        return VocabularyReport(self.name, adata.n_vars, adata.n_vars, 1.0, 1.0)

    def perturb(self, batch, gene, *, mode):
        raise NotImplementedError

    def tokenize(self, adata, cells=None, *, counts="X"):
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
        X = adata.X[idx].tocsr()
        lens = np.minimum(np.diff(X.indptr), self.max_len - 1)
        B, T = len(idx), int(lens.max()) + 1
        gidx = np.full((B, T), -1, np.int64)
        vals = np.zeros((B, T), np.float32)
        for b in range(B):
            lo = X.indptr[b]
            gidx[b, 1 : lens[b] + 1] = X.indices[lo : lo + lens[b]]
            vals[b, 1 : lens[b] + 1] = np.log1p(X.data[lo : lo + lens[b]])
        mask = np.arange(T)[None, :] <= lens[:, None]
        ids = np.where(gidx >= 0, gidx + 2, 0)
        ids[:, 0] = 1
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            gene_index=torch.from_numpy(gidx),
            cell_index=idx,
            values=torch.from_numpy(vals),
        )

    def iter_batches(self, adata, **kw):
        """The base class's batches, time-stamped (for the robust per-batch median)."""
        self.stamps = [time.perf_counter()]
        for batch in super().iter_batches(adata, **kw):
            yield batch
            self.stamps.append(time.perf_counter())

    def _forward(self, batch, *, return_logits=False):
        x = self.embedding[batch.input_ids] + batch.values[..., None] * self.value_w
        ctx = HookContext(attention_mask=batch.attention_mask)
        for L, w in enumerate(self.weights):
            x = encoder_layer(x, w, self.hook_points, L, ctx)
        return ModelOutput(hidden=x, cell_embedding=x[:, 0], attention_mask=batch.attention_mask)


def make_data(n_cells, n_genes, tokens, seed=0):
    """Each cell expresses ``tokens - 1`` random genes (so it has exactly ``tokens``)."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    k = tokens - 1
    cols = np.argsort(rng.random((n_cells, n_genes)), axis=1)[:, :k]
    cols.sort(axis=1)
    data = rng.integers(1, 20, size=n_cells * k).astype(np.float32)
    X = sp.csr_matrix(
        (data, cols.ravel(), np.arange(0, n_cells * k + 1, k)), shape=(n_cells, n_genes)
    )
    return ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


# -- the three approaches ------------------------------------------------------------------------
def run_engine(model, adata, args, n_cells):
    return extract_attention_accumulator(
        model,
        adata,
        cells=np.arange(n_cells),
        per_head=args.per_head,
        batch_size=args.batch_size,
        progress=False,
    )


def run_naive(model, adata, args, n_cells):
    """One cell at a time; all layers' attention collected (output_attentions style);
    numpy accumulation by per-cell fancy indexing."""
    G, L, H = adata.n_vars, model.n_layers, model.n_heads
    shape = (L, H, G, G) if args.per_head else (L, G, G)
    acc = np.zeros(shape)
    count = np.zeros((G, G), np.int64)
    model.stamps = [time.perf_counter()]
    for c in range(n_cells):
        batch = model.tokenize(adata, [c]).to(model.device)
        attentions = []
        with model.hooks({"layers.*.attn.pattern": lambda x, _a=attentions, **_: _a.append(x)}):
            model.forward(batch)
        attentions = [a[0].cpu().numpy() for a in attentions]  # (H, T, T) per layer
        gi = batch.gene_index[0].cpu().numpy()
        keep = np.flatnonzero(gi >= 0)
        g = gi[keep]
        ix = np.ix_(g, g)
        for layer, a in enumerate(attentions):
            a = a[:, keep][:, :, keep]
            if args.per_head:
                for h in range(H):
                    acc[layer, h][ix] += a[h]
            else:
                acc[layer][ix] += a.sum(0)
        count[ix] += 1
        model.stamps.append(time.perf_counter())
    return acc, count


def run_bare(model, adata, args, n_cells):
    for batch in model.iter_batches(adata, batch_size=args.batch_size, cells=np.arange(n_cells)):
        model.forward(batch)


# -- measurement ----------------------------------------------------------------------------------
def _trim() -> None:
    """Give freed heap memory back to the OS (glibc) so the next peak is measured afresh."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: sampled RSS (CPU) or CUDA allocator peak."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss()
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._sample, daemon=True)
            self._t.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, _rss())
        self.delta = self.peak - self.base


def child(args):
    torch.manual_seed(0)
    adata = make_data(args.child_cells, args.genes, args.tokens)
    model = BenchAdapter(
        args.genes,
        n_layers=args.layers,
        n_heads=args.heads,
        d_model=args.d_model,
        max_len=args.tokens,
        device=args.device,
    )
    run_bare(model, adata, args, min(args.batch_size, args.child_cells))  # warm-up
    fn = {"engine": run_engine, "naive": run_naive, "bare": run_bare}[args.child]
    _trim()
    with PeakMemory(args.device) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(model, adata, args, args.child_cells)
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    # robust to bursts of CPU contention: median time per unit (batch of cells, or one
    # cell for the naive way) times the number of units
    units = np.diff(model.stamps)
    res = {
        "seconds": dt,
        "cpu_seconds": dc,
        "median_seconds": float(np.median(units) * len(units)),
        "peak_bytes": mem.delta,
        "cells": args.child_cells,
    }
    if args.child == "engine":
        res["accumulator_bytes"] = out.nbytes
    print("RESULT " + json.dumps(res), flush=True)


def spawn(args, what, n_cells, **override):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        what,
        "--child-cells",
        str(n_cells),
    ]
    opts = {**vars(args), **override}
    for key in ("tokens", "genes", "layers", "heads", "d_model", "batch_size", "device"):
        cmd += [f"--{key.replace('_', '-')}", str(opts[key])]
    if opts["per_head"]:
        cmd.append("--per-head")
    # big blocks straight from / back to the OS, so that RSS follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{what} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def check_equal(args):
    """Engine vs naive edges on the cells the naive run processes."""
    n = min(args.check_cells, args.naive_cells)
    adata = make_data(n, args.genes, args.tokens)
    model = BenchAdapter(
        args.genes,
        n_layers=args.layers,
        n_heads=args.heads,
        d_model=args.d_model,
        max_len=args.tokens,
        device=args.device,
    )
    acc = run_engine(model, adata, args, n)
    ref, count = run_naive(model, adata, args, n)
    assert np.array_equal(acc.count.cpu().numpy(), count)
    edges = acc.to_edge_scores()
    worst = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        for e in edges:
            if args.per_head and e.head is not None:
                r = ref[e.layer, e.head]
            elif args.per_head:
                r = ref[e.layer].mean(0)
            else:
                r = ref[e.layer] / args.heads
            r = r / count
            ok = count > 0
            worst = max(worst, float(np.abs(e.dense()[ok] - r[ok]).max()))
    return n, worst


def fmt_mb(b):
    return f"{b / 2**20:8.1f} MiB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=512, help="tokens per cell (incl. <cls>)")
    p.add_argument("--genes", type=int, default=2000, help="genes accumulated (G)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-head", action="store_true", help="accumulate per head too")
    p.add_argument("--naive-cells", type=int, default=100, help="cells run by (b)")
    p.add_argument("--check-cells", type=int, default=20, help="cells for the equality check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--mem-check", action="store_true", help="only: engine peak memory at --mem-cells"
    )
    p.add_argument("--mem-cells", type=int, nargs="+", default=[1000, 8000])
    p.add_argument("--child", choices=["engine", "naive", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--child-cells", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    print(
        f"device={args.device} threads={torch.get_num_threads()} layers={args.layers} "
        f"heads={args.heads} d_model={args.d_model} tokens/cell={args.tokens} "
        f"genes={args.genes} batch={args.batch_size} per_head={args.per_head}"
    )
    if args.mem_check:
        print(f"engine peak memory vs number of cells (tokens/cell={args.tokens}):")
        for n in args.mem_cells:
            r = spawn(args, "engine", n)
            print(
                f"  {n:6d} cells: {r['seconds']:7.1f} s wall ({r['median_seconds']:7.1f} s "
                f"median-based), {r['cpu_seconds']:7.1f} s CPU, "
                f"peak {fmt_mb(r['peak_bytes'])}  "
                f"accumulator {fmt_mb(r['accumulator_bytes'])}"
            )
        return None

    n, worst = check_equal(args)
    print(
        f"equality check on {n} cells: max |engine - naive| = {worst:.2e}"
        f" -> {'OK' if worst <= 1e-5 else 'FAIL'}"
    )
    a = spawn(args, "engine", args.cells)
    c = spawn(args, "bare", args.cells)
    b = spawn(args, "naive", args.naive_cells)
    scale = args.cells / b["cells"]
    b = {**b, **{k: b[k] * scale for k in ("seconds", "cpu_seconds", "median_seconds")}}
    rows = [("(a) engine", a), ("(b) naive*", b), ("(c) bare forward", c)]
    print(
        f"{'approach':18s} {'wall (s)':>9s} {'median-based (s)':>17s} {'CPU (s)':>9s} "
        f"{'cells/s':>8s} {'cells run':>9s} {'peak mem':>13s}"
    )
    for name, r in rows:
        print(
            f"{name:18s} {r['seconds']:9.1f} {r['median_seconds']:17.1f} "
            f"{r['cpu_seconds']:9.1f} {args.cells / r['median_seconds']:8.1f} "
            f"{r['cells']:9d} {fmt_mb(r['peak_bytes'])}"
        )
    print(
        f"* naive ran {b['cells']} cells; its times are extrapolated linearly to "
        f"{args.cells} cells. cells/s from the median-based time."
    )
    for label, x, y in (("a/b", a, b), ("a/c", a, c)):
        ratios = ", ".join(
            f"{k} {x[key] / y[key]:.3f}"
            for k, key in (
                ("wall", "seconds"),
                ("median-based", "median_seconds"),
                ("CPU", "cpu_seconds"),
            )
        )
        print(f"ratio {label}: {ratios}")
    print(f"engine accumulator: {fmt_mb(a['accumulator_bytes'])}")
    return None


if __name__ == "__main__":
    main()
