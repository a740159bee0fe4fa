"""What the perturbation analyses (family B, and head ablation's readouts) share: the
responder labels of a dataset, computed once per parameter set and cached.

The responder definition is a parameter of every analysis that uses it
(:class:`ResponderParams`), so a run states its thresholds and FDR scope in each
analysis' resolved parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import AnalysisParams
from scfm_audit.analyses._pairs_common import same_cells
from scfm_audit.evaluate._perturbation import ranking_metrics


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


# ------------------------------------------------------- the scorers of families B and C
#: the paper's gene-level features (competitors of the claim)
BASELINES = ("mean", "variance", "detection")
#: gene-level scorers reported beside them: a competitor, and the negative control
EXTRA_GENE_LEVEL = ("responsiveness_loo",)
NEGATIVE_CONTROL = "tf_outdegree"
WILCOXON_H0 = (
    "the per-perturbation differences of AUROC between the two scorers are symmetric "
    "about 0 (perturbations independent)"
)
DELONG_H0 = (
    "equal pooled AUROC of the two scorers over all (perturbation, candidate) rows "
    "(DeLong; treats rows as independent although they share perturbations and genes: "
    "anti-conservative, descriptive)"
)


class ScorerParams(ResponderParams):
    """What perturbation prediction and context dependence share: the responder
    definition, the scorers and how edge scores are read."""

    datasets: list[str] | None = Field(None, description="datasets to use (default: all)")
    attention: list[str] | None = Field(
        None, description="attention edge sources (default: every source with a model)"
    )
    coexpression: str | None = Field(
        "spearman",
        description="co-expression edge source computed on the attention's cells (None: "
        "no co-expression scorer)",
    )
    allow_different_cells: bool = Field(
        False, description="compare with co-expression computed on other cells than attention"
    )
    score_transform: Literal["abs", "raw"] = Field(
        "abs", description="'abs': magnitude of edge scores; 'raw': as is"
    )
    n_boot: int = Field(2000, ge=50, description="bootstrap draws over perturbations")


@dataclass
class PredictionData:
    """Per-perturbation metrics of every scorer for one dataset × attention source.

    ``metrics``: long table (``arm, perturbation, scorer, kind, layer, head, n, n_pos,
    auroc, auprc, recall@k``); ``kind`` ∈ attention / coexpression / gene_level /
    negative_control. ``rows``: the candidate table's rows with the transformed scores;
    ``attention_layers``: (layer, scorer) of the head-mean attention, ascending;
    ``coexpression``: its scorer name or None (with ``coexp_reason``)."""

    dataset: str
    edges: str
    model: str | None
    metrics: pd.DataFrame
    rows: pd.DataFrame
    scores: dict[str, np.ndarray]
    attention_layers: list[tuple[int | None, str]]
    coexpression: str | None
    coexp_reason: str = ""
    excluded: list[dict] = field(default_factory=list)


def attention_sources(ctx, names: list[str] | None) -> list[str]:
    """The attention edge sources: ``names`` or every configured source with a model."""
    if names is not None:
        return list(names)
    return [n for n in ctx.edge_names() if ctx.edge_source(n).model is not None]


def prediction_data(
    ctx,
    ds: str,
    edges: str,
    p: ResponderParams,
    *,
    coexpression: str | None,
    allow_different_cells: bool,
    reference: str | None,
    score_transform: str,
    heads: bool = False,
    top_k: tuple[int, ...] = (10, 50, 100),
    notes: list[str],
) -> PredictionData | None:
    """Score every candidate of every perturbation of ``ds`` (see the module docstring);
    None (with a note) when the source has no score sets on ``ds``."""
    sets = [s for s in ctx.edge_scores(edges, ds) if s.head is None]
    if not sets:
        notes.append(f"{ds}/{edges}: no score sets; not evaluated.")
        return None
    reason = ""
    use = [edges]
    if coexpression is None:
        reason = "no co-expression source configured"
    elif coexpression not in ctx.edge_names():
        reason = f"co-expression source {coexpression!r} is not configured"
    else:
        c_sets = [s for s in ctx.edge_scores(coexpression, ds) if s.head is None]
        why = same_cells(ctx, edges, coexpression, ds) if c_sets else None
        if not c_sets:
            reason = f"co-expression source {coexpression!r} has no score sets on {ds}"
        elif why and not allow_different_cells:
            reason = f"not compared with {coexpression}: {why}"
        else:
            if why:
                notes.append(f"{ds}/{edges}: co-expression on other cells — {why}.")
            use.append(coexpression)
    if reason:
        notes.append(f"{ds}/{edges}: {reason}.")
    cand = candidate_table(ctx, ds, p, edges=use, reference=reference, heads=heads)
    notes.extend(f"{ds}/{edges}: {e}" for e in cand.excluded)
    rows = cand.rows
    if reference is not None and len(rows) and not (rows["tf_outdegree"] > 0).any():
        notes.append(
            f"{ds}/{edges}: reference {reference} has no edge among the candidate genes; "
            "the tf_outdegree negative control is 0 for every candidate."
        )
    scores: dict[str, np.ndarray] = {}
    meta: dict[str, dict] = {}
    for f in (*BASELINES, *EXTRA_GENE_LEVEL):
        scores[f] = rows[f].to_numpy(float)
        meta[f] = {"kind": "gene_level", "layer": None, "head": None}
    if reference is not None:
        scores[NEGATIVE_CONTROL] = rows[NEGATIVE_CONTROL].to_numpy(float)
        meta[NEGATIVE_CONTROL] = {"kind": "negative_control", "layer": None, "head": None}
    att_layers, coexp_col = [], None
    for col, info in cand.scores.items():
        v = rows[col].to_numpy(float)
        scores[col] = np.abs(v) if score_transform == "abs" else v
        kind = "attention" if info["edges"] == edges else "coexpression"
        meta[col] = {"kind": kind, "layer": info.get("layer"), "head": info.get("head")}
        if kind == "attention" and info.get("head") is None:
            att_layers.append((info.get("layer"), col))
        elif kind == "coexpression" and info.get("head") is None:
            coexp_col = col
    att_layers.sort(key=lambda x: -1 if x[0] is None else x[0])
    frames = []
    excluded = []
    for arm, idx in rows.groupby("arm", sort=True).indices.items():
        sub = rows.iloc[idx]
        m = ranking_metrics(
            sub["perturbation"].to_numpy(),
            sub["responder"].to_numpy(bool),
            {k: v[idx] for k, v in scores.items()},
            top_k=tuple(top_k),
        )
        m.insert(0, "arm", arm)
        frames.append(m)
        first = m[m["scorer"] == next(iter(scores))]
        for r in first.itertuples():
            if r.n_pos == 0 or r.n_pos == r.n:
                why = "no responder" if r.n_pos == 0 else "every candidate responds"
                excluded.append(
                    {
                        "dataset": ds,
                        "edges": edges,
                        "arm": arm,
                        "perturbation": r.perturbation,
                        "reason": why,
                    }
                )
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not metrics.empty:
        info = pd.DataFrame.from_dict(meta, orient="index")
        metrics = metrics.join(info, on="scorer")
        metrics.insert(0, "edges", edges)
        metrics.insert(0, "dataset", ds)
    model = sets[0].model
    return PredictionData(
        ds, edges, model, metrics, rows, scores, att_layers, coexp_col, reason, excluded
    )


def auroc_wide(metrics: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Perturbations × scorers AUROC of one arm."""
    sub = metrics[metrics["arm"] == arm]
    return sub.pivot(index="perturbation", columns="scorer", values="auroc")
