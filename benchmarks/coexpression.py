"""Benchmark: co-expression kernels versus the plain scipy / numpy implementations.

Makes ``--cells`` × ``--genes`` sparse negative-binomial counts (seeded; cell size factors,
log-normal gene means, a few never-detected genes), then times

- ``spearman_matrix`` versus ``scipy.stats.spearmanr`` on the same dense matrix, for the
  raw counts (integer values: ranks from a count table) and for the same counts
  normalised to 10,000 per cell and ``log1p``-transformed (non-integer: ranks by sorting),
- ``pearson_matrix`` versus ``np.corrcoef`` on the same dense matrix,

and prints, per variant of ours (input format × dtype), the wall-clock time ratio
(target ≥ 10×; also the process-CPU-time ratio, which is less sensitive to other load on the
host but charges our multi-threaded BLAS for every thread),
the max absolute difference (target ≤ 1e-6; NaN positions must agree) and the peak memory
measured with ``tracemalloc`` (numpy registers its array buffers with tracemalloc; BLAS
work buffers are not counted), in a separate untimed call.

Run: ``python benchmarks/coexpression.py [--cells 10000] [--genes 2000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.stats as ss

from scfm_audit.edges._coexpression import pearson_matrix, spearman_matrix


def make_counts(n_cells: int, n_genes: int, *, seed: int) -> sp.csr_matrix:
    """Sparse NB-like counts: ``counts[c, g] ~ NB(mean = size_c · mu_g, dispersion 2)``;
    the last two genes are never detected (→ NaN correlations)."""
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(-1.0, 1.5, n_genes))
    size = np.exp(rng.normal(0.0, 0.4, n_cells))
    mean = size[:, None] * mu[None, :]
    x = rng.negative_binomial(2, 2.0 / (2.0 + mean)).astype(np.float64)
    x[:, -2:] = 0.0
    return sp.csr_matrix(x)


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and best process CPU time (all threads) over ``repeats`` calls."""
    best, best_cpu, out = np.inf, np.inf, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def max_diff(ours: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    nan_ok = bool(np.array_equal(np.isnan(ours), np.isnan(ref)))
    return float(np.nanmax(np.abs(ours.astype(np.float64) - ref))), nan_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="best-of repeats for our kernels")
    ap.add_argument("--ref-repeats", type=int, default=2, help="best-of repeats for scipy")
    ap.add_argument("--skip-memory", action="store_true", help="skip tracemalloc runs")
    args = ap.parse_args()

    csr = make_counts(args.cells, args.genes, seed=args.seed)
    density = csr.nnz / (args.cells * args.genes)
    print(
        f"data: {args.cells} cells x {args.genes} genes NB counts, density {density:.3f}, "
        f"seed {args.seed}; dense input {args.cells * args.genes * 8 / 2**20:.0f} MiB"
    )
    print(
        f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"numpy {np.__version__}; times are best of repeats"
    )

    # the general (sorting) rank path: non-integer values, as after normalise + log1p
    lib = np.asarray(csr.sum(axis=1)).ravel()
    logn = sp.csr_matrix(sp.diags(1e4 / np.maximum(lib, 1)) @ csr)
    logn.data = np.log1p(logn.data)
    cases = (
        ("spearman", "counts", csr, spearman_matrix, "scipy.stats.spearmanr", _spearmanr),
        (
            "spearman",
            "log1p-normalised",
            logn,
            spearman_matrix,
            "scipy.stats.spearmanr",
            _spearmanr,
        ),
        ("pearson", "counts", csr, pearson_matrix, "np.corrcoef", _corrcoef),
    )
    for name, data_name, x_sparse, ours_fn, ref_name, ref_fn in cases:
        x_dense = x_sparse.toarray()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # constant-input warnings for the undetected genes
            t_ref, c_ref, ref = best_time(lambda f=ref_fn, x=x_dense: f(x), args.ref_repeats)
        print(
            f"\n{name} on {data_name}: reference {ref_name} (dense input): "
            f"{t_ref:.3f} s wall, {c_ref:.3f} s CPU"
        )
        print(
            f"  {'ours':<34} {'wall s':>7} {'ratio':>6} {'CPU s':>6} {'ratio':>6} "
            f"{'max|diff|':>9} {'NaN ok':>6} {'peak MiB (tracemalloc)':>22}"
        )
        for fmt, x in (("dense", x_dense), ("csr", x_sparse)):
            for dtype in (np.float64, np.float32):
                label = f"{name}_matrix({fmt}, {np.dtype(dtype).name})"
                t, cpu, out = best_time(lambda x=x, d=dtype, f=ours_fn: f(x, dtype=d), args.repeats)
                diff, nan_ok = max_diff(out, ref)
                peak = (
                    float("nan")
                    if args.skip_memory
                    else peak_mib(lambda x=x, d=dtype, f=ours_fn: f(x, dtype=d))
                )
                print(
                    f"  {label:<34} {t:7.3f} {t_ref / t:5.1f}x {cpu:6.3f} {c_ref / cpu:5.1f}x "
                    f"{diff:9.1e} {nan_ok!s:>6} {peak:22.0f}"
                )
    out_mib = args.genes**2 * 8 / 2**20
    print(
        f"\n(output alone: {out_mib:.0f} MiB at float64, {out_mib / 2:.0f} MiB at float32; "
        f"load average now {os.getloadavg()[0]:.2f})"
    )


def _spearmanr(x: np.ndarray) -> np.ndarray:
    return ss.spearmanr(x)[0]


def _corrcoef(x: np.ndarray) -> np.ndarray:
    return np.corrcoef(x, rowvar=False)


if __name__ == "__main__":
    main()
