"""Gene id mapping: gene symbols (``var_names``) ↔ Ensembl gene ids.

Ids come from a ``var`` column or from a user table (TSV/CSV, or a DataFrame) with a
symbol column and an Ensembl column, found by name or by value pattern. Version
suffixes are stripped (``ENSG00000141510.17`` → ``ENSG00000141510``). Unmapped genes
are kept (as NaN), counted in ``DataFrame.attrs`` and reported with a warning.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

import anndata as ad
import numpy as np
import pandas as pd

#: An Ensembl stable id, optionally with a version suffix (and GENCODE's ``_PAR_Y``).
ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*\d{6,})(?:\.\d+)?(?:_PAR_Y)?$")
SYMBOL_COLUMNS = ("symbol", "gene_symbol", "gene_name", "hgnc_symbol", "external_gene_name")
ENSEMBL_COLUMNS = ("ensembl", "ensembl_id", "ensembl_gene_id", "gene_id", "gene_ids")
#: Names tried (case-insensitive) when no column or table is given.
VAR_ID_COLUMNS = (*ENSEMBL_COLUMNS, "feature_id", "gene_ensembl", "ensg")
#: A column "holds Ensembl ids" when at least this fraction of its values look like one.
MIN_ENSEMBL_FRACTION = 0.5

TableLike: TypeAlias = str | Path | pd.DataFrame


class GeneIdError(ValueError):
    """A gene-id mapping problem; the message names the problem and its fix."""


def strip_version(ids: Iterable[object]) -> pd.Series:
    """Ensembl ids without version suffix; values that are not Ensembl ids become NaN."""
    s = pd.Series(list(ids), dtype=object)
    out = s.astype(str).str.strip().str.extract(ENSEMBL_RE, expand=False)
    return out.where(s.notna(), np.nan)


def _ensembl_fraction(values: pd.Series) -> float:
    v = values.dropna()
    if v.empty:
        return 0.0
    return float(v.astype(str).str.strip().str.match(ENSEMBL_RE).mean())


def gene_id_map(
    adata: ad.AnnData,
    *,
    column: str | None = None,
    table: TableLike | None = None,
) -> pd.DataFrame:
    """Symbol → Ensembl id for every gene in ``adata.var_names``.

    Parameters
    ----------
    adata
        The dataset; ``var_names`` are gene symbols.
    column
        ``var`` column with Ensembl ids. Default: the spec's ``gene_id_column``, else a
        column named like ``gene_ids`` / ``ensembl_id``, else any column of Ensembl ids.
    table
        A TSV/CSV path (may be ``.gz``) or DataFrame with a symbol and an Ensembl column;
        used instead of ``var``.

    Returns
    -------
    DataFrame with columns ``symbol, ensembl_id`` (one row per var gene, in order;
    ``ensembl_id`` NaN when unmapped). ``attrs`` holds ``source``, ``n_mapped`` and
    ``n_unmapped``; a warning reports unmapped genes.
    """
    if column is not None and table is not None:
        raise GeneIdError("Pass either column= (a var column) or table= (a mapping), not both.")
    symbols = pd.Index(adata.var_names.astype(str))
    if table is not None:
        tab = _read_mapping_table(table, symbols=symbols)
        lookup = tab.drop_duplicates("symbol").set_index("symbol")["ensembl_id"]
        ids = pd.Series(lookup.reindex(symbols).to_numpy(), dtype=object)
        source = f"table {table!r}" if not isinstance(table, pd.DataFrame) else "table"
    else:
        column = column if column is not None else _find_var_column(adata)
        if column not in adata.var.columns:
            cols = [str(c) for c in adata.var.columns]
            close = difflib.get_close_matches(column, cols, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise GeneIdError(
                f"Gene id column {column!r} not found in var; available columns: "
                f"{cols or '(none)'}{hint}. Pass column= with the var column of Ensembl ids, "
                "or table= with a symbol→Ensembl table."
            )
        raw = adata.var[column].astype(object)
        if _ensembl_fraction(raw) == 0.0:
            examples = [str(v) for v in raw.dropna().head(3)]
            raise GeneIdError(
                f"var column {column!r} contains no Ensembl-looking ids (ENSG...); e.g. "
                f"{examples}. Pass column= naming the var column with Ensembl ids, or table=."
            )
        ids = strip_version(raw.to_numpy())
        source = f"var[{column!r}]"
    out = pd.DataFrame({"symbol": symbols.to_numpy(), "ensembl_id": ids.to_numpy()})
    n_unmapped = int(out["ensembl_id"].isna().sum())
    out.attrs.update(
        {"source": source, "n_mapped": len(out) - n_unmapped, "n_unmapped": n_unmapped}
    )
    if n_unmapped:
        shown = ", ".join(out.loc[out["ensembl_id"].isna(), "symbol"].head(5))
        warnings.warn(
            f"{n_unmapped} of {len(out)} genes have no Ensembl id in {source} (e.g. {shown}); "
            "they are kept with ensembl_id=NaN.",
            UserWarning,
            stacklevel=2,
        )
    return out


def to_ensembl(
    adata: ad.AnnData,
    *,
    column: str | None = None,
    table: TableLike | None = None,
) -> pd.Series:
    """Ensembl id per gene: a Series indexed by ``var_names`` (NaN when unmapped)."""
    m = gene_id_map(adata, column=column, table=table)
    s = pd.Series(m["ensembl_id"].to_numpy(), index=adata.var_names.copy(), name="ensembl_id")
    s.attrs.update(m.attrs)
    return s


def to_symbol(
    ids: Iterable[str],
    *,
    table: TableLike | ad.AnnData,
) -> pd.Series:
    """Gene symbol per Ensembl id: a Series indexed by ``ids`` as given (NaN when unknown).

    ``table`` is a symbol/Ensembl table (path or DataFrame) or an AnnData whose ``var``
    carries the ids (see :func:`gene_id_map`). Version suffixes are ignored on both sides.
    """
    if isinstance(table, ad.AnnData):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tab = gene_id_map(table).dropna(subset=["ensembl_id"])
    else:
        tab = _read_mapping_table(table)
    lookup = tab.drop_duplicates("ensembl_id").set_index("ensembl_id")["symbol"]
    ids = list(ids)
    stripped = strip_version(ids)
    out = pd.Series(lookup.reindex(stripped).to_numpy(), index=pd.Index(ids), name="symbol")
    n_unmapped = int(out.isna().sum())
    out.attrs.update({"n_mapped": len(out) - n_unmapped, "n_unmapped": n_unmapped})
    if n_unmapped:
        warnings.warn(
            f"{n_unmapped} of {len(out)} ids have no symbol in the table; they map to NaN.",
            UserWarning,
            stacklevel=2,
        )
    return out


# ---------------------------------------------------------------------------------------


def _find_var_column(adata: ad.AnnData) -> str:
    spec = adata.uns.get("scfm_audit", {})
    if isinstance(spec, dict) and isinstance(spec.get("spec"), dict):
        col = spec["spec"].get("gene_id_column")
        if col:
            return str(col)
    lower = {str(c).lower(): str(c) for c in adata.var.columns}
    for name in VAR_ID_COLUMNS:
        if name in lower:
            return lower[name]
    best, frac = None, 0.0
    for c in adata.var.columns:
        f = _ensembl_fraction(adata.var[c].astype(object))
        if f > frac:
            best, frac = str(c), f
    if best is not None and frac >= MIN_ENSEMBL_FRACTION:
        return best
    raise GeneIdError(
        "No var column with Ensembl ids found (looked for "
        f"{', '.join(VAR_ID_COLUMNS)} and for ENSG... values in {list(adata.var.columns)}). "
        "Pass column= naming it, or table= with a symbol→Ensembl table (TSV/CSV)."
    )


def _sep_for(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    return {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(ext)


def _read_mapping_table(table: TableLike, *, symbols: pd.Index | None = None) -> pd.DataFrame:
    """Normalise a mapping table to columns ``symbol, ensembl_id`` (ids version-stripped)."""
    if isinstance(table, pd.DataFrame):
        df = table.copy()
        label = "the mapping table"
    else:
        path = Path(table)
        label = repr(str(path))
        if not path.is_file():
            raise GeneIdError(f"Gene id table {label} does not exist; check the path.")
        sep = _sep_for(path)
        read_kw = {"sep": sep} if sep else {"sep": None, "engine": "python"}
        df = pd.read_csv(path, dtype=str, **read_kw)
        # a header-less file: its first row would look like data
        if any(ENSEMBL_RE.match(str(c).strip()) for c in df.columns):
            df = pd.read_csv(path, dtype=str, header=None, **read_kw)
            df.columns = [f"column_{i}" for i in range(df.shape[1])]
    df.columns = [str(c) for c in df.columns]
    lower = {c.lower().lstrip("#").strip(): c for c in df.columns}
    ens_col = next((lower[n] for n in ENSEMBL_COLUMNS if n in lower), None)
    if ens_col is not None and _ensembl_fraction(df[ens_col]) == 0.0:
        ens_col = None
    if ens_col is None:
        fracs = {c: _ensembl_fraction(df[c]) for c in df.columns}
        best = max(fracs, key=fracs.__getitem__, default=None)
        if best is not None and fracs[best] >= MIN_ENSEMBL_FRACTION:
            ens_col = best
    sym_col = next((lower[n] for n in SYMBOL_COLUMNS if n in lower and lower[n] != ens_col), None)
    if sym_col is None and ens_col is not None:
        rest = [c for c in df.columns if c != ens_col and _ensembl_fraction(df[c]) < 0.5]
        if symbols is not None and rest:
            overlap = {c: df[c].isin(symbols).sum() for c in rest}
            sym_col = max(overlap, key=overlap.__getitem__)
        elif rest:
            sym_col = rest[0]
    if ens_col is None or sym_col is None:
        raise GeneIdError(
            f"Could not recognise the columns of {label} (columns: {list(df.columns)}). It "
            f"needs a symbol column (one of {', '.join(SYMBOL_COLUMNS)}) and an Ensembl column "
            f"(one of {', '.join(ENSEMBL_COLUMNS)}, or values like ENSG00000141510); rename "
            "the columns accordingly."
        )
    out = pd.DataFrame(
        {
            "symbol": df[sym_col].astype(object).str.strip().to_numpy(),
            "ensembl_id": strip_version(df[ens_col].to_numpy()).to_numpy(),
        }
    )
    return out.dropna().reset_index(drop=True)
