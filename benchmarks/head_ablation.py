"""Benchmark: the head-ablation random-set null with the residual stream cached vs
re-running the full model per random set, on the shipped demo scGPT model.

Both paths run the same conditions on the same seeded masked control cells through
``masked_loss_conditions`` (``use_cache=True``: one baseline pass per batch keeping the
state entering every layer a condition starts at, then layers L.. per condition;
``use_cache=False``: every condition is a full forward). The per-cell losses must agree
to float tolerance (checked). Two random-set rules: ``any`` (heads of all layers, the
paper's random-k: most sets touch layer 0, so little is saved) and ``layer_matched``
(as many heads per layer as the reference set, here the last two layers' heads).
Timing: per condition and batch the two forward passes alternate, the fastest of
``--repeats`` kept for each (on a shared machine, load from other processes then hits
both paths alike; the full path runs every layer from the cached embedding output); the
per-condition work outside the forward pass (losses, fidelity)
is the same for both paths and not timed. Prints the summed times, the ratio, layer
passes, torch threads and the BLAS / OpenMP pools that ran
(``threadpoolctl.threadpool_info()``).

Example::

    OMP_NUM_THREADS=1 python benchmarks/head_ablation.py --cells 16 --sets 50 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info

from scfm_audit.data import simulate_perturbseq
from scfm_audit.evaluate._ablation import (
    Condition,
    all_heads,
    masked_loss_conditions,
    random_head_sets,
)
from scfm_audit.models import load_model
from scfm_audit.models._masked import masked_inputs

DEMO = Path(__file__).resolve().parents[1] / "src/scfm_audit/data/demo_models/scgpt_demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=32)
    ap.add_argument("--sets", type=int, default=50)
    ap.add_argument("--size", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="runs per path (fastest kept)")
    a = ap.parse_args()

    model = load_model("scgpt", a.model, device="cpu")
    bench = simulate_perturbseq(n_cells=3000, n_genes=300, n_tfs=30, module_strength=2.0, seed=0)
    adata = bench.adata
    ctrl = np.flatnonzero(adata.obs["perturbation"].astype(str).to_numpy() == "non-targeting")
    cells = np.sort(np.random.default_rng(a.seed).choice(ctrl, a.cells, replace=False))
    batches = [
        masked_inputs(
            model, model.tokenize(adata, cells[i : i + a.batch_size]), ratio=0.15, seed=a.seed + i
        )
        for i in range(0, len(cells), a.batch_size)
    ]
    heads = all_heads(model.n_layers, model.n_heads)
    late = [h for h in heads if h[0] >= model.n_layers - 2][: a.size]
    print(
        f"model {model.name}: {model.n_layers} layers × {model.n_heads} heads, d={model.d_model}; "
        f"{a.cells} control cells, {max(int(b.batch.seq_len) for b in batches)} tokens max; "
        f"{a.sets} random {a.size}-head sets; torch threads {torch.get_num_threads()}"
    )
    for rule in ("any", "layer_matched"):
        rng = np.random.default_rng(a.seed)
        sets = random_head_sets(
            heads, len(late), a.sets, rng, layer_matched=late if rule == "layer_matched" else None
        )
        conds = [Condition("random-k", "zero", s, draw=i) for i, s in enumerate(sets)]
        cached = masked_loss_conditions(model, batches, conds, use_cache=True)
        full = masked_loss_conditions(model, batches, conds, use_cache=False)
        np.testing.assert_allclose(cached.loss, full.loss, rtol=1e-4, atol=1e-6)
        # timing: per condition and batch, the two paths alternate (fastest of --repeats
        # each), so that load from other processes hits both alike
        t_c = t_f = 0.0
        caches = [
            model.residual_cache(mb.batch, sorted({c.start_layer for c in conds} | {0}))
            for mb in batches
        ]
        t0 = time.perf_counter()
        for c in conds:
            with c.intervention(model):
                for cache in caches:
                    best_c = best_f = float("inf")
                    for _ in range(a.repeats):
                        t = time.perf_counter()
                        model.forward_cached(cache, c.start_layer)
                        best_c = min(best_c, time.perf_counter() - t)
                        t = time.perf_counter()
                        model.forward_cached(cache, 0)
                        best_f = min(best_f, time.perf_counter() - t)
                    t_c += best_c
                    t_f += best_f
        total = time.perf_counter() - t0
        print(
            f"[{rule}] random-set null, forward passes: cached {t_c:.2f} s vs full {t_f:.2f} s "
            f"(ratio {t_f / t_c:.2f}× faster); layer passes {cached.layer_passes} vs "
            f"{full.layer_passes} ({1 - cached.layer_passes / full.layer_passes:.0%} saved); "
            f"losses equal (max |Δ| {np.nanmax(np.abs(cached.loss - full.loss)):.2e}); "
            f"timing loop {total:.1f} s"
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
