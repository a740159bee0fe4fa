"""Geneformer's rank-value tokenization (``tokenizer.py``: ``TranscriptomeTokenizer``):
how a dataset's ``var`` maps onto the model's token columns (:class:`GenePlan`), and the
normalisation of a block of counts before ranking."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scfm_audit.models._base import TokenizedBatch

#: Normalisation target of ``TranscriptomeTokenizer.tokenize_anndata`` (``target_sum``).
TARGET_SUM = 10_000
#: Cells per counts block (upstream ``chunk_size``); bounds the dense working memory.
CHUNK_SIZE = 512
#: ``var`` columns tried, in order, for Ensembl ids.
GENE_ID_COLUMNS = ("ensembl_id", "gene_ids", "feature_id")
_VERSION_SUFFIX = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$")


@dataclass
class GenePlan:
    """Column layout of one dataset for Geneformer (cached per dataset).

    Columns are, as in upstream ``sum_ensembl_ids`` + ``tokenize_anndata``: the genes whose
    collapsed id occurs once (in ``var`` order), then the summed duplicated ids (in order of
    first appearance).
    """

    key: tuple
    ids: np.ndarray  # raw var ids (for cache validation)
    single_pos: np.ndarray  # var positions of non-duplicated columns
    groups: list[np.ndarray]  # var positions summed into one column each
    tokens: np.ndarray  # (n_columns,) token id per column
    norm: np.ndarray  # (n_columns,) gene medians, dtype as np.array(upstream values)
    gene_pos: np.ndarray  # (n_columns,) representative var position per column
    var_token: np.ndarray  # (n_vars,) token id per var gene, -1 when the model cannot see it
    var_names: pd.Index
    missing: list[str]  # var genes not in the vocabulary (or without median)
    no_median: list[str]

    def fits(self, adata, raw: np.ndarray, key: tuple) -> bool:
        """Whether this plan was made for ``adata`` as it is now (same object, id column
        and ids, same var names): an edited ``var`` gets a new plan."""
        return (
            self.key == key
            and np.array_equal(self.ids, raw)
            and self.var_names.equals(pd.Index(adata.var_names.astype(str)))
        )


def _strip_version(ids: pd.Series, known: Mapping) -> pd.Series:
    """``ENSG….12`` → ``ENSG…`` where the raw id is unknown and the bare id is known."""
    bare = ids.str.extract(_VERSION_SUFFIX, expand=False)
    use = ids.map(lambda s: s not in known) & bare.notna()
    use &= bare.map(lambda s: isinstance(s, str) and s in known)
    return ids.where(~use, bare)


def build_gene_plan(
    adata,
    raw: np.ndarray,
    *,
    key: tuple,
    mapping: Mapping[str, str],
    token_dictionary: Mapping[str, int],
    gene_medians: Mapping[str, float],
) -> GenePlan:
    """The :class:`GenePlan` of ``adata`` whose raw Ensembl ids are ``raw``: ids
    upper-cased, version suffixes stripped where that makes them known, collapsed through
    ``mapping``; genes without a median are left out with a warning."""
    ids = pd.Series(raw, dtype=object).astype(str).str.strip().str.upper()
    ids = _strip_version(ids, mapping)
    collapsed = ids.map(mapping)  # NaN when not in the vocabulary
    var_names = pd.Index(adata.var_names.astype(str))
    no_median_mask = collapsed.notna() & ~collapsed.map(
        lambda g: isinstance(g, str) and g in gene_medians
    )
    no_median = var_names[no_median_mask.to_numpy()].tolist()
    if no_median:
        warnings.warn(
            f"{len(no_median)} gene(s) are in the token dictionary but have no median in "
            f"the gene median dictionary (e.g. {', '.join(no_median[:5])}); they are not "
            "tokenized (Geneformer's tokenizer would fail on them).",
            UserWarning,
            stacklevel=4,
        )
    usable = collapsed.where(~no_median_mask)
    keep = np.flatnonzero(usable.notna().to_numpy())
    kept_ids = usable.iloc[keep].to_numpy()
    counts = pd.Series(kept_ids).value_counts(sort=False)
    dup = set(counts.index[counts.to_numpy() > 1])
    single_pos = np.array([pos for pos, g in zip(keep, kept_ids) if g not in dup], dtype=np.int64)
    group_ids: dict[str, list[int]] = {}
    for pos, g in zip(keep, kept_ids):
        if g in dup:
            group_ids.setdefault(g, []).append(int(pos))
    groups = [np.array(v, dtype=np.int64) for v in group_ids.values()]
    col_ids = [*usable.to_numpy()[single_pos].tolist(), *group_ids]
    tokens = np.array([int(token_dictionary[g]) for g in col_ids], dtype=np.int64)
    # np.array over the dictionary's own values, as tokenize_anndata builds
    # norm_factor_vector: the dtype (float64 / float32) follows the pickle.
    norm = np.array([gene_medians[g] for g in col_ids])
    if norm.size == 0:
        norm = np.zeros(0, dtype=np.float64)
    gene_pos = np.concatenate(
        [single_pos, np.array([g[0] for g in groups], dtype=np.int64)]
    ).astype(np.int64)
    var_token = np.full(adata.n_vars, -1, dtype=np.int64)
    var_token[keep] = [int(token_dictionary[g]) for g in kept_ids]
    missing = var_names[var_token < 0].tolist()
    return GenePlan(
        key=key,
        ids=np.asarray(raw),
        single_pos=single_pos,
        groups=groups,
        tokens=tokens,
        norm=norm,
        gene_pos=gene_pos,
        var_token=var_token,
        var_names=var_names,
        missing=missing,
        no_median=no_median,
    )


def spec_gene_column(adata) -> str | None:
    stored = adata.uns.get("scfm_audit", {}) if hasattr(adata, "uns") else {}
    spec = stored.get("spec") if isinstance(stored, Mapping) else None
    if isinstance(spec, Mapping) and spec.get("gene_id_column"):
        return str(spec["gene_id_column"])
    return None


def spec_counts(adata) -> str:
    stored = adata.uns.get("scfm_audit", {})
    spec = stored.get("spec") if isinstance(stored, Mapping) else None
    if isinstance(spec, Mapping) and spec.get("counts"):
        return str(spec["counts"])
    return "X"


def var_ids(adata, column: str | None) -> tuple[np.ndarray, str | None]:
    """Raw Ensembl ids of ``var`` and the column they came from (None = ``var_names``)."""
    if column is not None:
        if column not in adata.var.columns:
            raise ValueError(
                f"Gene id column {column!r} not found in var (columns: "
                f"{list(map(str, adata.var.columns)) or '(none)'}); pass gene_id_column= "
                "naming the var column with Ensembl ids."
            )
        return adata.var[column].astype(object).to_numpy(), column
    for c in GENE_ID_COLUMNS:
        if c in adata.var.columns:
            return adata.var[c].astype(object).to_numpy(), c
    names = pd.Series(adata.var_names.astype(str))
    if len(names) and names.str.match(r"^ENS[A-Z]*\d{6,}").mean() >= 0.5:
        return names.to_numpy(dtype=object), None
    raise ValueError(
        "Geneformer needs Ensembl gene ids, but var has none of the columns "
        f"{', '.join(GENE_ID_COLUMNS)} (columns: {list(map(str, adata.var.columns)) or '(none)'}) "
        "and var_names are not Ensembl ids. Add a var column 'ensembl_id' (e.g. with "
        "scfm_audit.data.to_ensembl or Ensembl BioMart) or pass gene_id_column= naming the "
        "column that holds them."
    )


def normalise(block, n_counts: np.ndarray, plan: GenePlan) -> sp.csr_matrix:
    """``tokenize_anndata``'s ``X_view / n_counts * target_sum / norm_factor_vector`` over
    the vocabulary columns, then ``csr_matrix``. The expression is evaluated on the same
    kind of object as upstream (scipy sparse for sparse counts, ndarray for dense ones)
    with the same dtypes, so every value carries the same rounding as Geneformer's own
    tokenizer under the same NumPy/SciPy (recent SciPy computes ``sparse / dense`` as
    ``multiply(1 / dense)``, older SciPy densifies; the rounding, and hence the order of
    tied genes, follows the installed version exactly as it would upstream)."""
    sub = block[:, plan.single_pos]
    if plan.groups:
        summed = [
            np.asarray(block[:, g].sum(axis=1)).reshape(-1, 1).astype(block.dtype)
            for g in plan.groups
        ]
        sub = (
            sp.hstack([sub, *(sp.csr_matrix(c) for c in summed)], format="csr")
            if sp.issparse(sub)
            else np.hstack([np.asarray(sub), *summed])
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        x_norm = sub / n_counts[:, None] * TARGET_SUM / plan.norm
    return sp.csr_matrix(x_norm)


def counts_block(adata, idx: np.ndarray, counts: str):
    """Counts of the cells ``idx`` (all genes): csr_matrix or ndarray, dtype kept."""
    from scfm_audit.data._dataset import DatasetSpec, counts_matrix

    return counts_matrix(adata, DatasetSpec(counts=counts), obs=idx)


def gene_count_sums(adata, counts: str, chunk: int = 8192) -> np.ndarray:
    """Each gene's total counts over all cells (float64), read in blocks of cells."""
    sums = np.zeros(adata.n_vars, dtype=np.float64)
    for start in range(0, adata.n_obs, chunk):
        block = counts_block(adata, np.arange(start, min(start + chunk, adata.n_obs)), counts)
        sums += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
    return sums


def warn_untokenized(
    idx: np.ndarray, poss: Sequence[np.ndarray], n_bad: Sequence[int], *, stacklevel: int = 2
) -> None:
    """Warn about cells that get no gene tokens: zero or non-finite ``n_counts``
    (``n_bad``), or no expressed gene of the vocabulary (every position in ``poss`` < 0)."""
    if n_bad:
        warnings.warn(
            f"{len(n_bad)} cell(s) have zero or non-finite n_counts (obs positions "
            f"{list(n_bad)[:5]}); they are tokenized without gene tokens.",
            UserWarning,
            stacklevel=stacklevel,
        )
    bad_set = set(n_bad)
    empty = [int(c) for c, p in zip(idx, poss) if not (p >= 0).any() and int(c) not in bad_set]
    if empty:
        warnings.warn(
            f"{len(empty)} cell(s) express no gene of the vocabulary (obs positions "
            f"{empty[:5]}); their sequences hold no gene tokens.",
            UserWarning,
            stacklevel=stacklevel,
        )


def rank_value_sequences(
    adata,
    idx: np.ndarray,
    plan: GenePlan,
    *,
    counts: str,
    limit: int,
    specials: tuple[int, int] | None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Token ids and ``var`` positions of the cells ``idx``, ranked by normalised
    expression and cut to ``limit`` genes, wrapped in ``specials`` (``<cls>``, ``<eos>``)
    when given; plus the obs positions of cells with zero or non-finite ``n_counts``
    (``obs["n_counts"]`` when present, else the cell's total counts), which get no gene
    tokens. Cells are processed in blocks of :data:`CHUNK_SIZE`."""
    obs_counts = adata.obs["n_counts"].to_numpy() if "n_counts" in adata.obs.columns else None
    seqs: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    n_bad: list[int] = []
    for start in range(0, len(idx), CHUNK_SIZE):  # upstream chunk_size=512
        chunk = idx[start : start + CHUNK_SIZE]
        block = counts_block(adata, chunk, counts)
        if obs_counts is not None:
            n_counts = np.asarray(obs_counts[chunk])
        else:
            n_counts = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
        nc = n_counts.astype(np.float64)
        bad = ~np.isfinite(nc) | (nc <= 0)
        n_bad += chunk[bad].tolist()
        x_norm = normalise(block, n_counts, plan)
        for i in range(len(chunk)):
            if bad[i]:
                toks = np.zeros(0, dtype=np.int64)
                pos = np.zeros(0, dtype=np.int64)
            else:
                # rank_genes(X_norm[i].data, tokens[X_norm[i].indices]): np.argsort(-x)
                # with NumPy's default kind, on the same array as upstream
                lo, hi = x_norm.indptr[i], x_norm.indptr[i + 1]
                cols = x_norm.indices[lo:hi]
                order = np.argsort(-x_norm.data[lo:hi])
                toks = plan.tokens[cols][order][:limit]
                pos = plan.gene_pos[cols][order][:limit]
            if specials is not None:
                toks = np.concatenate([[specials[0]], toks, [specials[1]]])
                pos = np.concatenate([[-1], pos, [-1]])
            seqs.append(toks.astype(np.int64))
            poss.append(pos.astype(np.int64))
    return seqs, poss, n_bad


def pad_sequences(
    seqs: Sequence[np.ndarray], poss: Sequence[np.ndarray], cell_index: np.ndarray, pad_id: int
) -> TokenizedBatch:
    """Right-pad with ``<pad>`` to the longest sequence (``pad_tensor_list``)."""
    T = max((len(s) for s in seqs), default=0)
    B = len(seqs)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    gidx = np.full((B, T), -1, dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    for b, (seq, pos) in enumerate(zip(seqs, poss)):
        ids[b, : len(seq)] = seq
        gidx[b, : len(pos)] = pos
        mask[b, : len(seq)] = True
    return TokenizedBatch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        gene_index=torch.from_numpy(gidx),
        cell_index=np.asarray(cell_index),
        values=None,
    )


def resolve_gene(
    gene: str | int,
    plan: GenePlan | None,
    *,
    mapping: Mapping[str, str],
    token_dictionary: Mapping[str, int],
    gene_name_id: Mapping[str, str] | None,
    model: str,
) -> tuple[int, int]:
    """(token id, var position or -1) of ``gene``: a ``var`` position or name of the last
    tokenized dataset (``plan``), an Ensembl id of the token dictionary, or a symbol of
    the ``gene_name_id`` dictionary. ``model`` names the model in errors."""
    if isinstance(gene, int | np.integer):
        if plan is None:
            raise ValueError(
                "gene given as a var position, but no dataset was tokenized yet; "
                "tokenize first or pass an Ensembl id."
            )
        if not 0 <= int(gene) < len(plan.var_token):
            raise ValueError(f"gene position {gene} outside 0..{len(plan.var_token) - 1}.")
        tok = int(plan.var_token[int(gene)])
        if tok < 0:
            raise ValueError(
                f"gene {plan.var_names[int(gene)]!r} (position {gene}) is not in the "
                f"vocabulary of {model}; it cannot be perturbed."
            )
        return tok, int(gene)
    g = str(gene)
    if plan is not None and g in plan.var_names:
        pos = (
            int(plan.var_names.get_loc(g))
            if plan.var_names.is_unique
            else int(np.flatnonzero(plan.var_names == g)[0])
        )
        tok = int(plan.var_token[pos])
        if tok < 0:
            raise ValueError(
                f"gene {g!r} is not in the vocabulary of {model}; it cannot be perturbed."
            )
        return tok, pos
    ens = g.upper()
    ens = mapping.get(ens, ens)
    if ens not in token_dictionary and gene_name_id is not None:
        mapped = gene_name_id.get(g)
        ens = mapping.get(str(mapped).upper(), mapped) if mapped is not None else ens
    if isinstance(ens, str) and ens in token_dictionary and not ens.startswith("<"):
        tok = int(token_dictionary[ens])
        pos = -1
        if plan is not None:
            hits = np.flatnonzero(plan.var_token == tok)
            pos = int(hits[0]) if hits.size else -1
        return tok, pos
    raise ValueError(
        f"gene {g!r} is neither a var name of the tokenized dataset nor an Ensembl id "
        f"of {model}'s token dictionary."
    )


def perturbed_sequences(
    ids: np.ndarray,
    gidx: np.ndarray,
    mask: np.ndarray,
    token: int,
    pos: int,
    *,
    mode: str,
    special: bool,
    limit: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's unpadded (token ids, var positions) after deleting ``token`` (``delete``)
    or moving it first — right after ``<cls>`` when ``special`` (V2) — (``overexpress``),
    cut to ``limit`` tokens keeping ``<eos>`` last in V2 (``perturber_utils``'
    ``delete_indices`` / ``overexpress_tokens``)."""
    seqs, poss = [], []
    for b in range(ids.shape[0]):
        seq = ids[b][mask[b]].tolist()
        genes_at = gidx[b][mask[b]].tolist()
        if token in seq:
            k = seq.index(token)
            del seq[k]
            del genes_at[k]
        if mode == "overexpress":
            at = 1 if special else 0
            seq.insert(at, token)
            genes_at.insert(at, pos)
            if len(seq) > limit:
                if special:
                    seq, genes_at = (
                        [*seq[: limit - 1], seq[-1]],
                        [*genes_at[: limit - 1], genes_at[-1]],
                    )
                else:
                    seq, genes_at = seq[:limit], genes_at[:limit]
        seqs.append(np.asarray(seq, dtype=np.int64))
        poss.append(np.asarray(genes_at, dtype=np.int64))
    return seqs, poss
