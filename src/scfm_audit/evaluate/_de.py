"""Differential expression of every perturbation against its controls, vectorised over
perturbations and genes and read in row chunks, and responder labels.

Contract (used by ``perturbation_responders``, ``perturbation_prediction``,
``incremental_value``, ``context_dependence``, ``in_silico_perturbation`` and
``head_ablation``):

* :func:`differential_expression` → a long DataFrame, one row per (arm, perturbation, gene)
  with columns :data:`DE_COLUMNS`. ``arm`` is the modality (``CRISPRi``/``CRISPRa``) when the
  dataset has a modality column, else ``"all"``; each arm's perturbations are compared with
  that arm's own controls.
* :func:`responder_labels` adds ``responder`` (bool) from thresholds on |log2 FC| and q,
  where q is ``q_within`` (BH over the genes of one perturbation, the paper's scope) or
  ``q_screen`` (BH over every (perturbation, gene) row of the result: it changes when
  perturbations or genes are added or removed; ``q_within`` changes only with the gene set).

Data scale: log-normalised expression (counts / total × 10,000 with the total over *all*
genes of the cell, then ``log1p``), the paper's and scanpy's default; ``genes`` selects
columns after normalisation. ``log2fc`` follows scanpy's ``rank_genes_groups``:
``log2(expm1(mean_pert) + 1e-9) − log2(expm1(mean_ctrl) + 1e-9)``.

Tests (per arm × perturbation × gene, two-sided):

* ``welch`` — H0: equal mean log-normalised expression in perturbed and control cells;
  Welch t with Welch–Satterthwaite df (scanpy ``method="t-test"``, reference = control).
* ``wilcoxon`` — H0: the perturbed and control log-normalised values are exchangeable
  (Mann–Whitney U, normal approximation without continuity correction, ties counted half:
  scanpy ``method="wilcoxon"``, reference = control). ``tie_correct=True`` (default)
  corrects the variance of U for ties (scanpy ``tie_correct=True``, scipy's asymptotic
  test); ``False`` is scanpy's default, conservative when most values are zeros (one
  large tie block). The table says which (``attrs["de"]["tie_correct"]``). ``statistic``
  is the z score; where every value of a gene ties (variance 0) z and p are NaN.

Scale. Counts are read once in contiguous row chunks (``chunk_size`` cells and at most
:data:`MAX_BLOCK_NNZ` values; backed ``.h5ad`` never loads the whole matrix and is read
into a few reused buffers, ahead of the compute — straight from the file where its
arrays are stored unfiltered, :mod:`._de_read`; an in-memory CSR matrix is read in
place). Per chunk, one compiled pass over the stored non-zeros (``_de_kernels``, numba,
on ``numba.get_num_threads()`` threads, each handling whole groups or, for the controls,
a gene range) normalises and ``log1p``-s each value (a small integer count once per
row) and adds it to the per (group, gene) sum, sum of squares and (Wilcoxon) non-zero
count — no intermediate the size of the chunk, and zeros cost nothing. Welch needs
nothing else; its tests and the table are built in bounded blocks straight into the
result's columns. The Wilcoxon option then
scatters the non-zeros of the used cells, gene-major and group by group (one more pass
over the chunks, in gene blocks of at most ``max_rank_values`` values), and ranks each
gene on its own in parallel: every group's non-zeros sorted, each perturbed value placed
among its controls by binary search, the zeros one tie block whose share of U (½ per
perturbed-zero × control-zero pair) and of the tie term are closed form.

Options: ``max_control_cells`` (a seeded subsample of each arm's controls),
``pseudobulk_by`` (an obs column such as guide or donor: counts are summed per
(perturbation, unit) and per (control, unit), the sums normalised as above, and the units
are the replicates of the test; every group needs ≥ ``min_units`` units).
"""

from __future__ import annotations

import itertools
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import sparse, special

if TYPE_CHECKING:
    from anndata import AnnData

    from scfm_audit._typing import ProgressFn
    from scfm_audit.data._dataset import DatasetSpec

#: counts and sums of the tests' arithmetic: per-group arrays, or one group's scalar
_Values = NDArray[np.float64] | float

__all__ = [
    "DE_COLUMNS",
    "DEInputError",
    "differential_expression",
    "responder_labels",
    "welch_from_moments",
]

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
WILCOXON_H0 = (
    "perturbed and control log-normalised expression of the gene are exchangeable "
    "(Mann–Whitney U, normal approximation, ties counted half, two-sided)"
)
PSEUDOBULK_NOTE = "units (pseudobulk samples) are the replicates, not cells"


class DEInputError(ValueError):
    """The data or the options cannot give a DE result (the message says what to change)."""


# ----------------------------------------------------------------------------- layout
@dataclass
class _Layout:
    """Which cells enter which group. ``group``: per cell, the row in ``groups`` (−1: not
    used). ``groups``: one row per group (arm, perturbation, control) in arm order, each
    arm's control row first."""

    group: np.ndarray
    groups: pd.DataFrame
    controls_available: dict[str, int]


def _layout(
    adata: AnnData,
    spec: DatasetSpec,
    perturbations: Sequence[str] | None,
    max_control_cells: int | None,
    seed: int,
) -> _Layout:
    from scfm_audit.data._dataset import _perturbation_column, control_mask

    labels = _perturbation_column(adata, spec).astype(object)
    known = labels.notna().to_numpy()
    lab = labels.to_numpy()
    ctrl = control_mask(adata, spec)
    if spec.modality is not None and spec.modality in adata.obs:
        arms = adata.obs[spec.modality].astype(str).to_numpy()
    else:
        arms = np.full(adata.n_obs, "all", dtype=object)
    group = np.full(adata.n_obs, -1, dtype=np.int64)
    rows: list[dict[str, Any]] = []
    available: dict[str, int] = {}
    wanted = None if perturbations is None else set(map(str, perturbations))
    for arm in sorted(pd.unique(arms)):
        in_arm = arms == arm
        c = np.flatnonzero(ctrl & in_arm)
        pert_rows = np.flatnonzero(in_arm & ~ctrl & known)
        names = np.unique(lab[pert_rows].astype(str))
        if wanted is not None:
            names = names[np.isin(names, list(wanted))]
        if c.size == 0 or names.size == 0:
            continue
        available[str(arm)] = int(c.size)
        if max_control_cells is not None and c.size > max_control_cells:
            rng = np.random.default_rng([seed, zlib.crc32(str(arm).encode())])
            c = np.sort(rng.choice(c, int(max_control_cells), replace=False))
        k0 = len(rows)
        group[c] = k0
        rows.append({"arm": str(arm), "perturbation": None, "control": True})
        codes = pd.Categorical(lab[pert_rows].astype(str), categories=names).codes
        sel = codes >= 0
        group[pert_rows[sel]] = k0 + 1 + codes[sel]
        rows.extend({"arm": str(arm), "perturbation": str(n), "control": False} for n in names)
    return _Layout(group, pd.DataFrame(rows), available)


# ----------------------------------------------------------------------------- reading
def _counts_source(adata: AnnData, spec: DatasetSpec) -> Any:
    X = adata.X if spec.counts == "X" else adata.layers.get(spec.counts)
    if X is None:
        from scfm_audit.data._dataset import counts_matrix

        counts_matrix(adata, spec)  # raises the dataset's own clear error
    return X


def _chunks(
    adata: AnnData,
    spec: DatasetSpec,
    keep: np.ndarray,
    chunk_size: int,
    progress: ProgressFn | None,
    description: str,
) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
    """``(rows, counts)`` for each contiguous chunk of cells holding a used cell (``keep``);
    ``counts`` is CSR float64 of the used rows only, all genes."""
    X = _counts_source(adata, spec)
    n = adata.n_obs
    starts = [a for a in range(0, n, chunk_size) if keep[a : a + chunk_size].any()]
    it = starts if progress is None else progress(starts, description=description)
    for a in it:
        b = min(a + chunk_size, n)
        block = X[a:b]
        block = sparse.csr_matrix(block) if sparse.issparse(block) else np.asarray(block)
        used = np.flatnonzero(keep[a:b])
        if used.size < b - a:
            block = block[used]
        yield a + used, block


#: at most this many stored values per block read by the compiled passes (8 bytes each
#: as float32 counts + int32 indices): each of the :data:`READ_AHEAD` read buffers stays
#: ~8 MiB whatever chunk_size
MAX_BLOCK_NNZ = 1 << 20

#: blocks of a backed matrix in flight at once (read ahead by the calling thread while the
#: threads of a pass work on earlier ones; their buffers are reused)
READ_AHEAD = 3

Block = tuple[int, np.ndarray, np.ndarray, np.ndarray]


def _raw_chunks(
    adata: AnnData,
    spec: DatasetSpec,
    keep: np.ndarray,
    chunk_size: int,
    progress: ProgressFn | None,
    description: str,
    ring: int = 1,
) -> Iterator[Block]:
    """``(first_row, data, indices, indptr)``: the CSR arrays, as stored (no dtype change),
    of contiguous row blocks holding a used cell (``keep``); rows not kept stay in the
    block and are skipped by the kernels. An in-memory CSR matrix is one block, read in
    place. A backed CSR matrix is read straight from its HDF5 / zarr arrays in blocks of
    at most ``chunk_size`` rows and :data:`MAX_BLOCK_NNZ` values, into ``ring`` buffers
    used in turn: block b overwrites block b − ``ring``, so the caller must be done with
    that one before asking for the next (:func:`_parallel_pass`). Anything else (CSC,
    dense) in ``chunk_size`` rows converted to CSR."""
    X = _counts_source(adata, spec)
    n = adata.n_obs
    if sparse.issparse(X) and X.format == "csr":
        parts = [(0, X)]
        it = parts if progress is None else progress(parts, description=description)
        for a, M in it:
            yield a, M.data, M.indices, M.indptr
        return
    group = getattr(X, "group", None)
    if group is not None and getattr(X, "format", None) == "csr":
        ptr = np.asarray(group["indptr"][:], dtype=np.int64)
        spans: list[tuple[int, int]] = []
        a = 0
        while a < n:
            # rows a..b: at most chunk_size rows and MAX_BLOCK_NNZ values (≥ 1 row)
            b = min(a + chunk_size, int(np.searchsorted(ptr, ptr[a] + MAX_BLOCK_NNZ, "right")) - 1)
            b = max(b, a + 1)
            if keep[a:b].any():
                spans.append((a, b))
            a = b
        if not spans:
            return
        data, indices = group["data"], group["indices"]
        cap = max(int(ptr[b] - ptr[a]) for a, b in spans)
        bufs = [
            (np.empty(cap, dtype=data.dtype), np.empty(cap, dtype=indices.dtype))
            for _ in range(max(1, ring))
        ]
        read_data, read_indices = _range_reader(data), _range_reader(indices)
        it = spans if progress is None else progress(spans, description=description)
        for i, (a, b) in enumerate(it):
            lo, hi = int(ptr[a]), int(ptr[b])
            dbuf, ibuf = (x[: hi - lo] for x in bufs[i % len(bufs)])
            read_data(lo, hi, dbuf)
            read_indices(lo, hi, ibuf)
            yield a, dbuf, ibuf, ptr[a : b + 1] - lo
        return
    starts = [a for a in range(0, n, chunk_size) if keep[a : a + chunk_size].any()]
    start_it = starts if progress is None else progress(starts, description=description)
    for a in start_it:
        block = X[a : min(a + chunk_size, n)]
        block = (
            sparse.csr_matrix(block)
            if sparse.issparse(block)
            else sparse.csr_matrix(np.asarray(block))
        )
        yield a, block.data, block.indices, block.indptr


def _range_reader(ds: Any) -> Callable[[int, int, np.ndarray], None]:
    """``read(lo, hi, out)``: ``out[:] = ds[lo:hi]``, straight from the file where the
    dataset's stored bytes are its values (:mod:`._de_read`), else by h5py / zarr."""
    from scfm_audit.evaluate._de_read import direct_reader

    direct = direct_reader(ds)
    if direct is not None:
        return direct.read
    return lambda lo, hi, out: _read_into(ds, lo, hi, out)


def _read_into(ds: Any, lo: int, hi: int, out: np.ndarray) -> None:
    """``out[:] = ds[lo:hi]`` for a 1-d HDF5 (``read_direct``: no intermediate array) or
    zarr array."""
    if hi <= lo:
        return
    if hasattr(ds, "read_direct"):
        ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])
    else:
        out[...] = ds[lo:hi]


def _owners(n: np.ndarray, T: int) -> np.ndarray:
    """Which of ``T`` threads handles the rows of each group in a pass (``n``: cells per
    group): a group larger than a quarter of one thread's share of the cells is shared by
    all (−1; each thread takes one gene range of it), the others are dealt largest first
    to the thread with the fewest cells so far, so that the threads' work is even."""
    owner = np.full(n.size, -1, dtype=np.int64)
    if T < 2:
        owner[:] = 0
        return owner
    big = n > n.sum() / (4 * T)
    load = np.zeros(T)
    for k in np.argsort(-n, kind="stable"):
        if big[k]:
            continue
        t = int(np.argmin(load))
        owner[k] = t
        load[t] += n[k]
    return owner


@dataclass
class _PassState:
    """What the threads of :func:`_parallel_pass` share (under its condition)."""

    queue: list[Block | None]  # blocks read so far; None once every thread is done
    done: list[int]  # per block: threads done with it
    complete: int = 0  # blocks 0 … complete − 1 are done by every thread
    finished: bool = False  # the reader has no more blocks
    error: BaseException | None = None


def _read_ahead(adata: AnnData, spec: DatasetSpec) -> int:
    """Blocks a pass may hold at once: :data:`READ_AHEAD` for CSR counts (backed: bounded
    reused buffers; in memory: one block, read in place), 1 for anything else, whose
    blocks are fresh CSR conversions of ``chunk_size`` rows (one at a time, as before)."""
    X = _counts_source(adata, spec)
    csr = (sparse.issparse(X) and X.format == "csr") or (
        getattr(X, "group", None) is not None and getattr(X, "format", None) == "csr"
    )
    return READ_AHEAD if csr else 1


def _parallel_pass(
    blocks: Iterator[Block],
    work: Callable[[Block, int], None],
    T: int,
    ahead: int = READ_AHEAD,
) -> None:
    """``work(block, t)`` for every block and every t in ``range(T)``, on T threads (t = 0
    alone when T = 1), while the calling thread reads the blocks: block b is asked for
    only once every thread is done with block b − ``ahead``, so ``blocks`` may reuse that
    many buffers (:func:`_raw_chunks` ``ring``).

    Each thread goes through the blocks at its own pace (up to ``ahead`` blocks apart),
    waiting on a condition (no spinning) only when it has caught up with the reader: on a
    busy machine a descheduled thread does not hold the others at a barrier per block."""
    if T < 2:
        for blk in blocks:
            work(blk, 0)
        return
    import threading

    cond = threading.Condition()
    st = _PassState(queue=[], done=[])

    def worker(t: int) -> None:
        i = 0
        try:
            while True:
                with cond:
                    while i >= len(st.queue) and not st.finished and st.error is None:
                        cond.wait()
                    if st.error is not None or i >= len(st.queue):
                        return
                    blk = st.queue[i]
                if blk is None:  # cannot happen: released only once this thread is done
                    raise RuntimeError(f"block {i} was released before thread {t} read it")
                work(blk, t)
                with cond:
                    st.done[i] += 1
                    if st.done[i] == T:
                        st.queue[i] = None  # its buffer may be refilled
                        while st.complete < len(st.done) and st.done[st.complete] == T:
                            st.complete += 1
                        cond.notify_all()
                i += 1
        except BaseException as exc:  # re-raised by the calling thread
            with cond:
                st.error = exc
                cond.notify_all()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(T)]
    for th in threads:
        th.start()
    it = iter(blocks)
    try:
        b = 0
        while True:
            with cond:
                while st.complete < b - ahead + 1 and st.error is None:
                    cond.wait()
                if st.error is not None:
                    break
            try:
                blk = next(it)
            except StopIteration:
                break
            with cond:
                st.queue.append(blk)
                st.done.append(0)
                cond.notify_all()
            b += 1
    except BaseException as exc:
        with cond:
            st.error = exc
    finally:
        with cond:
            st.finished = True
            cond.notify_all()
        for th in threads:
            th.join()
    if st.error is not None:
        raise st.error


def _trim_heap() -> None:
    """Give memory freed by the passes back to the system now (glibc's ``malloc_trim``;
    elsewhere nothing). glibc keeps freed blocks of a few MiB (read buffers, the moments)
    in its heaps, where the table's larger columns do not fit: without this they stay in
    the process's resident memory at its peak (+34 MiB at 150,000 × 4,000 × 600)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
        pass


def _gene_ranges(G: int, T: int) -> list[tuple[int, int]]:
    return [(G * t // T, G * (t + 1) // T) for t in range(T)]


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _log1p_inplace(x: np.ndarray) -> None:
    """``np.log1p(x, out=x)`` in ``numba.get_num_threads()`` slices on a thread pool (the
    ufunc releases the GIL); numpy's log1p, not libm's, so that values tie as in scanpy."""
    T = _threads()
    if T < 2 or x.size < 1 << 20:
        np.log1p(x, out=x)
        return
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, x.size, T + 1).astype(np.int64)
    with ThreadPoolExecutor(T) as ex:
        list(
            ex.map(
                lambda ab: np.log1p(x[ab[0] : ab[1]], out=x[ab[0] : ab[1]]),
                itertools.pairwise(cuts),
            )
        )


def _log_normalise(X: Any) -> sparse.csr_matrix | np.ndarray:
    """counts / (total / 1e4) → log1p, row by row (total over all columns of ``X``), as
    float64; the same arithmetic as scanpy's ``normalize_total(target_sum=1e4)`` so that
    equal values (ties, which the Wilcoxon test counts) are equal bit for bit in both."""
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        tot = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
        div = np.where(tot > 0, tot / 1e4, 1.0)
        vals = np.divide(X.data, np.repeat(div, np.diff(X.indptr)), dtype=np.float64)
        np.log1p(vals, out=vals)
        return sparse.csr_matrix((vals, X.indices, X.indptr), shape=X.shape)
    X = np.asarray(X, dtype=float)
    tot = X.sum(axis=1)
    return np.log1p(X / np.where(tot > 0, tot / 1e4, 1.0)[:, None])


def _indicator(codes: np.ndarray, n_groups: int) -> sparse.csr_matrix:
    keep = codes >= 0
    return sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))),
        shape=(n_groups, codes.size),
    )


def _group_moments(Y: Any, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per-group n, sum and sum of squares (groups × genes) of the rows of ``Y`` (``codes``:
    each row's group, −1 = none). The sums are the indicator product (groups × cells) @
    (cells × genes); for sparse ``Y`` it is computed as one scatter-add of the non-zeros by
    (group, gene) with ``np.bincount`` — the same product, about 5× faster than scipy's
    sparse matmul here, whose output (groups × genes) is nearly dense."""
    keep = codes >= 0
    n = np.bincount(codes[keep], minlength=n_groups).astype(float)
    if not sparse.issparse(Y):
        ind = _indicator(codes, n_groups)
        Y = np.asarray(Y)
        return n, np.asarray(ind @ Y), np.asarray(ind @ (Y * Y))
    Y = sparse.csr_matrix(Y)
    G = Y.shape[1]
    row_code = np.repeat(codes.astype(np.int64), np.diff(Y.indptr))
    key = row_code * G + Y.indices
    vals = Y.data
    if not keep.all():
        used = row_code >= 0
        key, vals = key[used], vals[used]
    s = np.bincount(key, weights=vals, minlength=n_groups * G).reshape(n_groups, G)
    ss = np.bincount(key, weights=vals * vals, minlength=n_groups * G).reshape(n_groups, G)
    return n, s, ss


# ----------------------------------------------------------------------------- tests
def welch_from_moments(
    n1: _Values,
    s1: NDArray[np.float64],
    ss1: NDArray[np.float64],
    n0: _Values,
    s0: NDArray[np.float64],
    ss0: NDArray[np.float64],
) -> tuple[np.ndarray, ...]:
    """Welch means, t and two-sided p from group counts, sums and sums of squares
    (broadcasting: ``n1`` (P, 1), ``s1`` (P, G); control ``n0`` scalar, ``s0`` (G,)).
    Returns ``(mean1, mean0, t, p)``; t and p are NaN where both variances are 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m1, m0 = s1 / n1, s0 / n0
        v1 = np.maximum(ss1 - n1 * m1**2, 0) / (n1 - 1)
        v0 = np.maximum(ss0 - n0 * m0**2, 0) / (n0 - 1)
        a, b = v1 / n1, v0 / n0
        se2 = a + b
        t = (m1 - m0) / np.sqrt(se2)
        df = se2**2 / (a**2 / (n1 - 1) + b**2 / (n0 - 1))
        p = _two_sided_t(t, df)
    bad = ~(se2 > 0)
    t = np.where(bad, np.nan, t)
    p = np.where(bad, np.nan, p)
    return m1, m0, t, p


def _two_sided_t(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """``2 · t.sf(|t|, df)`` by ``scipy.special.stdtr`` (no scipy.stats argument checks),
    in two threads over rows when large (the ufunc releases the GIL; the incomplete beta
    function is the costliest step of a screen-wide Welch test)."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=float), np.asarray(df, dtype=float))
    out = np.empty(t.shape)
    if t.ndim != 2 or t.size < 1_000_000 or t.shape[0] < 2:
        with np.errstate(invalid="ignore"):
            out[...] = 2 * special.stdtr(df, -np.abs(t))
        return out

    def part(sl: slice) -> None:
        with np.errstate(invalid="ignore"):
            out[sl] = 2 * special.stdtr(df[sl], -np.abs(t[sl]))

    from concurrent.futures import ThreadPoolExecutor

    h = t.shape[0] // 2
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(part, (slice(0, h), slice(h, None))))
    return out


def mann_whitney_z(
    u1: _Values, n1: _Values, n0: _Values, *, ties: _Values | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """z and two-sided p of the Mann–Whitney U of group 1 (``u1`` = #pairs with group 1
    larger + ½ #ties) against ``n0`` controls, in scanpy's arithmetic (rank sum of group 1
    minus its mean, over the standard deviation). ``ties``: Σ t³ − t over the tie groups
    of the pooled sample, for the tie-corrected variance (scanpy ``tie_correct=True``,
    scipy's asymptotic test); ``None``: no tie correction (scanpy's default). Where every
    value ties (variance 0) z and p are NaN (scanpy reports z = 0, p = 1)."""
    N = n1 + n0
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = u1 + n1 * (n1 + 1) / 2.0
        tc = 1.0 if ties is None else np.maximum(1.0 - ties / (N**3 - N), 0.0)
        sd = np.sqrt(tc * n1 * n0 * (N + 1) / 12.0)
        z = (r1 - n1 * ((N + 1) / 2.0)) / sd
    return z, 2 * special.ndtr(-np.abs(z))


def _bh_rows(p: np.ndarray) -> np.ndarray:
    """BH within each row of ``p`` (NaN stays NaN and is not counted), vectorised."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p.copy()
    x = np.where(np.isnan(p), np.inf, p)
    order = np.argsort(x, axis=1)  # equal p get equal q whatever their order
    srt = np.take_along_axis(x, order, axis=1)
    m = np.isfinite(p).sum(axis=1, keepdims=True)
    rank = np.arange(1, p.shape[1] + 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = srt * m / rank
    q = np.minimum.accumulate(q[:, ::-1], axis=1)[:, ::-1]
    np.minimum(q, 1.0, out=q)
    out = np.empty_like(q)
    np.put_along_axis(out, order, q, axis=1)
    out[np.isnan(p)] = np.nan
    return out


# ----------------------------------------------------------------------------- engine
def differential_expression(
    adata: AnnData,
    spec: DatasetSpec | None = None,
    *,
    method: Literal["welch", "wilcoxon"] = "welch",
    perturbations: list[str] | None = None,
    genes: list[str] | None = None,
    max_control_cells: int | None = None,
    seed: int = 0,
    pseudobulk_by: str | None = None,
    min_units: int = 2,
    chunk_size: int = 20000,
    tie_correct: bool = True,
    max_rank_values: int = 2**28,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """DE of every perturbation (or ``perturbations``) against its arm's controls on
    ``genes`` (default: all; normalisation always uses every gene of a cell).

    Returns a long DataFrame with :data:`DE_COLUMNS`: ``q_within`` is BH over the genes of
    one perturbation (stable when other perturbations are added or removed), ``q_screen``
    BH over every row of the result (it depends on the whole screen and gene set).
    ``max_control_cells``: per arm, at most this many controls, a subsample seeded by
    ``seed`` and the arm (``n_control`` says how many were used). ``pseudobulk_by``: an obs
    column; counts are summed per (group, unit) and the units tested as replicates
    (``n_perturbed`` / ``n_control`` then count units); a group with fewer than
    ``min_units`` units is an error. ``tie_correct`` (Wilcoxon only): the variance of U
    corrected for ties (scanpy's ``tie_correct=True``, scipy's asymptotic Mann–Whitney);
    ``False`` is scanpy's default. ``max_rank_values`` (Wilcoxon only): at most this many
    non-zero values (8 bytes each) held at once; more genes are ranked in blocks, one
    pass over the data per block. ``progress``: ``progress(iterable, description=...)``
    wrapped around the chunks (e.g. a pipeline's progress bar).
    """
    from scfm_audit.data._dataset import get_spec

    if method not in ("welch", "wilcoxon"):
        raise DEInputError(f"unknown DE method {method!r}; use 'welch' or 'wilcoxon'.")
    if max_control_cells is not None and max_control_cells < 2:
        raise DEInputError(
            f"max_control_cells={max_control_cells} leaves no variance; use ≥ 2 or None (all)."
        )
    if chunk_size < 1:
        raise DEInputError(f"chunk_size={chunk_size} must be a positive number of cells.")
    spec = spec if spec is not None else get_spec(adata)
    gene_idx = _gene_index(adata, genes)
    lay = _layout(adata, spec, perturbations, max_control_cells, seed)
    if lay.groups.empty:
        return pd.DataFrame(columns=DE_COLUMNS)
    if pseudobulk_by is not None:
        return _pseudobulk(
            adata,
            spec,
            lay,
            pseudobulk_by,
            method,
            gene_idx,
            min_units,
            chunk_size,
            progress,
            tie_correct,
        )
    n = np.bincount(lay.group[lay.group >= 0], minlength=len(lay.groups)).astype(float)
    # -- executor hook: row chunks and gene blocks as tasks (evaluate/_de_tasks.py) -------
    from scfm_audit._executor import current_executor

    executor = current_executor()
    # in one process the engine's own pass is faster (threads, read-ahead) than chunk
    # tasks; a cluster gets the tasks (equal to it within float64 rounding: the chunk
    # sums are added in another order)
    if executor is not None and executor.kind != "local":
        from scfm_audit.evaluate._de_tasks import distributed_de

        return distributed_de(
            executor,
            adata,
            spec,
            lay,
            gene_idx,
            n,
            method=method,
            chunk_size=chunk_size,
            tie_correct=tie_correct,
            max_rank_values=max_rank_values,
            progress=progress,
        )
    # -- end of executor hook --------------------------------------------------------------
    s, ss, cnt = _moments(adata, spec, lay, n, gene_idx, method, chunk_size, progress)
    u1 = ties = None
    if method == "wilcoxon":
        u1, ties = _rank_sums(
            adata, spec, lay, n, cnt, gene_idx, chunk_size, progress, max_rank_values
        )
    del cnt
    cols = _test_columns(lay, n, s, ss, u1, ties, method, tie_correct)
    del s, ss, u1, ties  # the moments are spent: free them before the table grows
    _trim_heap()
    return _table(lay, n, cols, np.asarray(adata.var_names)[gene_idx], method, tie_correct)


def _moments(
    adata: AnnData,
    spec: DatasetSpec,
    lay: _Layout,
    n: NDArray[np.float64],
    gene_idx: np.ndarray,
    method: str,
    chunk_size: int,
    progress: ProgressFn | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """One pass over the counts: per (group, gene) sum, sum of squares and (Wilcoxon
    only; else no rows) non-zero count of the log-normalised values, each (K, G)."""
    from scfm_audit.evaluate import _de_kernels as _k

    G, K = gene_idx.size, len(lay.groups)
    s = np.zeros((K, G))
    ss = np.zeros((K, G))
    # non-zero counts place the Wilcoxon's values; Welch needs none
    cnt = np.zeros((K if method == "wilcoxon" else 0, G), dtype=np.int64)
    gmap = np.full(adata.n_vars, -1, dtype=np.int64)
    gmap[gene_idx] = np.arange(G)
    T = _threads()
    owner = _owners(n, T)
    spans = _gene_ranges(G, T)

    def part(blk: Block, t: int) -> None:
        a, data, indices, indptr = blk
        codes = lay.group[a : a + indptr.size - 1]
        lo, hi = spans[t]
        _k.moments_part(data, indices, indptr, codes, gmap, owner, t, lo, hi, s, ss, cnt)

    desc = f"DE ({method}): moments"
    used = lay.group >= 0
    ahead = _read_ahead(adata, spec)
    blocks = _raw_chunks(adata, spec, used, chunk_size, progress, desc, ring=ahead)
    _parallel_pass(blocks, part, T, ahead)
    return s, ss, cnt


def _gene_index(adata: AnnData, genes: list[str] | None) -> np.ndarray:
    if genes is None:
        return np.arange(adata.n_vars)
    idx = pd.Index(adata.var_names).get_indexer(pd.Index(genes))
    if (idx < 0).any():
        missing = list(pd.Index(genes)[idx < 0][:10])
        raise DEInputError(
            f"{int((idx < 0).sum())} requested genes are not in the dataset (e.g. "
            f"{', '.join(map(str, missing))}); pass genes from adata.var_names."
        )
    if np.unique(idx).size < idx.size:
        raise DEInputError("genes contains duplicates; pass each gene once.")
    positions: np.ndarray = idx
    return positions


def _rank_sums(
    adata: AnnData,
    spec: DatasetSpec,
    lay: _Layout,
    n: NDArray[np.float64],
    cnt: NDArray[np.int64],
    gene_idx: np.ndarray,
    chunk_size: int,
    progress: ProgressFn | None,
    max_values: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mann–Whitney U and tie term (Σ t³ − t of the pooled sample) of every (perturbation
    group, gene) against its arm's controls, both (K, G).

    Genes are taken in blocks whose non-zeros (``cnt``, from the moments pass) fit in
    ``max_values`` float64 values; per block, one pass over the row chunks scatters the
    log-normalised non-zeros gene-major and group by group, then each gene is ranked on
    its own (in parallel): every group's non-zeros are sorted, each control value run
    once, each perturbed value placed among its controls by binary search; zeros enter in
    closed form."""
    from scfm_audit.evaluate import _de_kernels as _k

    G, K = gene_idx.size, len(lay.groups)
    is_ctrl = lay.groups["control"].to_numpy()
    arm_of = lay.groups["arm"].to_numpy()
    ctrl_row = {arm: k for k, arm in enumerate(arm_of) if is_ctrl[k]}
    ctrl_of = np.array([ctrl_row[arm] for arm in arm_of], dtype=np.int64)
    n_int = n.astype(np.int64)
    u1 = np.zeros((K, G))
    ties = np.zeros((K, G))
    used = lay.group >= 0
    per_gene = cnt.sum(axis=0)
    T = _threads()
    owner = _owners(n, T)
    ahead = _read_ahead(adata, spec)
    g0 = 0
    while g0 < G:
        # the largest block from g0 whose values fit (at least one gene)
        g1 = g0 + max(1, int(np.searchsorted(np.cumsum(per_gene[g0:]), max_values, "right")))
        c = cnt[:, g0:g1].T  # (Gb, K)
        end = np.cumsum(c.ravel()).reshape(c.shape)
        # (K, Gb): the next free slot of each (group, gene), group-major so that the
        # genes of one row advance neighbouring cursors (gene-major, each non-zero of a
        # row touched a different cache line of a (Gb, K) table: ~40 % of the fill pass)
        cursor = np.ascontiguousarray((end - c).T)
        vals = np.empty(int(end[-1, -1]) if end.size else 0)
        gmap = np.full(adata.n_vars, -1, dtype=np.int64)
        gmap[gene_idx[g0:g1]] = np.arange(g1 - g0)
        spans = _gene_ranges(g1 - g0, T)

        def fill(
            blk: Block,
            t: int,
            gmap: NDArray[np.int64] = gmap,
            cursor: NDArray[np.int64] = cursor,
            vals: NDArray[np.float64] = vals,
            spans: list[tuple[int, int]] = spans,
        ) -> None:
            a, data, indices, indptr = blk
            codes = lay.group[a : a + indptr.size - 1]
            lo, hi = spans[t]
            _k.fill_part(data, indices, indptr, codes, gmap, owner, t, lo, hi, cursor, vals)

        desc = f"DE (wilcoxon): ranks of genes {g0 + 1}–{g1}"
        blocks = _raw_chunks(adata, spec, used, chunk_size, progress, desc, ring=ahead)
        _parallel_pass(blocks, fill, T, ahead)
        del cursor, fill, blocks  # the closure holds cursor too
        _log1p_inplace(vals)
        _k.rank_sums(vals, end, cnt, n_int, ctrl_of, g0, u1, ties)
        del vals, end
        g0 = g1
    return u1, ties


#: elements of the (perturbations × genes) block that one thread tests at a time: the
#: tests' temporaries stay ~1 MiB each whatever the screen's size
TEST_BLOCK = 1 << 17


def _arms(lay: _Layout) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(arm, control group, perturbation groups)`` in the order of the table's rows."""
    for arm, sub in lay.groups.groupby("arm", sort=False):
        yield str(arm), int(sub.index[sub["control"]][0]), sub.index[~sub["control"]].to_numpy()


def _test_columns(
    lay: _Layout,
    n: np.ndarray,
    s: np.ndarray,
    ss: np.ndarray,
    u1: np.ndarray | None,
    ties: np.ndarray | None,
    method: str,
    tie_correct: bool,
) -> dict[str, np.ndarray]:
    """The float columns of the table but ``q_screen``, one (perturbation, gene) row each,
    arm by arm, from the per-group moments (``n``, ``s``, ``ss``: (K,) and (K, G)) and,
    for the Wilcoxon, rank sums and tie terms (``u1``, ``ties``: (K, G)).

    The columns are allocated once at their final length and filled in blocks of
    :data:`TEST_BLOCK` elements (whole perturbations) on ``numba.get_num_threads()``
    threads (numpy and scipy's ufuncs release the GIL): no temporary the size of the
    screen. Every block goes through the same elementwise functions as the whole screen
    did (:func:`welch_from_moments`, :func:`mann_whitney_z`, row-wise :func:`_bh_rows`),
    so each number is the same bit for bit."""
    G = s.shape[1]
    arms = list(_arms(lay))
    N = sum(kp.size for _, _, kp in arms) * G
    names = ("log2fc", "mean_perturbed", "mean_control", "statistic", "p", "q_within")
    cols = {c: np.empty(N) for c in names}
    jobs: list[tuple[int, np.ndarray, int]] = []  # (control group, perturbation groups, row)
    row = 0
    for _, k0, kp in arms:
        step = max(1, TEST_BLOCK // max(G, 1))
        for i in range(0, kp.size, step):
            jobs.append((k0, kp[i : i + step], row + i * G))
        row += kp.size * G

    def run(job: tuple[int, np.ndarray, int]) -> None:
        k0, kb, r0 = job
        out = {c: v[r0 : r0 + kb.size * G].reshape(kb.size, G) for c, v in cols.items()}
        n1 = n[kb][:, None]
        if method == "wilcoxon":
            if u1 is None or ties is None:
                raise ValueError("the Wilcoxon columns need the rank sums (u1, ties)")
            with np.errstate(divide="ignore", invalid="ignore"):
                m1, m0 = s[kb] / n1, s[k0] / n[k0]
            t, p = mann_whitney_z(u1[kb], n1, n[k0], ties=ties[kb] if tie_correct else None)
        else:
            m1, m0, t, p = welch_from_moments(n1, s[kb], ss[kb], n[k0], s[k0], ss[k0])
        out["mean_perturbed"][...] = m1
        out["mean_control"][...] = m0
        out["statistic"][...] = t
        out["p"][...] = p
        out["q_within"][...] = _bh_rows(p)
        out["log2fc"][...] = np.log2(np.expm1(m1) + 1e-9) - np.log2(np.expm1(m0) + 1e-9)

    T = min(_threads(), len(jobs))
    if T < 2:
        for job in jobs:
            run(job)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(T) as ex:
            list(ex.map(run, jobs))
    return cols


def _bh_flat(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`_bh_rows` of ``p[None, :]`` (the same numbers) by one radix sort
    (``_de_kernels.bh_flat``): at 16 M p-values ~1 s instead of ~4.5 s (``np.argsort``),
    holding 24 bytes per value for the sort instead of ~six arrays the size of ``p``."""
    from scfm_audit.evaluate import _de_kernels as _k

    p = np.ascontiguousarray(p, dtype=np.float64)
    if np.signbit(p).any():  # not p-values: the bit patterns would not order as values
        return _bh_rows(p[None, :]).ravel()
    out = np.empty(p.shape)
    _k.bh_flat(p, out, np.empty(p.size, dtype=np.int32 if p.size < 2**31 else np.int64))
    return out


def _table(
    lay: _Layout,
    n: np.ndarray,
    cols: dict[str, np.ndarray],
    gnames: np.ndarray,
    method: str,
    tie_correct: bool,
) -> pd.DataFrame:
    """The long table from the tested columns (:func:`_test_columns`): ``q_screen``, the
    labels and the group sizes added, the DataFrame made once, in :data:`DE_COLUMNS`
    order and without copies (at screen scale every pandas copy of 16 M rows costs
    seconds and its size in memory)."""
    cols["q_screen"] = _bh_flat(cols["p"])
    gnames = np.asarray(gnames, dtype=object)
    G = gnames.size
    parts: dict[str, list[np.ndarray]] = {
        c: [] for c in ("arm", "perturbation", "gene", "n_perturbed", "n_control")
    }
    for arm, k0, kp in _arms(lay):
        P = kp.size
        # np.repeat, not np.full: filling an object array element by element costs ~5 s at
        # 16 M rows, repeating one reference does not
        parts["arm"].append(np.repeat(np.array([arm], dtype=object), P * G))
        names = lay.groups.loc[kp, "perturbation"].to_numpy().astype(object)
        parts["perturbation"].append(np.repeat(names, G))
        parts["gene"].append(np.tile(gnames, P))
        parts["n_perturbed"].append(np.repeat(n[kp].astype(np.int64), G))
        parts["n_control"].append(np.full(P * G, int(n[k0]), dtype=np.int64))
    for c, v in parts.items():
        cols[c] = v[0] if len(v) == 1 else np.concatenate(v)
        if cols[c].dtype == object:
            # a Series of declared dtype object: pandas then skips its type inference over
            # the column (a ~40 bytes/row transient, 96 MiB at 2.4 M rows)
            cols[c] = pd.Series(cols[c], dtype=object, copy=False)
    out = pd.DataFrame({c: cols[c] for c in DE_COLUMNS}, copy=False)
    out.attrs["de"] = {
        "method": method,
        "null": WELCH_H0 if method == "welch" else WILCOXON_H0,
        "q_within": "BH over the genes of one perturbation",
        "q_screen": "BH over every (perturbation, gene) row of this result",
        "tie_correct": bool(tie_correct) if method == "wilcoxon" else None,
        "variance": (
            None
            if method != "wilcoxon"
            else "tie-corrected (scanpy tie_correct=True)"
            if tie_correct
            else "without tie correction (scanpy's default)"
        ),
        "controls_available": dict(lay.controls_available),
    }
    return out


def _pseudobulk(
    adata: AnnData,
    spec: DatasetSpec,
    lay: _Layout,
    by: str,
    method: Literal["welch", "wilcoxon"],
    gene_idx: np.ndarray,
    min_units: int,
    chunk_size: int,
    progress: ProgressFn | None,
    tie_correct: bool,
) -> pd.DataFrame:
    """Sum counts per (group, unit), then DE on the pseudobulk samples (units = replicates)."""
    import anndata as ad

    from scfm_audit.data._dataset import DatasetSpec

    if by not in adata.obs.columns:
        raise DEInputError(
            f"pseudobulk_by={by!r} is not an obs column; available: "
            f"{[str(c) for c in adata.obs.columns]}. Name the guide or donor column."
        )
    unit = adata.obs[by].astype(object)
    if unit.isna().any():
        raise DEInputError(
            f"obs column {by!r} has {int(unit.isna().sum())} missing values; fill or drop them "
            "before pseudobulking."
        )
    ucodes, unames = pd.factorize(unit.astype(str), sort=True)
    U, K = len(unames), len(lay.groups)
    sums = np.zeros((K * U, adata.n_vars))
    for rows, counts in _chunks(
        adata, spec, lay.group >= 0, chunk_size, progress, f"pseudobulk by {by}"
    ):
        codes = lay.group[rows] * U + ucodes[rows]
        sums += np.asarray((_indicator(codes, K * U) @ counts).toarray())
    cells = np.bincount((lay.group * U + ucodes)[lay.group >= 0], minlength=K * U)
    present = cells > 0
    per_group = present.reshape(K, U).sum(axis=1)
    few = lay.groups.assign(units=per_group)[per_group < min_units]
    if len(few):
        shown = ", ".join(
            f"{r.arm}/{'control' if r.control else r.perturbation} ({r.units})"
            for r in few.head(8).itertuples()
        )
        raise DEInputError(
            f"pseudobulk_by={by!r}: {len(few)} group(s) have fewer than {min_units} units "
            f"(e.g. {shown}); units are the replicates of a pseudobulk test. Use a column "
            "with more units per group (guide, donor) or pseudobulk_by=None."
        )
    g = np.repeat(np.arange(K), U)[present]
    control_label = spec.controls[0]
    obs = pd.DataFrame(
        {
            "perturbation": [
                control_label if lay.groups["control"].iat[k] else lay.groups["perturbation"].iat[k]
                for k in g
            ],
            "arm": lay.groups["arm"].to_numpy()[g],
            "unit": np.tile(np.asarray(unames), K)[present],
            "n_cells": cells[present],
        }
    )
    obs.index = obs.index.astype(str)
    pb = ad.AnnData(
        X=sparse.csr_matrix(sums[present]), obs=obs, var=pd.DataFrame(index=adata.var_names)
    )
    pspec = DatasetSpec(perturbation="perturbation", control=control_label, modality="arm")
    out = differential_expression(
        pb,
        pspec,
        method=method,
        genes=list(np.asarray(adata.var_names)[gene_idx]),
        tie_correct=tie_correct,
    )
    out.attrs["de"]["pseudobulk_by"] = by
    out.attrs["de"]["replicates"] = PSEUDOBULK_NOTE
    out.attrs["de"]["controls_available"] = dict(lay.controls_available)
    return out


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
    same = de["gene"].astype(str).to_numpy() == de["perturbation"].astype(str).to_numpy()
    resp = (de["log2fc"].abs() > lfc) & (q < fdr) & ~same
    return de.assign(responder=resp.fillna(False).astype(bool))
