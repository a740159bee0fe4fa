"""Differential expression of every perturbation against its controls, vectorised over
perturbations, and responder labels.

Contract (used by ``perturbation_responders``, ``perturbation_prediction``,
``incremental_value``, ``context_dependence``, ``in_silico_perturbation`` and
``head_ablation``):

* :func:`differential_expression` → a long DataFrame, one row per (arm, perturbation, gene)
  with columns :data:`DE_COLUMNS`. ``arm`` is the modality (``CRISPRi``/``CRISPRa``) when the
  dataset has a modality column, else ``"all"``; each arm's perturbations are compared with
  that arm's own controls.
* :func:`responder_labels` adds ``responder`` (bool) from thresholds on |log2 FC| and q,
  where q is ``q_within`` (BH over the genes of one perturbation, the paper's scope) or
  ``q_screen`` (BH over every (perturbation, gene) of the screen: the set does not change
  when other perturbations are added or removed only under ``within``; state the scope).

Data scale: log-normalised expression (counts / total × 10,000, then ``log1p``), the
paper's and scanpy's default. ``log2fc`` follows scanpy's ``rank_genes_groups``:
``log2(expm1(mean_pert) + 1e-9) − log2(expm1(mean_ctrl) + 1e-9)``.

Welch test, H0 (per perturbation × gene): equal mean log-normalised expression in
perturbed and control cells; t with Welch–Satterthwaite df, two-sided.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sst

from scfm_audit.stats._fdr import bh_fdr

__all__ = ["DE_COLUMNS", "differential_expression", "responder_labels"]

DE_COLUMNS = [
    "arm",
    "perturbation",
    "gene",
    "log2fc",
    "mean_perturbed",
    "mean_control",
    "statistic",
    "p",
    "q_within",
    "q_screen",
    "n_perturbed",
    "n_control",
]

WELCH_H0 = (
    "equal mean log-normalised expression of the gene in perturbed and control cells "
    "(Welch t, Welch–Satterthwaite df, two-sided)"
)


def _log_normalise(X) -> sparse.csr_matrix | np.ndarray:
    tot = np.asarray(X.sum(axis=1)).ravel().astype(float)
    scale = np.divide(1e4, tot, out=np.zeros_like(tot), where=tot > 0)
    if sparse.issparse(X):
        Y = sparse.csr_matrix(sparse.diags(scale) @ X, dtype=np.float64)
        Y.data = np.log1p(Y.data)
        return Y
    return np.log1p(np.asarray(X, dtype=float) * scale[:, None])


def _group_moments(Y, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per-group n, sum and sum of squares by one sparse indicator product each."""
    keep = codes >= 0
    ind = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))),
        shape=(n_groups, Y.shape[0]),
    )
    n = np.asarray(ind.sum(axis=1)).ravel()
    Y2 = Y.multiply(Y) if sparse.issparse(Y) else Y * Y
    s, ss = (ind @ Y, ind @ Y2)
    if sparse.issparse(s):
        s, ss = s.toarray(), ss.toarray()
    return n, s, ss


def welch_from_moments(n1, s1, ss1, n0, s0, ss0) -> tuple[np.ndarray, ...]:
    """Welch t, df and two-sided p from group counts, sums and sums of squares
    (broadcasting: ``n1`` (P, 1), ``s1`` (P, G); control ``n0`` scalar, ``s0`` (G,))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m1, m0 = s1 / n1, s0 / n0
        v1 = np.maximum(ss1 - n1 * m1**2, 0) / (n1 - 1)
        v0 = np.maximum(ss0 - n0 * m0**2, 0) / (n0 - 1)
        a, b = v1 / n1, v0 / n0
        se2 = a + b
        t = (m1 - m0) / np.sqrt(se2)
        df = se2**2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1))
        p = 2 * sst.t.sf(np.abs(t), df)
    bad = ~(se2 > 0)
    t = np.where(bad, np.nan, t)
    p = np.where(bad, np.nan, p)
    return m1, m0, t, p


def differential_expression(
    adata,
    spec=None,
    *,
    method: Literal["welch"] = "welch",
    perturbations: list[str] | None = None,
    genes: list[str] | None = None,
) -> pd.DataFrame:
    """DE of every perturbation (or ``perturbations``) against its arm's controls on
    ``genes`` (default: all). Returns a long DataFrame with :data:`DE_COLUMNS`; q_within is
    BH over the genes of one perturbation, q_screen BH over every row of the result."""
    from scfm_audit.data._dataset import (
        _perturbation_column,
        control_mask,
        counts_matrix,
        get_spec,
    )

    if method != "welch":
        raise ValueError(f"unknown DE method {method!r}; use 'welch'.")
    spec = spec if spec is not None else get_spec(adata)
    labels = _perturbation_column(adata, spec).astype(object)
    ctrl = control_mask(adata, spec)
    if spec.modality is not None and spec.modality in adata.obs:
        arms = adata.obs[spec.modality].astype(str).to_numpy()
    else:
        arms = np.full(adata.n_obs, "all", dtype=object)
    gene_idx = (
        np.arange(adata.n_vars)
        if genes is None
        else pd.Index(adata.var_names).get_indexer(pd.Index(genes))
    )
    if (gene_idx < 0).any():
        raise ValueError("genes not in the dataset: " + ", ".join(
            list(pd.Index(genes)[gene_idx < 0][:10])))  # fmt: skip
    Y = _log_normalise(counts_matrix(adata, spec))[:, gene_idx]
    gnames = np.asarray(adata.var_names)[gene_idx]
    frames = []
    for arm in sorted(pd.unique(arms)):
        in_arm = arms == arm
        c = ctrl & in_arm
        if not c.any():
            continue
        pert = labels.to_numpy()[in_arm & ~ctrl & labels.notna().to_numpy()].astype(str)
        names = np.unique(pert)
        if perturbations is not None:
            names = np.array([n for n in names if n in set(perturbations)])
        if names.size == 0:
            continue
        code_of = {n: i for i, n in enumerate(names)}
        codes = np.full(adata.n_obs, -1)
        rows = np.flatnonzero(in_arm & ~ctrl & labels.notna().to_numpy())
        lab = labels.to_numpy()[rows].astype(str)
        codes[rows] = [code_of.get(x, -1) for x in lab]
        n1, s1, ss1 = _group_moments(Y, codes, names.size)
        n0, s0, ss0 = _group_moments(Y, np.where(c, 0, -1), 1)
        m1, m0, t, p = welch_from_moments(n1[:, None], s1, ss1, n0[0], s0[0], ss0[0])
        lfc = np.log2(np.expm1(m1) + 1e-9) - np.log2(np.expm1(m0) + 1e-9)
        P, G = m1.shape
        frames.append(
            pd.DataFrame(
                {
                    "arm": arm,
                    "perturbation": np.repeat(names, G),
                    "gene": np.tile(gnames, P),
                    "log2fc": lfc.ravel(),
                    "mean_perturbed": m1.ravel(),
                    "mean_control": np.broadcast_to(m0, (P, G)).ravel(),
                    "statistic": t.ravel(),
                    "p": p.ravel(),
                    "q_within": np.concatenate([bh_fdr(row) for row in p]),
                    "n_perturbed": np.repeat(n1.astype(int), G),
                    "n_control": int(n0[0]),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=DE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["q_screen"] = bh_fdr(out["p"].to_numpy())
    return out[DE_COLUMNS]


def responder_labels(
    de: pd.DataFrame,
    *,
    lfc: float = 0.5,
    fdr: float = 0.05,
    scope: Literal["within", "screen"] = "within",
) -> pd.DataFrame:
    """``de`` with a boolean ``responder`` column: |log2fc| > ``lfc`` and q < ``fdr``, q from
    the stated ``scope`` (``within``: BH over one perturbation's genes; ``screen``: BH over
    the whole screen). The perturbed gene itself is never its own responder."""
    q = de["q_within" if scope == "within" else "q_screen"]
    resp = (de["log2fc"].abs() > lfc) & (q < fdr) & (de["gene"] != de["perturbation"])
    return de.assign(responder=resp.fillna(False).astype(bool))
