"""Overhead of the Dask executor against the local one: attention extraction of the demo
models (scGPT- and Geneformer-architecture, shipped checkpoints) over the demo benchmark's
cells, the demo's reading (softmax relative to uniform, per head, batch 16).

Usage::

    python benchmarks/dask_overhead.py                      # 2,000 cells, both models
    python benchmarks/dask_overhead.py --cells 500 --plain  # also the one-pass library call
    python benchmarks/dask_overhead.py --shard-costs scgpt:1200:2 geneformer:1024:1
    python benchmarks/dask_overhead.py --de /tmp/scfm_de_bench/screen_150000x4000x600_seed0.h5ad

``--shard-costs`` instead measures one shard through random checkpoints of the real
architectures, ``--de SCREEN.h5ad`` the DE passes of a backed screen under both executors
(the numbers behind the projections of ``docs/scaling.md``).

Each mode runs in a fresh process so that peak memory is its own:

* ``local``: ``executor: {kind: local}`` — the cell shards one after the other here;
* ``dask``: a ``LocalCluster`` of 2 worker processes × 1 thread started in that process;
  its start and the workers' warm-up (imports, each model loaded once per worker from its
  checkpoint, as a run's first task would) are timed apart: they are paid once per run;
* ``local1`` (``--one-thread``): local with one torch thread, the CPU a worker thread
  spends on the same work (on a loaded machine torch's threads wait on each other);
* ``plain`` (``--plain``): no executor, one pass (the library call), for reference.

Printed per mode: wall seconds of the extraction (both models), CPU seconds (the process,
plus its workers for ``dask``), peak resident memory of the process and of each worker,
and the machine's load average before and after — on a shared machine, wall time measures
the neighbours too; CPU seconds do not. The local run lets torch use every core; each Dask
worker has one thread (two workers: the same two cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

FAMILIES = ("scgpt", "geneformer")


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker_stats() -> dict[str, float]:
    return {"cpu_s": _cpu_self(), "peak_mib": _peak_mib(), "pid": os.getpid()}


def _preload(sources: list[Any]) -> float:
    """On a worker: import what a task needs and load each model once (what the first
    task on the worker would do); returns the seconds it took."""
    from scfm_audit._executor import worker_model

    t = time.perf_counter()
    for s in sources:
        with worker_model(s):
            pass
    return time.perf_counter() - t


def _child(mode: str, n_cells: int, shard_cells: int) -> dict[str, Any]:
    import numpy as np

    from scfm_audit._executor import DaskExecutor, LocalExecutor, register_model_source, using
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.edges._attention import extract_attention_accumulator
    from scfm_audit.models._base import load_model
    from scfm_audit.pipeline._demo import ATTENTION_READING, DEMO_SIMULATION, shipped_demo_models

    adata = simulate_perturbseq(**DEMO_SIMULATION).adata
    cells = np.arange(min(n_cells, adata.n_obs))
    folder = shipped_demo_models()
    models = {}
    for fam in FAMILIES:
        path = folder / f"{fam}_demo"
        m = load_model(fam, path, device="cpu", name=f"{fam}_demo")
        register_model_source(
            m, f"bench-{fam}", load_model, fam, str(path), device="cpu", name=f"{fam}_demo"
        )
        models[fam] = m
    out: dict[str, Any] = {"mode": mode, "cells": len(cells), "shard_cells": shard_cells}
    client = None
    stack = contextlib.ExitStack()
    if mode == "dask":
        from distributed import Client

        from scfm_audit.pipeline._executor import local_cluster

        t = time.perf_counter()  # the cluster a run with {kind: dask, n_workers: 2} starts
        cluster = stack.enter_context(local_cluster(2, 1))
        client = stack.enter_context(Client(cluster))
        out["cluster_start_s"] = time.perf_counter() - t
        from scfm_audit._executor import model_source

        t = time.perf_counter()
        client.run(_preload, [model_source(m) for m in models.values()])
        out["worker_warmup_s"] = time.perf_counter() - t
        before = client.run(_worker_stats)
        executor: Any = DaskExecutor(client, shard_cells=shard_cells)
    elif mode in ("local", "local1"):
        if mode == "local1":
            import torch

            torch.set_num_threads(1)
        executor = LocalExecutor(shard_cells=shard_cells)
    else:
        executor = None
    cpu0, wall0 = _cpu_self(), time.perf_counter()
    per_model = {}
    with using(executor):
        for fam, m in models.items():
            t = time.perf_counter()
            acc = extract_attention_accumulator(
                m, adata, cells=cells, per_head=True, score=ATTENTION_READING["score"],
                batch_size=16, progress=False,
            )  # fmt: skip
            per_model[fam] = {"wall_s": time.perf_counter() - t, "n_cells": acc.n_cells}
    out["wall_s"] = time.perf_counter() - wall0
    out["cpu_s"] = _cpu_self() - cpu0
    out["per_model"] = per_model
    out["peak_mib"] = _peak_mib()
    if client is not None:
        after = client.run(_worker_stats)
        out["workers"] = [
            {
                "cpu_s": after[w]["cpu_s"] - before[w]["cpu_s"],
                "peak_mib": after[w]["peak_mib"],
            }
            for w in after
        ]
        out["cpu_s_total"] = out["cpu_s"] + sum(w["cpu_s"] for w in out["workers"])
        stack.close()
    else:
        out["cpu_s_total"] = out["cpu_s"]
    return out


#: the real architectures of the K562 design (random weights, the real checkpoint layouts)
REAL = {
    "scgpt": {"d_model": 512, "n_layers": 12, "n_heads": 8, "d_hid": 512, "max_seq_len": 1200},
    "geneformer": {"hidden_size": 1152, "n_layers": 18, "n_heads": 18, "intermediate_size": 4608},
}


def _shard_costs(family: str, tokens: int, n_cells: int, n_genes: int) -> dict[str, Any]:
    """One shard of ``n_cells`` cells of ``tokens`` tokens through a random checkpoint of
    the real ``family`` architecture: CPU seconds per cell, the shard's accumulator (per
    head, ``n_genes`` accumulated genes) in bytes, and the seconds to pickle it (what goes
    over the wire) and to merge it into another (what the driver does per shard)."""
    import pickle
    import tempfile
    from pathlib import Path

    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from scfm_audit.edges._attention import extract_attention_accumulator
    from scfm_audit.models._base import load_model

    n_vocab = max(tokens + 10, n_genes)
    genes = [f"G{i:05d}" for i in range(n_vocab)]
    rng = np.random.default_rng(0)
    X = sp.lil_matrix((n_cells, n_vocab), dtype=np.float32)
    for c in range(n_cells):  # every cell expresses `tokens` - 1 genes, those accumulated first
        idx = rng.choice(n_vocab, tokens - 1, replace=False)
        X[c, idx] = rng.integers(1, 20, tokens - 1)
    var = pd.DataFrame({"ensembl_id": [f"ENSG{i:011d}" for i in range(n_vocab)]}, index=genes)
    adata = ad.AnnData(X=sp.csr_matrix(X), var=var)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / family
        if family == "scgpt":
            from scfm_audit.models.scgpt._build import build_scgpt_checkpoint

            build_scgpt_checkpoint(path, genes, **{**REAL["scgpt"], "max_seq_len": tokens})
            m = load_model("scgpt", path, device="cpu")
        else:
            from scfm_audit.models.geneformer._build import build_geneformer_checkpoint

            build_geneformer_checkpoint(
                path, list(var["ensembl_id"]), version="V2", max_input_size=max(4096, tokens),
                **REAL["geneformer"],
            )  # fmt: skip
            m = load_model("geneformer", path, device="cpu")
    acc_genes = genes[:n_genes]
    cpu0, t0 = _cpu_self(), time.perf_counter()
    acc = extract_attention_accumulator(
        m, adata, genes=acc_genes, per_head=True, batch_size=1, progress=False
    )
    cpu, wall = _cpu_self() - cpu0, time.perf_counter() - t0
    t = time.perf_counter()
    blob = pickle.dumps(acc, protocol=5)
    pickle_s = time.perf_counter() - t
    other = pickle.loads(blob)
    t = time.perf_counter()
    other.merge(acc)
    merge_s = time.perf_counter() - t
    return {
        "family": family,
        "tokens": tokens,
        "cells": n_cells,
        "cpu_s_per_cell": cpu / n_cells,
        "wall_s_per_cell": wall / n_cells,
        "accumulator_bytes": acc.nbytes,
        "pickle_s": pickle_s,
        "merge_s": merge_s,
        "params": sum(p.numel() for p in m.module.parameters()),
        "peak_mib": _peak_mib(),
        "torch_threads": __import__("torch").get_num_threads(),
    }


def _de_child(mode: str, path: str, method: str, chunk_size: int) -> dict[str, Any]:
    """DE of every perturbation of a backed screen under ``mode`` (local or dask 2 × 1)."""
    import anndata as ad

    from scfm_audit._executor import DaskExecutor, LocalExecutor, using
    from scfm_audit.data._dataset import DatasetSpec
    from scfm_audit.evaluate._de import differential_expression

    adata = ad.read_h5ad(path, backed="r")
    spec = DatasetSpec(perturbation="perturbation", modality="modality")
    out: dict[str, Any] = {"mode": mode, "method": method, "cells": adata.n_obs}
    stack = contextlib.ExitStack()
    client = None
    if mode == "dask":
        from distributed import Client

        from scfm_audit.pipeline._executor import local_cluster

        cluster = stack.enter_context(local_cluster(2, 1))
        client = stack.enter_context(Client(cluster))
        client.run(lambda: __import__("scfm_audit.evaluate._de_kernels"))  # imports, JIT cache
        before = client.run(_worker_stats)
        executor: Any = DaskExecutor(client)
    else:
        executor = LocalExecutor()
    cpu0, t0 = _cpu_self(), time.perf_counter()
    with using(executor):
        de = differential_expression(adata, spec, method=method, chunk_size=chunk_size)
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = _cpu_self() - cpu0
    out["peak_mib"] = _peak_mib()
    out["rows"] = len(de)
    out["p_sum"] = float(de["p"].sum())  # the same sum under both modes: same numbers
    if client is not None:
        after = client.run(_worker_stats)
        out["workers"] = [
            {"cpu_s": after[w]["cpu_s"] - before[w]["cpu_s"], "peak_mib": after[w]["peak_mib"]}
            for w in after
        ]
        out["cpu_s_total"] = out["cpu_s"] + sum(w["cpu_s"] for w in out["workers"])
    else:
        out["cpu_s_total"] = out["cpu_s"]
    stack.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--shard-cells", type=int, default=512)
    ap.add_argument("--plain", action="store_true", help="also time the one-pass library call")
    ap.add_argument(
        "--one-thread",
        action="store_true",
        help="also time local with one torch thread (the CPU a Dask worker's thread needs)",
    )
    ap.add_argument(
        "--shard-costs",
        nargs="*",
        metavar="FAMILY:TOKENS:CELLS",
        help="instead: one shard through random checkpoints of the real architectures "
        "(scGPT 12×8, d 512; Geneformer V2 18×18, d 1152), e.g. scgpt:1200:2 "
        "geneformer:1024:1; per-head accumulators over --genes genes",
    )
    ap.add_argument("--genes", type=int, default=2000, help="accumulated genes (--shard-costs)")
    ap.add_argument(
        "--de",
        default=None,
        metavar="H5AD",
        help="instead: DE (Welch and Wilcoxon) of the screen in this backed .h5ad (e.g. one "
        "benchmarks/differential_expression.py simulates), local against dask",
    )
    ap.add_argument("--chunk-size", type=int, default=20_000, help="DE rows per chunk (--de)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="welch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child and args.de:
        print(json.dumps(_de_child(args.child, args.de, args.method, args.chunk_size)))
        return 0
    if args.child:
        print(json.dumps(_child(args.child, args.cells, args.shard_cells)))
        return 0
    if args.de:
        for method in ("welch", "wilcoxon"):
            for mode in ("local", "dask"):
                load0 = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--child", mode, "--de", args.de]
                cmd += ["--method", method, "--chunk-size", str(args.chunk_size)]
                p = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if p.returncode != 0:
                    print(p.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(p.stdout.strip().splitlines()[-1])
                workers = "".join(
                    f"; worker CPU {w['cpu_s']:.1f} s, peak {w['peak_mib']:.0f} MiB"
                    for w in r.get("workers", [])
                )
                print(
                    f"DE {method:>8} {mode:>5}: {r['cells']} cells, {r['rows']} rows, wall "
                    f"{r['wall_s']:.1f} s, CPU {r['cpu_s_total']:.1f} s, peak "
                    f"{r['peak_mib']:.0f} MiB{workers}; Σp {r['p_sum']:.10g}; load "
                    f"{load0:.2f} → {os.getloadavg()[0]:.2f}"
                )
        return 0
    if args.shard_costs is not None:
        for spec in args.shard_costs or ["scgpt:1200:2", "geneformer:1024:1"]:
            fam, tokens, cells = spec.split(":")
            load0 = os.getloadavg()[0]
            r = _shard_costs(fam, int(tokens), int(cells), args.genes)
            print(
                f"{fam} ({r['params'] / 1e6:.0f} M parameters), {tokens} tokens: CPU "
                f"{r['cpu_s_per_cell']:.1f} s/cell (wall {r['wall_s_per_cell']:.1f} s/cell, "
                f"{r['torch_threads']} torch threads), accumulator {r['accumulator_bytes'] / 2**30:.2f}"
                f" GiB per shard (pickle {r['pickle_s']:.1f} s, merge {r['merge_s']:.1f} s), "
                f"peak {r['peak_mib']:.0f} MiB; load average {load0:.2f} → "
                f"{os.getloadavg()[0]:.2f}"
            )
        return 0
    modes = (["plain"] if args.plain else []) + ["local", "dask"]
    modes += ["local1"] if args.one_thread else []
    res = {}
    for mode in modes:
        load0 = os.getloadavg()
        cmd = [sys.executable, __file__, "--child", mode, "--cells", str(args.cells)]
        cmd += ["--shard-cells", str(args.shard_cells)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        res[mode]["load"] = (load0, os.getloadavg())
        r = res[mode]
        per = ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in r["per_model"].items())
        print(
            f"{mode:>5}: {r['cells']} cells, wall {r['wall_s']:.1f} s ({per}), CPU "
            f"{r['cpu_s_total']:.1f} s, peak {r['peak_mib']:.0f} MiB (this process); "
            f"load average {load0[0]:.2f} → {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
        if "workers" in r:
            for i, w in enumerate(r["workers"]):
                print(f"       worker {i}: CPU {w['cpu_s']:.1f} s, peak {w['peak_mib']:.0f} MiB")
            print(
                f"       LocalCluster start {r['cluster_start_s']:.1f} s, worker warm-up "
                f"(imports, one load of each model per worker) {r['worker_warmup_s']:.1f} s: "
                "once per run, not in the wall"
            )
    loc, dk = res["local"], res["dask"]
    worker_peak = max(w["peak_mib"] for w in dk["workers"])
    print(
        f"\ndask / local: wall {dk['wall_s'] / loc['wall_s']:.2f}× "
        f"({100 * (dk['wall_s'] / loc['wall_s'] - 1):+.0f}%; goal ≤ +15%), CPU "
        f"{dk['cpu_s_total'] / loc['cpu_s_total']:.2f}×, peak memory per worker "
        f"{worker_peak / loc['peak_mib']:.2f}× the local process (goal ≤ 1.3×)"
    )
    if "local1" in res:
        l1 = res["local1"]
        print(
            f"dask / local with one torch thread: CPU {dk['cpu_s_total'] / l1['cpu_s_total']:.2f}× "
            f"(the cluster's own cost: transfers, scheduling, merges), wall "
            f"{dk['wall_s'] / l1['wall_s']:.2f}× (two workers against one thread)"
        )
    if "plain" in res:
        pl = res["plain"]
        print(
            f"local shards / one pass: wall {loc['wall_s'] / pl['wall_s']:.2f}×, CPU "
            f"{loc['cpu_s_total'] / pl['cpu_s_total']:.2f}×"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
