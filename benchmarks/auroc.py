"""Benchmark: rank-based AUROC vs scikit-learn, 2-D AUROC, label-permutation null.

Usage::

    python benchmarks/auroc.py                 # 1M edges, 3% positives, ties
    python benchmarks/auroc.py --n 200000 --k 16

Prints wall times (best of ``--repeats``) and speed ratios, and fails (exit 1) if our AUROC
differs from ``sklearn.metrics.roc_auc_score`` by more than 1e-12 on any column.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from scfm_audit.stats._metrics import auroc
from scfm_audit.stats._resampling import label_permutation_auroc

TOL = 1e-12


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def make_edges(rng: np.random.Generator, n: int, k: int, pos_rate: float):
    """Labels (~pos_rate positives) and k score columns with signal, rounded to create ties."""
    y = rng.random(n) < pos_rate
    signal = rng.uniform(0.1, 0.6, size=k)
    scores = rng.normal(size=(n, k)) + y[:, None] * signal
    return y, np.round(scores, 2)  # ~1,000 distinct values per column: many ties


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of edges")
    ap.add_argument("--pos-rate", type=float, default=0.03, help="fraction of positives")
    ap.add_argument("--k", type=int, default=64, help="score columns for the 2-D benchmark")
    ap.add_argument("--perm-n", type=int, default=100_000, help="edges for the permutation test")
    ap.add_argument("--n-perm", type=int, default=1000, help="permutations")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ok = True

    # ---- 1-D
    y, s2 = make_edges(rng, args.n, args.k, args.pos_rate)
    s = s2[:, 0].copy()
    print(
        f"edges: n={args.n:,}, positives={int(y.sum()):,} ({y.mean():.2%}), "
        f"distinct scores in column 0: {np.unique(s).size:,}"
    )
    t_ours, a_ours = best_time(lambda: auroc(y, s), args.repeats)
    t_sk, a_sk = best_time(lambda: roc_auc_score(y, s), args.repeats)
    diff = abs(a_ours - a_sk)
    ok &= diff <= TOL
    print(
        f"[1-D] ours {t_ours * 1e3:8.1f} ms | sklearn {t_sk * 1e3:8.1f} ms | "
        f"speed-up x{t_sk / t_ours:5.1f} | AUROC {a_ours:.15f} |diff| {diff:.1e}"
    )

    # ---- 2-D: k columns in one call vs a loop of sklearn calls
    t_ours2, a2 = best_time(lambda: auroc(y, s2), 1)
    t0 = time.perf_counter()
    a2_sk = np.array([roc_auc_score(y, s2[:, j]) for j in range(args.k)])
    t_sk2 = time.perf_counter() - t0
    diff2 = float(np.max(np.abs(a2 - a2_sk)))
    ok &= diff2 <= TOL
    print(
        f"[2-D, k={args.k}] ours {t_ours2:6.2f} s | sklearn loop {t_sk2:6.2f} s | "
        f"speed-up x{t_sk2 / t_ours2:5.1f} | max |diff| {diff2:.1e}"
    )

    # ---- label-permutation null
    yp, sp = make_edges(rng, args.perm_n, 1, args.pos_rate)
    sp = sp[:, 0]
    t_perm, res = best_time(
        lambda: label_permutation_auroc(yp, sp, n_perm=args.n_perm, seed=args.seed), 1
    )
    n_naive = 20
    perm_rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for _ in range(n_naive):
        roc_auc_score(perm_rng.permutation(yp), sp)
    t_naive = (time.perf_counter() - t0) / n_naive * args.n_perm
    print(
        f"[permutation, n={args.perm_n:,}, n_perm={args.n_perm}] ours {t_perm:6.2f} s | "
        f"naive sklearn loop (extrapolated from {n_naive}) {t_naive:6.2f} s | "
        f"speed-up x{t_naive / t_perm:5.1f} | AUROC {res.observed:.4f}, p = {res.p:.4g}"
    )

    print("equality check:", "OK" if ok else f"FAILED (tolerance {TOL})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
