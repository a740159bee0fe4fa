"""What the perturbation analyses (family B, and head ablation's readouts) share: the
responder labels of a dataset, computed once per parameter set and cached.

The responder definition is a parameter of every analysis that uses it
(:class:`ResponderParams`), so a run states its thresholds and FDR scope in each
analysis' resolved parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import AnalysisParams


class ResponderParams(AnalysisParams):
    """Responder definition shared by the perturbation analyses (paper defaults)."""

    lfc: float = Field(0.5, ge=0, description="responder: |log2 fold change| above this")
    fdr: float = Field(0.05, gt=0, lt=1, description="responder: BH q below this")
    fdr_scope: Literal["within", "screen"] = Field(
        "within",
        description="BH over the genes of one perturbation ('within', the paper's scope) or "
        "over every (perturbation, gene) of the screen ('screen')",
    )
    de_method: Literal["welch", "wilcoxon"] = Field(
        "welch",
        description="DE test on log-normalised data: 'welch' (the paper's) or 'wilcoxon' "
        "(Mann–Whitney, scanpy's tie handling)",
    )


def dataset_responders(ctx, dataset: str, p: ResponderParams) -> pd.DataFrame:
    """DE of every perturbation of ``dataset`` against its arm's controls with the
    ``responder`` column (see :mod:`scfm_audit.evaluate._de`); cached per parameters."""
    from scfm_audit.evaluate._de import differential_expression, responder_labels

    def compute() -> pd.DataFrame:
        de = differential_expression(
            ctx.dataset(dataset),
            ctx.dataset_spec(dataset),
            method=p.de_method,
            progress=ctx.progress,
        )
        return responder_labels(de, lfc=p.lfc, fdr=p.fdr, scope=p.fdr_scope)

    key = {
        "what": "responders",
        "dataset": ctx.dataset_fingerprint(dataset),
        "params": {k: getattr(p, k) for k in ResponderParams.model_fields},
    }
    # the same for every analysis that asks: computed once per run, not once per analysis
    # (and per edge source) — at screen scale one DE pass is 40 s and a 16 M-row table
    return ctx.cached(key, compute, kind="responders", shared=True)


#: Gene-level features of a candidate (on the arm's control cells), the paper's three.
GENE_FEATURES = ("mean", "variance", "detection")


@dataclass
class CandidateTable:
    """One row per (arm, perturbation, candidate gene): the unit of perturbation prediction
    and of incremental value.

    ``rows`` columns: ``arm, perturbation, candidate, responder, log2fc`` (observed), the
    candidate's gene-level features :data:`GENE_FEATURES` on the arm's control cells,
    ``responsiveness_loo`` (fraction of the arm's *other* perturbations in which the
    candidate responds: leave-one-perturbation-out, so it never sees the row's own label;
    cross-validation must recompute it on training folds, see :func:`responsiveness`),
    ``tf_outdegree`` (the candidate's out-degree in ``reference``; NaN without one: a
    negative control, never a competitor) and one column per edge score set (raw scores
    of the edge perturbed gene → candidate, e.g. attention from the perturbed gene's query
    token to the candidate's key token). ``scores`` maps each score column to its
    provenance (``edges``, ``label``, ``method``, ``model``, ``layer``, ``head``).
    ``excluded`` lists perturbations left out and why (e.g. the perturbed gene is not
    among the edge sources' genes: not in a model's vocabulary).
    """

    rows: pd.DataFrame
    scores: dict[str, dict]
    excluded: list[str]
    genes: pd.Index


def responsiveness(rows: pd.DataFrame, train: np.ndarray | None = None) -> np.ndarray:
    """Per row, the fraction of the *other* perturbations of the same arm in which the
    row's candidate responds, counting only training rows (``train`` boolean mask; all
    rows when None). A row never contributes to its own value."""
    train = np.ones(len(rows), bool) if train is None else np.asarray(train, bool)
    key = rows["arm"].astype(str) + "\x00" + rows["candidate"].astype(str)
    codes, _ = pd.factorize(key)
    resp = rows["responder"].to_numpy(bool)
    hits = np.bincount(codes, weights=(resp & train).astype(float))
    n = np.bincount(codes, weights=train.astype(float))
    own_hit = (resp & train).astype(float)
    own_n = train.astype(float)
    denom = n[codes] - own_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (hits[codes] - own_hit) / denom, np.nan)


def candidate_table(
    ctx,
    dataset: str,
    p: ResponderParams,
    *,
    edges: list[str],
    reference: str | None = None,
    heads: bool = False,
) -> CandidateTable:
    """The (arm, perturbation, candidate) table of ``dataset`` for edge sources ``edges``
    (head-pooled score sets; per-head sets too when ``heads``). Candidates: the genes every
    edge source scores (and the dataset measures), minus the perturbed gene itself."""
    from scfm_audit.data._dataset import control_mask
    from scfm_audit.edges._gene_level import gene_statistics

    de = dataset_responders(ctx, dataset, p)
    sets = []
    for en in edges:
        for es in ctx.edge_scores(en, dataset):
            if es.head is None or heads:
                sets.append((en, es))
    adata = ctx.dataset(dataset)
    spec = ctx.dataset_spec(dataset)
    genes = pd.Index(adata.var_names.astype(str))
    for _, es in sets:
        genes = genes.intersection(es.genes, sort=False)
    excluded = []
    pert_all = pd.Index(de["perturbation"].unique().astype(str))
    missing = pert_all.difference(genes)
    if len(missing):
        excluded.append(
            f"{len(missing)} perturbed gene(s) not among the scored genes (not measured or not "
            f"in a model's vocabulary): {', '.join(missing[:10])}"
            + (" …" if len(missing) > 10 else "")
        )
    de = de[de["perturbation"].isin(genes) & de["gene"].isin(genes)]
    de = de[de["gene"] != de["perturbation"]]
    ctrl = control_mask(adata, spec)
    if spec.modality is not None and spec.modality in adata.obs:
        arm_of = adata.obs[spec.modality].astype(str).to_numpy()
    else:
        arm_of = np.full(adata.n_obs, "all", dtype=object)
    frames = []
    for arm, sub in de.groupby("arm", sort=True):
        cells = np.flatnonzero(ctrl & (arm_of == arm))
        view = adata[cells]
        view = view.to_memory() if getattr(view, "isbacked", False) else view
        stats = gene_statistics(view, counts=spec.counts, genes=list(genes))
        part = pd.DataFrame(
            {
                "arm": str(arm),
                "perturbation": sub["perturbation"].astype(str).to_numpy(),
                "candidate": sub["gene"].astype(str).to_numpy(),
                "responder": sub["responder"].to_numpy(bool),
                "log2fc": sub["log2fc"].to_numpy(float),
            }
        )
        for f in GENE_FEATURES:
            part[f] = stats[f].reindex(part["candidate"]).to_numpy(float)
        frames.append(part)
    rows = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            columns=["arm", "perturbation", "candidate", "responder", "log2fc", *GENE_FEATURES]
        )
    )
    rows["responsiveness_loo"] = responsiveness(rows) if len(rows) else []
    if reference is not None:
        ref = ctx.reference(reference)
        e = ref.edges
        e = e[e["source"].isin(genes) & e["target"].isin(genes)]
        deg = e.groupby("source").size()
        rows["tf_outdegree"] = deg.reindex(rows["candidate"]).fillna(0).to_numpy(float)
    else:
        rows["tf_outdegree"] = np.nan
    scores = {}
    for en, es in sets:
        col = f"{en}|{es.label}"
        rows[col] = es.lookup(rows["perturbation"].to_numpy(), rows["candidate"].to_numpy())
        scores[col] = {"edges": en, **es.meta(), "label": es.label}
    return CandidateTable(rows=rows, scores=scores, excluded=excluded, genes=genes)
