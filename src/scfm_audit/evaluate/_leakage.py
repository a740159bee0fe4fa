"""Batch leakage kernels: can batch be predicted from per-cell edge products?

Units: cells (the classifier's rows), edges (features and the per-edge sensitivity).

* :func:`top_edges` — the ``k`` edges of a score set with the largest |score| (an
  undirected set counts each pair once).
* :func:`edge_products` — per cell, ``x_s · x_t`` over those edges (log-normalised
  expression), optionally times the edge's score.
* :func:`cv_balanced_accuracy` — cross-validated balanced accuracy of a ridge classifier
  on standardised features (scikit-learn's ``RidgeClassifier``, computed in closed form
  by :class:`RidgeCV` so that thousands of permuted label vectors cost one matrix
  product each; a logistic regression per draw took ~1 s of the shared CPUs, which
  makes a permutation null infeasible). Folds are stratified by stratum, seeded, and
  never see the batch labels, so the statistic is a fixed function of (features,
  labels) and the permutation test is exact.
* :func:`leakage_test` — that accuracy against labels permuted within strata (e.g. cell
  state): H0 "given the strata, the labels are exchangeable with respect to the
  features" (the features carry no batch information beyond the strata's composition);
  one-sided (greater), staged Monte-Carlo p (:func:`adaptive_mc_pvalue`).
* :func:`residualise` — features minus their least-squares fit on other features
  (fitted without labels): what edge products carry beyond the genes' own expression.
* :func:`artifact_sensitivity` — per edge ``|r_full − r_bal| / max(|r_full|, 0.01)``,
  ``r`` the Pearson correlation of the edge's genes over all cells and, averaged over
  resamples, over batch-balanced resamples (every batch down-sampled to the smallest).
* :func:`jaccard` — overlap of two top-k edge sets.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.stats._montecarlo import MonteCarloP
    from scfm_audit.stats._tests import StatTestResult

__all__ = [
    "RidgeCV",
    "artifact_sensitivity",
    "cv_balanced_accuracy",
    "edge_products",
    "fold_labels",
    "jaccard",
    "leakage_test",
    "residualise",
    "top_edges",
]

LEAKAGE_H0 = (
    "within each stratum (cell state), batch labels are exchangeable with respect to the "
    "features: the features carry no batch information beyond the strata's composition"
)


def top_edges(es: EdgeScores, k: int) -> pd.DataFrame:
    """The ``k`` edges of ``es`` (an :class:`~scfm_audit.edges._scores.EdgeScores`) with
    the largest |score| (NaN and the diagonal skipped; an undirected set once per pair):
    ``source, target, i, j, score`` (``i, j`` positions in ``es.genes``), by |score|
    descending, ties by position."""
    m = np.abs(es.dense().astype(float))
    n = m.shape[0]
    mask = ~np.eye(n, dtype=bool)
    if not es.directed:
        mask &= np.triu(np.ones((n, n), dtype=bool), 1)
    i, j = np.nonzero(mask & np.isfinite(m))
    v = m[i, j]
    order = np.lexsort((j, i, -v))[: int(k)]
    i, j = i[order], j[order]
    raw = es.dense()[i, j].astype(float)
    return pd.DataFrame(
        {"source": es.genes[i], "target": es.genes[j], "i": i, "j": j, "score": raw}
    )


def edge_products(
    X: np.ndarray, src: np.ndarray, tgt: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(cells, edges)``: ``X[:, src] * X[:, tgt]`` (``X`` cells × genes, dense), times
    ``weights`` per edge when given."""
    F: np.ndarray = np.asarray(X)[:, src] * np.asarray(X)[:, tgt]
    return F * np.asarray(weights, float)[None, :] if weights is not None else F


def residualise(F: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``F`` minus its least-squares fit on ``[1, G]`` (fitted on all rows, no labels)."""
    A = np.column_stack([np.ones(len(G)), G])
    beta, *_ = np.linalg.lstsq(A, F, rcond=None)
    resid: np.ndarray = F - A @ beta
    return resid


def fold_labels(strata: np.ndarray | None, n: int, *, folds: int, seed: int) -> np.ndarray:
    """Fold of every cell: ``StratifiedKFold`` by stratum (``KFold`` without strata),
    shuffled with ``seed``. The folds never use the batch labels, so they are the same for
    the observed and every within-stratum permutation of them (which is what keeps the
    permutation test exact); stratifying by stratum balances batches across folds in
    expectation."""
    from sklearn.model_selection import KFold, StratifiedKFold

    out = np.empty(n, dtype=int)
    if strata is None or len(np.unique(strata)) < 2:
        cv = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))
    else:
        _, counts = np.unique(strata, return_counts=True)
        k = int(min(folds, counts.min())) if counts.min() >= 2 else folds
        use = StratifiedKFold(k, shuffle=True, random_state=seed)
        if counts.min() < k:
            use = KFold(folds, shuffle=True, random_state=seed)
        cv = use.split(np.zeros(n), strata)
    for f, (_, te) in enumerate(cv):
        out[te] = f
    return out


class RidgeCV:
    """Cross-validated ridge classification (one-hot least squares with intercept on
    standardised features, ``alpha``; scikit-learn's ``StandardScaler`` +
    ``RidgeClassifier``) of any number of label vectors at once: the fold maps
    ``X_te (X_trᵀX_tr + αI)⁻¹ X_trᵀ`` depend on the features and folds only, so each
    permuted label vector costs one matrix product. Tested against scikit-learn."""

    def __init__(self, F: np.ndarray, fold: np.ndarray, *, alpha: float = 1.0):
        F = np.asarray(F, dtype=float)
        self.fold = np.asarray(fold)
        self.maps = []
        for f in np.unique(self.fold):
            te, tr = np.flatnonzero(self.fold == f), np.flatnonzero(self.fold != f)
            mu, sd = F[tr].mean(0), F[tr].std(0)
            sd = np.where(sd > 0, sd, 1.0)
            A, B = (F[tr] - mu) / sd, (F[te] - mu) / sd
            G = A.T @ A + alpha * np.eye(A.shape[1])
            self.maps.append((te, tr, B @ np.linalg.solve(G, A.T)))

    def balanced_accuracy(self, labels: np.ndarray) -> np.ndarray:
        """Balanced accuracy of each row of ``labels`` (``(K, n)`` or ``(n,)`` integer
        codes 0..C-1): the mean over classes of the recall of the CV predictions."""
        Y = np.atleast_2d(np.asarray(labels))
        K, n = Y.shape
        C = int(Y.max()) + 1
        onehot = (Y[:, :, None] == np.arange(C)).astype(float)  # K, n, C
        pred = np.empty((K, n), dtype=int)
        for te, tr, P in self.maps:
            ytr = onehot[:, tr, :]
            hat = ytr.mean(1)[:, None, :] + np.einsum(
                "ab,kbc->kac", P, ytr - ytr.mean(1)[:, None, :]
            )
            pred[:, te] = hat.argmax(2)
        rec = np.zeros((K, C))
        present = np.zeros((K, C), bool)
        for c in range(C):
            m = Y == c
            cnt = m.sum(1)
            present[:, c] = cnt > 0
            rec[:, c] = np.where(cnt > 0, ((pred == c) & m).sum(1) / np.maximum(cnt, 1), 0)
        balanced: np.ndarray = rec.sum(1) / present.sum(1)
        return balanced


def cv_balanced_accuracy(
    F: np.ndarray,
    y: np.ndarray,
    strata: np.ndarray | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
) -> float:
    """Cross-validated balanced accuracy of the ridge classifier of :class:`RidgeCV`
    predicting ``y`` from ``F`` (folds from :func:`fold_labels`). NaN with < 2 classes
    or no feature."""
    codes = pd.factorize(np.asarray(y))[0]
    if codes.max() < 1 or F.shape[1] == 0:
        return float("nan")
    fold = fold_labels(strata, len(codes), folds=folds, seed=seed)
    return float(RidgeCV(F, fold, alpha=alpha).balanced_accuracy(codes)[0])


def leakage_test(
    F: np.ndarray,
    y: np.ndarray,
    strata: np.ndarray | None,
    *,
    folds: int = 5,
    alpha: float = 1.0,
    stages: tuple[int, ...] = (999, 9999),
    seed: int,
    what: str = "edge products",
) -> tuple[StatTestResult, MonteCarloP]:
    """Balanced accuracy of ``F`` → ``y`` against ``y`` permuted within ``strata`` (one
    class when None): a typed, one-sided (greater) Monte-Carlo result
    (:class:`~scfm_audit.stats._tests.StatTestResult`; ``n`` = cells) and the
    :class:`~scfm_audit.stats._montecarlo.MonteCarloP` (its draws). The folds (by
    stratum, seeded) are the same for the observed and every permuted label vector."""
    from scfm_audit.stats._montecarlo import adaptive_mc_pvalue, permute_within_classes

    codes = pd.factorize(np.asarray(y))[0]
    cls = np.zeros(len(codes), int) if strata is None else np.asarray(strata)
    fseed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    fold = fold_labels(strata, len(codes), folds=folds, seed=fseed)
    model = RidgeCV(F, fold, alpha=alpha)
    obs = float(model.balanced_accuracy(codes)[0]) if codes.max() >= 1 else float("nan")

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        out = []
        for a in range(0, k, 200):
            perms = permute_within_classes(cls, min(200, k - a), rng)
            out.append(model.balanced_accuracy(codes[perms]))
        return np.concatenate(out)

    mc = adaptive_mc_pvalue(draw, obs, stages=stages, alternative="greater", seed=seed)
    res = mc.result(
        obs,
        test=f"{len(np.unique(fold))}-fold CV balanced accuracy of a ridge classifier "
        f"({what} → batch) vs batch labels permuted within strata",
        effect_name="balanced accuracy",
        h0=LEAKAGE_H0,
        null_name="within-stratum label permutation",
        n=len(codes),
    )
    return res, mc


def _corr_cols(X: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    Z = X - X.mean(0)
    sd = np.sqrt((Z**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r: np.ndarray = (Z[:, src] * Z[:, tgt]).sum(0) / (sd[src] * sd[tgt])
    return r


def artifact_sensitivity(
    X: np.ndarray,
    src: np.ndarray,
    tgt: np.ndarray,
    batch: np.ndarray,
    *,
    n_resamples: int = 20,
    seed: int,
) -> pd.DataFrame:
    """Per edge: ``r_full`` (Pearson of ``X[:, s]``, ``X[:, t]`` over all cells),
    ``r_balanced`` (mean over ``n_resamples`` batch-balanced resamples: every batch
    down-sampled without replacement to the smallest batch's size) and
    ``sensitivity = |r_full − r_balanced| / max(|r_full|, 0.01)``."""
    rng = np.random.default_rng(seed)
    batch = np.asarray(batch)
    groups = [np.flatnonzero(batch == b) for b in np.unique(batch)]
    m = min(len(g) for g in groups)
    r_full = _corr_cols(X, src, tgt)
    rb = np.zeros((n_resamples, len(src)))
    for b in range(n_resamples):
        idx = np.concatenate([rng.choice(g, m, replace=False) for g in groups])
        rb[b] = _corr_cols(X[idx], src, tgt)
    r_bal = np.nanmean(rb, axis=0) if n_resamples else np.full(len(src), np.nan)
    sens = np.abs(r_full - r_bal) / np.maximum(np.abs(r_full), 0.01)
    return pd.DataFrame({"r_full": r_full, "r_balanced": r_bal, "sensitivity": sens})


def jaccard(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """|A ∩ B| / |A ∪ B| of two collections of hashable items (NaN when both empty)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else float("nan")
