"""Benchmark: scfm-audit's DE (Welch, Wilcoxon) side by side with the tools a user would
otherwise pick, on the same simulated screens, each tool in its own process.

Per screen (default: 60,000 cells × 2,000 genes × 300 perturbations and 150,000 × 4,000 ×
600; ``--small``: 6,000 × 500 × 40; ``--sizes`` or ``--input`` for others) and per tool
that is installed (``pip install .[bench]``): wall time from the counts file to p-values
(the tool's own reading and log-normalisation included; imports and compilation are
not: every tool is warmed up on a tiny screen first in the same process), peak RSS of the
process, the ratio to ours, and agreement with scanpy as the reference (Spearman of p,
max |Δ log10 p|, Jaccard of the responder sets at BH q < 0.05 within each perturbation:
mean and worst over perturbations). Every tool is limited to ``--threads`` threads
(its own argument and OMP / OpenBLAS / MKL / numba / rayon / polars variables).

Tools and their tests (all against the control group, two-sided):

* ``ours_welch``: Welch t (scanpy ``t-test``), read backed in row chunks.
* ``ours_wilcoxon``: Mann–Whitney U, normal approximation, tie-corrected variance, no
  continuity correction (scanpy ``wilcoxon, tie_correct=True``); ``ours_wilcoxon_notc``
  without tie correction (scanpy's default).
* ``scanpy_ttest``, ``scanpy_wilcoxon`` (``rank_genes_groups``, reference = control, on
  float64 data so that the same test gives the same p; default tie handling = none).
  scanpy's Wilcoxon is skipped above ``--scanpy-wilcoxon-max-cells`` (default 10,000:
  12× slower than ours at 6,000 cells, it had not finished after 15 min at 60,000 on
  the shared 2-core machine); the Wilcoxon reference is then ours without tie correction,
  which equals scanpy's p bit for bit (tests/test_de_engine.py), and the table says so.
* ``illico`` (``asymptotic_wilcoxon``: tie correction and continuity correction on),
  ``hpdex`` (``parallel_differential_expression``: tie and continuity correction),
  ``pdex`` (Mann–Whitney via numba-mwu), all on scanpy-normalised data in
  memory (float32, as stored).
* ``crispyx_ttest`` (Welch t, streaming) and ``crispyx_wilcoxon`` (tie-corrected), both on
  a log-normalised copy that ``crispyx.normalize_total_log1p`` writes first (its time is
  included; the test alone is printed too); gene filters off.

Run: ``python benchmarks/de_peers.py [--small] [--threads 2] [--repeats 1]
[--tools ours_welch,hpdex,...] [--workdir /tmp/scfm_de_peers]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CONTROL = "non-targeting"
DEFAULT_SIZES = ["60000x2000x300", "150000x4000x600"]
SMALL_SIZES = ["6000x500x40"]
TOOLS = [
    "ours_welch",
    "ours_wilcoxon",
    "ours_wilcoxon_notc",
    "scanpy_ttest",
    "scanpy_wilcoxon",
    "crispyx_ttest",
    "crispyx_wilcoxon",
    "illico",
    "hpdex",
    "pdex",
]
FAMILY = {  # which scanpy test a tool's p is compared with
    "ours_welch": "ttest",
    "scanpy_ttest": "ttest",
    "crispyx_ttest": "ttest",
}
TEST_NOTE = {
    "ours_welch": "Welch t",
    "ours_wilcoxon": "MWU, tie-corrected, no continuity",
    "ours_wilcoxon_notc": "MWU, no tie corr. (scanpy default)",
    "scanpy_ttest": "Welch t (reference)",
    "scanpy_wilcoxon": "MWU, no tie corr. (reference)",
    "crispyx_ttest": "Welch t",
    "crispyx_wilcoxon": "MWU, tie-corrected",
    "illico": "MWU, tie + continuity corr.",
    "hpdex": "MWU, tie + continuity corr.",
    "pdex": "MWU (numba-mwu)",
}
THREAD_VARS = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "POLARS_MAX_THREADS",
]


# ----------------------------------------------------------------------------- workers
def _peak_gib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 2**20  # KiB on Linux


def _mark(times: dict) -> None:
    """Peak RSS and CPU time when the tool has its result (before the benchmark's own
    conversion to a p-value matrix, which is not the tool's)."""
    times["peak_gib"] = _peak_gib()
    times["cpu_end"] = time.process_time()


def _groups(path: str) -> tuple[list[str], list[str]]:
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    lab = a.obs["perturbation"].astype(str)
    perts = sorted(set(lab) - {CONTROL})
    genes = list(map(str, a.var_names))
    a.file.close()
    return perts, genes


def _log_memory(path: str, float64: bool):
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    a = ad.read_h5ad(path)
    if float64:
        a.X = sparse.csr_matrix(a.X, dtype=np.float64)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def _matrix(rows, cols, perts, genes, values) -> np.ndarray:
    """(perturbation, gene) → value long arrays as a (P, G) matrix (NaN where missing)."""
    import pandas as pd

    out = np.full((len(perts), len(genes)), np.nan)
    r = pd.Index(perts).get_indexer(pd.Index(np.asarray(rows).astype(str)))
    c = pd.Index(genes).get_indexer(pd.Index(np.asarray(cols).astype(str)))
    ok = (r >= 0) & (c >= 0)
    out[r[ok], c[ok]] = np.asarray(values, dtype=float)[ok]
    return out


def run_tool(tool: str, path: str, threads: int, tmp: str) -> tuple[np.ndarray, dict]:
    """p-values (P, G) of ``tool`` on the counts file ``path`` and stage times."""
    perts, genes = _groups(path)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if tool.startswith("ours"):
        import anndata as ad

        from scfm_audit.data._dataset import DatasetSpec
        from scfm_audit.evaluate._de import differential_expression

        a = ad.read_h5ad(path, backed="r")
        de = differential_expression(
            a,
            DatasetSpec(perturbation="perturbation", control=CONTROL),
            method="welch" if tool == "ours_welch" else "wilcoxon",
            tie_correct=tool == "ours_wilcoxon",
        )
        times["total"] = time.perf_counter() - t0
        _mark(times)
        return _matrix(de["perturbation"], de["gene"], perts, genes, de["p"]), times
    if tool.startswith("scanpy"):
        import scanpy as sc

        a = _log_memory(path, float64=True)
        times["prep"] = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.tl.rank_genes_groups(
                a,
                "perturbation",
                reference=CONTROL,
                method="t-test" if tool == "scanpy_ttest" else "wilcoxon",
                n_genes=a.n_vars,
            )
        times["total"] = time.perf_counter() - t0
        _mark(times)
        r = a.uns["rank_genes_groups"]
        names = [g for g in r["pvals"].dtype.names]
        rows = np.repeat(names, a.n_vars)
        cols = np.concatenate([np.asarray(r["names"][g]) for g in names])
        vals = np.concatenate([np.asarray(r["pvals"][g], dtype=float) for g in names])
        return _matrix(rows, cols, perts, genes, vals), times
    if tool.startswith("crispyx"):
        import crispyx

        norm = Path(tmp) / "crispyx_lognorm.h5ad"
        if norm.exists():
            norm.unlink()
        crispyx.normalize_total_log1p(path, norm, verbose=False)
        times["prep"] = time.perf_counter() - t0
        kw = dict(
            perturbation_column="perturbation",
            control_label=CONTROL,
            min_pct_ctrl=0.0,
            min_pct_pert=0.0,
            min_mean_ctrl=0.0,
            min_mean_pert=0.0,
            output_path=Path(tmp) / f"{tool}_out.h5ad",
            verbose=False,
            force=True,
        )
        if tool == "crispyx_ttest":
            res = crispyx.t_test(norm, n_jobs=threads, **kw)
        else:
            res = crispyx.wilcoxon_test(norm, **kw)
        times["total"] = time.perf_counter() - t0
        _mark(times)
        P = np.vstack([np.asarray(res.pvalues[i], dtype=float) for i in range(len(res.groups))])
        rows = np.repeat(res.groups, P.shape[1])
        cols = np.tile(np.asarray(res.genes), P.shape[0])
        return _matrix(rows, cols, perts, genes, P.ravel()), times
    a = _log_memory(path, float64=False)
    times["prep"] = time.perf_counter() - t0
    if tool == "illico":
        import illico

        r = illico.asymptotic_wilcoxon(
            a, is_log1p=True, group_keys="perturbation", reference=CONTROL, n_threads=threads
        )
        times["total"] = time.perf_counter() - t0
        _mark(times)
        idx = r.index
        return _matrix(
            idx.get_level_values(0), idx.get_level_values(1), perts, genes, r["p_value"]
        ), times
    if tool == "hpdex":
        import hpdex

        r = hpdex.parallel_differential_expression(
            a, "perturbation", CONTROL, threads=threads, show_progress=False
        )
        times["total"] = time.perf_counter() - t0
        _mark(times)
        return _matrix(r["target"], r["feature"], perts, genes, r["p_value"]), times
    if tool == "pdex":
        import pdex

        r = pdex.pdex(
            a,
            "perturbation",
            mode="ref",
            threads=threads,
            is_log1p=True,
            reference=CONTROL,
            as_pandas=True,
        )
        times["total"] = time.perf_counter() - t0
        _mark(times)
        return _matrix(r["target"], r["feature"], perts, genes, r["p_value"]), times
    raise ValueError(f"unknown tool {tool!r}; choose from {TOOLS}")


def _worker(a) -> None:
    import logging

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    if a.warmup:  # compile / import on a tiny screen first (not timed)
        try:
            run_tool(a.worker, a.warmup, a.threads, a.tmp)
        except Exception as exc:  # reported; the timed run decides
            print(f"warm-up failed: {exc!r}", file=sys.stderr)
    c0 = time.process_time()
    P, times = run_tool(a.worker, a.path, a.threads, a.tmp)
    times["cpu"] = times.pop("cpu_end") - c0  # all threads of this process
    np.save(a.out, P)
    kernels = {}
    try:
        from threadpoolctl import threadpool_info

        kernels = {
            f"{p.get('internal_api')}:{p.get('architecture', '')}": p.get("num_threads")
            for p in threadpool_info()
        }
    except ImportError:
        pass
    if "numba" in sys.modules:  # numba's own pool (threadpoolctl does not see it)
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel region ran
            layer = "unused"
        kernels[f"numba:{layer}"] = numba.get_num_threads()
    print(json.dumps({"times": times, "peak_gib": times.pop("peak_gib"), "pools": kernels}))


# ----------------------------------------------------------------------------- driver
def _installed(tool: str) -> bool:
    import importlib.util

    mod = {"ours": "scfm_audit", "scanpy": "scanpy", "crispyx": "crispyx"}
    name = mod.get(tool.split("_")[0], tool)
    return importlib.util.find_spec(name) is not None


def _screen(workdir: Path, size: str, seed: int) -> Path:
    cells, genes, perts = map(int, size.split("x"))
    path = workdir / f"screen_{cells}x{genes}x{perts}_seed{seed}.h5ad"
    if path.exists():
        return path
    t = time.perf_counter()
    code = (
        "from scfm_audit.data import simulate_perturbseq as s; "
        f"s(n_cells={cells}, n_genes={genes}, n_tfs={max(1, min(200, genes // 10))}, "
        f"n_perturbations={perts}, seed={seed}, out_path={str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    print(f"simulated {path.name} in {time.perf_counter() - t:.0f} s")
    return path


def _bh_rows(p: np.ndarray) -> np.ndarray:
    from scfm_audit.evaluate._de import _bh_rows

    return _bh_rows(p)


def _agreement(P: np.ndarray, R: np.ndarray) -> dict:
    from scipy import stats

    ok = np.isfinite(P) & np.isfinite(R)
    if ok.sum() < 3:
        return {}
    x, y = P[ok], R[ok]
    if x.size > 2_000_000:
        pick = np.random.default_rng(0).choice(x.size, 2_000_000, replace=False)
        rho = stats.spearmanr(x[pick], y[pick]).statistic
    else:
        rho = stats.spearmanr(x, y).statistic
    d = np.abs(np.log10(np.maximum(x, 1e-300)) - np.log10(np.maximum(y, 1e-300)))
    qa, qb = _bh_rows(P) < 0.05, _bh_rows(R) < 0.05
    inter, union = (qa & qb).sum(axis=1), (qa | qb).sum(axis=1)
    jac = inter[union > 0] / union[union > 0]
    return {
        "spearman": float(rho),
        "max_dlog10p": float(d.max()),
        "jaccard_mean": float(jac.mean()) if jac.size else 1.0,
        "jaccard_min": float(jac.min()) if jac.size else 1.0,
        "responders": int(qa.sum()),
        "responders_ref": int(qb.sum()),
    }


def _run_one(tool, path, a, warm) -> dict | None:
    out = Path(a.workdir) / f"p_{tool}_{path.stem}.npy"
    env = dict(os.environ)
    env.update({v: str(a.threads) for v in THREAD_VARS})
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        tool,
        "--path",
        str(path),
        "--out",
        str(out),
        "--threads",
        str(a.threads),
        "--tmp",
        a.workdir,
        "--warmup",
        str(warm),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        print(f"  {tool}: failed ({' | '.join(tail)})")
        return None
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["P"] = np.load(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", default="", help=argparse.SUPPRESS)
    ap.add_argument("--small", action="store_true", help="one quick 6,000 × 500 × 40 screen")
    ap.add_argument("--sizes", nargs="*", help="cells x genes x perturbations, e.g. 60000x2000x300")
    ap.add_argument(
        "--input", help=f"an h5ad of counts instead (obs 'perturbation', control '{CONTROL}')"
    )
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/scfm_de_peers")
    ap.add_argument("--scanpy-wilcoxon-max-cells", type=int, default=10_000)
    a = ap.parse_args()
    if a.worker:
        _worker(a)
        return

    from threadpoolctl import threadpool_info

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"cores: {os.cpu_count()}, threads per tool: {a.threads}, load average (1/5/15 min):"
        f" {os.getloadavg()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}"
    )
    for pool in threadpool_info():
        print(
            f"threadpool (driver): {pool.get('user_api')} {pool.get('internal_api')} "
            f"{pool.get('architecture', '')} ({Path(pool.get('filepath', '')).name})"
        )
    tools = [t for t in a.tools.split(",") if t]
    missing = [t for t in tools if not _installed(t)]
    tools = [t for t in tools if t not in missing]
    if missing:
        print(f"not installed (pip install .[bench]): {', '.join(missing)}")
    warm = _screen(work, "600x200x4", a.seed)
    screens = (
        [Path(a.input)]
        if a.input
        else [
            _screen(work, s, a.seed)
            for s in (a.sizes or (SMALL_SIZES if a.small else DEFAULT_SIZES))
        ]
    )
    for path in screens:
        n_cells = int(path.stem.split("_")[1].split("x")[0]) if not a.input else 0
        print(f"\n## {path.name}")
        results: dict[str, list[dict]] = {}
        for rep in range(a.repeats):
            for tool in tools:
                if tool == "scanpy_wilcoxon" and n_cells > a.scanpy_wilcoxon_max_cells:
                    continue
                r = _run_one(tool, path, a, warm)
                if r is not None:
                    results.setdefault(tool, []).append(r)
                    print(
                        f"  run {rep + 1} {tool}: {r['times']['total']:.1f} s "
                        f"(CPU {r['times'].get('cpu', float('nan')):.1f} s), "
                        f"{r['peak_gib']:.2f} GiB; pools {r['pools']}",
                        flush=True,
                    )
        _table(results, n_cells, a)


def _table(results: dict, n_cells: int, a) -> None:
    ref_t = results.get("scanpy_ttest", [{}])[0].get("P")
    if "scanpy_wilcoxon" in results:
        ref_w, ref_w_name = results["scanpy_wilcoxon"][0]["P"], "scanpy wilcoxon"
    else:
        ref_w = results.get("ours_wilcoxon_notc", [{}])[0].get("P")
        ref_w_name = "ours tie_correct=False (= scanpy's p bit for bit; scanpy skipped)"
    print(f"\nreferences: t-tests vs scanpy t-test; Wilcoxons vs {ref_w_name}")
    hdr = (
        "| tool | test | wall s (runs) | test alone s | CPU s | peak GiB | wall / ours | "
        "Spearman p | max Δlog10 p | Jaccard q<0.05 mean / worst | responders (ref) | "
        "vs ours, same family: max Δlog10 p, Jaccard mean |"
    )
    print(hdr)
    print("|" + "---|" * 12)
    ours = {
        "ttest": min(
            r["times"]["total"] for r in results.get("ours_welch", [{"times": {"total": np.nan}}])
        ),
        "wilcoxon": min(
            r["times"]["total"]
            for r in results.get("ours_wilcoxon", [{"times": {"total": np.nan}}])
        ),
    }
    for tool, runs in results.items():
        fam = FAMILY.get(tool, "wilcoxon")
        walls = [r["times"]["total"] for r in runs]
        alone = [r["times"]["total"] - r["times"].get("prep", 0.0) for r in runs]
        ref = ref_t if fam == "ttest" else ref_w
        ag = _agreement(runs[0]["P"], ref) if ref is not None else {}
        agree = (
            f"{ag['spearman']:.6f} | {ag['max_dlog10p']:.2g} | {ag['jaccard_mean']:.3f} / "
            f"{ag['jaccard_min']:.3f} | {ag['responders']} ({ag['responders_ref']})"
            if ag
            else "– | – | – | –"
        )
        mine = results.get("ours_welch" if fam == "ttest" else "ours_wilcoxon", [{}])[0].get("P")
        vs = _agreement(runs[0]["P"], mine) if mine is not None else {}
        agree += f" | {vs['max_dlog10p']:.2g}, {vs['jaccard_mean']:.3f} |" if vs else " | – |"
        print(
            f"| {tool} | {TEST_NOTE.get(tool, '')} | {min(walls):.1f} "
            f"({', '.join(f'{w:.1f}' for w in walls)}) | {min(alone):.1f} | "
            f"{min(r['times'].get('cpu', np.nan) for r in runs):.1f} | "
            f"{max(r['peak_gib'] for r in runs):.2f} | {min(walls) / ours[fam]:.2f} | {agree}"
        )


if __name__ == "__main__":
    main()
