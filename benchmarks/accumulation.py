"""Benchmark: per-stratum and nested-subset attention accumulation versus one pooled pass.

Over the *same* cells of a simulated dataset, with a tiny random scGPT checkpoint
(``models.build_scgpt_checkpoint``) loaded through the package's adapter:

(a) pooled   ``extract_attention_accumulator(cells=...)``: one accumulator;
(b) strata   the same pass with ``groups`` = the cells' states (``cssi``): one accumulator
             per state in the same pass;
(c) nested   the same pass with ``groups`` = each cell's smallest grid bucket of a nested
             order (``scaling``), then ``cumulative()`` (every nested subset).

Each is timed ``--repeats`` times (median of wall-clock seconds); the ratios (b)/(a) and
(c)/(a) are printed — the target is ≤ 1.3. Also printed: torch's intra-op threads and the
BLAS / OpenMP pools that ran (``threadpoolctl.threadpool_info()``).

Example::

    python benchmarks/accumulation.py --cells 1000 --genes 200 --layers 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info

from scfm_audit.data import simulate_perturbseq
from scfm_audit.edges._attention import extract_attention_accumulator
from scfm_audit.evaluate._scaling import grid_buckets, nested_stratified_order
from scfm_audit.models import build_scgpt_checkpoint, load_model


def _time(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function; the functions run in turn within every repeat, so
    that a change of machine load touches all of them alike."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            out[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--states", type=int, default=6)
    ap.add_argument("--grid", type=int, nargs="+", default=[25, 50, 100, 200, 500, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    bench = simulate_perturbseq(
        n_cells=a.cells,
        n_genes=a.genes,
        n_tfs=max(2, a.genes // 10),
        n_perturbations=2,
        n_states=a.states,
        seed=a.seed,
    )
    adata = bench.adata
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scgpt_checkpoint(
            Path(tmp) / "scgpt",
            list(adata.var_names),
            d_model=a.d_model,
            n_layers=a.layers,
            n_heads=a.heads,
            d_hid=2 * a.d_model,
            max_seq_len=a.genes + 2,
            seed=a.seed,
        )
        model = load_model("scgpt", path, **({"device": a.device} if a.device else {}))
    states = adata.obs["cell_state"].cat.codes.to_numpy()
    grid = sorted(g for g in a.grid if g <= adata.n_obs)
    order = nested_stratified_order(states, np.random.default_rng(a.seed))[: grid[-1]]
    kw = dict(batch_size=a.batch_size, progress=False)

    def pooled():
        return extract_attention_accumulator(model, adata, cells=order, **kw)

    def strata():
        acc = extract_attention_accumulator(model, adata, cells=order, groups=states[order], **kw)
        return [acc.group(k) for k in range(acc.n_groups)]

    def nested():
        acc = extract_attention_accumulator(
            model, adata, cells=order, groups=grid_buckets(grid), n_groups=len(grid), **kw
        )
        return acc.cumulative()

    pooled()  # warm-up (allocations, kernels)
    t = _time({"pooled": pooled, "strata": strata, "nested": nested}, a.repeats)
    n_states = len(np.unique(states[order]))
    print(
        f"{len(order)} cells × {a.genes} genes, scGPT {a.layers} layers × {a.heads} heads "
        f"(d_model {a.d_model}), batch {a.batch_size}, device {model.device}; "
        f"median of {a.repeats} interleaved runs"
    )
    print(f"  pooled pass                       {t['pooled']:.3f} s")
    print(f"  strata pass ({n_states} groups) + read-out  {t['strata']:.3f} s  "
          f"ratio {t['strata'] / t['pooled']:.2f}")  # fmt: skip
    print(f"  nested pass (grid {grid}) + cumulative()  {t['nested']:.3f} s  "
          f"ratio {t['nested'] / t['pooled']:.2f}")  # fmt: skip
    print(
        f"torch threads: intra-op {torch.get_num_threads()}, "
        f"inter-op {torch.get_num_interop_threads()}"
    )
    for pool in threadpool_info():
        print(
            "threadpool:",
            json.dumps(
                {
                    k: pool.get(k)
                    for k in ("user_api", "internal_api", "num_threads", "prefix", "version")
                }
            ),
        )


if __name__ == "__main__":
    main()
