"""Benchmark: incremental value at the paper's scale (~600,000 (perturbation, candidate) rows).

Usage::

    python benchmarks/incremental_value.py                    # 300 × 2,000 rows, all parts
    python benchmarks/incremental_value.py --skip-gbm --n-boot 200

Times, on a synthetic table (300 perturbations × 2,000 candidates, ~3% responders; gene
features, a pair-level "correlation" with signal and an uninformative "attention"):

* grouped 5-fold logistic regression (folds by perturbation; responsiveness recomputed per
  fold; gene-only, gene + attention, gene + correlation: 15 fits) — target < 30 s;
* the same with gradient boosting (HistGradientBoosting, ``--gbm-max-iter``) — target < 3 min
  (both fitted with one BLAS / OpenMP thread unless ``--threads``: see
  ``cross_validated_predictions``);
* the paired bootstrap over perturbations (``--n-boot`` draws; AUROC, AUPRC, top-k recall)
  and the two-way bootstrap (perturbations × candidates) the analysis uses by default;
* a naive baseline for the logistic fits: scikit-learn's defaults on unstandardised features
  (lbfgs, 100 iterations) and statsmodels' Logit (Newton), each on the same folds.

Prints the BLAS / OpenMP libraries threadpoolctl sees, the load average (the machine may be
shared), times and ratios; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

from scfm_audit.analyses._perturbation_common import responsiveness
from scfm_audit.evaluate._incremental import (
    compare_predictions,
    cross_validated_predictions,
    grouped_folds,
)

GENE = ["mean", "variance", "detection", "responsiveness"]


def make_table(n_pert: int, n_cand: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=n_cand)
    hub = rng.normal(size=n_cand)  # candidate-level responsiveness
    n = n_pert * n_cand
    pert = np.repeat(np.arange(n_pert), n_cand)
    cand = np.tile(np.arange(n_cand), n_pert)
    corr = rng.normal(size=n)
    logit = -4.6 + 0.8 * mean[cand] + 0.8 * hub[cand] + 0.5 * corr
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "arm": "all",
            "perturbation": pd.Categorical(np.char.add("P", pert.astype(str))),
            "candidate": pd.Categorical(np.char.add("G", cand.astype(str))),
            "responder": y,
            "mean": mean[cand],
            "variance": np.abs(mean[cand]) + rng.random(n_cand)[cand],
            "detection": 1 / (1 + np.exp(-mean[cand])),
            "attention": rng.normal(size=n),
            "correlation": corr,
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pert", type=int, default=300)
    ap.add_argument("--n-cand", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--gbm-max-iter", type=int, default=100)
    ap.add_argument("--skip-gbm", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="BLAS / OpenMP threads while fitting (0: all)"
    )
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_info, threadpool_limits

    for lib in threadpool_info():
        print(
            f"threadpoolctl: {lib['user_api']:6s} {lib['internal_api']:10s} "
            f"threads={lib['num_threads']} {lib.get('architecture', '')} "
            f"{os.path.basename(lib['filepath'])}"
        )
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}")
    t0 = time.perf_counter()
    rows = make_table(args.n_pert, args.n_cand, args.seed)
    print(
        f"table: {len(rows):,} rows, {args.n_pert} perturbations, {int(rows.responder.sum()):,} "
        f"responders ({rows.responder.mean():.1%}); built in {time.perf_counter() - t0:.1f} s"
    )
    sets = {
        "gene": GENE,
        "gene + attention": [*GENE, "attention"],
        "gene + correlation": [*GENE, "correlation"],
    }

    def fold_features(train):
        return {"responsiveness": responsiveness(rows, train)}

    ok = True
    timings = {}
    models = [("logistic", 30.0)] + ([] if args.skip_gbm else [("gbm", 180.0)])
    results = {}
    for model, target in models:
        t = time.perf_counter()
        cv = cross_validated_predictions(
            rows,
            label="responder",
            perturbation="perturbation",
            candidate="candidate",
            feature_sets=sets,
            grouping="perturbation",
            model=model,
            n_splits=5,
            seed=args.seed,
            fold_features=fold_features,
            max_iter=args.gbm_max_iter if model == "gbm" else None,
            threads=args.threads or None,
        )
        dt = time.perf_counter() - t
        timings[model] = dt
        results[model] = cv
        status = "ok" if dt < target else "MISSED"
        ok &= dt < target
        print(
            f"{model}: grouped 5-fold × 3 feature sets in {dt:.1f} s (target {target:.0f} s) "
            f"{status}"
        )

    t = time.perf_counter()
    cv = results["logistic"]
    y = rows["responder"].to_numpy()[cv.rows]
    m, d = compare_predictions(
        y,
        cv.predictions,
        rows["perturbation"].to_numpy()[cv.rows],
        baseline="gene",
        n_boot=args.n_boot,
        seed=args.seed,
    )
    dt = time.perf_counter() - t
    print(
        f"bootstrap over perturbations ({args.n_boot} draws, 3 sets, AUROC/AUPRC/top-k): {dt:.1f} s"
    )
    t = time.perf_counter()
    _, d2 = compare_predictions(
        y,
        cv.predictions,
        rows["perturbation"].to_numpy()[cv.rows],
        baseline="gene",
        n_boot=args.n_boot,
        seed=args.seed,
        candidates=rows["candidate"].to_numpy()[cv.rows],
    )
    dt = time.perf_counter() - t
    print(
        f"two-way bootstrap, perturbations × candidates (the analysis' default; "
        f"{args.n_boot} draws, 3 sets): {dt:.1f} s"
    )
    print(d2[["feature_set", "delta_auroc", "delta_auroc_ci_low", "delta_auroc_ci_high", "p"]])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(m[["feature_set", "auroc", "auprc", "recall@10", "recall@100", "n_rows"]])
        print(d[["feature_set", "delta_auroc", "delta_auroc_ci_low", "delta_auroc_ci_high", "p"]])
    sig = d.set_index("feature_set")
    if not (sig.loc["gene + correlation", "p"] < 0.01 and sig.loc["gene + attention", "p"] > 0.01):
        print("known answer MISSED: correlation should add value and attention not")
        ok = False

    if not args.skip_naive:
        import statsmodels.api as sm
        from sklearn.linear_model import LogisticRegression

        folds = grouped_folds(
            rows["perturbation"].to_numpy(),
            rows["candidate"].to_numpy(),
            grouping="perturbation",
            seed=args.seed,
        )
        yy = rows["responder"].to_numpy()
        for name, fit in (
            ("sklearn defaults, unstandardised", lambda X, y: LogisticRegression().fit(X, y)),
            (
                "statsmodels Logit (Newton)",
                lambda X, y: sm.Logit(y, sm.add_constant(X)).fit(disp=0),
            ),
        ):
            t = time.perf_counter()
            with warnings.catch_warnings(), threadpool_limits(args.threads or None):
                warnings.simplefilter("ignore")
                for train, _ in folds:
                    resp = responsiveness(rows, train)
                    for cols in sets.values():
                        X = np.column_stack(
                            [
                                resp if c == "responsiveness" else rows[c].to_numpy(float)
                                for c in cols
                            ]
                        )
                        X = np.where(np.isnan(X), 0.0, X)
                        fit(X[train], yy[train])
            dt = time.perf_counter() - t
            print(
                f"naive baseline, {name}: {dt:.1f} s; ratio naive / ours "
                f"{dt / timings['logistic']:.2f}×"
            )
    print("all targets met" if ok else "SOME TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
