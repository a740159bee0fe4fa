"""Compiled kernels of the DE engine (:mod:`scfm_audit.evaluate._de`), numba.

The pass kernels (:func:`moments_part`, :func:`fill_part`) read a CSR row block as stored
(any value dtype, int32 or int64 indices) and normalise inside the loop, the arithmetic of
scanpy's ``normalize_total(target_sum=1e4)`` in float64: ``x / (total / 1e4)`` with
``total`` over every stored value of the row (a row without counts is divided by 1), then
``log1p``. Nothing of the size of the block's non-zeros is allocated.

Threads. A pass kernel is serial and releases the GIL; the caller runs one call per
thread t on the same block (``_de._parallel_pass``), each doing its share. Race freedom:
``owner[k]`` is the thread that handles every non-zero of group k's rows, or −1 for a
group shared by all threads (the controls, too large for one), whose non-zeros each
thread handles in its own contiguous gene range ``g_lo … g_hi − 1``. So every
(group, gene) cell has one writer, and the cells are added in row order whatever the
number of threads (the same sums bit for bit).
"""

from __future__ import annotations

import math
from typing import TypedDict

import numba
import numpy as np
from numba import prange
from numpy.typing import NDArray


class _JitOptions(TypedDict):
    nogil: bool
    cache: bool


_JIT: _JitOptions = {"nogil": True, "cache": True}


@numba.njit(inline="always", **_JIT)
def _row_divisor(data: np.ndarray, a: int, b: int) -> float:
    """``total / 1e4`` of the stored values ``data[a:b]`` of one row (1 if no counts)."""
    tot = 0.0
    for j in range(a, b):
        tot += np.float64(data[j])
    return tot / 1e4 if tot > 0 else 1.0


#: counts 1 … SMALL − 1 (integers) are log-normalised once per row and remembered: a row
#: of a count matrix holds few distinct values, so ``log1p`` (most of the cost of a pass)
#: runs a few dozen times per row instead of once per non-zero, with the same result
SMALL = 64


@numba.njit(inline="always", **_JIT)
def _row_span(
    k: int, owner: NDArray[np.int64], t: int, g_lo: int, g_hi: int, G: int
) -> tuple[int, int]:
    """The genes thread ``t`` handles in a row of group ``k`` (empty: none)."""
    o = owner[k]
    if o == t:
        return 0, G
    if o < 0:
        return g_lo, g_hi
    return 0, 0


@numba.njit(**_JIT)
def moments_part(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    codes: NDArray[np.int64],
    gmap: NDArray[np.int64],
    owner: NDArray[np.int64],
    t: int,
    g_lo: int,
    g_hi: int,
    s: NDArray[np.float64],
    ss: NDArray[np.float64],
    cnt: NDArray[np.int64],
) -> None:
    """Thread ``t``'s share of a block (see the module docstring): add the per (group,
    gene) sums, sums of squares and non-zero counts of the log-normalised values into
    ``s``, ``ss`` (float64) and ``cnt`` (int64), all (K, G); a ``cnt`` without rows
    (shape (0, G)) keeps no counts (Welch needs none). ``codes``: each row's group (−1:
    not used); ``gmap``: each column's output gene (−1: not selected)."""
    G = s.shape[1]
    counting = cnt.shape[0] > 0
    memo = np.empty(SMALL)
    stamp = np.full(SMALL, -1, dtype=np.int64)
    for r in range(indptr.size - 1):
        k = codes[r]
        if k < 0:
            continue
        lo, hi = _row_span(k, owner, t, g_lo, g_hi, G)
        if lo >= hi:
            continue
        a, b = indptr[r], indptr[r + 1]
        d = _row_divisor(data, a, b)
        for j in range(a, b):
            g = gmap[indices[j]]
            if g < lo or g >= hi or data[j] == 0:  # a stored zero is a zero
                continue
            # log1p(x / d); a small integer count once per row (memo[c] is valid for the
            # row stamp[c]). Written out here: a helper taking the arrays costs a
            # reference count per call, more than the log it saves
            x = np.float64(data[j])
            c = int(x) if 0.0 < x < SMALL else 0
            if c == 0 or c != x:
                v = math.log1p(x / d)
            else:
                if stamp[c] != r:
                    memo[c] = math.log1p(x / d)
                    stamp[c] = r
                v = memo[c]
            s[k, g] += v
            ss[k, g] += v * v
            if counting:
                cnt[k, g] += 1


@numba.njit(**_JIT)
def fill_part(
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    codes: NDArray[np.int64],
    gmap: NDArray[np.int64],
    owner: NDArray[np.int64],
    t: int,
    g_lo: int,
    g_hi: int,
    cursor: NDArray[np.int64],
    vals: NDArray[np.float64],
) -> None:
    """Thread ``t``'s share of a block: scatter the normalised non-zeros ``x / (total /
    1e4)`` — before ``log1p``, which the caller applies with numpy's own ``np.log1p`` so
    that ties are the ties of scanpy's data bit for bit (numpy's SIMD log1p and libm's
    differ in the last bit on a few % of values, and distinct quotients often round to one
    log value) — into ``vals``, laid out gene-major and, within a gene, group by group:
    ``cursor[k, g]`` is the next free slot of (gene g, group k) and is advanced (group-
    major: a row's genes advance neighbouring cursors)."""
    G = cursor.shape[1]
    for r in range(indptr.size - 1):
        k = codes[r]
        if k < 0:
            continue
        lo, hi = _row_span(k, owner, t, g_lo, g_hi, G)
        if lo >= hi:
            continue
        a, b = indptr[r], indptr[r + 1]
        d = _row_divisor(data, a, b)
        for j in range(a, b):
            g = gmap[indices[j]]
            if g < lo or g >= hi or data[j] == 0:
                continue
            pos = cursor[k, g]
            vals[pos] = np.float64(data[j]) / d
            cursor[k, g] = pos + 1


@numba.njit(**_JIT)
def _sort_run(x: NDArray[np.float64]) -> None:
    """Sort ``x`` in place: insertion sort for short runs (a perturbation's non-zeros at
    one gene are tens of values), numpy's sort otherwise."""
    n = x.size
    if n > 48:
        x.sort()
        return
    for i in range(1, n):
        v = x[i]
        j = i - 1
        while j >= 0 and x[j] > v:
            x[j + 1] = x[j]
            j -= 1
        x[j + 1] = v


@numba.njit(**_JIT)
def _lower_bound(a: NDArray[np.float64], x: float, lo: int) -> int:
    """First index ≥ ``lo`` of sorted ``a`` with ``a[i] ≥ x`` (branch-free halving: the
    comparisons of a binary search over a run of controls are unpredictable)."""
    n = a.size - lo
    base = lo
    while n > 1:
        half = n >> 1
        base += half * (a[base + half - 1] < x)
        n -= half
    if n == 1 and a[base] < x:
        base += 1
    return base


@numba.njit(**_JIT)
def _bucket(v: float, vmin: float, scale: float, nb: int) -> int:
    b = int((v - vmin) * scale)
    return 0 if b < 0 else (nb - 1 if b >= nb else b)


@numba.njit(**_JIT)
def _bucket_index(c: NDArray[np.float64]) -> tuple[NDArray[np.int64], float, float, int]:
    """For sorted ``c``: ``nb`` equal-width value buckets over [c[0], c[-1]] (about four
    values each) and ``idx[b]`` = first position whose bucket is ≥ b. The bucket of a value
    is monotone in the value, so a value's lower bound lies in ``c[idx[b] : idx[b + 1]]``
    (a few values) instead of a binary search over all controls (≈ 40 ns, latency-bound)."""
    m = c.size
    nb = 1
    while nb * 4 < m:
        nb *= 2
    idx = np.empty(nb + 1, dtype=np.int64)
    if m == 0:
        idx[:] = 0
        return idx, 0.0, 0.0, nb
    vmin = c[0]
    span = c[m - 1] - vmin
    scale = nb / span if span > 0 else 0.0
    j = 0
    for b in range(nb + 1):
        while j < m and _bucket(c[j], vmin, scale, nb) < b:
            j += 1
        idx[b] = j
    idx[nb] = m
    return idx, vmin, scale, nb


@numba.njit(**_JIT)
def _bucketed_lower_bound(
    c: NDArray[np.float64],
    v: float,
    idx: NDArray[np.int64],
    vmin: float,
    scale: float,
    nb: int,
) -> int:
    """First index of sorted ``c`` with ``c[i] ≥ v`` (see :func:`_bucket_index`)."""
    if c.size == 0 or v <= c[0]:
        return 0
    if v > c[c.size - 1]:
        return c.size
    b = _bucket(v, vmin, scale, nb)
    return _lower_bound(c[: idx[b + 1]], v, idx[b])


@numba.njit(**_JIT)
def _upper_bound(c: NDArray[np.float64], v: float, lo: int) -> int:
    """First index ≥ ``lo`` of sorted ``c`` with ``c[i] > v``: a short scan (ties are few),
    then halving (a large tie block, e.g. binary data)."""
    hi = lo
    stop = min(lo + 8, c.size)
    while hi < stop and c[hi] == v:
        hi += 1
    if hi < stop or hi == c.size or c[hi] != v:
        return hi
    n = c.size - hi
    while n > 1:
        half = n >> 1
        hi += half * (c[hi + half - 1] <= v)
        n -= half
    if n == 1 and c[hi] <= v:
        hi += 1
    return hi


@numba.njit(parallel=True, **_JIT)
def rank_sums(
    vals: NDArray[np.float64],
    end: NDArray[np.int64],
    cnt: NDArray[np.int64],
    n: NDArray[np.int64],
    ctrl_of: NDArray[np.int64],
    g_off: int,
    u1: NDArray[np.float64],
    ties: NDArray[np.float64],
) -> None:
    """Mann–Whitney U and the tie term of every (perturbation group, gene) against its
    control group, from the non-zeros only.

    ``vals[end[g, k] − cnt[k, g_off + g] : end[g, k]]``: the non-zero values of group k at
    gene g of this block (sorted here, in place). ``n[k]``: cells of group k;
    ``ctrl_of[k]``: its control group (k itself for a control). Zeros are one tie block: a
    perturbed group's ``zk`` zeros each tie with the ``zc`` control zeros (½ each) and
    every non-zero value lies above all ``zc`` control zeros. Writes, at column
    ``g_off + g``: ``u1`` = #pairs (perturbed > control) + ½ #ties, and ``ties`` = Σ over
    the tie groups of the pooled sample of t³ − t (scipy's ``tiecorrect`` numerator, the
    one of scanpy's ``tie_correct``)."""
    G = end.shape[0]
    K = n.size
    for g in prange(G):
        for k in range(K):  # sort every group's run of this gene
            b = end[g, k]
            a = b - cnt[k, g_off + g]
            if b - a > 1:
                _sort_run(vals[a:b])
        tc = np.zeros(K)  # per control group: Σ t³ − t over its non-zero tie groups
        for k in range(K):
            if ctrl_of[k] != k:
                continue
            b = end[g, k]
            a = b - cnt[k, g_off + g]
            i = a
            acc = 0.0
            while i < b:
                j = i + 1
                while j < b and vals[j] == vals[i]:
                    j += 1
                t = np.float64(j - i)
                acc += t * t * t - t
                i = j
            tc[k] = acc
        cur = -1
        idx = np.empty(1, dtype=np.int64)
        vmin = 0.0
        scale = 0.0
        nb = 1
        for k in range(K):
            c = ctrl_of[k]
            if c == k:
                continue
            cb = end[g, c]
            ca = cb - cnt[c, g_off + g]
            ctrl = vals[ca:cb]
            if c != cur:  # a bucket index into this gene's sorted controls
                cur = c
                idx, vmin, scale, nb = _bucket_index(ctrl)
            zc = np.float64(n[c] - (cb - ca))
            b = end[g, k]
            a = b - cnt[k, g_off + g]
            zk = np.float64(n[k] - (b - a))
            u = 0.5 * zc * zk + (b - a) * zc
            z = zc + zk
            tie = tc[c] + z * z * z - z
            i = a
            while i < b:
                v = vals[i]
                j = i + 1
                while j < b and vals[j] == v:
                    j += 1
                p = np.float64(j - i)
                lo = _bucketed_lower_bound(ctrl, v, idx, vmin, scale, nb)
                hi = _upper_bound(ctrl, v, lo)
                e = np.float64(hi - lo)
                u += p * (lo + 0.5 * e)
                m = e + p
                tie += (m * m * m - m) - (e * e * e - e)
                i = j
            u1[k, g_off + g] = u
            ties[k, g_off + g] = tie


#: bits of the key sorted per pass of :func:`bh_flat`'s radix sort (2,048 counters: they
#: stay in the L1 cache)
RADIX_BITS = 11


@numba.njit(**_JIT)
def bh_flat(p: NDArray[np.float64], out: NDArray[np.float64], idx: np.ndarray) -> None:
    """Benjamini–Hochberg q of every ``p`` (≥ 0 or NaN, no −0.0) into ``out``, NaN where p
    is NaN; ``idx``: scratch of ``p.size`` integers (int32 suffices below 2³¹ values).

    The order comes from a stable LSD radix sort of the bit patterns of ``p`` (those of
    non-negative doubles order as their values, NaN's above +inf), ``RADIX_BITS`` per
    pass, skipping a digit every value shares: ~4× faster than ``np.argsort`` at 16 M
    values, and the sorted values come with it. Then, from the largest down, ``q`` at
    sorted position i is min over j ≥ i of ``p_(j) · m / (j + 1)`` (m: the number of
    finite p), capped at 1 — the arithmetic of ``_de._bh_rows``, whose running minimum
    propagates NaN as ``np.minimum`` does; equal p get equal q whatever their order."""
    n = p.size
    nb = 1 << RADIX_BITS
    mask = np.uint64(nb - 1)
    keys = p.view(np.uint64).copy()
    spare = np.empty_like(keys)
    idx2 = np.empty_like(idx)
    for i in range(n):
        idx[i] = i
    shift = 0
    while shift < 64:
        cnt = np.zeros(nb + 1, dtype=np.int64)
        sh = np.uint64(shift)
        for i in range(n):
            cnt[((keys[i] >> sh) & mask) + 1] += 1
        if cnt.max() < n:  # some values differ in this digit
            for b in range(nb):
                cnt[b + 1] += cnt[b]
            for i in range(n):
                d = (keys[i] >> sh) & mask
                j = cnt[d]
                cnt[d] = j + 1
                spare[j] = keys[i]
                idx2[j] = idx[i]
            keys, spare = spare, keys
            idx, idx2 = idx2, idx
        shift += RADIX_BITS
    srt = keys.view(np.float64)
    m = 0
    for i in range(n):
        if math.isfinite(srt[i]):
            m += 1
    fm = np.float64(m)
    cur = np.inf
    for i in range(n - 1, -1, -1):
        x = srt[i]
        j = idx[i]
        if x != x:
            out[j] = np.nan
            continue
        q = x * fm / np.float64(i + 1)
        cur = q if (q != q or q < cur) else cur
        out[j] = cur if cur < 1.0 or cur != cur else 1.0
