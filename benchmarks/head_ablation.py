"""Benchmark: the head-ablation random-set null with the residual stream cached vs
re-running the full model per random set, on the shipped demo scGPT model.

Both paths run the same conditions on the same seeded masked control cells through
``masked_loss_conditions`` (``use_cache=True``: one baseline pass per batch keeping the
state entering every layer a condition starts at, then layers L.. per condition;
``use_cache=False``: every condition is a full forward). The per-cell losses must agree
to float tolerance (checked). Two random-set rules: ``any`` (heads of all layers, the
paper's random-k: most sets touch layer 0, so little is saved) and ``layer_matched``
(as many heads per layer as the reference set, here the last two layers' heads).
Prints wall time, the ratio, layer passes, torch threads and the BLAS / OpenMP pools
that ran (``threadpoolctl.threadpool_info()``).

Example::

    OMP_NUM_THREADS=1 python benchmarks/head_ablation.py --cells 32 --sets 50
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
    a = ap.parse_args()

    model = load_model("scgpt", a.model, device="cpu")
    bench = simulate_perturbseq(n_cells=3000, n_genes=300, n_tfs=30, module_strength=2.0, seed=0)
    adata = bench.adata
    ctrl = np.flatnonzero(adata.obs["perturbation"].astype(str).to_numpy() == "non-targeting")
    cells = np.sort(np.random.default_rng(a.seed).choice(ctrl, a.cells, replace=False))
    batches = [
        masked_inputs(model, model.tokenize(adata, cells[i : i + a.batch_size]), ratio=0.15,
                      seed=a.seed + i)
        for i in range(0, len(cells), a.batch_size)
    ]  # fmt: skip
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
        out = {}
        for use_cache in (True, False):
            t = time.perf_counter()
            out[use_cache] = masked_loss_conditions(model, batches, conds, use_cache=use_cache)
            out[f"t{use_cache}"] = time.perf_counter() - t
        np.testing.assert_allclose(out[True].loss, out[False].loss, rtol=1e-4, atol=1e-6)
        c, f = out[True], out[False]
        print(
            f"[{rule}] cached {out['tTrue']:.2f} s vs full {out['tFalse']:.2f} s: "
            f"ratio {out['tFalse'] / out['tTrue']:.2f}× faster; layer passes "
            f"{c.layer_passes} vs {f.layer_passes} ({1 - c.layer_passes / f.layer_passes:.0%} "
            f"saved); losses equal (max |Δ| "
            f"{np.nanmax(np.abs(c.loss - f.loss)):.2e})"
        )
    for pool in threadpool_info():
        print("threadpool:", json.dumps({k: pool.get(k) for k in (
            "user_api", "internal_api", "num_threads", "prefix", "version")}))  # fmt: skip


if __name__ == "__main__":
    main()
