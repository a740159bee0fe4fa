"""Co-expression edges: Spearman / Pearson correlation between genes over cells.

Co-expression is the main comparator of the audit: attention is only interesting where it
carries signal that these edges do not. The kernels work on arrays and follow the
performance stance of the project: each gene's column is rank-transformed (average ranks
for ties, as :func:`scipy.stats.rankdata` does; zeros, massively tied in single-cell data,
share one rank), centred and scaled to unit norm, and the whole gene × gene correlation
matrix is then **one** BLAS product ``Zᵀ Z`` (SYRK when computed in one piece, blocks of
columns of the upper triangle otherwise).

Sparse input is never densified as a whole at float64: columns are ranked block by block
from their non-zero entries only (a count-table rank for integer data such as raw counts, a
per-gene sort otherwise) and written straight into the dense standardised matrix at the
requested ``dtype`` (``float32`` halves it and the output). Dense input is processed in
the same blocks of columns (integer data in place, without a transposed copy).

Memory: the ``cells × genes`` standardised matrix and the ``genes × genes`` output at
``dtype`` plus ~8 MiB of scratch per block — 20,000 genes at float32 is 1.6 GB of output
plus 80 kB per cell.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm_audit._typing import is_sparse
from scfm_audit.edges._registry import register_scorer
from scfm_audit.edges._scores import EdgeScores

#: Library size each cell is scaled to before ``log1p`` (as ``scanpy.pp.normalize_total``).
TARGET_SUM = 10_000.0
#: Float64 scratch elements per rank block when ``chunk_size`` is None (8 MiB: blocks
#: small enough to stay in cache are markedly faster than large ones).
_SCRATCH_ELEMENTS = 1 << 20
#: Largest (genes × distinct values) count table for ranking integer data without sorting.
_TABLE_ELEMENTS = 1 << 22
#: Below this fraction of non-zeros, co-occurrence uses a sparse product instead of BLAS.
_SPARSE_COOCCURRENCE_DENSITY = 0.05
#: Cells read at once from (backed) AnnData.
DEFAULT_ROW_CHUNK = 5_000

Method = Literal["spearman", "pearson"]
Transform = Literal["log1p", "raw"]


# --------------------------------------------------------------------------------------
# Array kernels
# --------------------------------------------------------------------------------------
def spearman_matrix(
    X: np.ndarray | sp.spmatrix,
    *,
    chunk_size: int | None = None,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Spearman correlation between all columns (genes) of ``X``.

    Parameters
    ----------
    X
        ``(n_cells, n_genes)`` matrix, dense or ``scipy.sparse``, finite values (NaN or
        inf is a ``ValueError``). Zeros are ordinary values: a gene's zeros share one
        average rank, exactly as in :func:`scipy.stats.spearmanr`.
    chunk_size
        Genes per block: columns are ranked ``chunk_size`` at a time and the product is
        computed in column blocks of its upper triangle (a ``genes × chunk_size``
        temporary). ``None``: rank blocks of ~8 MiB scratch and one symmetric product
        (BLAS SYRK), the fastest choice.
    dtype
        Dtype of the standardised rank matrix, of the product and of the output.
        ``np.float32`` halves memory (20,000 genes: 1.6 GB output) and makes the product
        about twice as fast, at ~1e-6 absolute accuracy (6e-7 at 10,000 cells; float32
        rounding grows slowly with the number of cells); ``np.float64`` agrees with scipy
        to ~1e-15.

    Returns
    -------
    ``(n_genes, n_genes)`` symmetric array of correlations in ``[-1, 1]`` with unit
    diagonal. A constant gene (zero variance, e.g. never detected) has an undefined
    correlation: its whole row and column are NaN (including the diagonal).
    """
    return _correlation(X, kind="spearman", chunk_size=chunk_size, dtype=dtype)


def pearson_matrix(
    X: np.ndarray | sp.spmatrix,
    *,
    chunk_size: int | None = None,
    dtype: np.dtype | type = np.float64,
) -> np.ndarray:
    """Pearson correlation between all columns (genes) of ``X`` (as ``np.corrcoef(X.T)``).

    Same inputs, blocking, dtype and NaN convention (constant gene → NaN row and column)
    as :func:`spearman_matrix`, without the rank transform.
    """
    return _correlation(X, kind="pearson", chunk_size=chunk_size, dtype=dtype)


def cooccurrence_counts(
    X: np.ndarray | sp.spmatrix, *, chunk_size: int | None = None
) -> np.ndarray:
    """Number of rows (cells) in which both columns (genes) of ``X`` are non-zero.

    Parameters
    ----------
    X
        ``(n_cells, n_genes)`` matrix, dense or sparse.
    chunk_size
        Genes per block, as in :func:`spearman_matrix`.

    Returns
    -------
    ``(n_genes, n_genes)`` symmetric ``int32`` array; the diagonal is each gene's number
    of detecting cells.

    Notes
    -----
    Sparse input sparser than 5 % non-zero: the sparse product ``Bᵀ B`` of the binarised
    matrix in integer arithmetic, in column blocks (its cost grows with the squared number
    of non-zeros per cell). Denser input: the BLAS Gram matrix of the binarised matrix in
    float32, exact integer arithmetic below 2**24 cells (float64 above), which at single-cell
    densities of 10-40 % is 10-20× faster than the sparse product.
    """
    n, p = X.shape
    block = _block_size(n, p, chunk_size)
    if is_sparse(X) and X.nnz < _SPARSE_COOCCURRENCE_DENSITY * n * p:
        binary = sp.csc_matrix(X, copy=True)
        binary.eliminate_zeros()
        binary = sp.csc_matrix(
            (np.ones(binary.nnz, dtype=np.int32), binary.indices, binary.indptr), shape=(n, p)
        )
        binary_t = binary.T.tocsr()
        out = np.empty((p, p), dtype=np.int32)
        step = chunk_size or max(1, min(p, _SCRATCH_ELEMENTS // max(p, 1)))
        for a in range(0, p, step):
            out[:, a : a + step] = (binary_t @ binary[:, a : a + step]).toarray()
        return out
    ftype = np.float32 if n < (1 << 24) else np.float64
    if sp.issparse(X):
        z = np.zeros((n, p), dtype=ftype, order="F")
        for a, b, _data, cells, indptr in _sparse_column_blocks(X, block):
            seg = _segments(indptr)
            z[:, a:b].T.reshape(-1)[seg * n + cells] = 1.0
    else:
        X = np.asarray(X)
        z = np.empty((n, p), dtype=ftype)
        for a in range(0, p, block):
            z[:, a : a + block] = X[:, a : a + block] != 0
    gram = _gram(z, chunk_size=chunk_size)
    del z
    np.rint(gram, out=gram)
    return gram.astype(np.int32)


def _correlation(
    X: np.ndarray | sp.spmatrix,
    *,
    kind: Literal["spearman", "pearson"],
    chunk_size: int | None,
    dtype: np.dtype | type,
) -> np.ndarray:
    if not sp.issparse(X):
        X = np.asarray(X)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type (float32 or float64), got {dtype}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of genes, got {chunk_size}.")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d (cells × genes) matrix, got shape {X.shape}.")
    n, p = X.shape
    if n < 2:
        raise ValueError(f"A correlation needs at least 2 cells (rows), got {n}.")
    block = _block_size(n, p, chunk_size)
    constant = np.zeros(p, dtype=bool)
    # z: standardised (centred, unit-norm) columns, so that corr = zᵀ z
    if sp.issparse(X):
        z = np.empty((n, p), dtype=dtype, order="F")  # gene columns contiguous
        for a, b, data, cells, indptr in _sparse_column_blocks(X, block):
            seg = _segments(indptr)
            zero_val, nz_val, constant[a:b] = _standardise_sparse(data, seg, indptr, n, kind)
            zt = z[:, a:b].T  # (genes, cells) C-contiguous view
            zt[...] = zero_val[:, None]
            zt.reshape(-1)[seg * n + cells] = nz_val
    else:
        z = np.empty((n, p), dtype=dtype)  # same layout as X: no transposition
        for a in range(0, p, block):
            b = min(a + block, p)
            xb = np.asarray(X[:, a:b], dtype=np.float64)
            z[:, a:b], constant[a:b] = _standardise_dense(xb, kind)
    corr = _gram(z, chunk_size=chunk_size)
    del z
    np.clip(corr, -1.0, 1.0, out=corr)
    np.fill_diagonal(corr, 1.0)
    corr[constant, :] = np.nan
    corr[:, constant] = np.nan
    return corr


def _block_size(n: int, p: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, min(chunk_size, p))
    return max(1, min(p, _SCRATCH_ELEMENTS // max(n, 1)))


def _segments(indptr: np.ndarray) -> np.ndarray:
    """Block-local gene index of every non-zero entry."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.intp), np.diff(indptr))


def _sparse_column_blocks(
    X: sp.spmatrix, block: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(a, b, data, cells, indptr)`` for gene blocks ``a:b`` of a sparse matrix:
    the non-zero values (float64) of each gene in the block, their cell (row) indices and
    the block-local ``indptr`` (gene ``j`` owns ``data[indptr[j]:indptr[j+1]]``)."""
    p = X.shape[1]
    csc = sp.csc_matrix(X)  # no copy when X is already a csc_matrix
    if not csc.has_canonical_format or (csc.data == 0).any():
        csc = csc.copy()
        csc.sum_duplicates()
        csc.eliminate_zeros()
    for a in range(0, p, block):
        b = min(a + block, p)
        lo, hi = csc.indptr[a], csc.indptr[b]
        data = np.asarray(csc.data[lo:hi], dtype=np.float64)
        yield (
            a,
            b,
            data,
            csc.indices[lo:hi].astype(np.intp, copy=False),
            (csc.indptr[a : b + 1] - lo).astype(np.intp),
        )


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of ``values`` ((0, 0) when empty); a ``ValueError`` when any value
    is NaN or infinite (min / max propagate NaN, so two reductions check everything)."""
    if values.size == 0:
        return 0.0, 0.0
    lo, hi = float(values.min()), float(values.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            "X contains NaN or infinite values; correlations need finite expression values."
        )
    return lo, hi


def _inverse_norm(ss: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """``1 / sqrt(ss)``, 0 for constant columns (their correlations become NaN later)."""
    safe = np.where(constant, 1.0, ss)
    return np.where(constant, 0.0, 1.0 / np.sqrt(safe))


def _standardise_table(cnt: np.ndarray, n: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised average ranks from a count table (genes along the other axis, value
    bins along ``axis`` in increasing order): ``(std, constant)``, ``std`` shaped as
    ``cnt``. Average rank of a bin = cells in lower bins + (cells in the bin + 1) / 2."""
    dev = np.cumsum(cnt, axis=axis) - cnt + (cnt + 1.0) / 2.0 - (n + 1) / 2.0
    ss = (cnt * dev * dev).sum(axis=axis)
    constant = ss == 0  # exact: an all-tied gene sits exactly at the centre
    dev *= np.expand_dims(_inverse_norm(ss, constant), axis)
    return dev, constant


def _integer_codes(
    values: np.ndarray, lowest: float, highest: float, span_limit: float
) -> np.ndarray | None:
    """``values - lowest`` as integers when all values are integral and the range
    ``[lowest, highest]`` fits the count-table budget, else None (rank by sorting)."""
    if values.size == 0 or highest - lowest + 1 > span_limit or lowest != int(lowest):
        return None
    codes = values.astype(np.intp)
    if not np.array_equal(codes, values):
        return None
    if lowest:
        codes -= int(lowest)
    return codes


def _standardise_dense(xb: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Standardise the columns of a dense (cells × genes) float64 block: returns the block
    of standardised values and the constant-column mask."""
    n, c = xb.shape
    if kind == "pearson":
        col_min, col_max = xb.min(axis=0), xb.max(axis=0)
        _value_range(np.concatenate([col_min, col_max]))  # finiteness check
        dev = xb - xb.mean(axis=0)
        ss = np.einsum("ij,ij->j", dev, dev)
        constant = (col_min == col_max) | (ss <= 0)
        dev *= _inverse_norm(ss, constant)
        return dev, constant
    lowest, highest = _value_range(xb)
    codes = _integer_codes(xb, lowest, highest, _TABLE_ELEMENTS / c)
    if codes is not None:  # integer data (counts): count table, no sort
        span = int(highest - lowest) + 1
        codes *= c
        codes += np.arange(c)
        cnt = np.bincount(codes.reshape(-1), minlength=span * c).reshape(span, c)
        std, constant = _standardise_table(cnt.astype(np.float64), n, axis=0)
        return std.reshape(-1)[codes], constant
    # other values: sort only the non-zero entries of each gene, as for sparse input
    bt = np.array(xb.T, order="C")  # (genes, cells); always a copy: overwritten below
    nonzero = bt != 0
    indptr = np.zeros(c + 1, dtype=np.intp)
    np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
    flat = np.flatnonzero(nonzero)  # gene-major, so grouped by gene
    seg = _segments(indptr)
    zero_val, nz_val, constant = _standardise_sparse(bt.reshape(-1)[flat], seg, indptr, n, kind)
    bt[...] = zero_val[:, None]
    bt.reshape(-1)[flat] = nz_val
    return bt.T, constant


def _standardise_sparse(
    data: np.ndarray, seg: np.ndarray, indptr: np.ndarray, n: int, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise the genes of a sparse column block: returns ``(zero_value, nz_values,
    constant)`` — each gene's standardised value for its zeros, the standardised value of
    every non-zero entry, and the constant-gene mask (their values are 0)."""
    c = len(indptr) - 1
    nnz = np.diff(indptr)
    n_zero = n - nnz
    lowest, highest = _value_range(data)
    if kind == "spearman":
        lowest, highest = min(lowest, 0.0), max(highest, 0.0)  # the implicit zeros
        codes = _integer_codes(data, lowest, highest, _TABLE_ELEMENTS / c)
        if codes is not None:  # integer data (counts): count table, no sort
            span, zero_bin = int(highest - lowest) + 1, int(-lowest)
            codes += seg * span
            cnt = np.bincount(codes, minlength=c * span).reshape(c, span).astype(np.float64)
            cnt[:, zero_bin] += n_zero
            std, constant = _standardise_table(cnt, n, axis=1)
            return std[:, zero_bin].copy(), std.reshape(-1)[codes], constant
        nz_rank, zero_rank = _sorted_ranks(data, seg, indptr, n)
        centre = (n + 1) / 2.0  # average ranks always sum to n (n + 1) / 2
        zero_c, nz_c = zero_rank - centre, nz_rank - centre
        ss = np.bincount(seg, weights=nz_c * nz_c, minlength=c) + n_zero * zero_c**2
        constant = ss == 0  # exact: an all-tied gene sits exactly at the centre
    else:
        mean = np.bincount(seg, weights=data, minlength=c) / n
        zero_c, nz_c = -mean, data - mean[seg]
        ss = np.bincount(seg, weights=nz_c * nz_c, minlength=c) + n_zero * mean**2
        constant = nnz == 0
        if (nnz == n).any():  # a fully detected gene may still be constant
            filled = np.flatnonzero(nnz)
            starts = indptr[filled]  # consecutive non-empty segments tile data exactly
            same = np.minimum.reduceat(data, starts) == np.maximum.reduceat(data, starts)
            constant[filled] = same & (nnz[filled] == n)
        constant |= ss <= 0
    inv = _inverse_norm(ss, constant)
    return zero_c * inv, nz_c * inv[seg], constant


def _sorted_ranks(
    data: np.ndarray, seg: np.ndarray, indptr: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, ties averaged as ``scipy.stats.rankdata``) of each gene's
    values among all ``n`` cells, by sorting.

    ``data[indptr[j]:indptr[j+1]]`` are gene ``j``'s explicit values (``seg`` gives the gene
    of each entry); its other ``n - nnz_j`` cells are implicit zeros. Returns ``(ranks,
    zero_rank)``: the rank of every explicit entry and the shared rank of each gene's
    implicit zeros.
    """
    c = len(indptr) - 1
    nnz = np.diff(indptr)
    n_zero = n - nnz
    if data.size == 0:
        return np.empty(0), (n_zero + 1) / 2.0
    order = np.empty(data.size, dtype=np.intp)
    for j in np.flatnonzero(nnz):
        lo, hi = indptr[j], indptr[j + 1]
        order[lo:hi] = np.argsort(data[lo:hi]) + lo
    sv = data[order]
    new = np.empty(sv.size, dtype=bool)
    new[0] = True
    np.not_equal(sv[1:], sv[:-1], out=new[1:])
    new[indptr[:-1][nnz > 0]] = True  # a gene's first entry starts a new tie group
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], sv.size)
    group = np.cumsum(new) - 1
    # order keeps every gene's entries inside its own segment, so seg[order] == seg
    ranks = np.empty(sv.size)
    ranks[order] = 0.5 * (starts + ends + 1)[group] - indptr[seg]
    positive = data > 0
    ranks[positive] += n_zero[seg[positive]]  # implicit zeros rank below positive values
    n_below_zero = np.bincount(seg[data < 0], minlength=c)
    return ranks, n_below_zero + (n_zero + 1) / 2.0


def _gram(z: np.ndarray, *, chunk_size: int | None) -> np.ndarray:
    """``zᵀ z`` for ``z`` of shape (cells, genes), C or F order: one SYRK call, or column
    blocks of the upper triangle (``chunk_size`` genes each) mirrored into the lower one.
    The result is exactly symmetric."""
    p = z.shape[1]
    if chunk_size is None or chunk_size >= p:
        return z.T @ z  # numpy dispatches aᵀ a to BLAS syrk
    out = np.empty((p, p), dtype=z.dtype)
    for a in range(0, p, chunk_size):
        b = min(a + chunk_size, p)
        blk = z[:, :b].T @ z[:, a:b]  # rows 0..b, columns a..b
        out[:a, a:b] = blk[:a]
        out[a:b, :a] = blk[:a].T
        diag = blk[a:b]
        out[a:b, a:b] = (diag + diag.T) / 2
    return out


# --------------------------------------------------------------------------------------
# AnnData access (shared with the gene-level baselines)
# --------------------------------------------------------------------------------------
def _count_matrix(adata: Any, counts: str) -> Any:
    """``adata.X`` or ``adata.layers[counts]`` (backed datasets are returned unread)."""
    if counts == "X":
        if adata.X is None:
            raise ValueError("adata.X is empty; pass counts=<layer name> holding the counts.")
        return adata.X
    if counts not in adata.layers:
        known = ", ".join(repr(k) for k in adata.layers.keys()) or "none"
        raise ValueError(
            f"counts={counts!r} is neither 'X' nor a layer of the AnnData (layers: {known})."
        )
    return adata.layers[counts]


def _resolve_genes(
    adata: Any, genes: Sequence[str] | pd.Index | None
) -> tuple[np.ndarray, pd.Index]:
    """Column positions and names of ``genes`` in ``adata.var_names`` (all genes when
    None), in the requested order; a ``ValueError`` lists the missing ones."""
    var_names = pd.Index(adata.var_names).astype(str)
    if var_names.has_duplicates:
        dup = var_names[var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"adata.var_names has duplicated genes {dup}; make them unique first "
            "(adata.var_names_make_unique())."
        )
    if genes is None:
        return np.arange(len(var_names)), var_names
    wanted = pd.Index(genes if not isinstance(genes, str) else [genes]).astype(str)
    if wanted.has_duplicates:
        dup = wanted[wanted.duplicated()].unique()[:5].tolist()
        raise ValueError(f"genes contains duplicates {dup}; pass each gene once.")
    idx = var_names.get_indexer(wanted)
    if (idx < 0).any():
        missing = wanted[idx < 0]
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(
            f"{len(missing)} of the requested genes are not in adata.var_names: "
            f"{missing[:10].tolist()}{more}."
        )
    return idx, wanted


def _iter_row_blocks(
    matrix: Any, n_obs: int, row_chunk: int
) -> Iterator[sp.csr_matrix | np.ndarray]:
    """Consecutive row blocks ``matrix[a:b]`` (works for in-memory and backed AnnData
    matrices) as float64 CSR or dense arrays, validated finite."""
    if row_chunk < 1:
        raise ValueError(f"row_chunk must be a positive number of cells, got {row_chunk}.")
    for a in range(0, n_obs, row_chunk):
        block = matrix[a : min(a + row_chunk, n_obs)]
        if sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
            values = block.data
        else:
            block = np.asarray(block, dtype=np.float64)
            values = block
        if not np.isfinite(values).all():
            raise ValueError(
                "The count matrix contains NaN or infinite values; expected raw counts."
            )
        yield block


def _transform_block(
    block: sp.csr_matrix | np.ndarray, gene_idx: np.ndarray, transform: str
) -> sp.csr_matrix:
    """Select ``gene_idx`` columns of a (cells × all genes) count block and apply the
    transform: ``raw`` = as is; ``log1p`` = scale each cell to :data:`TARGET_SUM` total
    counts (over all genes; an all-zero cell stays zero) then ``log1p``."""
    if transform == "raw":
        sel = block[:, gene_idx]
        return sp.csr_matrix(sel)
    if (block.data if is_sparse(block) else block).min(initial=0.0) < 0:
        raise ValueError(
            "transform='log1p' needs non-negative counts but the matrix has negative values "
            "(already scaled data?); pass raw counts or use transform='raw'."
        )
    totals = np.asarray(block.sum(axis=1)).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    if sp.issparse(block):
        sel = sp.csr_matrix(block[:, gene_idx])
        sel.data *= np.repeat(scale, np.diff(sel.indptr))
        np.log1p(sel.data, out=sel.data)
        return sel
    return sp.csr_matrix(np.log1p(block[:, gene_idx] * scale[:, None]))


def _expression_matrix(
    adata: Any,
    *,
    counts: str,
    transform: str,
    gene_idx: np.ndarray,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> sp.csc_matrix:
    """The (cells × selected genes) transformed expression as a canonical float64 CSC
    matrix without explicit zeros, read ``row_chunk`` cells at a time."""
    if transform not in ("log1p", "raw"):
        raise ValueError(f"transform must be 'log1p' or 'raw', got {transform!r}.")
    matrix = _count_matrix(adata, counts)
    blocks = [
        _transform_block(block, gene_idx, transform)
        for block in _iter_row_blocks(matrix, adata.n_obs, row_chunk)
    ]
    if not blocks:
        raise ValueError("The AnnData has no cells.")
    out = sp.vstack(blocks, format="csc")
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


# --------------------------------------------------------------------------------------
# AnnData-level scorer
# --------------------------------------------------------------------------------------
def coexpression(
    adata: Any,
    *,
    method: Method = "spearman",
    transform: Transform = "log1p",
    counts: str = "X",
    genes: Sequence[str] | pd.Index | None = None,
    min_cells: int = 3,
    dtype: np.dtype | type = np.float32,
    chunk_size: int | None = None,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> EdgeScores:
    """Co-expression edges: correlation of every gene pair over the cells of ``adata``.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or a layer; may be opened ``backed="r"`` (rows are
        then read ``row_chunk`` cells at a time).
    method
        ``"spearman"`` (rank correlation, the paper's correlation edge) or ``"pearson"``.
    transform
        ``"log1p"``: scale each cell to 10,000 total counts (over all genes), then
        ``log1p`` (``scanpy.pp.normalize_total(target_sum=1e4)`` + ``log1p``);
        ``"raw"``: the counts as they are.
    counts
        ``"X"`` or the name of the layer holding the counts.
    genes
        Genes to score, in this order (default: all of ``var_names``). Missing genes are
        an error that lists them.
    min_cells
        Genes detected (non-zero) in fewer cells get NaN rows and columns; they are listed
        in ``params["low_detection_genes"]``. Constant genes (zero variance) are NaN as
        well (``params["constant_genes"]``).
    dtype
        Output dtype (``float32`` by default: 20,000 genes = 1.6 GB; see
        :func:`spearman_matrix`).
    chunk_size, row_chunk
        Genes per block in the kernel; cells per read from the AnnData.

    Returns
    -------
    Undirected :class:`EdgeScores` (``method`` = ``"spearman"`` / ``"pearson"``), symmetric
    scores with NaN diagonal, ``n_cells`` = number of cells, ``coverage`` = ``int32``
    number of cells in which both genes are non-zero, and ``params`` recording transform,
    counts, min_cells, dtype and the NaN genes.
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}.")
    if min_cells < 0:
        raise ValueError(f"min_cells must be >= 0, got {min_cells}.")
    gene_idx, names = _resolve_genes(adata, genes)
    expr = _expression_matrix(
        adata, counts=counts, transform=transform, gene_idx=gene_idx, row_chunk=row_chunk
    )
    kernel = spearman_matrix if method == "spearman" else pearson_matrix
    scores = kernel(expr, chunk_size=chunk_size, dtype=dtype)
    constant = np.isnan(np.diagonal(scores)).copy()
    low = np.diff(expr.indptr) < min_cells
    scores[low, :] = np.nan
    scores[:, low] = np.nan
    np.fill_diagonal(scores, np.nan)
    coverage = cooccurrence_counts(expr, chunk_size=chunk_size)
    return EdgeScores(
        scores=scores,
        genes=names,
        method=method,
        n_cells=int(adata.n_obs),
        coverage=coverage,
        directed=False,
        params={
            "transform": transform,
            "counts": counts,
            "min_cells": int(min_cells),
            "dtype": np.dtype(dtype).name,
            "target_sum": TARGET_SUM if transform == "log1p" else None,
            "low_detection_genes": names[low].tolist(),
            "constant_genes": names[constant & ~low].tolist(),
        },
    )


@register_scorer("coexpression")
def _coexpression_scorer(
    adata: Any, *, genes: Sequence[str] | None = None, seed: int = 0, **params: Any
) -> list[EdgeScores]:
    """Registry entry: ``[coexpression(adata, genes=genes, **params)]`` (deterministic;
    ``seed`` is accepted for the common scorer signature and unused)."""
    return [coexpression(adata, genes=genes, **params)]


__all__ = [
    "TARGET_SUM",
    "coexpression",
    "cooccurrence_counts",
    "pearson_matrix",
    "spearman_matrix",
]
