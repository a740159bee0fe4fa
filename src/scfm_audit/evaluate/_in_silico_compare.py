"""Comparison of the model's in-silico perturbations with observed effects, and its test.

:func:`compare_in_silico` compares, per perturbation, the predicted shifts with the
observed DE profile: Spearman with log2fc (unsigned readouts: |log2fc|), sign agreement on
responders (signed only), AUROC of |predicted| for responders; the perturbed genes are
excluded. Every statistic is computed for every (predicted j, observed k) pair of one arm
(:func:`cross_scores`), so the **shuffled-perturbation-label null** (j's prediction
against π(j)'s profile, π within arm; :func:`in_silico_test`) costs one gather per draw;
it keeps every gene-level pattern ("variable genes move in every perturbation"), which
therefore does not count. Perturbations are the independent units: permutations and the
bootstrap are over them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scfm_audit.stats._tests import StatTestResult

__all__ = [
    "CROSS_STATISTICS",
    "SHUFFLE_H0",
    "CrossScores",
    "InSilicoTest",
    "compare_in_silico",
    "cross_scores",
    "in_silico_test",
]

#: the per-pair statistics :func:`cross_scores` computes
CROSS_STATISTICS = ("spearman", "sign_agreement", "auroc")

SHUFFLE_H0 = (
    "the in-silico prediction for each perturbation is no more like its own observed "
    "profile than like the observed profile of another perturbation of the same arm "
    "(predicted/observed pairing exchangeable; shuffled perturbation labels, within arm)"
)


@dataclass(frozen=True)
class CrossScores:
    """Every statistic for every (predicted j, observed k) pair of perturbations of one
    arm. ``units``: one row per perturbation (``arm``, ``perturbation``, ``n_genes`` genes
    compared on the diagonal, ``n_responders``); ``matrices[name]`` (n, n): row j the
    predicted profile of unit j, column k the observed profile of unit k, NaN across arms
    and where a statistic is undefined; ``signed`` whether the readout has a sign."""

    units: pd.DataFrame
    matrices: dict[str, np.ndarray]
    signed: bool

    @property
    def arms(self) -> np.ndarray:
        arms: np.ndarray = self.units["arm"].to_numpy()
        return arms

    def diagonal(self, name: str) -> np.ndarray:
        return np.diag(self.matrices[name]).copy()

    def off_diagonal_mean(self, name: str) -> np.ndarray:
        """Per row j: mean of the statistic over the other perturbations of its arm
        (what the prediction of j scores against profiles it was not made for)."""
        M = self.matrices[name].copy()
        np.fill_diagonal(M, np.nan)
        with np.errstate(invalid="ignore"), _quiet():
            mean: np.ndarray = np.nanmean(M, axis=1)
        return mean


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's "mean of empty slice" warnings (NaN is the intended answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _row_ranks(X: np.ndarray) -> np.ndarray:
    """Average ranks along rows, NaN kept as NaN (and not ranked)."""
    from scipy.stats import rankdata

    ranks: np.ndarray = rankdata(X, axis=1, nan_policy="omit")
    return ranks


def _row_pearson(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson correlation per row over the entries finite in both (NaN elsewhere);
    NaN for rows with fewer than 3 entries or no variance."""
    ok = np.isfinite(X) & np.isfinite(Y)
    n = ok.sum(1)
    X, Y = np.where(ok, X, 0.0), np.where(ok, Y, 0.0)
    nn = np.maximum(n, 1)
    xm = X - (X.sum(1) / nn)[:, None]
    ym = Y - (Y.sum(1) / nn)[:, None]
    xm, ym = np.where(ok, xm, 0.0), np.where(ok, ym, 0.0)
    sxy = (xm * ym).sum(1)
    sxx, syy = (xm * xm).sum(1), (ym * ym).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r[(n < 3) | ~(sxx > 0) | ~(syy > 0)] = np.nan
    clipped: np.ndarray = np.clip(r, -1.0, 1.0)
    return clipped


def _arm_matrices(
    P: np.ndarray, Obs: np.ndarray, R: np.ndarray, gene_pos: np.ndarray, signed: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The (n, n) statistic matrices of one arm (see :func:`cross_scores`)."""
    n, G = P.shape
    S = np.full((n, n), np.nan)
    A = np.full((n, n), np.nan)
    Z = np.full((n, n), np.nan)
    n_genes = np.zeros(n, dtype=np.int64)
    Oy = Obs if signed else np.abs(Obs)
    finite_o = np.isfinite(Obs)
    excl = np.zeros((n, G), dtype=bool)  # column k's own target
    has = gene_pos >= 0
    excl[np.flatnonzero(has), gene_pos[has]] = True
    for j in range(n):
        m = finite_o & np.isfinite(P[j])[None, :] & ~excl
        if gene_pos[j] >= 0:
            m[:, gene_pos[j]] = False  # row j's own target
        n_genes[j] = m[j].sum()
        X = np.where(m, P[j][None, :], np.nan)
        S[j] = _row_pearson(_row_ranks(X), _row_ranks(np.where(m, Oy, np.nan)))
        # AUROC of |predicted| for the responders of k (Mann–Whitney from mid-ranks)
        lab = R & m
        n1 = lab.sum(1)
        n0 = m.sum(1) - n1
        rk = _row_ranks(np.abs(X))
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(lab, rk, 0.0).sum(1) - n1 * (n1 + 1) / 2.0
            A[j] = np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)
        if signed:
            pj = np.sign(P[j])[None, :]
            use = lab & (pj != 0)
            k_use = use.sum(1)
            agree = (use & (pj == np.sign(Obs))).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                Z[j] = np.where(k_use > 0, agree / np.maximum(k_use, 1), np.nan)
    return {"spearman": S, "sign_agreement": Z, "auroc": A}, n_genes


def _dense(df: pd.DataFrame, rows: pd.Index, cols: pd.Index, value: str) -> np.ndarray:
    """(len(rows), len(cols)) matrix of ``value`` from a long table (NaN where absent)."""
    out = np.full((len(rows), len(cols)), np.nan)
    r = rows.get_indexer(df["perturbation"].astype(str))
    c = cols.get_indexer(df["gene"].astype(str))
    ok = (r >= 0) & (c >= 0)
    out[r[ok], c[ok]] = df[value].to_numpy(dtype=float)[ok]
    return out


def cross_scores(predicted: pd.DataFrame, observed: pd.DataFrame, *, signed: bool) -> CrossScores:
    """Spearman, sign agreement and AUROC for every (predicted j, observed k) pair of
    perturbations within each arm.

    Inputs: ``predicted`` long (``arm``, ``perturbation``, ``gene``, ``predicted_shift``);
    ``observed`` long DE (``arm``, ``perturbation``, ``gene``, ``log2fc``, ``responder``), as
    :func:`~scfm_audit.evaluate._de.responder_labels` returns; ``signed``: whether the
    predicted shift has a sign (expression readout) or not (embedding shift).

    Per pair, over the genes with a finite prediction of j and a finite log2fc of k, the
    perturbed genes of j and of k excluded: ``spearman`` (unsigned: against |log2fc_k|);
    ``sign_agreement`` among k's responders with a non-zero prediction (NaN unsigned);
    ``auroc`` of |predicted_j| for k's responders against its other genes.

    Units are the perturbations present in both tables with at least one finite
    prediction; entries across arms are NaN.
    """
    need_p = {"arm", "perturbation", "gene", "predicted_shift"}
    need_o = {"arm", "perturbation", "gene", "log2fc", "responder"}
    for name, df, need in (("predicted", predicted, need_p), ("observed", observed, need_o)):
        miss = need - set(df.columns)
        if miss:
            raise ValueError(f"{name} lacks columns {sorted(miss)}; it needs {sorted(need)}")
    units_rows, blocks = [], []
    genes = pd.Index(pd.unique(observed["gene"].astype(str)))
    for arm in sorted(set(predicted["arm"].astype(str)) & set(observed["arm"].astype(str))):
        pr = predicted[predicted["arm"].astype(str) == arm]
        ob = observed[observed["arm"].astype(str) == arm]
        pert_names = pd.Index(pd.unique(pr["perturbation"].astype(str)))
        P = _dense(pr, pert_names, genes, "predicted_shift")
        keep = np.isfinite(P).any(axis=1) & pert_names.isin(ob["perturbation"].astype(str))
        perts = list(pert_names[keep])
        if not perts:
            continue
        P = P[keep]
        idx = pd.Index(perts)
        Obs = _dense(ob, idx, genes, "log2fc")
        R = _dense(ob.assign(responder=ob["responder"].astype(float)), idx, genes, "responder")
        R = np.nan_to_num(R) > 0
        gene_pos = genes.get_indexer(idx)
        mats, n_genes = _arm_matrices(P, Obs, R, gene_pos, signed)
        blocks.append(mats)
        own = np.zeros_like(R)
        own[np.flatnonzero(gene_pos >= 0), gene_pos[gene_pos >= 0]] = True
        units_rows.append(
            pd.DataFrame(
                {
                    "arm": arm,
                    "perturbation": perts,
                    "n_genes": n_genes,
                    "n_responders": (R & ~own).sum(1),
                }
            )
        )
    units = (
        pd.concat(units_rows, ignore_index=True)
        if units_rows
        else pd.DataFrame(columns=["arm", "perturbation", "n_genes", "n_responders"])
    )
    n = len(units)
    mats = {k: np.full((n, n), np.nan) for k in CROSS_STATISTICS}
    at = 0
    for b in blocks:
        m = len(b["spearman"])
        for k in CROSS_STATISTICS:
            mats[k][at : at + m, at : at + m] = b[k]
        at += m
    return CrossScores(units=units, matrices=mats, signed=signed)


@dataclass(frozen=True)
class InSilicoTest:
    """The shuffled-perturbation-label test of one statistic.

    ``statistic``: mean over perturbations of the matched (diagonal) statistic;
    ``null_mean``: its mean over the permutation draws; ``effect``: the perturbation
    specificity, mean matched − mean mismatched (off-diagonal, same arm) statistic, 0
    under H0, with the 95% CI that inverts the same permutation test under a shift model
    (``ci_low``, ``ci_high``: :func:`shift_inversion_ci`) and a percentile bootstrap CI
    over perturbations of the statistic itself (``stat_ci_low``, ``stat_ci_high``);
    ``p`` two-sided adaptive Monte-Carlo p (``p_floor``, ``n_draws``); ``n`` perturbations
    with a defined matched statistic; ``null`` the draws; ``result`` the test as a typed
    :class:`~scfm_audit.stats._tests.StatTestResult`: the specificity (null value 0)
    with its CI, both tails of the matched statistic, the floor and the null's spread."""

    statistic: float
    null_mean: float
    effect: float
    ci_low: float
    ci_high: float
    stat_ci_low: float
    stat_ci_high: float
    p: float
    p_floor: float
    n_draws: int
    n: int
    null: np.ndarray
    result: StatTestResult


def _specificity(M: np.ndarray, idx: np.ndarray, arms: np.ndarray) -> tuple[float, float]:
    """(mean matched, mean matched − mean mismatched within arm) over units ``idx``
    (with repeats: pairs of a unit with itself count as matched only)."""
    sub = M[np.ix_(idx, idx)]
    same_unit = idx[:, None] == idx[None, :]
    same_arm = arms[idx][:, None] == arms[idx][None, :]
    d = M[idx, idx]
    off = sub[same_arm & ~same_unit]
    with _quiet():
        dm = float(np.nanmean(d)) if np.isfinite(d).any() else np.nan
        om = float(np.nanmean(off)) if np.isfinite(off).any() else np.nan
    return dm, dm - om


def shift_inversion_ci(
    M: np.ndarray,
    arms: np.ndarray,
    *,
    n_draws: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[float, float]:
    """CI of the perturbation specificity by inverting the shuffled-label test under a
    shift model: the matched entries are the mismatched ones shifted by δ, so that for
    the true δ the pairing of ``M − δ·I`` is exchangeable (within arms).

    For one permutation π with mean permuted entry A and share F of units it maps onto
    themselves, the test of δ compares d̄ − δ with A − δ·F; the two cross at
    δ_π = (d̄ − A) / (1 − F), and δ is accepted at level 1 − ``level`` iff it lies between
    the tail quantiles of the δ_π. The interval is therefore the central ``level`` range
    of the δ_π over ``n_draws`` within-arm permutations; it excludes 0 exactly when the
    test on the same draws rejects, so its coverage of a null effect is the test's own
    level (a percentile bootstrap over perturbations undercovered, 0.90–0.935, on the
    calibration nulls).
    """
    from scfm_audit.stats._montecarlo import permute_within_classes

    M = np.asarray(M, dtype=float)
    n = M.shape[0]
    rows = np.arange(n)
    d = np.diag(M)
    ok = np.isfinite(d)
    with _quiet():
        dbar = float(np.nanmean(d))
    deltas = np.empty(n_draws)
    for s in range(0, n_draws, 2000):
        perms = permute_within_classes(arms, min(2000, n_draws - s), rng)
        vals = M[rows[None, :], perms]
        fin = np.isfinite(vals)
        with _quiet():
            a = np.nanmean(vals, axis=1)
            f = ((perms == rows[None, :]) & fin & ok[None, :]).sum(1) / fin.sum(1)
        num, den = dbar - a, 1 - f
        deltas[s : s + len(perms)] = np.divide(
            num, den, out=np.full_like(num, np.nan), where=den > 0
        )
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo, hi = np.quantile(deltas, [tail, 1 - tail])
    return float(lo), float(hi)


def in_silico_test(
    M: np.ndarray,
    arms: np.ndarray,
    *,
    stages: Sequence[int] = (999, 9_999),
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
    min_units: int = 3,
) -> InSilicoTest:
    """Shuffled-perturbation-label test on a cross matrix ``M`` (n × n, see
    :func:`cross_scores`) with the units' ``arms``.

    H0: the prediction made for perturbation j is no more like j's observed profile than
    like the profile of another perturbation of the same arm (the pairing of predicted and
    observed profiles is exchangeable). Statistic: mean over units of M[j, j]; null draws:
    mean of M[j, π(j)] for random within-arm permutations π
    (:func:`~scfm_audit.stats.permute_within_classes`), p two-sided and adaptive
    (:func:`~scfm_audit.stats.adaptive_mc_pvalue`). Effect and CIs: see
    :class:`InSilicoTest`; the bootstrap resamples perturbations within arms.
    """
    from scfm_audit.stats._montecarlo import adaptive_mc_pvalue, permute_within_classes

    M = np.asarray(M, dtype=float)
    arms = np.asarray(arms)
    n = M.shape[0]
    nan = float("nan")
    d = np.diag(M)
    n_def = int(np.isfinite(d).sum())
    if n < min_units or n_def < min_units:
        why = f"fewer than {min_units} perturbations could be compared"
        r = StatTestResult(
            nan,
            nan,
            nan,
            n_def,
            "shuffled perturbation labels",
            "",
            "",
            "two-sided",
            h0=SHUFFLE_H0,
            reason=why,
        )
        return InSilicoTest(nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, n_def, np.empty(0), r)
    rows = np.arange(n)
    with _quiet():
        observed = float(np.nanmean(d))

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(k)
        for s in range(0, k, 2000):
            perms = permute_within_classes(arms, min(2000, k - s), rng)
            with _quiet():
                out[s : s + len(perms)] = np.nanmean(M[rows[None, :], perms], axis=1)
        return out

    ss = np.random.SeedSequence(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    s_test, s_boot = ss.spawn(2)
    mc = adaptive_mc_pvalue(
        draw,
        observed,
        stages=stages,
        alternative="two-sided",
        seed=np.random.default_rng(s_test),
    )
    stat, eff = _specificity(M, rows, arms)
    rng = np.random.default_rng(s_boot)
    groups = [np.flatnonzero(arms == a) for a in pd.unique(arms)]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        boots[b] = _specificity(M, idx, arms)[0]
    with _quiet():
        lo_s, hi_s = np.nanquantile(boots, [0.025, 0.975]) if n_boot else (nan, nan)
    lo_e, hi_e = (
        shift_inversion_ci(M, arms, n_draws=max(n_boot, 999), rng=rng) if n_boot else (nan, nan)
    )
    null = mc.null[np.isfinite(mc.null)]
    result = StatTestResult(
        statistic=stat,
        p=float(mc.p),
        effect=eff,
        n=n_def,
        test=f"shuffled perturbation labels within arm ({mc.n_draws} draws, adaptive, "
        "two-sided); mean per-perturbation statistic",
        statistic_name="mean matched statistic",
        effect_name="matched − mismatched",
        alternative="two-sided",
        ci_low=float(lo_e),
        ci_high=float(hi_e),
        p_greater=float(mc.p_greater),
        p_less=float(mc.p_less),
        null_value=0.0,
        p_floor=float(mc.p_floor),
        null_scale=float(null.std()) if null.size > 1 else nan,
        h0=SHUFFLE_H0,
        null_name="shuffled_perturbation_labels",
    )
    return InSilicoTest(
        statistic=stat,
        null_mean=float(np.nanmean(mc.null)) if mc.null.size else nan,
        effect=eff,
        ci_low=float(lo_e),
        ci_high=float(hi_e),
        stat_ci_low=float(lo_s),
        stat_ci_high=float(hi_s),
        p=float(mc.p),
        p_floor=float(mc.p_floor),
        n_draws=int(mc.n_draws),
        n=n_def,
        null=mc.null,
        result=result,
    )


def compare_in_silico(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    *,
    signed: bool,
    stages: Sequence[int] = (999, 9_999),
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
) -> tuple[pd.DataFrame, dict[str, InSilicoTest], CrossScores]:
    """Predicted in-silico shifts against observed effects, per perturbation and overall.

    Inputs: as :func:`cross_scores` (``predicted`` may carry ``n_cells``), plus the
    Monte-Carlo ``stages``, ``n_boot`` and ``seed`` of :func:`in_silico_test`.

    Output: (per-perturbation table — ``arm, perturbation, n_genes, n_responders,
    n_cells`` and per statistic its matched value and ``<stat>_mismatched`` the mean over
    the arm's other observed profiles —, {statistic: :class:`InSilicoTest`} for every
    statistic defined for this readout (sign agreement only when ``signed``), the
    :class:`CrossScores`).
    """
    cs = cross_scores(predicted, observed, signed=signed)
    table = cs.units.copy()
    if "n_cells" in predicted.columns and len(table):
        nc = predicted.groupby(["arm", "perturbation"], observed=True)["n_cells"].max()
        table["n_cells"] = [
            int(nc.get((a, p), 0)) for a, p in zip(table["arm"], table["perturbation"])
        ]
    stats = [s for s in CROSS_STATISTICS if signed or s != "sign_agreement"]
    for s in CROSS_STATISTICS:
        table[s] = cs.diagonal(s)
        table[f"{s}_mismatched"] = cs.off_diagonal_mean(s)
    tests = {}
    for i, s in enumerate(stats):
        sd = np.random.SeedSequence(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
        tests[s] = in_silico_test(
            cs.matrices[s],
            cs.arms,
            stages=stages,
            n_boot=n_boot,
            seed=[int(x) for x in sd.spawn(len(stats))[i].generate_state(2)],
        )
    return table, tests, cs
