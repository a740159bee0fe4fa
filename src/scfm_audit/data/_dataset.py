"""Load and validate Perturb-seq / atlas AnnData datasets.

A dataset is an AnnData with raw counts (``X`` or a named layer), gene symbols in
``var_names`` and, in ``obs``, the perturbation target, an optional modality
(CRISPRi/CRISPRa), cell state and batch. :class:`DatasetSpec` names those columns;
:func:`validate_dataset` checks them and raises one :class:`DatasetError` that lists
every problem found, each with its fix.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

UNS_KEY = "scfm_audit"
MODALITIES = ("CRISPRi", "CRISPRa")
#: Stored values read per chunk by the (complete) count check.
CHUNK_VALUES = 4_000_000
#: Non-integer data whose maximum is below this looks log-normalised.
LOG_MAX = 30.0

_OBS_FIELDS = ("perturbation", "modality", "cell_state", "batch")


class DatasetError(ValueError):
    """A problem with user data; the message names each problem and its fix.

    ``problems`` holds the individual messages when several were found at once.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]


@dataclass(frozen=True)
class DatasetSpec:
    """Where things are in a dataset.

    Parameters
    ----------
    counts
        ``"X"`` or the name of the layer holding raw counts.
    perturbation
        ``obs`` column with the targeted gene per cell (None for atlases).
    control
        Control label(s) in the perturbation column; a string or a list/tuple of strings.
    modality
        ``obs`` column holding ``CRISPRi`` / ``CRISPRa`` (case-insensitive).
    cell_state
        ``obs`` column with cell state / cell type.
    batch
        ``obs`` column with batch / donor.
    gene_id_column
        ``var`` column with Ensembl gene ids.
    require_counts
        Require non-negative integer counts (reject normalised or log data).
    """

    counts: str = "X"
    perturbation: str | None = None
    control: str | tuple[str, ...] = "non-targeting"
    modality: str | None = None
    cell_state: str | None = None
    batch: str | None = None
    gene_id_column: str | None = None
    require_counts: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.counts, str) or not self.counts:
            raise DatasetError(
                f"DatasetSpec.counts must be 'X' or a layer name, got {self.counts!r}."
            )
        control = self.control
        if isinstance(control, str):
            labels: tuple[str, ...] = (control,)
        elif isinstance(control, Iterable):
            labels = tuple(str(c) for c in control)
        else:
            raise DatasetError(
                f"DatasetSpec.control must be a label or a list of labels, got {control!r}."
            )
        if not labels:
            raise DatasetError(
                "DatasetSpec.control is empty; give the control label(s), e.g. 'non-targeting'."
            )
        if not isinstance(control, str):
            object.__setattr__(self, "control", labels)
        for fld in (*_OBS_FIELDS, "gene_id_column"):
            value = getattr(self, fld)
            if value is not None and not isinstance(value, str):
                raise DatasetError(
                    f"DatasetSpec.{fld} must be a column name (str) or None, got {value!r}."
                )
        object.__setattr__(self, "require_counts", bool(self.require_counts))

    @property
    def controls(self) -> tuple[str, ...]:
        """The control labels as a tuple."""
        return (self.control,) if isinstance(self.control, str) else tuple(self.control)

    def to_dict(self) -> dict[str, Any]:
        """A dict storable in ``adata.uns`` (None fields left out, control as a list)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        """Inverse of :meth:`to_dict`; also accepts values read back from ``.h5ad``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DatasetError(
                f"Unknown DatasetSpec field(s) {unknown}; valid fields are {sorted(names)}."
            )
        kw: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, np.ndarray):
                value = [str(v) for v in value.tolist()]
            elif isinstance(value, np.generic):
                value = value.item()
            if key == "control" and isinstance(value, list):
                value = value[0] if len(value) == 1 else tuple(value)
            kw[key] = value
        return cls(**kw)


# ---------------------------------------------------------------------------------------
# loading


def load_dataset(
    path: str | Path | ad.AnnData,
    spec: DatasetSpec | None = None,
    *,
    backed: bool = False,
    name: str | None = None,
) -> ad.AnnData:
    """Read an ``.h5ad`` file, validate it and record the spec.

    Parameters
    ----------
    path
        Path to an ``.h5ad`` file (an in-memory AnnData is also accepted and annotated
        in place).
    spec
        Where counts and annotations live; default ``DatasetSpec()``.
    backed
        Open ``X`` read-only on disk (``backed="r"``) instead of loading it.
    name
        Dataset name for reports; default the file stem.

    Returns
    -------
    The AnnData, with ``uns["scfm_audit"] = {"spec": spec.to_dict(), "name": name}`` and
    the modality column (if any) normalised to ``CRISPRi`` / ``CRISPRa``.
    """
    spec = spec if spec is not None else DatasetSpec()
    if isinstance(path, ad.AnnData):
        adata = path
        name = name or "dataset"
    else:
        p = Path(path)
        if p.is_dir():
            raise DatasetError(
                f"Dataset path {str(p)!r} is a folder, not a file; give the .h5ad file inside it."
            )
        if p.suffix.lower() != ".h5ad":
            raise DatasetError(
                f"{str(p)!r} is not an .h5ad file; convert it to AnnData first "
                "(e.g. scanpy.read_10x_mtx(...).write_h5ad('data.h5ad'))."
            )
        if not p.is_file():
            raise DatasetError(f"Dataset file {str(p)!r} does not exist; check the path.")
        try:
            adata = ad.read_h5ad(p, backed="r" if backed else None)
        except Exception as err:  # h5py / anndata raise many types on corrupt files
            raise DatasetError(
                f"Could not read {str(p)!r} as AnnData ({type(err).__name__}: {err}); "
                "check that the file is a complete .h5ad written by anndata."
            ) from err
        name = name or p.stem
    validate_dataset(adata, spec)
    if spec.modality is not None:
        _normalise_modality(adata, spec.modality)
    uns = adata.uns.get(UNS_KEY)
    uns = dict(uns) if isinstance(uns, dict) else {}
    uns["spec"] = spec.to_dict()
    uns["name"] = name
    adata.uns[UNS_KEY] = uns
    return adata


def get_spec(adata: ad.AnnData) -> DatasetSpec:
    """The :class:`DatasetSpec` recorded by :func:`load_dataset` in ``adata.uns``."""
    stored = adata.uns.get(UNS_KEY, {})
    if not isinstance(stored, dict) or "spec" not in stored:
        raise DatasetError(
            "This AnnData carries no dataset spec (uns['scfm_audit']['spec']); load it with "
            "scfm_audit.data.load_dataset(path, DatasetSpec(...)) or pass spec= explicitly."
        )
    return DatasetSpec.from_dict(dict(stored["spec"]))


# ---------------------------------------------------------------------------------------
# validation


def validate_dataset(adata: ad.AnnData, spec: DatasetSpec | None = None) -> None:
    """Check ``adata`` against ``spec`` (default: the recorded spec); return None.

    Raises one :class:`DatasetError` listing every problem (with its fix): empty data,
    missing counts layer or columns, duplicated genes, missing/NaN/empty perturbation
    labels, no control cells, bad modality values, negative / non-finite / non-integer /
    log-normalised counts. Every stored count value is checked, in one streamed pass
    (:func:`count_summary`; read in chunks when backed).
    """
    spec = spec if spec is not None else get_spec(adata)
    problems: list[str] = []
    n_obs, n_vars = adata.n_obs, adata.n_vars
    if n_obs == 0 or n_vars == 0:
        raise DatasetError(
            f"The dataset has {n_obs} cells and {n_vars} genes; it needs at least one of "
            "each. Check the file or the filtering that produced it."
        )

    counts_ok = True
    if spec.counts != "X" and spec.counts not in adata.layers:
        counts_ok = False
        layers = list(adata.layers.keys())
        problems.append(
            f"Counts layer {spec.counts!r} not found; available layers: "
            f"{layers or '(none)'}{_suggest(spec.counts, layers)}. Set DatasetSpec(counts=...) "
            "to one of them, or counts='X' if X holds the raw counts."
        )

    present: dict[str, bool] = {}
    obs_cols = [str(c) for c in adata.obs.columns]
    for fld in _OBS_FIELDS:
        col = getattr(spec, fld)
        if col is None:
            continue
        present[fld] = col in adata.obs.columns
        if not present[fld]:
            problems.append(
                f"{fld.replace('_', ' ').capitalize()} column {col!r} not found in obs; "
                f"available columns: {obs_cols or '(none)'}{_suggest(col, obs_cols)}. "
                f"Set DatasetSpec({fld}=...) to the right column."
            )
    if spec.gene_id_column is not None and spec.gene_id_column not in adata.var.columns:
        var_cols = [str(c) for c in adata.var.columns]
        problems.append(
            f"Gene id column {spec.gene_id_column!r} not found in var; available columns: "
            f"{var_cols or '(none)'}{_suggest(spec.gene_id_column, var_cols)}. "
            "Set DatasetSpec(gene_id_column=...) to the var column with Ensembl ids."
        )

    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        shown = ", ".join(repr(g) for g in pd.unique(dup)[:5])
        problems.append(
            f"{len(dup)} duplicated gene name(s) in var_names (e.g. {shown}). Make them "
            "unique with adata.var_names_make_unique() or aggregate the duplicated genes."
        )

    if spec.perturbation is not None and present.get("perturbation"):
        problems.extend(_check_perturbation(adata.obs[spec.perturbation], spec))
    if spec.modality is not None and present.get("modality"):
        ctrl = (
            control_mask(adata, spec)
            if spec.perturbation is not None and present.get("perturbation")
            else np.zeros(n_obs, dtype=bool)
        )
        problems.extend(_check_modality(adata.obs[spec.modality], ctrl, spec.modality))

    if counts_ok:
        problems.extend(_check_counts(adata, spec))

    if problems:
        if len(problems) == 1:
            raise DatasetError(problems[0], problems)
        body = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
        raise DatasetError(f"The dataset has {len(problems)} problems:\n{body}", problems)


def _suggest(name: str, options: Sequence[str]) -> str:
    lower = {o.lower(): o for o in options}
    close = [lower[name.lower()]] if name.lower() in lower else []
    close += [c for c in difflib.get_close_matches(name, list(options), n=3) if c not in close]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _top_values(col: pd.Series, n: int = 5) -> str:
    vc = col.value_counts(dropna=True).head(n)
    return ", ".join(f"{k!r} ({v})" for k, v in vc.items()) or "(none)"


def _check_perturbation(col: pd.Series, spec: DatasetSpec) -> list[str]:
    problems: list[str] = []
    name = spec.perturbation
    n_nan = int(col.isna().sum())
    if n_nan:
        problems.append(
            f"{n_nan} cell(s) have no label (NaN) in obs[{name!r}]. Label them (e.g. with the "
            f"control label) or drop them: adata = adata[adata.obs[{name!r}].notna()].copy()."
        )
    blank = col.dropna().astype(str).str.strip() == ""
    if blank.any():
        problems.append(
            f"{int(blank.sum())} cell(s) have an empty label ('') in obs[{name!r}], which "
            "would form a perturbation group without a target. Label them (e.g. with the "
            "control label) or drop them."
        )
    if isinstance(col.dtype, pd.CategoricalDtype):
        counts = col.value_counts(dropna=True)
        empty = [str(c) for c in counts.index[counts.to_numpy() == 0]]
        if empty:
            shown = ", ".join(repr(e) for e in empty[:5])
            problems.append(
                f"{len(empty)} perturbation categor(y/ies) in obs[{name!r}] have zero cells "
                f"(e.g. {shown}). Drop them with adata.obs[{name!r}] = "
                f"adata.obs[{name!r}].cat.remove_unused_categories()."
            )
    controls = spec.controls
    if not col.astype(object).isin(controls).any():
        values = [str(v) for v in col.dropna().unique()]
        lower = [v for v in values if v.lower() in {c.lower() for c in controls}]
        close = lower + [
            m
            for c in controls
            for m in difflib.get_close_matches(c, values, n=3, cutoff=0.5)
            if m not in lower
        ]
        hint = f" Close labels: {', '.join(repr(c) for c in close[:3])}." if close else ""
        looked = controls[0] if len(controls) == 1 else list(controls)
        problems.append(
            f"No control cells: no cell has label {looked!r} in obs[{name!r}]. Most common "
            f"values: {_top_values(col)}.{hint} Set DatasetSpec(control=...) to the control "
            "label(s) used in this dataset."
        )
    return problems


def _check_modality(col: pd.Series, is_control: np.ndarray, name: str) -> list[str]:
    values = col.astype(object)
    missing = values.isna().to_numpy()
    bad_missing = int((missing & ~is_control).sum())
    canon = {m.lower(): m for m in MODALITIES}
    lowered = values[~missing].astype(str).str.strip().str.lower()
    bad = sorted(set(values[~missing][~lowered.isin(canon)].astype(str)))
    problems = []
    if bad or bad_missing:
        what = []
        if bad:
            what.append(f"unknown value(s) {bad[:5]}")
        if bad_missing:
            what.append(f"{bad_missing} perturbed cell(s) without a value (NaN)")
        problems.append(
            f"Modality column obs[{name!r}] has {' and '.join(what)}; allowed values are "
            f"'CRISPRi' and 'CRISPRa' (case-insensitive; NaN only for control cells). "
            "Recode the column to these labels."
        )
    return problems


def _normalise_modality(adata: ad.AnnData, name: str) -> None:
    col = adata.obs[name].astype(object)
    canon = {m.lower(): m for m in MODALITIES}
    norm = col.map(lambda v: canon.get(str(v).strip().lower()) if pd.notna(v) else np.nan)
    adata.obs[name] = pd.Categorical(norm, categories=[m for m in MODALITIES if (norm == m).any()])


def _stored_chunks(X: Any, n_obs: int, n_vars: int) -> Iterator[np.ndarray]:
    """Every stored value of a counts matrix, as 1-D chunks of about ``CHUNK_VALUES``:
    the ``data`` array of a sparse matrix (in memory, or read from the file in slices when
    backed), row blocks of a dense one (an HDF5 dataset is read block by block)."""
    group = getattr(X, "group", None)  # a backed sparse matrix (anndata's CSR/CSC dataset)
    data = group["data"] if group is not None and "data" in group else None
    if data is None and sp.issparse(X):
        data = X.data
    if data is not None:
        for start in range(0, int(data.shape[0]), CHUNK_VALUES):
            yield np.asarray(data[start : start + CHUNK_VALUES])
        return
    rows = max(1, CHUNK_VALUES // max(n_vars, 1))
    for start in range(0, n_obs, rows):
        yield np.asarray(X[start : start + rows]).reshape(-1)


@dataclass
class CountSummary:
    """What one streamed pass over every stored value of a counts matrix found."""

    n_values: int = 0
    n_nan: int = 0
    n_inf: int = 0
    n_negative: int = 0
    n_non_integer: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    example_non_integer: float | None = None
    dtype: str = ""
    seconds: float = 0.0


def count_summary(adata: ad.AnnData, spec: DatasetSpec | None = None) -> CountSummary:
    """One streamed check of **every** stored value of the counts (``X`` or the spec's
    layer; in memory or backed, read in chunks so memory stays flat): NaN, inf, negative
    and non-integer values, min and max. :func:`validate_dataset` (and so ``validate``,
    ``run`` and ``load_dataset``) reports from it."""
    import time

    spec = spec if spec is not None else get_spec(adata)
    X = adata.X if spec.counts == "X" else adata.layers[spec.counts]
    out = CountSummary()
    if X is None:
        return out
    t0 = time.perf_counter()
    out.dtype = str(getattr(X, "dtype", ""))
    for vals in _stored_chunks(X, adata.n_obs, adata.n_vars):
        if vals.size == 0:
            continue
        if not np.issubdtype(vals.dtype, np.number) or np.issubdtype(
            vals.dtype, np.complexfloating
        ):
            out.dtype = str(vals.dtype)
            out.n_values = -1  # not numbers: reported as a dtype problem
            return out
        out.n_values += vals.size
        if np.issubdtype(vals.dtype, np.floating):
            finite = np.isfinite(vals)
            if not finite.all():
                nan = int(np.isnan(vals).sum())
                out.n_nan += nan
                out.n_inf += int(vals.size - finite.sum()) - nan
                vals = vals[finite]
            if vals.size:
                frac = vals != np.round(vals)
                k = int(np.count_nonzero(frac))
                if k:
                    out.n_non_integer += k
                    if out.example_non_integer is None:
                        out.example_non_integer = float(vals[frac][0])
        if vals.size:
            out.n_negative += int(np.count_nonzero(vals < 0))
            out.min = min(out.min, float(vals.min()))
            out.max = max(out.max, float(vals.max()))
    out.seconds = time.perf_counter() - t0
    return out


def _check_counts(adata: ad.AnnData, spec: DatasetSpec) -> list[str]:
    where = "X" if spec.counts == "X" else f"layer {spec.counts!r}"
    s = count_summary(adata, spec)
    if s.n_values < 0:
        return [
            f"Counts in {where} have dtype {s.dtype}, not a real number type; store the "
            "raw counts as integers or floats."
        ]
    if s.n_values == 0 and s.n_nan == 0 and s.n_inf == 0:
        return []
    problems = []
    if s.n_nan or s.n_inf:
        found = ", ".join(f"{n} {k}" for n, k in ((s.n_nan, "NaN"), (s.n_inf, "inf")) if n)
        problems.append(
            f"Counts in {where} contain non-finite values ({found} among all "
            f"{s.n_values} stored values). Replace them (e.g. with 0) or "
            "point DatasetSpec(counts=...) at the raw-count layer."
        )
    if s.n_negative:
        problems.append(
            f"Counts in {where} are negative (min {s.min:.4g}) in {s.n_negative} value(s); "
            "raw counts are >= 0. This looks scaled or batch-corrected; point "
            "DatasetSpec(counts=...) at the raw-count layer."
        )
    if spec.require_counts and s.n_non_integer:
        example = s.example_non_integer
        if s.max < LOG_MAX:
            problems.append(
                f"Counts in {where} are non-integer with max {s.max:.3g} (e.g. {example:.4g}): "
                "the data looks log-normalised; point `counts` at the raw-count layer "
                "(DatasetSpec(counts='counts') or similar)."
            )
        else:
            problems.append(
                f"Counts in {where} are non-integer ({s.n_non_integer} values, e.g. "
                f"{example:.4g}); raw counts are needed. Point `counts` at the raw-count "
                "layer, or set DatasetSpec(require_counts=False) if non-integer values are "
                "intended."
            )
    return problems


# ---------------------------------------------------------------------------------------
# accessors used by later layers


def counts_matrix(
    adata: ad.AnnData,
    spec: DatasetSpec | None = None,
    *,
    obs: np.ndarray | slice | None = None,
) -> sp.csr_matrix | np.ndarray:
    """The counts (cells × genes) from ``X`` or the spec's layer, in memory.

    Sparse input comes back as ``csr_matrix``, dense as ``np.ndarray``. ``obs`` selects
    rows (positions or a boolean mask); for backed data only those rows are read.
    """
    spec = spec if spec is not None else get_spec(adata)
    if spec.counts == "X":
        X = adata.X
    elif spec.counts in adata.layers:
        X = adata.layers[spec.counts]
    else:
        raise DatasetError(
            f"Counts layer {spec.counts!r} not found; available layers: "
            f"{list(adata.layers.keys()) or '(none)'}. Set DatasetSpec(counts=...)."
        )
    if X is None:
        raise DatasetError("adata.X is empty (None); set DatasetSpec(counts=...) to a layer.")
    if obs is not None:
        idx = np.asarray(obs) if not isinstance(obs, slice) else obs
        if isinstance(idx, np.ndarray) and idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if isinstance(idx, np.ndarray) and adata.isbacked and spec.counts == "X":
            # h5py needs increasing indices: read sorted, then restore the order
            order = np.argsort(idx, kind="stable")
            block = X[idx[order]]
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            X = block[inv]
        else:
            X = X[idx]
    elif adata.isbacked and spec.counts == "X":
        X = X[:]
    if sp.issparse(X):
        return sp.csr_matrix(X)
    return np.asarray(X)


def control_mask(adata: ad.AnnData, spec: DatasetSpec | None = None) -> np.ndarray:
    """Boolean array over cells: True where the perturbation label is a control label."""
    spec = spec if spec is not None else get_spec(adata)
    col = _perturbation_column(adata, spec)
    return col.astype(object).isin(spec.controls).to_numpy(dtype=bool)


def perturbation_groups(
    adata: ad.AnnData, spec: DatasetSpec | None = None
) -> dict[str, np.ndarray]:
    """Perturbation label → obs positions (int array), controls and NaN labels excluded.

    Labels are sorted; positions are increasing.
    """
    spec = spec if spec is not None else get_spec(adata)
    col = _perturbation_column(adata, spec).astype(object)
    keep = col.notna().to_numpy() & ~col.isin(spec.controls).to_numpy()
    labels = col.to_numpy()[keep].astype(str)
    positions = np.flatnonzero(keep)
    uniq, inv = np.unique(labels, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(uniq.size + 1))
    return {
        str(u): positions[order[bounds[i] : bounds[i + 1]]].astype(np.int64)
        for i, u in enumerate(uniq)
    }


def _perturbation_column(adata: ad.AnnData, spec: DatasetSpec) -> pd.Series:
    if spec.perturbation is None:
        raise DatasetError(
            "DatasetSpec.perturbation is not set; name the obs column with the targeted "
            "gene, e.g. DatasetSpec(perturbation='gene')."
        )
    if spec.perturbation not in adata.obs.columns:
        cols = [str(c) for c in adata.obs.columns]
        raise DatasetError(
            f"Perturbation column {spec.perturbation!r} not found in obs; available columns: "
            f"{cols or '(none)'}{_suggest(spec.perturbation, cols)}. "
            "Set DatasetSpec(perturbation=...)."
        )
    return adata.obs[spec.perturbation]
