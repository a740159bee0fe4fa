"""Reference-network loaders: TRRUST, DoRothEA, CollecTRI, STRING, ChIP-seq and any table.

Every loader is ``fn(path, **options) -> ReferenceNetwork`` and is registered in
:data:`REFERENCE_LOADERS`; :func:`load_reference` dispatches by format name. A malformed
file raises :class:`ReferenceFormatError` naming the file and the line number of the
first bad line. Gzipped files (``.gz``) are read transparently.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import inspect
import io
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm_audit._registry import Registry
from scfm_audit.data._network import ReferenceNetwork

ReferenceLoader = Callable[..., ReferenceNetwork]
REFERENCE_LOADERS: Registry[ReferenceLoader] = Registry("reference format")

PathLike = str | Path

#: Default priority of STRING alias sources (substring match on the ``source`` field).
STRING_ALIAS_SOURCES = ("Ensembl_HGNC_symbol", "BioMart_HUGO")
_STRING_ID_RE = re.compile(r"^\d+\.ENS[A-Z]*P\d+")
CONFIDENCE_LEVELS = ("A", "B", "C", "D", "E")
_SIGN_WORDS = {
    "+": 1,
    "-": -1,
    "activation": 1,
    "activator": 1,
    "activating": 1,
    "positive": 1,
    "up": 1,
    "repression": -1,
    "repressor": -1,
    "repressing": -1,
    "inhibition": -1,
    "negative": -1,
    "down": -1,
    "unknown": 0,
    "": 0,
}


class ReferenceFormatError(ValueError):
    """A malformed reference file; the message names the file and the first bad line."""

    def __init__(self, path: PathLike, line: int | None, problem: str) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path.name}, line {line}" if line is not None else self.path.name
        super().__init__(f"{where}: {problem}")


# ---------------------------------------------------------------------------------------
# dispatch


def load_reference(
    format: str, path: PathLike, *, name: str | None = None, **options: Any
) -> ReferenceNetwork:
    """Load a reference network with the loader registered as ``format``.

    ``options`` go to the loader (e.g. ``min_confidence="B"`` for DoRothEA,
    ``min_score=900, aliases=...`` for STRING); ``name`` names the network
    (default: the format). Unknown formats get a "did you mean" error.
    """
    loader = REFERENCE_LOADERS.get(format)
    params = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        for opt in options:
            if opt not in accepted:
                close = difflib.get_close_matches(opt, accepted, n=2)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(
                    f"Reference format {format!r} has no option {opt!r}.{hint} "
                    f"Accepted options: {', '.join(accepted) or '(none)'}."
                )
    net = loader(path, **options)
    if name is not None and name != net.name:
        net = dataclasses.replace(net, name=name)
    return net


# ---------------------------------------------------------------------------------------
# file helpers


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        raise FileNotFoundError(
            f"Reference path {str(p)!r} is a folder, not a file; give the file inside it."
        )
    if not p.is_file():
        raise FileNotFoundError(f"Reference file {str(p)!r} does not exist; check the path.")
    return p


def _is_gz(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path) -> io.TextIOBase:
    if _is_gz(path):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _sep_from_extension(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".csv":
        return ","
    if ext in (".tsv", ".tab"):
        return "\t"
    # .txt and anything else: look at the first non-empty line
    with _open_text(path) as fh:
        first = next((ln for ln in fh if ln.strip()), "")
    if "\t" in first:
        return "\t"
    if "," in first:
        return ","
    return " "


def _raw_line(path: Path, line: int) -> str:
    with _open_text(path) as fh:
        for i, text in enumerate(fh, 1):
            if i == line:
                text = text.rstrip("\r\n")
                return text if len(text) <= 80 else text[:77] + "..."
    return ""


def _first_bad_field_count(path: Path, sep: str, expected: int) -> tuple[int | None, int]:
    with _open_text(path) as fh:
        for i, row in enumerate(csv.reader(fh, delimiter=sep), 1):
            if row and len(row) != expected:
                return i, len(row)
    return None, expected


def _read_delimited(path: Path, *, sep: str, fmt: str) -> pd.DataFrame:
    """Read a headed table as strings; column ``_line`` holds each row's line number."""
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
            compression="gzip" if _is_gz(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise ReferenceFormatError(
            path, None, f"the file is empty; expected {_a_table(fmt)}."
        ) from None
    except (pd.errors.ParserError, csv.Error):
        with _open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
        line, n = _first_bad_field_count(path, sep, len(header))
        raise ReferenceFormatError(
            path,
            line,
            f"expected {len(header)} {_sep_name(sep)}-separated fields (as in the header), "
            f"found {n}: {_raw_line(path, line) if line else ''!r}. Fix or remove that line.",
        ) from None
    except UnicodeDecodeError as err:
        raise ReferenceFormatError(
            path, None, f"not a text file ({err}); expected {_a_table(fmt)} (optionally .gz)."
        ) from None
    df.columns = [str(c).lstrip("#").strip() for c in df.columns]
    df["_line"] = np.arange(len(df)) + 2
    return df[df.drop(columns="_line").notna().any(axis=1)].reset_index(drop=True)


def _a_table(fmt: str) -> str:
    """'a table' for the generic format, 'a trrust table' for a named one."""
    return "a table" if fmt == "table" else f"a {fmt} table"


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", " ": "space"}.get(sep, repr(sep))


def _require_columns(df: pd.DataFrame, path: Path, wanted: Mapping[str, str], fmt: str) -> None:
    cols = [c for c in df.columns if c != "_line"]
    for role, col in wanted.items():
        if col not in cols:
            close = difflib.get_close_matches(col, cols, n=2)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ReferenceFormatError(
                path,
                1,
                f"no {role} column {col!r} in the header; columns are {cols}{hint}. "
                f"Rename the column or pass {role}_col=... (format {fmt!r}).",
            )


def _no_empty(df: pd.DataFrame, path: Path, columns: Sequence[str], *, blank: bool = True) -> None:
    """Raise at the first row with a missing (or, if ``blank``, whitespace-only) field."""
    for col in columns:
        bad = df[col].isna()
        if blank:
            bad |= df[col].astype(str).str.strip() == ""
        if bad.any():
            line = int(df.loc[bad.idxmax(), "_line"])
            raise ReferenceFormatError(
                path,
                line,
                f"empty or missing {col!r} field: {_raw_line(path, line)!r}. "
                "Each line needs a value there (check for missing fields).",
            )


def _to_number(df: pd.DataFrame, path: Path, col: str) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = (values.isna() & df[col].notna()) | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        i = bad.idxmax()
        raise ReferenceFormatError(
            path,
            int(df.loc[i, "_line"]),
            f"{col!r} value {df.loc[i, col]!r} is not a finite number. Fix that line.",
        )
    return values


def _to_sign(df: pd.DataFrame, path: Path, col: str) -> pd.Series:
    raw = df[col].fillna("").astype(str).str.strip()
    num = pd.to_numeric(raw, errors="coerce")
    words = raw.str.lower().map(_SIGN_WORDS)
    sign = pd.Series(np.sign(num), index=df.index).where(num.notna(), words)
    if sign.isna().any():
        i = sign.isna().idxmax()
        raise ReferenceFormatError(
            path,
            int(df.loc[i, "_line"]),
            f"sign value {raw[i]!r} in column {col!r} is not understood; use +1/-1/0, "
            "'+'/'-', or Activation/Repression/Unknown.",
        )
    return sign.astype(int)


def _params(fmt: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"format": fmt, "path": str(path), **extra}


# ---------------------------------------------------------------------------------------
# TRRUST

_TRRUST_MODES = {"activation": 1, "repression": -1, "unknown": 0}


@REFERENCE_LOADERS.register("trrust")
def load_trrust(path: PathLike) -> ReferenceNetwork:
    """TRRUST raw TSV (no header): ``TF, target, mode, PMIDs``.

    Returns a directed network: sign +1/-1/0 for Activation/Repression/Unknown, weight 1,
    evidence = the PMIDs (``;``-joined). Duplicate TF→target records are merged
    (sign 0 when they disagree). ``params["n_rows"]`` counts the records read.
    """
    p = _check_file(path)
    sources: list[str] = []
    targets: list[str] = []
    signs: list[int] = []
    evidence: list[str] = []
    with _open_text(p) as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = text.split("\t")
            if len(fields) != 4:
                raise ReferenceFormatError(
                    p,
                    lineno,
                    f"expected 4 tab-separated fields (TF, target, mode, PMIDs), found "
                    f"{len(fields)}: {text[:80]!r}. Fix or remove that line.",
                )
            tf, target, mode, pmids = (f.strip() for f in fields)
            sign = _TRRUST_MODES.get(mode.lower())
            if sign is None:
                if lineno == 1 and tf.lower() in ("tf", "source", "regulator"):
                    continue  # tolerate a header line
                raise ReferenceFormatError(
                    p,
                    lineno,
                    f"mode {mode!r} is not Activation, Repression or Unknown. Fix that line.",
                )
            if not tf or not target:
                raise ReferenceFormatError(
                    p, lineno, f"empty TF or target field: {text[:80]!r}. Fix that line."
                )
            sources.append(tf)
            targets.append(target)
            signs.append(sign)
            evidence.append(pmids)
    edges = pd.DataFrame(
        {"source": sources, "target": targets, "weight": 1.0, "sign": signs, "evidence": evidence}
    )
    return ReferenceNetwork(
        edges, name="trrust", directed=True, params=_params("trrust", p, n_rows=len(edges))
    )


# ---------------------------------------------------------------------------------------
# DoRothEA / CollecTRI (decoupler network tables)


def _load_decoupler(path: PathLike, *, fmt: str, min_confidence: str | None) -> ReferenceNetwork:
    p = _check_file(path)
    df = _read_delimited(p, sep=_sep_from_extension(p), fmt=fmt)
    weight_col = "weight" if "weight" in df.columns else "mor" if "mor" in df.columns else "weight"
    _require_columns(df, p, {"source": "source", "target": "target", "weight": weight_col}, fmt)
    _no_empty(df, p, ["source", "target", weight_col])
    n_rows = len(df)
    w = _to_number(df, p, weight_col)
    edges = pd.DataFrame(
        {
            "source": df["source"],
            "target": df["target"],
            "weight": w.abs(),
            "sign": np.sign(w).astype(int),
        }
    )
    extra: dict[str, Any] = {"n_rows": n_rows, "min_confidence": min_confidence}
    conf_col = next((c for c in df.columns if c.lower() == "confidence"), None)
    if conf_col is not None:
        conf = df[conf_col].fillna("").astype(str).str.strip().str.upper()
        bad = ~conf.isin(CONFIDENCE_LEVELS)
        if bad.any():
            i = bad.idxmax()
            raise ReferenceFormatError(
                p,
                int(df.loc[i, "_line"]),
                f"confidence {df.loc[i, conf_col]!r} is not one of A-E. Fix that line.",
            )
        edges["evidence"] = "confidence=" + conf
    if min_confidence is not None:
        level = str(min_confidence).strip().upper()
        if level not in CONFIDENCE_LEVELS:
            raise ValueError(
                f"min_confidence={min_confidence!r} is not a level A-E; pass e.g. "
                "min_confidence='C' (keeps A, B, C) or None (keeps all)."
            )
        if conf_col is None:
            raise ReferenceFormatError(
                p,
                1,
                f"no 'confidence' column, so min_confidence={min_confidence!r} cannot be "
                "applied. Pass min_confidence=None to keep all edges.",
            )
        keep = conf.map(CONFIDENCE_LEVELS.index) <= CONFIDENCE_LEVELS.index(level)
        edges = edges[keep.to_numpy()]
        extra["n_after_confidence"] = int(keep.sum())
    return ReferenceNetwork(
        edges.reset_index(drop=True), name=fmt, directed=True, params=_params(fmt, p, **extra)
    )


@REFERENCE_LOADERS.register("dorothea")
def load_dorothea(path: PathLike, *, min_confidence: str | None = "C") -> ReferenceNetwork:
    """DoRothEA as exported by decoupler: CSV/TSV with ``source, target, weight``
    (``mor`` accepted) and ``confidence`` (A-E).

    Keeps edges with confidence ``min_confidence`` or better (default ``"C"``: A, B, C;
    None keeps all). sign = sign(weight), weight = |weight|, evidence = confidence.
    """
    return _load_decoupler(path, fmt="dorothea", min_confidence=min_confidence)


@REFERENCE_LOADERS.register("collectri")
def load_collectri(path: PathLike, *, min_confidence: str | None = None) -> ReferenceNetwork:
    """CollecTRI as exported by decoupler: CSV/TSV with ``source, target, weight``.

    An optional ``confidence`` column can be filtered with ``min_confidence``.
    sign = sign(weight), weight = |weight|.
    """
    return _load_decoupler(path, fmt="collectri", min_confidence=min_confidence)


# ---------------------------------------------------------------------------------------
# STRING


def _string_alias_map(
    aliases: PathLike | Mapping[str, str], proteins: set[str], sources: Sequence[str]
) -> dict[str, str]:
    if isinstance(aliases, Mapping):
        return {str(k): str(v) for k, v in aliases.items()}
    p = _check_file(aliases)
    df = _read_delimited(p, sep="\t", fmt="STRING protein.aliases")
    cols = [c for c in df.columns if c != "_line"]
    if len(cols) < 3:
        raise ReferenceFormatError(
            p,
            1,
            f"expected the header '#string_protein_id alias source' (tab-separated), got "
            f"{cols}. Pass the STRING protein.aliases file.",
        )
    pid, alias, source = cols[:3]
    df = df[df[pid].isin(proteins)]
    _no_empty(df, p, [pid, alias])
    rank = pd.Series(len(sources), index=df.index)
    for r, pattern in reversed(list(enumerate(sources))):
        rank[df[source].fillna("").str.contains(pattern, regex=False)] = r
    best = df.assign(_rank=rank).sort_values("_rank", kind="stable").drop_duplicates(pid)
    return dict(zip(best[pid], best[alias].str.strip(), strict=True))


@REFERENCE_LOADERS.register("string")
def load_string(
    path: PathLike,
    *,
    min_score: float = 700,
    aliases: PathLike | Mapping[str, str] | None = None,
    alias_sources: Sequence[str] = STRING_ALIAS_SOURCES,
) -> ReferenceNetwork:
    """STRING ``protein.links`` (space-separated ``protein1 protein2 combined_score``,
    optionally ``.gz``; the detailed variant with more score columns also works).

    Keeps pairs with ``combined_score >= min_score``; weight = combined_score / 1000;
    undirected, sign 0. Protein ids are mapped to gene symbols with ``aliases`` (the
    ``protein.aliases`` file, or a dict): for each protein the alias whose ``source``
    contains the first matching entry of ``alias_sources`` (default
    ``Ensembl_HGNC_symbol``, then ``BioMart_HUGO``) is used, else the protein's first
    alias in the file. Edges touching unmapped proteins are dropped and counted in
    ``params`` (``n_unmapped_proteins``, ``n_edges_unmapped``).
    """
    p = _check_file(path)
    df = _read_delimited(p, sep=" ", fmt="STRING protein.links")
    cols = [c for c in df.columns if c != "_line"]
    if "protein1" not in cols or "protein2" not in cols or "combined_score" not in cols:
        raise ReferenceFormatError(
            p,
            1,
            f"expected the space-separated header 'protein1 protein2 combined_score', got "
            f"{cols}. Pass a STRING protein.links file (or use format 'table').",
        )
    # space-separated: a field cannot be whitespace-only, so skip that (slow) check
    _no_empty(df, p, ["protein1", "protein2", "combined_score"], blank=False)
    score = _to_number(df, p, "combined_score")
    n_rows = len(df)
    keep = (score >= min_score).to_numpy()
    links = pd.DataFrame(
        {
            "source": df["protein1"].to_numpy()[keep],
            "target": df["protein2"].to_numpy()[keep],
            "weight": score.to_numpy()[keep] / 1000.0,
        }
    )
    extra: dict[str, Any] = {"min_score": min_score, "n_rows": n_rows, "n_above_score": len(links)}
    if aliases is None:
        sample = pd.concat([links["source"], links["target"]]).head(200)
        if len(sample) and sample.str.match(_STRING_ID_RE).mean() > 0.5:
            raise ValueError(
                f"{p.name} has STRING protein ids (e.g. {sample.iloc[0]!r}), not gene symbols; "
                "pass aliases= the matching protein.aliases file (e.g. "
                "load_reference('string', links, aliases='9606.protein.aliases.v12.0.txt.gz'))."
            )
    else:
        proteins = set(links["source"]) | set(links["target"])
        mapping = _string_alias_map(aliases, proteins, alias_sources)
        src = links["source"].map(mapping)
        tgt = links["target"].map(mapping)
        unmapped = proteins - set(mapping)
        mapped = (src.notna() & tgt.notna()).to_numpy()
        extra.update(
            {
                "aliases": str(aliases) if not isinstance(aliases, Mapping) else "mapping",
                "alias_sources": list(alias_sources),
                "n_proteins": len(proteins),
                "n_unmapped_proteins": len(unmapped),
                "n_edges_unmapped": int((~mapped).sum()),
            }
        )
        if unmapped:
            warnings.warn(
                f"{len(unmapped)} of {len(proteins)} STRING proteins have no alias in the "
                f"aliases file; {int((~mapped).sum())} links touching them were dropped.",
                UserWarning,
                stacklevel=2,
            )
        links = links.assign(source=src, target=tgt)[mapped]
    return ReferenceNetwork(
        links.reset_index(drop=True),
        name="string",
        directed=False,
        params=_params("string", p, **extra),
    )


# ---------------------------------------------------------------------------------------
# generic tables (ChIP-seq style TF → target, any TSV/CSV)

_SOURCE_ALIASES = ("source", "tf", "regulator", "from")
_TARGET_ALIASES = ("target", "target_gene", "gene", "to")


def _pick_column(df: pd.DataFrame, given: str | None, aliases: Sequence[str]) -> str | None:
    if given is not None:
        return given
    lower = {c.lower(): c for c in df.columns if c != "_line"}
    return next((lower[a] for a in aliases if a in lower), None)


def _directed_column(df: pd.DataFrame, p: Path) -> bool:
    """The value of a ``directed`` column (one value for the whole file), else True."""
    col = next((c for c in df.columns if str(c).lower() == "directed"), None)
    if col is None:
        return True
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    values = {words.get(str(v).strip().lower()) for v in df[col].dropna().unique()}
    if None in values or len(values) > 1:
        raise ReferenceFormatError(
            p,
            None,
            f"column {col!r} must hold one value, True or False, for the whole file "
            "(a network is directed or not); or set the option directed: true/false.",
        )
    return bool(values.pop()) if values else True


def _load_table(
    path: PathLike,
    *,
    fmt: str,
    source_col: str | None,
    target_col: str | None,
    weight_col: str | None,
    sign_col: str | None,
    evidence_col: str | None,
    directed: bool | None,
    sep: str | None,
    evidence: str,
) -> ReferenceNetwork:
    p = _check_file(path)
    df = _read_delimited(p, sep=sep if sep is not None else _sep_from_extension(p), fmt=fmt)
    if directed is None:
        directed = _directed_column(df, p)
    src = _pick_column(df, source_col, _SOURCE_ALIASES) or "source"
    tgt = _pick_column(df, target_col, _TARGET_ALIASES) or "target"
    wcol = weight_col if weight_col is not None else ("weight" if "weight" in df else None)
    scol = sign_col if sign_col is not None else ("sign" if "sign" in df else None)
    wanted = {"source": src, "target": tgt}
    for role, col in (("weight", wcol), ("sign", scol), ("evidence", evidence_col)):
        if col is not None:
            wanted[role] = col
    _require_columns(df, p, wanted, fmt)
    _no_empty(df, p, [src, tgt])
    edges = pd.DataFrame({"source": df[src], "target": df[tgt]})
    w = _to_number(df.assign(**{wcol: df[wcol].fillna("1")}), p, wcol) if wcol else None
    if scol is not None:
        edges["sign"] = _to_sign(df, p, scol)
        edges["weight"] = w.abs() if w is not None else 1.0
    elif w is not None:
        edges["sign"] = np.sign(w).astype(int) if (w < 0).any() else 0
        edges["weight"] = w.abs()
    edges["evidence"] = df[evidence_col].fillna("") if evidence_col else evidence
    return ReferenceNetwork(
        edges,
        name=fmt,
        directed=directed,
        params=_params(
            fmt,
            p,
            n_rows=len(df),
            columns=dict(wanted),
        ),
    )


@REFERENCE_LOADERS.register("table")
def load_table(
    path: PathLike,
    *,
    source_col: str | None = None,
    target_col: str | None = None,
    weight_col: str | None = None,
    sign_col: str | None = None,
    evidence_col: str | None = None,
    directed: bool | None = None,
    sep: str | None = None,
) -> ReferenceNetwork:
    """Any headed TSV/CSV (``.tsv``, ``.csv``, ``.txt``; optionally ``.gz``).

    Columns default to ``source``/``target`` (else ``TF``/``regulator`` and
    ``target_gene``/``gene``, case-insensitive), ``weight`` and ``sign`` when present.
    Signs may be numbers or words (``+``/``-``, Activation/Repression/Unknown); without
    a sign column, a weight column with negative values gives sign = sign(weight).
    Weights are stored as absolute values (default 1). ``sep`` defaults from the
    extension (``.csv`` comma, ``.tsv`` tab, ``.txt`` sniffed). ``directed`` defaults to
    the file's own ``directed`` column when it has one (as the tables
    :meth:`ReferenceNetwork.to_tsv` and ``scfm-audit simulate`` write), else True.
    """
    return _load_table(
        path,
        fmt="table",
        source_col=source_col,
        target_col=target_col,
        weight_col=weight_col,
        sign_col=sign_col,
        evidence_col=evidence_col,
        directed=directed,
        sep=sep,
        evidence="",
    )


@REFERENCE_LOADERS.register("chip")
def load_chip(
    path: PathLike,
    *,
    source_col: str | None = None,
    target_col: str | None = None,
    weight_col: str | None = None,
    sign_col: str | None = None,
    evidence_col: str | None = None,
    directed: bool | None = None,
    sep: str | None = None,
) -> ReferenceNetwork:
    """ChIP-seq style TF → target table: :func:`load_table` with evidence ``"ChIP-seq"``."""
    return _load_table(
        path,
        fmt="chip",
        source_col=source_col,
        target_col=target_col,
        weight_col=weight_col,
        sign_col=sign_col,
        evidence_col=evidence_col,
        directed=directed,
        sep=sep,
        evidence="ChIP-seq",
    )
