"""On-target QC of a perturbation screen, the confirmatory on-target test, and the
responder sensitivity sweep — kernels of ``perturbation_responders``.

* :func:`on_target_qc` — one row per (arm, perturbation): did the perturbation move its own
  target in the modality's direction (CRISPRi down, CRISPRa up)?
* :func:`split_control_on_target` — each perturbation's on-target log2 fold change
  against its own disjoint share of its arm's controls: the units of the claim's test.
* :func:`on_target_test` — over perturbations (the independent units), is the on-target
  log2 fold change shifted in the expected direction? Wilcoxon signed-rank, two-sided.
* :func:`responder_sweep` — responder counts and the responder set's Jaccard similarity
  to a reference configuration over a grid of LFC threshold × control cells × HVGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sst

from scfm_audit.evaluate._de import differential_expression, responder_labels
from scfm_audit.stats._fdr import bh_fdr
from scfm_audit.stats._tests import StatTestResult

if TYPE_CHECKING:
    from anndata import AnnData

    from scfm_audit._typing import ProgressFn
    from scfm_audit.data._dataset import DatasetSpec

__all__ = [
    "ON_TARGET_H0",
    "expected_direction",
    "hvg_ranking",
    "on_target_qc",
    "on_target_test",
    "responder_sweep",
    "split_control_on_target",
    "target_test",
]

ON_TARGET_H0 = (
    "the on-target log2 fold changes of the perturbations are symmetric about 0 "
    "(Wilcoxon signed-rank over perturbations, the independent units; two-sided)"
)
QC_COLUMNS = [
    "arm",
    "perturbation",
    "expected",
    "status",
    "on_target_log2fc",
    "statistic",
    "p",
    "n_perturbed",
    "n_control",
    "reason",
]


def expected_direction(arm: str, *, other: Literal["down", "up"] = "down") -> str:
    """``down`` for CRISPRi, ``up`` for CRISPRa (case-insensitive), ``other`` otherwise
    (e.g. an arm ``all`` of a screen without a modality column)."""
    a = str(arm).lower()
    return "down" if a == "crispri" else "up" if a == "crispra" else other


def on_target_qc(
    de: pd.DataFrame,
    *,
    lfc: float = 0.5,
    p_level: float = 0.05,
    other: Literal["down", "up"] = "down",
) -> pd.DataFrame:
    """On-target status of every (arm, perturbation) of a DE table (:data:`DE_COLUMNS`).

    ``pass``: the target gene's log2fc < −``lfc`` (expected ``down``) or > +``lfc``
    (``up``) with the DE p below ``p_level`` (one test per perturbation, uncorrected);
    ``fail`` otherwise (the reason says which condition failed); ``target not measured``:
    the perturbed gene is not among the DE table's genes (or its test is undefined).
    """
    keys = de[["arm", "perturbation"]].drop_duplicates()
    own = de[de["gene"].astype(str) == de["perturbation"].astype(str)]
    own = own.drop_duplicates(["arm", "perturbation"])
    cols = ["log2fc", "statistic", "p", "n_perturbed", "n_control"]
    m = keys.merge(own[["arm", "perturbation", *cols]], on=["arm", "perturbation"], how="left")
    expected = np.array([expected_direction(a, other=other) for a in m["arm"]], dtype=object)
    x, pv = m["log2fc"].to_numpy(float), m["p"].to_numpy(float)
    measured = np.isfinite(x) & np.isfinite(pv)
    sign = np.where(expected == "down", -1.0, 1.0)
    big = sign * x > lfc
    sig = pv < p_level
    status = np.where(~measured, "target not measured", np.where(big & sig, "pass", "fail"))
    reasons = []
    for i in range(len(m)):
        if not measured[i]:
            reasons.append(
                "target gene not among the tested genes"
                if np.isnan(x[i])
                else "target's test undefined (no variance)"
            )
        elif status[i] == "pass":
            reasons.append("")
        else:
            why = []
            if not big[i]:
                op = "<" if expected[i] == "down" else ">"
                why.append(f"log2fc {x[i]:+.2f} not {op} {sign[i] * lfc:+.2f}")
            if not sig[i]:
                why.append(f"p {pv[i]:.2g} ≥ {p_level}")
            reasons.append("; ".join(why))
    out = m.rename(columns={"log2fc": "on_target_log2fc"}).assign(
        expected=expected, status=status, reason=reasons
    )
    return out[QC_COLUMNS].reset_index(drop=True)


def split_control_on_target(
    adata: AnnData,
    spec: DatasetSpec | None = None,
    *,
    perturbations: Sequence[str] | None = None,
    min_share: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """On-target log2 fold change of each perturbation against its **own** share of its
    arm's control cells: the controls are split at random (seeded by ``seed`` and the arm)
    into disjoint shares of equal size, one per perturbation whose target gene is
    measured, so that no two perturbations' fold changes share a control cell.

    Why: against one shared control group, every perturbation's fold change contains the
    same control sample; a control group whose composition (cell states, modules) drifts
    by chance moves the targets' control means together, the fold changes become
    dependent, and a signed-rank test over perturbations that treats them as independent
    over-rejects. With disjoint shares the perturbations' fold changes are independent
    (cells are), and under H0 (perturbation cells and controls alike for the target) each
    is symmetric about 0 up to the two groups' sizes.

    When an arm has fewer than ``min_share`` controls per perturbation, a seeded random
    subset of its perturbations (``min_share`` controls each) is used. log2fc as in
    :func:`~scfm_audit.evaluate._de.differential_expression` (scanpy's formula on
    log-normalised counts, normalised over every gene of a cell). Returns one row per
    tested (arm, perturbation): ``on_target_log2fc``, ``n_perturbed``, ``n_control``.
    """
    import zlib

    from scfm_audit.data._dataset import counts_matrix, get_spec
    from scfm_audit.evaluate._de import _layout

    spec = spec if spec is not None else get_spec(adata)
    lay = _layout(adata, spec, perturbations, None, seed)
    cols = ["arm", "perturbation", "on_target_log2fc", "n_perturbed", "n_control"]
    if lay.groups.empty:
        return pd.DataFrame(columns=cols)
    var = pd.Index(adata.var_names.astype(str))
    jobs: list[tuple[str, str, np.ndarray, np.ndarray, int]] = []
    for arm, g in lay.groups.groupby("arm", sort=False):
        ctrl_row = int(g.index[g["control"]][0])
        ctrl = np.flatnonzero(lay.group == ctrl_row)
        perts = g[~g["control"] & g["perturbation"].isin(var)]
        if perts.empty:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(f"split:{arm}".encode())])
        m = len(perts)
        if ctrl.size // m < min_share:
            m = ctrl.size // min_share
            if m < 1:
                continue
            perts = perts.iloc[np.sort(rng.choice(len(perts), m, replace=False))]
        share = ctrl.size // m
        order = rng.permutation(ctrl)
        for i, (row, name) in enumerate(zip(perts.index, perts["perturbation"], strict=True)):
            cells = np.flatnonzero(lay.group == row)
            shared = np.sort(order[i * share : (i + 1) * share])
            jobs.append((str(arm), str(name), cells, shared, int(var.get_loc(name))))
    if not jobs:
        return pd.DataFrame(columns=cols)
    rows = np.unique(np.concatenate([np.concatenate([j[2], j[3]]) for j in jobs]))
    X = counts_matrix(adata, spec, obs=rows)
    tot = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    div = np.where(tot > 0, tot / 1e4, 1.0)
    genes = np.unique([j[4] for j in jobs])
    Y = X[:, genes]
    Y = np.asarray(Y.toarray() if hasattr(Y, "toarray") else Y, dtype=np.float64)
    Y = np.log1p(Y / div[:, None])
    where = pd.Series(np.arange(rows.size), index=rows)
    gcol = pd.Series(np.arange(genes.size), index=genes)
    out = []
    for arm, name, cells, shared, gi in jobs:
        y = Y[:, gcol[gi]]
        m1 = y[where[cells].to_numpy()].mean()
        m0 = y[where[shared].to_numpy()].mean()
        lfc = np.log2(np.expm1(m1) + 1e-9) - np.log2(np.expm1(m0) + 1e-9)
        out.append((arm, name, float(lfc), cells.size, shared.size))
    return pd.DataFrame(out, columns=cols)


def on_target_test(lfc: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Wilcoxon signed-rank test of on-target log2 fold changes (one per perturbation)
    against 0, two-sided (H0: :data:`ON_TARGET_H0`). Returns p, statistic, median, ci_low,
    ci_high, n. Effect: the median with a percentile
    bootstrap CI over perturbations. NaNs are dropped; fewer than 2 values give NaN."""
    x = np.asarray(lfc, dtype=float)
    x = x[np.isfinite(x)]
    nan = float("nan")
    if x.size < 2 or np.all(x == 0):
        return dict(p=nan, statistic=nan, median=nan, ci_low=nan, ci_high=nan, n=x.size)
    res = sst.wilcoxon(x, alternative="two-sided")
    rng = np.random.default_rng(seed)
    boot = np.median(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return dict(
        p=float(res.pvalue),
        statistic=float(res.statistic),
        median=float(np.median(x)),
        ci_low=float(lo),
        ci_high=float(hi),
        n=int(x.size),
    )


def target_test(
    qc_row: Any, *, test: str, statistic_name: str, h0: str, null_name: str
) -> StatTestResult:
    """One perturbation's DE test of its target gene (a row of :func:`on_target_qc`) as a
    typed two-sided result: the statistic (t or z) is symmetric under H0, so the tested
    side holds half of p and the other side the rest."""
    half, up = float(qc_row.p) / 2, float(qc_row.statistic) > 0
    return StatTestResult(
        float(qc_row.statistic),
        float(qc_row.p),
        float(qc_row.on_target_log2fc),
        int(qc_row.n_perturbed),
        test,
        statistic_name,
        "on-target log2FC",
        "two-sided",
        p_greater=half if up else 1 - half,
        p_less=1 - half if up else half,
        h0=h0,
        null_name=null_name,
    )


def hvg_ranking(
    adata: AnnData,
    spec: DatasetSpec | None = None,
    *,
    chunk_size: int = 20000,
    progress: ProgressFn | None = None,
) -> pd.Index:
    """Genes ordered by decreasing variance of log-normalised expression over all cells
    with a perturbation label (controls included), read in row chunks. A simple HVG rule
    (scanpy's ``seurat`` flavour additionally standardises dispersion within mean bins)."""
    from scfm_audit.data._dataset import _perturbation_column, get_spec
    from scfm_audit.evaluate._de import _chunks, _log_normalise

    spec = spec if spec is not None else get_spec(adata)
    keep = _perturbation_column(adata, spec).notna().to_numpy()
    n, s, ss = 0, np.zeros(adata.n_vars), np.zeros(adata.n_vars)
    for _rows, counts in _chunks(adata, spec, keep, chunk_size, progress, "HVG ranking"):
        Y = _log_normalise(counts)
        n += Y.shape[0]
        s += np.asarray(Y.sum(axis=0)).ravel()
        sq = Y.multiply(Y) if isinstance(Y, sparse.csr_matrix) else Y * Y
        ss += np.asarray(sq.sum(axis=0)).ravel()
    var = ss / max(n, 1) - (s / max(n, 1)) ** 2
    order = np.lexsort((np.arange(adata.n_vars), -var))
    return pd.Index(adata.var_names)[order]


def _requalify(de: pd.DataFrame) -> pd.DataFrame:
    """q_within and q_screen recomputed on a gene subset of a DE table."""
    q_within = de.groupby(["arm", "perturbation"], sort=False)["p"].transform(
        lambda s: bh_fdr(s.to_numpy())
    )
    return de.assign(q_within=q_within.to_numpy(), q_screen=bh_fdr(de["p"].to_numpy()))


def responder_sweep(
    adata: AnnData,
    spec: DatasetSpec | None = None,
    *,
    lfc_grid: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    control_grid: Sequence[int] = (500, 2000, 10000),
    hvg_grid: Sequence[int] = (1000, 2000, 5000),
    reference: tuple[float, int, int] = (0.5, 2000, 2000),
    fdr: float = 0.05,
    scope: Literal["within", "screen"] = "within",
    method: Literal["welch", "wilcoxon"] = "welch",
    tie_correct: bool = True,
    perturbations: list[str] | None = None,
    seed: int = 0,
    chunk_size: int = 20000,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Responders under every (lfc, control cells, HVGs) configuration of the grid.

    One DE per control-cell level (a seeded subsample per arm; all controls where the
    level exceeds what an arm has, flagged ``controls_capped``); per HVG level the DE is
    restricted to the top genes of :func:`hvg_ranking` and q recomputed on them (all genes
    where the level exceeds the gene count: ``hvgs_capped``). Per configuration: responder
    pairs in total, median and mean responders per perturbation, and the Jaccard index of
    the set of (arm, perturbation, gene) responder pairs with the ``reference``
    configuration's set (which must be in the grid). Gene sets differ between HVG levels,
    so Jaccard across them also reflects genes that were not tested.
    """
    from scfm_audit.data._dataset import get_spec

    spec = spec if spec is not None else get_spec(adata)
    ref = (float(reference[0]), int(reference[1]), int(reference[2]))
    if ref[0] not in map(float, lfc_grid) or ref[1] not in control_grid or ref[2] not in hvg_grid:
        raise ValueError(
            f"sweep reference {reference} is not a configuration of the grid "
            f"(lfc {list(lfc_grid)} × control cells {list(control_grid)} × HVGs "
            f"{list(hvg_grid)}); choose one of its points."
        )
    ranking = hvg_ranking(adata, spec, chunk_size=chunk_size, progress=progress)
    rows, sets = [], {}
    for c in control_grid:
        de = differential_expression(
            adata,
            spec,
            method=method,
            tie_correct=tie_correct,
            perturbations=perturbations,
            max_control_cells=int(c),
            seed=seed,
            chunk_size=chunk_size,
            progress=progress,
        )
        if de.empty:
            continue
        available = de.attrs["de"]["controls_available"]
        capped_c = any(v < c for v in available.values())
        n_used = de.groupby("arm")["n_control"].first().to_dict()
        perts = de[["arm", "perturbation"]].drop_duplicates()
        for h in hvg_grid:
            capped_h = h > adata.n_vars
            everything = h >= adata.n_vars
            sub = de if everything else _requalify(de[de["gene"].isin(ranking[: int(h)])])
            for lv in lfc_grid:
                lab = responder_labels(sub, lfc=float(lv), fdr=fdr, scope=scope)
                r = lab[lab["responder"]]
                per = (
                    perts.merge(
                        r.groupby(["arm", "perturbation"]).size().rename("k").reset_index(),
                        how="left",
                    )["k"]
                    .fillna(0)
                    .to_numpy()
                )
                key = (float(lv), int(c), int(h))
                sets[key] = set(zip(r["arm"], r["perturbation"], r["gene"], strict=True))
                rows.append(
                    {
                        "lfc": float(lv),
                        "control_cells": int(c),
                        "controls_used": ", ".join(f"{a}: {v}" for a, v in n_used.items()),
                        "controls_capped": capped_c,
                        "hvgs": int(h),
                        "genes_tested": int(sub["gene"].nunique()),
                        "hvgs_capped": capped_h,
                        "n_perturbations": len(perts),
                        "responders_total": len(r),
                        "responders_median": float(np.median(per)) if per.size else np.nan,
                        "responders_mean": float(np.mean(per)) if per.size else np.nan,
                        "is_reference": key == ref,
                    }
                )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    base = sets.get(ref, set())
    out["jaccard_vs_reference"] = [
        (len(sets[k] & base) / len(sets[k] | base)) if (sets[k] | base) else 1.0
        for k in zip(out["lfc"], out["control_cells"], out["hvgs"], strict=True)
    ]
    out.attrs["reference"] = ref
    return out
