"""Incremental value of edge features beyond gene-level features, on a generic row table.

One row per (perturbation, candidate gene) with a binary label (the candidate responds to
the perturbation). Kernels:

* :func:`grouped_folds` — cross-validation folds grouped by perturbation, by candidate gene,
  or jointly (``"joint"``: perturbations and candidates are assigned to folds
  independently; fold ``f`` tests the rows whose perturbation **and** candidate are in
  ``f`` and trains on the rows whose perturbation and candidate are both outside ``f``, so
  a test row's perturbation and candidate are both unseen in training; the test folds
  together cover about ``1 / n_splits`` of the rows, which is reported).
* :func:`cross_validated_predictions` — out-of-fold predicted probabilities of one model
  per feature set on the same folds: logistic regression (scikit-learn, lbfgs,
  L2 with ``C = 1`` on features standardised with training-fold moments) or
  ``HistGradientBoostingClassifier`` (seeded). Features that depend on labels (a
  candidate's responsiveness across other perturbations) are recomputed per fold from
  training rows only by ``fold_features(train_mask)``; missing values are imputed with the
  training-fold mean.
* :func:`compare_predictions` — AUROC, AUPRC and per-perturbation top-k recall of each
  feature set's out-of-fold predictions and their differences from a baseline set, with
  percentile CIs from a bootstrap over **perturbations** (the independent units: the
  out-of-fold predictions are held fixed and perturbations resampled with replacement, the
  same draws for every feature set, so differences are paired) and a p of H0: Δ ≤ 0
  (one-sided by default: see :func:`compare_predictions` for why; the two-sided p by
  inverting the percentile interval is reported beside it).
* :func:`nested_lrt` — likelihood-ratio test of nested logistic models fitted by maximum
  likelihood on all rows. It treats rows as independent (they are not: rows share
  perturbations and candidate genes), so it is descriptive only.
* :func:`propensity_matched` — per responder, up to ``n_per`` non-responders of the same
  perturbation with the nearest propensity (logit of the gene-only model's out-of-fold
  prediction, within a caliper), without replacement, seeded.

Bootstrap AUROC uses the decomposition ``U(w) = wᵀ C w`` where ``C[p, q]`` counts (pairs
of a positive of perturbation ``p`` above a negative of perturbation ``q``, ties ½), so a
draw costs ``O(P²)`` instead of a sort of every row; it equals the AUROC of the rows
replicated by their perturbation's multiplicity (tested against scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from scfm_audit.evaluate._pairwise import bootstrap_p
from scfm_audit.stats._tests import StatTestResult

Grouping = Literal["perturbation", "candidate", "joint"]
Model = Literal["logistic", "gbm"]
GROUPINGS: tuple[str, ...] = ("perturbation", "candidate", "joint")

__all__ = [
    "GROUPINGS",
    "CVPredictions",
    "MatchedRows",
    "compare_predictions",
    "cross_validated_predictions",
    "delta_test",
    "grouped_folds",
    "lrt_test",
    "nested_lrt",
    "propensity_matched",
]


class IncrementalInputError(ValueError):
    """A table or parameter the incremental-value kernels cannot use."""


# ----------------------------------------------------------------------------- folds
def _fold_of(
    codes: np.ndarray, n_units: int, n_splits: int, rng: np.random.Generator
) -> np.ndarray:
    """Units assigned to ``n_splits`` folds of (near) equal size at random."""
    fold_of_unit = rng.permutation(np.arange(n_units) % n_splits)
    folds: np.ndarray = fold_of_unit[codes]
    return folds


def grouped_folds(
    perturbation: np.ndarray,
    candidate: np.ndarray,
    *,
    grouping: Grouping,
    n_splits: int = 5,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` boolean masks per fold (see the module docstring for ``grouping``).

    Units (perturbations, candidates) are shuffled into folds with ``seed``; a grouping
    needs at least ``n_splits`` units of each grouped kind."""
    if grouping not in GROUPINGS:
        raise IncrementalInputError(
            f"grouping {grouping!r} is not one of {list(GROUPINGS)}; choose one of them."
        )
    rng = np.random.default_rng(seed)
    pc, pu = pd.factorize(pd.Series(perturbation).astype(str))
    cc, cu = pd.factorize(pd.Series(candidate).astype(str))
    need = {"perturbation": [("perturbations", len(pu))], "candidate": [("candidates", len(cu))]}
    need["joint"] = need["perturbation"] + need["candidate"]
    for what, n in need[grouping]:
        if n < n_splits:
            raise IncrementalInputError(
                f"{n} {what} cannot fill {n_splits} folds grouped by {grouping}; lower "
                "n_splits or add perturbations / candidates."
            )
    fp = _fold_of(pc, len(pu), n_splits, rng)
    fc = _fold_of(cc, len(cu), n_splits, rng)
    folds = []
    for f in range(n_splits):
        if grouping == "perturbation":
            test = fp == f
            train = ~test
        elif grouping == "candidate":
            test = fc == f
            train = ~test
        else:
            test = (fp == f) & (fc == f)
            train = (fp != f) & (fc != f)
        folds.append((train, test))
    return folds


# ----------------------------------------------------------------------------- models
def _fit_predict(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    seed: int,
    max_iter: int,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fit on ``train``, predict P(label) on ``test``. Logistic: returns the coefficients
    (intercept first, on the standardised scale) to warm-start the next fit with ``init``
    (the same strictly convex optimum is reached, in fewer lbfgs iterations)."""
    Xtr = X[train]
    mu = np.nanmean(Xtr, axis=0) if len(Xtr) else np.zeros(X.shape[1])
    mu = np.where(np.isfinite(mu), mu, 0.0)
    Xtr = np.where(np.isnan(Xtr), mu, Xtr)
    Xte = X[test]
    Xte = np.where(np.isnan(Xte), mu, Xte)
    ytr = y[train]
    if ytr.min() == ytr.max():  # one class in training: predict its rate
        return np.full(len(Xte), float(ytr.mean())), None
    if model == "logistic":
        from sklearn.linear_model import LogisticRegression

        sd = Xtr.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        Xtr -= mu
        Xtr /= sd
        clf = LogisticRegression(
            C=1.0, solver="lbfgs", max_iter=max_iter, tol=1e-6, warm_start=init is not None
        )
        if init is not None:
            clf.coef_ = init[None, 1:].copy()
            clf.intercept_ = init[:1].copy()
        clf.fit(Xtr, ytr)
        coef = np.r_[clf.intercept_, clf.coef_.ravel()]
        return clf.predict_proba((Xte - mu) / sd)[:, 1], coef
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=False, random_state=seed)
    clf.fit(Xtr, ytr)
    return clf.predict_proba(Xte)[:, 1], None


@dataclass
class CVPredictions:
    """Out-of-fold predictions: ``rows`` (positions of the evaluated rows in the input
    table, ascending), ``fold`` per evaluated row, ``predictions`` (feature set → array
    aligned with ``rows``), and the design (grouping, model, n_splits, n_train per fold)."""

    rows: np.ndarray
    fold: np.ndarray
    predictions: dict[str, np.ndarray]
    grouping: str
    model: str
    n_splits: int
    n_train: list[int]
    n_table: int

    @property
    def coverage(self) -> float:
        """Evaluated rows as a fraction of the table (1 unless grouping is joint)."""
        return len(self.rows) / self.n_table if self.n_table else float("nan")


def cross_validated_predictions(
    table: pd.DataFrame,
    *,
    label: str,
    perturbation: str,
    candidate: str,
    feature_sets: dict[str, Sequence[str]],
    grouping: Grouping = "perturbation",
    model: Model = "logistic",
    n_splits: int = 5,
    seed: int = 0,
    fold_features: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    max_iter: int | None = None,
    threads: int | None = 1,
) -> CVPredictions:
    """Out-of-fold predictions of ``model`` for every feature set on the same folds.

    ``table``: one row per (perturbation, candidate) with ``label`` (bool) and the feature
    columns. ``feature_sets``: name → columns; a column may also be produced per fold by
    ``fold_features(train_mask) -> {column: values for every row}``, computed from the
    training rows' labels only (e.g. a candidate's responsiveness in training
    perturbations) — it must never read a test row's label. ``max_iter``: lbfgs iterations
    (default 200) or boosting iterations (default 100). ``threads``: BLAS and OpenMP
    threads while fitting (default 1: on a shared 2-core machine two threads spin at
    barriers — logistic 3× and gradient boosting 6× slower than one thread at 600,000 rows;
    None = the libraries' defaults)."""
    from threadpoolctl import threadpool_limits

    if threads is not None:
        with threadpool_limits(limits=threads):
            return cross_validated_predictions(
                table,
                label=label,
                perturbation=perturbation,
                candidate=candidate,
                feature_sets=feature_sets,
                grouping=grouping,
                model=model,
                n_splits=n_splits,
                seed=seed,
                fold_features=fold_features,
                max_iter=max_iter,
                threads=None,
            )
    y = table[label].to_numpy(bool)
    if len(y) == 0:
        raise IncrementalInputError("the table has no rows.")
    folds = grouped_folds(
        table[perturbation].to_numpy(),
        table[candidate].to_numpy(),
        grouping=grouping,
        n_splits=n_splits,
        seed=seed,
    )
    max_iter = max_iter or (200 if model == "logistic" else 100)
    static = {}
    for cols in feature_sets.values():
        for c in cols:
            if c in table.columns and c not in static:
                static[c] = table[c].to_numpy(float)
    preds = {k: np.full(len(y), np.nan) for k in feature_sets}
    fold_id = np.full(len(y), -1)
    n_train = []
    warm: dict[str, np.ndarray] = {}  # logistic: previous fold's solution per feature set
    for f, (train, test) in enumerate(folds):
        if not test.any():
            continue
        dyn = fold_features(train) if fold_features is not None else {}
        n_train.append(int(train.sum()))
        fold_id[test] = f
        for name, cols in feature_sets.items():
            missing = [c for c in cols if c not in static and c not in dyn]
            if missing:
                raise IncrementalInputError(
                    f"feature set {name!r} needs columns {missing} that are neither in the "
                    "table nor produced by fold_features."
                )
            X = np.column_stack([dyn[c] if c in dyn else static[c] for c in cols])
            preds[name][test], coef = _fit_predict(
                model,
                X,
                y,
                train,
                test,
                seed=seed,
                max_iter=max_iter,
                init=warm.get(name),
            )
            if coef is not None:
                warm[name] = coef
    rows = np.flatnonzero(fold_id >= 0)
    return CVPredictions(
        rows=rows,
        fold=fold_id[rows],
        predictions={k: v[rows] for k, v in preds.items()},
        grouping=grouping,
        model=model,
        n_splits=n_splits,
        n_train=n_train,
        n_table=len(y),
    )


# ----------------------------------------------------------------------------- metrics
def auroc_blocks(
    y: np.ndarray, s: np.ndarray, units: np.ndarray, n_units: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``C`` (``n_units × n_units``): ``C[p, q]`` = Σ over positives of unit ``p`` and
    negatives of unit ``q`` of ``[s₊ > s₋] + ½ [s₊ = s₋]``; and positives / negatives per
    unit. AUROC under unit weights ``w`` is ``wᵀCw / ((w·n1)(w·n0))``."""
    pos = y.astype(bool)
    n1 = np.bincount(units[pos], minlength=n_units).astype(float)
    n0 = np.bincount(units[~pos], minlength=n_units).astype(float)
    C = np.zeros((n_units, n_units))
    sp, up = s[pos], units[pos]
    neg_s, neg_u = s[~pos], units[~pos]
    order = np.argsort(neg_u, kind="stable")
    neg_s, neg_u = neg_s[order], neg_u[order]
    bounds = np.searchsorted(neg_u, np.arange(n_units + 1))
    for q in range(n_units):
        nq = np.sort(neg_s[bounds[q] : bounds[q + 1]])
        if len(nq) == 0 or len(sp) == 0:
            continue
        twice = np.searchsorted(nq, sp, side="left") + np.searchsorted(nq, sp, side="right")
        C[:, q] = np.bincount(up, weights=twice, minlength=n_units) / 2.0
    return C, n1, n0


def _two_way_auroc(
    y: np.ndarray,
    s: NDArray[np.float64],
    pu: np.ndarray,
    cu: np.ndarray,
    W: NDArray[np.float64],
    V: NDArray[np.float64],
) -> np.ndarray:
    """AUROC under row weights ``W[b, pu] · V[b, cu]`` for every draw ``b`` (one sort)."""
    pos = y.astype(bool)
    neg_order = np.argsort(s[~pos], kind="stable")
    ns = s[~pos][neg_order]
    npu, ncu = pu[~pos][neg_order], cu[~pos][neg_order]
    ppu, pcu = pu[pos], cu[pos]
    lo = np.searchsorted(ns, s[pos], side="left")
    hi = np.searchsorted(ns, s[pos], side="right")
    out = np.empty(len(W))
    cum = np.zeros(len(ns) + 1)
    for b in range(len(W)):
        rn = W[b][npu] * V[b][ncu]
        np.cumsum(rn, out=cum[1:])
        rp = W[b][ppu] * V[b][pcu]
        den = rp.sum() * cum[-1]
        u = rp @ (cum[lo] + cum[hi]) / 2.0
        out[b] = u / den if den > 0 else np.nan
    return out


def _weighted_ap(
    order_y: np.ndarray, order_u: np.ndarray, ends: np.ndarray, w: np.ndarray
) -> float:
    """Average precision of rows sorted by decreasing score (tie groups ending at
    ``ends``) with row weights ``w[unit]``."""
    return _ap_rows(order_y, w[order_u], ends)


def _ap_rows(order_y: np.ndarray, rw: np.ndarray, ends: np.ndarray) -> float:
    """Average precision of sorted rows with row weights ``rw`` (tie groups end at ``ends``)."""
    tp = np.cumsum(rw * order_y)[ends]
    fp = np.cumsum(rw * (1 - order_y))[ends]
    total = tp[-1] if len(tp) else 0.0
    if total <= 0:
        return np.nan
    dtp = np.diff(tp, prepend=0.0)
    return float(np.sum(dtp * tp / np.maximum(tp + fp, 1e-300)) / total)


#: Above this many (positive × unit) cells, bootstrap AP loops over draws instead.
_AP_BLOCK_LIMIT = 10_000_000


def ap_blocks(
    y: np.ndarray, s: np.ndarray, units: np.ndarray, n_units: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], np.ndarray]:
    """Per positive ``i`` and unit ``q``: positives (``tp``) and rows (``all``) of ``q``
    scored at least ``s_i``. Average precision under unit weights ``w`` is
    ``Σ_i w[u_i] (tp_i·w) / (all_i·w) / (w·n1)`` (all rows tied at a threshold enter
    together, as in scikit-learn). Returns ``tp, all`` (``n_pos × n_units``) and the
    positives' units."""
    pos = y.astype(bool)
    sp, up = s[pos], units[pos]
    tp = np.zeros((len(sp), n_units))
    al = np.zeros((len(sp), n_units))
    order = np.argsort(units, kind="stable")
    su, ss = units[order], s[order]
    bounds = np.searchsorted(su, np.arange(n_units + 1))
    for q in range(n_units):
        rows_q = ss[bounds[q] : bounds[q + 1]]
        pos_q = np.sort(sp[up == q])
        all_q = np.sort(rows_q)
        al[:, q] = len(all_q) - np.searchsorted(all_q, sp, side="left")
        tp[:, q] = len(pos_q) - np.searchsorted(pos_q, sp, side="left")
    return tp, al, up


def _bootstrap_ap(
    y: np.ndarray,
    s: NDArray[np.float64],
    codes: np.ndarray,
    P: int,
    W: NDArray[np.float64],
    oy: np.ndarray,
    ou: np.ndarray,
    ends: np.ndarray,
    chunk: int = 100,
) -> np.ndarray:
    """Average precision under every row of unit weights ``W`` (draws × units)."""
    n_pos = int(y.sum())
    if n_pos * P > _AP_BLOCK_LIMIT:
        return np.array([_weighted_ap(oy, ou, ends, w) for w in W])
    tp, al, up = ap_blocks(y, s, codes, P)
    n1 = np.bincount(up, minlength=P).astype(float)
    out = np.empty(len(W))
    for a in range(0, len(W), chunk):
        Wc = W[a : a + chunk]  # (c, P)
        prec = (tp @ Wc.T) / np.maximum(al @ Wc.T, 1e-300)  # (n_pos, c)
        tot = Wc @ n1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a : a + chunk] = np.where(
                tot > 0, np.einsum("ic,ci->c", prec, Wc[:, up]) / tot, np.nan
            )
    return out


def _ap_setup(y: np.ndarray, s: NDArray[np.float64]) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1] if len(ss) else np.array([], int)
    return order, ends


def topk_recall(
    y: np.ndarray, s: np.ndarray, units: np.ndarray, n_units: int, k: int
) -> NDArray[np.float64]:
    """Per unit: the expected fraction of its positives among its ``k`` highest-scored rows
    (ties broken at random, in expectation); NaN for a unit without positives."""
    df = pd.DataFrame({"u": units, "s": s})
    g = df.groupby("u")["s"]
    hi = g.rank(method="min", ascending=False).to_numpy()  # 1 + #greater
    top = g.rank(method="max", ascending=False).to_numpy()
    tied = top - hi + 1
    inside = np.clip((k - (hi - 1)) / tied, 0.0, 1.0)
    hits = np.bincount(units, weights=inside * y, minlength=n_units)
    npos = np.bincount(units, weights=y.astype(float), minlength=n_units)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npos > 0, hits / npos, np.nan)


def compare_predictions(
    y: np.ndarray,
    predictions: dict[str, np.ndarray],
    units: np.ndarray,
    *,
    baseline: str,
    n_boot: int = 1000,
    seed: int = 0,
    ks: Sequence[int] = (10, 50, 100),
    ci: float = 0.95,
    alternative: Literal["greater", "two-sided"] = "greater",
    candidates: np.ndarray | None = None,
    threads: int | None = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of each feature set's predictions and differences from ``baseline``.

    ``units``: the bootstrap unit of each row (the perturbation). Returns

    * ``metrics``: one row per feature set — ``feature_set, auroc, auroc_ci_low/high,
      auprc, auprc_ci_low/high, recall@k`` (mean over units with a positive) ``, n_rows,
      n_units, n_positives``;
    * ``deltas``: one row per non-baseline set — ``feature_set, baseline, delta_auroc``
      with CI, ``p`` and ``p_floor`` for ``alternative`` and ``p_two_sided``;
      ``delta_auprc`` with CI, ``p_auprc``, ``p_floor_auprc``, ``p_two_sided_auprc``;
      ``delta_recall@k`` with CI; ``n_boot``.

    ``candidates``: the candidate gene of each row; when given, AUROC and AUPRC draws are
    **two-way**: perturbations and candidate genes are both resampled and a row's weight
    is the product of their multiplicities, so dependence among rows sharing a (hub)
    candidate is resampled too (top-k recall stays a per-perturbation mean).

    ``alternative``: "greater" (default) — H0: Δ ≤ 0, p = (1 + #{draws ≤ 0}) / (B + 1);
    "two-sided" — H0: Δ = 0, p by inverting the percentile interval. Why one-sided by
    default: the out-of-fold predictions are held fixed, so the cost of fitting extra
    coefficients (noise that lowers the larger model's out-of-fold AUROC when the edge
    carries nothing) is not resampled; it biases Δ below 0 under H0, and a two-sided
    test then rejects on the negative side far above its level (calibration: 20–25% at
    α = 0.05 on 16-perturbation screens), while "the edge lowers out-of-fold AUROC" is a
    property of the fit, not of the edges. On the claimed side the bias is conservative.
    """
    from threadpoolctl import threadpool_limits

    if threads is not None:  # BLAS threads (see cross_validated_predictions)
        with threadpool_limits(limits=threads):
            return compare_predictions(
                y,
                predictions,
                units,
                baseline=baseline,
                n_boot=n_boot,
                seed=seed,
                ks=ks,
                ci=ci,
                alternative=alternative,
                candidates=candidates,
                threads=None,
            )
    y = np.asarray(y, bool)
    codes, uniq = pd.factorize(pd.Series(units).astype(str))
    P = len(uniq)
    names = list(predictions)
    if baseline not in predictions:
        raise IncrementalInputError(f"baseline {baseline!r} is not among {names}.")
    rng = np.random.default_rng(seed)
    W = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(float) if P else None
    V = cc = None
    if candidates is not None and W is not None:
        cc, cu = pd.factorize(pd.Series(candidates).astype(str))
        V = rng.multinomial(len(cu), np.full(len(cu), 1.0 / len(cu)), size=n_boot).astype(float)
    obs, draws = {}, {}
    yf = y.astype(float)
    for name in names:
        s = np.asarray(predictions[name], float)
        C, n1, n0 = auroc_blocks(y, s, codes, P)
        denom = n1.sum() * n0.sum()
        o = {"auroc": C.sum() / denom if denom > 0 else np.nan}
        d = {}
        if V is not None and cc is not None and W is not None and denom > 0:
            d["auroc"] = _two_way_auroc(y, s, codes, cc, W, V)
        elif W is not None and denom > 0:
            num = np.einsum("bp,pq,bq->b", W, C, W)
            den = (W @ n1) * (W @ n0)
            with np.errstate(invalid="ignore", divide="ignore"):
                d["auroc"] = np.where(den > 0, num / den, np.nan)
        order, ends = _ap_setup(y, s)
        oy, ou = yf[order], codes[order]
        o["auprc"] = _weighted_ap(oy, ou, ends, np.ones(P))
        if V is not None and cc is not None and W is not None:
            occ = cc[order]
            d["auprc"] = np.array([_ap_rows(oy, W[b][ou] * V[b][occ], ends) for b in range(len(W))])
        elif W is not None:
            d["auprc"] = _bootstrap_ap(y, s, codes, P, W, oy, ou, ends)
        for k in ks:
            r = topk_recall(y, s, codes, P, k)
            ok = np.isfinite(r)
            o[f"recall@{k}"] = float(r[ok].mean()) if ok.any() else np.nan
            if W is not None:
                Wk = W[:, ok]
                with np.errstate(invalid="ignore", divide="ignore"):
                    d[f"recall@{k}"] = (Wk @ r[ok]) / Wk.sum(axis=1)
        obs[name], draws[name] = o, d
    alpha = (1 - ci) / 2

    def _ci(x: np.ndarray) -> tuple[float, ...]:
        x = x[np.isfinite(x)]
        return (np.nan, np.nan) if len(x) == 0 else tuple(np.quantile(x, [alpha, 1 - alpha]))

    mrows = []
    for name in names:
        row: dict[str, Any] = {"feature_set": name}
        for m, v in obs[name].items():
            row[m] = v
            if m in ("auroc", "auprc") and m in draws[name]:
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = _ci(draws[name][m])
        row.update(n_rows=len(y), n_units=P, n_positives=int(y.sum()))
        mrows.append(row)
    drows = []
    for name in names:
        if name == baseline:
            continue
        row = {"feature_set": name, "baseline": baseline, "n_boot": n_boot}
        for m in obs[name]:
            dm = obs[name][m] - obs[baseline][m]
            dd = (
                draws[name][m] - draws[baseline][m]
                if m in draws[name] and m in draws[baseline]
                else np.array([])
            )
            row[f"delta_{m}"] = dm
            row[f"delta_{m}_ci_low"], row[f"delta_{m}_ci_high"] = _ci(dd)
            if m in ("auroc", "auprc"):
                key = "" if m == "auroc" else "_auprc"
                p2, floor2 = bootstrap_p(dd) if len(dd) else (np.nan, np.nan)
                p1, floor1 = _greater_p(dd)
                row[f"p{key}"], row[f"p_floor{key}"] = (
                    (p1, floor1) if alternative == "greater" else (p2, floor2)
                )
                row[f"p_two_sided{key}"] = p2
        row.update(n_rows=len(y), n_units=P, n_positives=int(y.sum()))
        drows.append(row)
    return pd.DataFrame(mrows), pd.DataFrame(drows)


def delta_test(row: dict[str, Any], *, test: str, h0: str, null_name: str) -> StatTestResult:
    """A ``deltas`` row of :func:`compare_predictions` (``alternative="greater"``) as the
    typed one-sided test of H0: ΔAUROC ≤ 0 — one tail only, so a claim resting on it
    cannot read "opposite" (the bootstrap holds the fitted models fixed, see
    :func:`compare_predictions`); its floor is the bootstrap's ``1 / (B + 1)``."""
    return StatTestResult(
        row["delta_auroc"],
        row["p"],
        row["delta_auroc"],
        int(row["n_rows"]),
        test,
        "ΔAUROC",
        "ΔAUROC",
        "greater",
        row["delta_auroc_ci_low"],
        row["delta_auroc_ci_high"],
        p_greater=row["p"],
        null_value=0.0,
        p_floor=row["p_floor"],
        h0=h0,
        null_name=null_name,
    )


def _greater_p(draws: np.ndarray) -> tuple[float, float]:
    """One-sided bootstrap p of H0: Δ ≤ 0, ``(1 + #{d ≤ 0}) / (B + 1)``, and its floor."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    return float((1 + np.sum(d <= 0)) / (len(d) + 1)), float(1 / (len(d) + 1))


# ----------------------------------------------------------------------------- LRT
def nested_lrt(y: np.ndarray, X0: np.ndarray, X1: np.ndarray) -> dict[str, float]:
    """Likelihood-ratio test of the logistic model on ``[X0, X1]`` against the one on
    ``X0`` (both with an intercept, maximum likelihood by Newton's method, statsmodels).
    H0: the coefficients of ``X1`` are all 0. Treats rows as independent — descriptive
    only for (perturbation, candidate) rows. Missing values are imputed with column means.
    Returns ``lr, df, p, llf0, llf1, n`` (NaN p when a fit fails, e.g. separation)."""
    import warnings

    import statsmodels.api as sm
    from scipy.stats import chi2

    def prep(X: np.ndarray) -> NDArray[np.float64]:
        X = np.asarray(X, float).reshape(len(y), -1)
        mu = np.nanmean(X, axis=0)
        X = np.where(np.isnan(X), np.where(np.isfinite(mu), mu, 0.0), X)
        sd = X.std(axis=0)
        z: NDArray[np.float64] = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        return z

    y = np.asarray(y, float)
    A, B = prep(X0), prep(X1)
    out = {"lr": np.nan, "df": B.shape[1], "p": np.nan, "llf0": np.nan, "llf1": np.nan}
    out["n"] = len(y)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f0 = sm.Logit(y, sm.add_constant(A, has_constant="add")).fit(
                disp=0, method="newton", maxiter=100
            )
            f1 = sm.Logit(y, sm.add_constant(np.hstack([A, B]), has_constant="add")).fit(
                disp=0, method="newton", maxiter=100
            )
    except Exception:  # singular or separated designs: no test
        return out
    lr = max(0.0, 2.0 * (f1.llf - f0.llf))
    out.update(lr=lr, p=float(chi2.sf(lr, B.shape[1])), llf0=float(f0.llf), llf1=float(f1.llf))
    return out


# ----------------------------------------------------------------------------- matching
@dataclass
class MatchedRows:
    """Rows (positions into the input arrays) of the matched set: matched responders
    then their negatives; counts of responders, of responders with at least one match and
    with all ``n_per``, and of negatives."""

    rows: np.ndarray
    n_responders: int
    n_matched: int
    n_full: int
    n_negatives: int
    n_per: int
    caliper: float


def lrt_test(r: dict[str, float], *, h0: str) -> StatTestResult:
    """A :func:`nested_lrt` result as a typed test: upper tail of χ²(df), the statistic's
    null centre ``df``."""
    return StatTestResult(
        r["lr"],
        r["p"],
        r["lr"],
        int(r["n"]),
        f"likelihood-ratio test of nested logistic models (χ², df {r['df']})",
        "LR",
        "LR",
        "greater",
        p_greater=r["p"],
        null_value=float(r["df"]),
        h0=h0,
        null_name="nested_lrt_independent_rows",
    )


def propensity_matched(
    y: np.ndarray,
    propensity: np.ndarray,
    units: np.ndarray,
    *,
    n_per: int = 5,
    caliper: float = 0.2,
    seed: int = 0,
) -> MatchedRows:
    """Per responder (visited in a seeded random order), up to ``n_per`` non-responders of
    the same unit (perturbation) with the nearest logit propensity within ``caliper`` × SD
    of the logit propensity, each non-responder used at most once."""
    y = np.asarray(y, bool)
    eps = 1e-9
    p = np.clip(np.asarray(propensity, float), eps, 1 - eps)
    lg = np.log(p / (1 - p))
    width = caliper * float(np.std(lg)) if len(lg) else 0.0
    codes, uniq = pd.factorize(pd.Series(units).astype(str))
    rng = np.random.default_rng(seed)
    pos_rows, neg_rows = [], []
    n_full = 0
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
    for u in range(len(uniq)):
        idx = order[bounds[u] : bounds[u + 1]]
        resp = idx[y[idx]]
        pool = idx[~y[idx]]
        if len(resp) == 0 or len(pool) == 0:
            continue
        free = np.ones(len(pool), bool)
        for r in rng.permutation(resp):
            dist = np.abs(lg[pool] - lg[r])
            dist[~free] = np.inf
            near = np.argsort(dist, kind="stable")[:n_per]
            near = near[dist[near] <= width]
            if len(near):
                pos_rows.append(r)
                neg_rows.extend(pool[near].tolist())
                free[near] = False
                n_full += len(near) == n_per
    rows = np.array(pos_rows + neg_rows, dtype=np.int64)
    return MatchedRows(
        rows=rows,
        n_responders=int(y.sum()),
        n_matched=len(pos_rows),
        n_full=n_full,
        n_negatives=len(neg_rows),
        n_per=n_per,
        caliper=caliper,
    )
