"""Design checks: every analysis' parameters against the models' shapes, the datasets'
columns and cells and the references, decided before anything is computed.

Shared by ``scfm-audit validate`` and every run (through
:func:`~scfm_audit.pipeline._validate.input_checks`). The rules are generic, read from
each analysis' pydantic parameters, so a new analysis is covered by naming its fields the
usual way:

* a field whose name says *layer* (``verdict_layer``, ``prediction_layer``,
  ``mlp_layers``, ``embedding_layer``; and an attention source's ``layers`` option) is a
  layer index, checked against the layer count of every model the analysis reads (through
  its ``models`` or its attention sources); an index that would wrap round is refused;
* a field whose name ends in ``_by`` names an ``obs`` column of every dataset it is used on;
* a size grid (``grid``, ``k_scan``, ``ks``, ``top_k``, ``sweep_control_cells``,
  ``sweep_hvgs``) holds positive sizes;
* ``strata: annotation`` needs each dataset's ``cell_state`` column (never silently
  replaced by clustering);
* an analysis of perturbations (it has ``de_method``) needs perturbed cells, controls in
  every modality arm that has perturbations, and at least ``min_perturbations``
  perturbations in some dataset (a single context of ``context_dependence`` is answered
  n/a with its reason, as documented, not refused);
* an analysis of reference recovery (it has ``references``) needs a reference, and
  ``layer_organisation`` an undirected (PPI) and a directed (TF) one;
* a Geneformer model must not see two genes of a dataset as one token (duplicated
  Ensembl ids, which its tokenizer sums).

Each problem is one :class:`~scfm_audit.pipeline._validate.Check` naming the config key,
what the data or model holds, and the fix.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from scfm_audit.pipeline._config import AuditConfig
    from scfm_audit.pipeline._validate import Check

#: list fields holding sizes (cells, clusters, k of top-k): every value must be ≥ 1
SIZE_LISTS = frozenset({"grid", "k_scan", "ks", "top_k", "sweep_control_cells", "sweep_hvgs"})
#: layer fields whose index follows Geneformer's ``emb_layer`` (0 = last, -1 = the one
#: before): the range is [-(n - 1), 0]; every other layer field is a Python index
#: [-n, n - 1] into the source's layers
EMB_LAYER_FIELDS = frozenset({"embedding_layer"})
#: parameter fields naming edge sources
EDGE_FIELDS = ("edges", "attention", "correlation")


def design_checks(
    cfg: AuditConfig,
    params: dict[str, Any],
    data: dict[str, Any],
    refs: dict[str, Any],
    models: dict[str, Any],
) -> list[Check]:
    """Failed checks only (an empty list: the design is consistent)."""
    out: list[Check] = []
    out += _edge_layer_checks(cfg, models)
    for name, p in params.items():
        raw = cfg.analyses.get(name) or {}
        used = _datasets_of(cfg, p)
        out += _layer_checks(cfg, name, p, models)
        out += _column_checks(cfg, name, p, data, used)
        out += _size_checks(name, p)
        out += _strata_checks(cfg, name, p, raw, data, used)
        out += _perturbation_checks(cfg, name, p, data, used)
        out += _reference_checks(cfg, name, p, refs)
    out += _token_collisions(cfg, params, data, models)
    return out


def _check(name: str, detail: str) -> Check:
    from scfm_audit.pipeline._validate import Check

    # the check's name is printed before its detail: say the key once
    return Check(name, False, detail.removeprefix(f"{name}: "))


def _datasets_of(cfg: AuditConfig, p: Any) -> list[str]:
    if "datasets" not in type(p).model_fields:
        return list(cfg.datasets)
    return list(getattr(p, "datasets", None) or cfg.datasets)


def _explicit(p: Any, field: str) -> bool:
    return field in p.model_fields_set


# -- layers ----------------------------------------------------------------------------
def _edge_sources(cfg: AuditConfig, p: Any) -> list[str]:
    """Edge sources an analysis reads (its edge fields, or every source by default)."""
    fields = [f for f in EDGE_FIELDS if f in type(p).model_fields]
    if not fields:
        return []
    out: list[str] = []
    for f in fields:
        v = getattr(p, f)
        names = [v] if isinstance(v, str) else list(v) if v is not None else list(cfg.edges)
        out += [n for n in names if n in cfg.edges and n not in out]
    return out


def _layered_sources(
    cfg: AuditConfig, p: Any, models: dict[str, Any], *, of_sources: bool
) -> dict[str, int]:
    """Layer counts an index of the analysis is checked against. ``of_sources`` (a
    ``verdict_layer``, which indexes the layers a source scored): each attention source's
    ``layers`` option, else its model's layers. Otherwise (an index into the model itself,
    e.g. ``mlp_layers``): the layers of each model its attention sources read. Plus the
    models it names (``models``)."""
    out: dict[str, int] = {}
    for e in _edge_sources(cfg, p):
        m = cfg.edges[e].model
        if m is None or m not in models:
            continue
        layers = cfg.edges[e].options().get("layers")
        if of_sources and isinstance(layers, list | tuple):
            out[f"edge source {e!r}"] = len(layers)
        elif of_sources and isinstance(layers, int):
            out[f"edge source {e!r}"] = 1
        elif of_sources:
            out[f"edge source {e!r} (model {m!r})"] = int(models[m].n_layers)
        else:
            out[f"model {m!r}"] = int(models[m].n_layers)
    if "models" in type(p).model_fields:
        for m in getattr(p, "models", None) or list(cfg.models):
            if m in models:
                out[f"model {m!r}"] = int(models[m].n_layers)
    return out


def _layer_values(value: Any) -> list[Any]:
    if value is None or isinstance(value, str):
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if not isinstance(v, str)]
    return [value]


def _in_range(v: int, n: int, field: str) -> bool:
    if field in EMB_LAYER_FIELDS:
        return -n < v <= 0
    return -n <= v < n


def _range_text(n: int, field: str) -> str:
    if field in EMB_LAYER_FIELDS:
        return f"{-(n - 1)}..0 (0: last layer, -1: the one before)"
    return f"0..{n - 1} (or -{n}..-1 from the last)"


def _layer_checks(cfg: AuditConfig, name: str, p: Any, models: dict[str, Any]) -> list[Check]:
    fields = [f for f in type(p).model_fields if "layer" in f]
    if not fields:
        return []
    out = []
    for f in fields:
        sources = _layered_sources(cfg, p, models, of_sources=f.startswith("verdict"))
        values = _layer_values(getattr(p, f))
        if not values or not sources:
            continue
        for src, n in sources.items():
            bad = [v for v in values if not _in_range(int(v), n, f)]
            if bad:
                out.append(
                    _check(
                        f"analyses.{name}.{f}",
                        (
                            f"analyses.{name}.{f}: {', '.join(map(str, bad))} is out of range for "
                            f"{src}, which has {n} layer{'s' if n != 1 else ''} (valid: "
                            f"{_range_text(n, f)}); an index is never wrapped round. Use a layer "
                            "the model has" + (" or 'best'." if "verdict" in f else ".")
                        ),
                    )
                )
    return out


def _edge_layer_checks(cfg: AuditConfig, models: dict[str, Any]) -> list[Check]:
    out = []
    for e, ec in cfg.edges.items():
        layers = ec.options().get("layers")
        if layers is None or ec.model is None or ec.model not in models:
            continue
        n = int(models[ec.model].n_layers)
        values = layers if isinstance(layers, list | tuple) else [layers]
        if any(isinstance(v, bool) for v in values):
            out.append(
                _check(
                    f"edges.{e}.layers",
                    (
                        f"edges.{e}.layers: got {layers!r}; layers are integers (a boolean would be "
                        "read as layer 1 or 0)."
                    ),
                )
            )
            continue
        bad = [v for v in values if isinstance(v, int) and not -n <= v < n]
        if bad:
            out.append(
                _check(
                    f"edges.{e}.layers",
                    (
                        f"edges.{e}.layers: {', '.join(map(str, bad))} is out of range for model "
                        f"{ec.model!r}, which has {n} layers (valid: {_range_text(n, 'layers')})."
                    ),
                )
            )
    return out


# -- columns, sizes, strata ------------------------------------------------------------
def _obs_columns(adata: Any) -> list[str]:
    return [str(c) for c in adata.obs.columns]


def _did_you_mean(name: str, options: list[str]) -> str:
    lower = {o.lower(): o for o in options}
    close = [lower[name.lower()]] if name.lower() in lower else []
    close += [
        c for c in difflib.get_close_matches(name, options, n=3, cutoff=0.5) if c not in close
    ]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _column_checks(
    cfg: AuditConfig, name: str, p: Any, data: dict[str, Any], used: list[str]
) -> list[Check]:
    out = []
    for f in type(p).model_fields:
        if not f.endswith("_by"):
            continue
        col = getattr(p, f)
        if not isinstance(col, str):
            continue
        for ds in used:
            if ds not in data or col in data[ds].obs.columns:
                continue
            cols = _obs_columns(data[ds])
            out.append(
                _check(
                    f"analyses.{name}.{f}",
                    (
                        f"analyses.{name}.{f}: column {col!r} is not in dataset {ds!r}'s obs."
                        f"{_did_you_mean(col, cols)} Its columns: {', '.join(cols) or '(none)'}."
                    ),
                )
            )
    return out


def _size_checks(name: str, p: Any) -> list[Check]:
    out = []
    for f in SIZE_LISTS & set(type(p).model_fields):
        v = getattr(p, f)
        if not isinstance(v, list | tuple):
            continue
        if len(v) == 0:
            out.append(
                _check(
                    f"analyses.{name}.{f}",
                    "empty; give at least one size (or leave the key out for the default).",
                )
            )
            continue
        bad = [x for x in v if isinstance(x, int | float) and x < 1]
        if bad:
            out.append(
                _check(
                    f"analyses.{name}.{f}",
                    (
                        f"analyses.{name}.{f}: {', '.join(map(str, bad))} — sizes are counts (of "
                        f"cells, clusters or top-ranked items) and must be at least 1."
                    ),
                )
            )
    return out


def _strata_checks(
    cfg: AuditConfig, name: str, p: Any, raw: dict[str, Any], data: dict[str, Any], used: list[str]
) -> list[Check]:
    if getattr(p, "strata", None) != "annotation" or "strata" not in raw:
        return []  # only a pre-declared choice (scaling's default documents its fallback)
    out = []
    for ds in used:
        col = cfg.datasets[ds].cell_state if ds in cfg.datasets else None
        if col is not None:
            continue  # a named column that is missing is reported by the dataset check
        cols = _obs_columns(data[ds]) if ds in data else []
        hint = [
            c
            for c in cols
            if any(k in c.lower() for k in ("state", "type", "cluster", "leiden", "louvain"))
        ]
        out.append(
            _check(
                f"analyses.{name}.strata",
                (
                    f"'annotation' stratifies by the dataset's cell-state column, but dataset {ds!r} "
                    f"names none (datasets.{ds}.cell_state is not set)"
                    + (f"; its obs has {', '.join(repr(h) for h in hint)}" if hint else "")
                    + ". Set datasets."
                    + ds
                    + ".cell_state, or choose another strata; a "
                    "pre-declared stratification is never replaced by clustering."
                ),
            )
        )
    return out


# -- perturbations ---------------------------------------------------------------------
def _arms(adata: Any, spec: Any) -> pd.DataFrame:
    """Per modality arm: perturbed cells, perturbations and control cells."""
    from scfm_audit.data._dataset import control_mask

    obs = adata.obs
    labels = obs[spec.perturbation].astype(object)
    ctrl = control_mask(adata, spec)
    known = labels.notna().to_numpy()
    if spec.modality is not None and spec.modality in obs:
        arm = obs[spec.modality].astype(str).to_numpy()
    else:
        arm = np.full(adata.n_obs, "all", dtype=object)
    rows = []
    for a in pd.unique(arm):
        in_arm = arm == a
        pert = in_arm & ~ctrl & known
        rows.append(
            {
                "arm": str(a),
                "perturbed": int(pert.sum()),
                "perturbations": int(labels[pert].astype(str).nunique()),
                "controls": int((in_arm & ctrl).sum()),
            }
        )
    return pd.DataFrame(rows, columns=["arm", "perturbed", "perturbations", "controls"])


def _perturbation_checks(
    cfg: AuditConfig, name: str, p: Any, data: dict[str, Any], used: list[str]
) -> list[Check]:
    if "de_method" not in type(p).model_fields:
        return []
    from scfm_audit.data._dataset import DatasetSpec

    out = []
    explicit = _explicit(p, "datasets") and getattr(p, "datasets", None)
    usable: dict[str, pd.DataFrame] = {}
    for ds in used:
        if ds not in data:
            continue
        d = cfg.datasets[ds]
        if d.perturbation is None or d.perturbation not in data[ds].obs:
            if explicit:
                out.append(
                    _check(
                        f"analyses.{name}.datasets",
                        (
                            f"analyses.{name} analyses perturbations, but dataset {ds!r} names no "
                            f"perturbation column (datasets.{ds}.perturbation)."
                        ),
                    )
                )
            continue
        control = tuple(d.control) if isinstance(d.control, list) else d.control
        spec = DatasetSpec(perturbation=d.perturbation, control=control, modality=d.modality)
        arms = _arms(data[ds], spec)
        if arms["perturbed"].sum() == 0:
            if explicit:
                out.append(
                    _check(
                        f"analyses.{name} on {ds}",
                        (
                            f"dataset {ds!r} holds only control cells ({data[ds].n_obs} cells labelled "
                            f"{control!r} in obs[{d.perturbation!r}]): analysis {name!r} compares "
                            "perturbed cells with controls. Use a dataset with perturbations, or "
                            f"leave {ds!r} out of analyses.{name}.datasets."
                        ),
                    )
                )
            continue
        orphan = arms[(arms["perturbed"] > 0) & (arms["controls"] == 0)]
        ctrl_arms = ", ".join(
            f"{a!r} ({n})" for a, n in zip(arms["arm"], arms["controls"], strict=True) if n
        )
        for r in orphan.itertuples():
            out.append(
                _check(
                    f"analyses.{name} on {ds}",
                    (
                        f"dataset {ds!r}: modality arm {r.arm!r} has {r.perturbed} perturbed cells "
                        f"({r.perturbations} perturbation{'s' if r.perturbations != 1 else ''}) but no "
                        f"control cell of its own (the controls' obs[{d.modality!r}]: "
                        f"{ctrl_arms or 'none'}; 'nan' controls are not shared between arms); each arm "
                        "is compared with its own controls, so this arm would drop out of every "
                        f"result. Label that arm's controls {r.arm!r} in obs[{d.modality!r}], or "
                        "remove the arm's cells."
                    ),
                )
            )
        usable[ds] = arms[(arms["perturbed"] > 0) & (arms["controls"] > 0)]
    if used and not usable and not explicit and not out and all(ds in data for ds in used):
        out.append(
            _check(
                f"analyses.{name}",
                (
                    f"analysis {name!r} compares perturbed cells with controls, but no dataset it "
                    f"uses ({', '.join(used)}) has both (a perturbation column with perturbed and "
                    "control cells). Add a Perturb-seq dataset or remove the analysis."
                ),
            )
        )
    k = getattr(p, "min_perturbations", None)
    if isinstance(k, int) and usable:
        most = {
            ds: int(arms["perturbations"].max()) if len(arms) else 0 for ds, arms in usable.items()
        }
        if max(most.values()) < k:  # some datasets may fall short: they are left out, stated
            shown = ", ".join(f"{ds}: {n}" for ds, n in most.items())
            out.append(
                _check(
                    f"analyses.{name}",
                    (
                        f"analyses.{name}.min_perturbations={k}, but no dataset it uses has that many "
                        f"perturbations in one arm even before responder filtering ({shown}), so "
                        "nothing could be evaluated. Use a larger screen or lower min_perturbations."
                    ),
                )
            )
    return out


# -- references ------------------------------------------------------------------------
def _reference_checks(cfg: AuditConfig, name: str, p: Any, refs: dict[str, Any]) -> list[Check]:
    fields = type(p).model_fields
    out = []
    if "references" in fields and not (getattr(p, "references", None) or cfg.references):
        out.append(
            _check(
                f"analyses.{name}",
                (
                    f"analysis {name!r} scores edges against reference networks and the config "
                    "defines none; add one under `references` (e.g. {format: trrust, path: ...})."
                ),
            )
        )
    if "ppi_references" in fields and "tf_references" in fields:
        ppi = p.ppi_references or [n for n, r in refs.items() if not r.directed]
        tf = p.tf_references or [n for n, r in refs.items() if r.directed]
        wrong = [n for n in (p.ppi_references or []) if n in refs and refs[n].directed]
        wrong += [n for n in (p.tf_references or []) if n in refs and not refs[n].directed]
        missing = [
            w for w, v in (("an undirected (PPI-type)", ppi), ("a directed (TF)", tf)) if not v
        ]
        if missing and len(refs) == len(cfg.references):  # unloadable ones reported already
            out.append(
                _check(
                    f"analyses.{name}",
                    (
                        f"analysis {name!r} compares an undirected (PPI-type) with a directed (TF) "
                        f"reference and the config has no {' and no '.join(m.split(' ', 1)[1] for m in missing)} one "
                        f"(undirected: {', '.join(ppi) or 'none'}; directed: {', '.join(tf) or 'none'}). "
                        "Add one (format table with directed: false for a PPI list, or string)."
                    ),
                )
            )
        for n in wrong:
            kind = "directed" if refs[n].directed else "undirected"
            out.append(
                _check(
                    f"analyses.{name}",
                    (
                        f"analyses.{name}: reference {n!r} is {kind}, listed under the other kind "
                        "(ppi_references: undirected; tf_references: directed)."
                    ),
                )
            )
    return out


# -- Geneformer tokens -----------------------------------------------------------------
def _token_collisions(
    cfg: AuditConfig, params: dict[str, Any], data: dict[str, Any], models: dict[str, Any]
) -> list[Check]:
    """Two genes of a dataset that a Geneformer model reads as one token (duplicated
    Ensembl ids: its tokenizer sums them, and every score of that token would be credited
    to one of the two genes)."""
    pairs: set[tuple[str, str]] = set()
    for p in params.values():
        used = _datasets_of(cfg, p)
        named = {m for e in _edge_sources(cfg, p) if (m := cfg.edges[e].model) is not None}
        if "models" in type(p).model_fields:
            named |= set(getattr(p, "models", None) or cfg.models)
        pairs |= {(m, ds) for m in named for ds in used}
    out = []
    for m, ds in sorted(pairs):
        if m not in models or ds not in data or models[m].family != "geneformer":
            continue
        plan = getattr(models[m], "_gene_plan", None)
        if plan is None:
            continue
        try:
            groups = plan(data[ds], cfg.datasets[ds].gene_id_column).groups
        except Exception:  # the model's own vocabulary check reports unreadable ids
            continue
        if not groups:
            continue
        names = data[ds].var_names
        shown = "; ".join(" + ".join(map(str, names[g])) for g in groups[:3])
        out.append(
            _check(
                f"model {m} on {ds}",
                (
                    f"dataset {ds!r}: {len(groups)} group(s) of genes share an Ensembl id and so one "
                    f"Geneformer token of model {m!r} ({shown}"
                    + (" ..." if len(groups) > 3 else "")
                    + "): the tokenizer would sum their counts "
                    "and every attention score of the token would be credited to the first gene "
                    "only. Aggregate or drop the duplicated genes in the data (one row of var per "
                    "Ensembl id)."
                ),
            )
        )
    return out
