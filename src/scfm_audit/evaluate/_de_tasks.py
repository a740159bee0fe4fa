"""The DE engine's passes as tasks on a run's executor (local or a Dask cluster).

A thin layer over :mod:`~scfm_audit.evaluate._de`: it maps the engine's own chunk
functions over pieces of the data and merges what comes back in a fixed order.

* Moments (every method): the cells are cut into consecutive row chunks of
  ``chunk_size`` rows; a task runs the compiled ``moments_chunk`` over its rows and
  returns the per (group, gene) sums, sums of squares and non-zero counts of the groups
  it saw. They are added into the (K, G) totals in chunk order: counts exactly, float
  sums in one fixed order whichever executor ran the chunks.
* Wilcoxon: the genes are cut into one block per worker thread; a task runs the engine's
  ``_rank_sums`` on its block (one pass over the rows for those genes) and returns its U
  and tie terms — every gene is ranked whole inside one task, so these are exact whatever
  the blocks. Every block reads all the rows: the pass is worth distributing when ranking
  outweighs reading (many perturbations and genes), not on two workers of one disk.

Where the rows come from: a backed ``.h5ad`` (``datasets.<name>.backed: true``) is read by
every worker from its path (the file must be on storage the workers share; nothing is
shipped); otherwise the count matrix is sent to every worker once. Each task's numba
pool has its worker's threads.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from scfm_audit._executor import Executor, ExecutorError, match_worker_threads, tracked

__all__ = ["CountsSource", "distributed_de"]


class _Counts:
    """The count matrix alone, where the engine expects an AnnData (``X``, ``n_obs``,
    ``n_vars``): what is sent to workers for a dataset held in memory."""

    def __init__(self, X: Any) -> None:
        self.X = X
        self.n_obs, self.n_vars = X.shape
        self.layers: dict[str, Any] = {}


_OPEN: dict[tuple[str, int, int], Any] = {}
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class CountsSource:
    """Where a task reads counts: ``path`` of a backed ``.h5ad`` (opened once per worker
    process, read-only) or ``counts`` (the matrix alone); ``spec`` says how to read that
    object. ``local``: the dataset and its spec in the process that made the source
    (never travel)."""

    spec: Any
    path: str | None = None
    counts: _Counts | None = None
    local: tuple[Any, Any] | None = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CountsSource, (self.spec, self.path, self.counts))

    @classmethod
    def of(cls, adata: Any, spec: Any) -> CountsSource:
        from scfm_audit.evaluate._de import _counts_source

        filename = getattr(adata, "filename", None)
        if getattr(adata, "isbacked", False) and not adata.is_view and filename is not None:
            return cls(spec, path=str(filename), local=(adata, spec))
        X = _counts_source(adata, spec)
        if not (sparse.issparse(X) or isinstance(X, np.ndarray)):
            X = X[:]  # a backed view: its rows in memory
        return cls(replace(spec, counts="X"), counts=_Counts(X), local=(adata, spec))

    def open(self) -> tuple[Any, Any]:
        """An AnnData-like object for the engine's readers, and the spec to read it."""
        if self.local is not None:
            return self.local
        if self.counts is not None:
            return self.counts, self.spec
        if self.path is None:
            raise ValueError("CountsSource without counts or path.")
        st = Path(self.path).stat()
        key = (self.path, st.st_mtime_ns, st.st_size)
        with _OPEN_LOCK:
            if key not in _OPEN:
                import anndata as ad

                _OPEN[key] = ad.read_h5ad(self.path, backed="r")
            return _OPEN[key], self.spec


def _rows(adata: Any, spec: Any, a: int, b: int) -> Iterator[tuple[int, Any, Any, Any]]:
    """``(first_row, data, indices, indptr)`` of rows ``a`` … ``b`` − 1, as stored, in
    blocks of at most ``MAX_BLOCK_NNZ`` values (in-memory and backed CSR are sliced
    without conversion; anything else is converted to CSR)."""
    from scfm_audit.evaluate._de import MAX_BLOCK_NNZ, _counts_source

    X = _counts_source(adata, spec)
    group = getattr(X, "group", None)
    if sparse.issparse(X) and X.format == "csr":
        p, data, indices = np.asarray(X.indptr[a : b + 1], dtype=np.int64), X.data, X.indices
    elif group is not None and getattr(X, "format", None) == "csr":
        p = np.asarray(group["indptr"][a : b + 1], dtype=np.int64)
        data, indices = group["data"], group["indices"]
    else:
        block = X[a:b]
        M = sparse.csr_matrix(block if sparse.issparse(block) else np.asarray(block))
        yield a, M.data, M.indices, M.indptr
        return
    r, m = 0, b - a
    while r < m:  # at most MAX_BLOCK_NNZ values per block, at least one row
        e = min(m, max(r + 1, int(np.searchsorted(p, p[r] + MAX_BLOCK_NNZ, "right")) - 1))
        lo, hi = int(p[r]), int(p[e])
        yield a + r, np.asarray(data[lo:hi]), np.asarray(indices[lo:hi]), p[r : e + 1] - lo
        r = e


def _moments_task(
    rows: tuple[int, int],
    *,
    source: CountsSource,
    group: np.ndarray,
    gmap: np.ndarray,
    G: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows ``a`` … ``b`` − 1: the groups seen, their sums, sums of squares and non-zero
    counts (each (groups seen, G)) and the number of used rows."""
    from scfm_audit.evaluate import _de_kernels as _k
    from scfm_audit.evaluate._de import (
        Block,
        _gene_ranges,
        _owners,
        _parallel_pass,
        _threads,
    )

    match_worker_threads()
    a, b = rows
    codes = group[a:b]
    seen = np.unique(codes[codes >= 0])
    local = np.where(codes >= 0, np.searchsorted(seen, codes), -1).astype(np.int64)
    s = np.zeros((seen.size, G))
    ss = np.zeros((seen.size, G))
    cnt = np.zeros((seen.size, G), dtype=np.int64)
    adata, spec = source.open()
    # the engine's pass on this chunk: its threads own groups or gene ranges of them
    T = _threads()
    owner = _owners(np.bincount(local[local >= 0], minlength=seen.size).astype(float), T)
    spans = _gene_ranges(G, T)

    def part(blk: Block, t: int) -> None:
        r, data, indices, indptr = blk
        c = local[r - a : r - a + indptr.size - 1]
        lo, hi = spans[t]
        _k.moments_part(data, indices, indptr, c, gmap, owner, t, lo, hi, s, ss, cnt)

    _parallel_pass(_rows(adata, spec, a, b), part, T)  # _rows yields fresh arrays
    return seen, s, ss, cnt, int((codes >= 0).sum())


def _ranks_task(
    genes: tuple[int, int],
    *,
    source: CountsSource,
    lay: Any,
    n: np.ndarray,
    cnt: np.ndarray,
    gene_idx: np.ndarray,
    chunk_size: int,
    max_rank_values: int,
) -> tuple[np.ndarray, np.ndarray]:
    """U and tie terms (K, genes of the block) by the engine's ``_rank_sums``."""
    from scfm_audit.evaluate._de import _rank_sums

    match_worker_threads()
    g0, g1 = genes
    adata, spec = source.open()
    u1: np.ndarray
    ties: np.ndarray
    u1, ties = _rank_sums(
        adata,
        spec,
        lay,
        n,
        np.ascontiguousarray(cnt[:, g0:g1]),
        gene_idx[g0:g1],
        chunk_size,
        None,
        max_rank_values,
    )
    return u1, ties


def distributed_de(
    executor: Executor,
    adata: Any,
    spec: Any,
    lay: Any,
    gene_idx: np.ndarray,
    n: np.ndarray,
    *,
    method: str,
    chunk_size: int,
    tie_correct: bool,
    max_rank_values: int,
    progress: Callable[..., Any] | None = None,
) -> pd.DataFrame:
    """The engine's result (``differential_expression`` after its layout), its passes run
    as tasks on ``executor`` (see the module docstring)."""
    from scfm_audit.evaluate._de import _table, _test_columns

    G, K = gene_idx.size, len(lay.groups)
    gmap = np.full(adata.n_vars, -1, dtype=np.int64)
    gmap[gene_idx] = np.arange(G)
    source = CountsSource.of(adata, spec)
    used = lay.group >= 0
    N = adata.n_obs
    chunks = [
        (a, min(a + chunk_size, N))
        for a in range(0, N, chunk_size)
        if used[a : a + chunk_size].any()
    ]
    s = np.zeros((K, G))
    ss = np.zeros((K, G))
    cnt = np.zeros((K, G), dtype=np.int64)
    merged = cells = 0
    parts = executor.map_ordered(
        _moments_task,
        chunks,
        shared={"source": source, "group": lay.group, "gmap": gmap, "G": G},
        label="de-moments",
    )
    for i, (seen, ps, pss, pcnt, pcells) in tracked(
        parts, len(chunks), progress, f"DE ({method}): moments ({len(chunks)} chunks)"
    ):
        if i != merged:
            raise ExecutorError(f"DE moments: chunk {i} arrived in place of {merged}.")
        s[seen] += ps
        ss[seen] += pss
        cnt[seen] += pcnt
        merged += 1
        cells += pcells
    if merged != len(chunks) or cells != int(used.sum()):
        raise ExecutorError(
            f"DE moments: {merged} of {len(chunks)} row chunks ({cells} of {int(used.sum())} "
            "cells) were merged; a partial result is never used."
        )
    u1 = ties = None
    if method == "wilcoxon":
        u1, ties = np.zeros((K, G)), np.zeros((K, G))
        blocks = _gene_blocks(G, executor.parallelism)
        ranked = executor.map_ordered(
            _ranks_task,
            blocks,
            shared={
                "source": source,
                "lay": lay,
                "n": n.astype(np.int64),
                "cnt": cnt,
                "gene_idx": gene_idx,
                "chunk_size": chunk_size,
                "max_rank_values": max_rank_values,
            },
            label="de-ranks",
        )
        done = 0
        desc = f"DE (wilcoxon): ranks ({len(blocks)} gene blocks)"
        for i, (bu, bt) in tracked(ranked, len(blocks), progress, desc):
            g0, g1 = blocks[i]
            u1[:, g0:g1], ties[:, g0:g1] = bu, bt
            done += 1
        if done != len(blocks):
            raise ExecutorError(f"DE ranks: {done} of {len(blocks)} gene blocks came back.")
    cols = _test_columns(lay, n, s, ss, u1, ties, method, tie_correct)
    del s, ss, u1, ties  # spent: free them before the table grows
    return _table(lay, n, cols, np.asarray(adata.var_names)[gene_idx], method, tie_correct)


def _gene_blocks(G: int, parallelism: int) -> list[tuple[int, int]]:
    """One block per worker thread (one in this process; the engine's own blocking by
    ``max_rank_values`` inside each): every block reads all the rows again, and reading
    is most of a block's cost (measured: ~6 of 8 s per block of a 150,000-cell screen), so
    more blocks than threads only read more. U and the tie terms of a gene do not depend
    on the blocks."""
    k = max(1, min(G, parallelism))
    cuts = np.linspace(0, G, k + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts) if b > a]
