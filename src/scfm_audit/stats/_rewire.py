"""Degree-preserving rewiring of a directed bipartite edge set (Curveball algorithm).

A reference network of ``source → target`` edges (e.g. TF → target gene) is a binary
``n_sources × n_targets`` matrix. The Curveball algorithm (Strona et al. 2014, Nat. Commun.
5:4114) samples matrices with the same row sums (out-degree of every source) and column sums
(in-degree of every target) and no duplicate edges: a *trade* picks two sources ``a, b``,
keeps the targets they share, pools the targets only one of them has, and redistributes the
pool at random so that each source keeps its degree. The chain of trades has the uniform
distribution over all such matrices as its stationary distribution (Carstens 2015,
Phys. Rev. E 91:042812).

Rewired networks give the null hypothesis "the edge scores recover the reference no better
than a random network with the same degree sequence", which, unlike the label-shuffle null,
keeps hub structure (a score that only knows which TFs have many targets is not credited).

Limitations: every cell of the ``n_sources × n_targets`` grid is a possible edge, except
self-loops ``gene → itself`` with ``forbid_self_loops=True`` (when sources and targets index
the same genes); other structural zeros are not supported. Mixing is assessed empirically
(the fraction of input edges kept plateaus), not proved for a given number of trades;
:func:`rewire_labels` therefore uses a sampling scheme whose p-values are exact without
mixing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

from scfm_audit.stats._resampling import Seed, _rng

__all__ = ["curveball", "rewire_labels", "rewire_undirected"]

# Default number of trades per (re)draw, in units of the number of sources with >= 1 edge.
_DEFAULT_TRADES_PER_SOURCE = 50


def _check_edges(
    sources_idx: ArrayLike,
    targets_idx: ArrayLike,
    n_sources: int | None = None,
    n_targets: int | None = None,
    *,
    forbid_self_loops: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sources_idx)
    t = np.asarray(targets_idx)
    if s.ndim != 1 or t.ndim != 1 or s.shape != t.shape:
        raise ValueError(
            f"sources and targets must be 1-D index arrays of equal length, got {s.shape} "
            f"and {t.shape}."
        )
    if s.size and (s.dtype.kind not in "iu" or t.dtype.kind not in "iu"):
        raise ValueError("sources and targets must be integer indices.")
    s = s.astype(np.int64)
    t = t.astype(np.int64)
    if s.size == 0:
        return s, t
    if s.min() < 0 or t.min() < 0:
        raise ValueError("edge indices must be non-negative.")
    if n_sources is not None and s.max() >= n_sources:
        raise ValueError(f"a source index ({s.max()}) is >= n_sources={n_sources}.")
    if n_targets is not None and t.max() >= n_targets:
        raise ValueError(f"a target index ({t.max()}) is >= n_targets={n_targets}.")
    if forbid_self_loops and (s == t).any():
        raise ValueError(
            f"forbid_self_loops=True but the input has {int((s == t).sum())} self-loop(s)."
        )
    key = s * (int(t.max()) + 1) + t
    n_dup = s.size - np.unique(key).size
    if n_dup:
        raise ValueError(
            f"the edge set contains {n_dup} duplicate edge(s); pass each source→target pair once."
        )
    return s, t


class _Curveball:
    """State of a Curveball chain: the target set of every source with >= 1 edge."""

    def __init__(
        self, sources: np.ndarray, rows: list[set[int]], *, forbid_self_loops: bool = False
    ) -> None:
        self.sources = sources
        self.rows = rows
        self.forbid_self_loops = forbid_self_loops

    @classmethod
    def from_edges(
        cls, s: np.ndarray, t: np.ndarray, *, forbid_self_loops: bool = False
    ) -> _Curveball:
        sources, inverse = np.unique(s, return_inverse=True)
        rows: list[set[int]] = [set() for _ in range(sources.size)]
        for i, x in zip(inverse.tolist(), t.tolist()):
            rows[i].add(x)
        return cls(sources, rows, forbid_self_loops=forbid_self_loops)

    def copy(self) -> _Curveball:
        return _Curveball(
            self.sources, [set(r) for r in self.rows], forbid_self_loops=self.forbid_self_loops
        )

    def trade(self, n_trades: int, rng: np.random.Generator) -> None:
        """Run ``n_trades`` trades between uniformly chosen ordered pairs of distinct sources.

        A trade keeps the shared targets and deals the pooled non-shared targets back at
        random (a uniform choice of which of them go to ``a``, keeping both degrees). With
        ``forbid_self_loops``, a pooled target equal to ``b``'s own index stays with ``a``
        (and vice versa) and only the other pooled targets are dealt. Either way a trade
        and its reverse have the same probability, so the chain is symmetric (reversible
        with respect to the uniform distribution on the networks it can reach).
        """
        r = len(self.rows)
        if r < 2 or n_trades <= 0:
            return
        a_all = rng.integers(0, r, n_trades)
        b_all = rng.integers(0, r - 1, n_trades)
        b_all += b_all >= a_all  # uniform over sources != a
        rows = self.rows
        src = self.sources.tolist()
        forbid = self.forbid_self_loops
        for a, b in zip(a_all.tolist(), b_all.tolist()):
            sa, sb = rows[a], rows[b]
            a_only = sa - sb
            if not a_only:
                continue
            b_only = sb - sa
            if not b_only:
                continue
            pool = sorted(a_only) + sorted(b_only)  # sorted: order-independent, reproducible
            keep_a: list[int] = []
            keep_b: list[int] = []
            if forbid:
                src_a, src_b = src[a], src[b]
                if src_b in a_only:  # a → src_b cannot move to b (would be a self-loop)
                    keep_a.append(src_b)
                if src_a in b_only:
                    keep_b.append(src_a)
                if keep_a or keep_b:
                    pool = [x for x in pool if x != src_b and x != src_a]
            na = len(a_only) - len(keep_a)
            perm = rng.permutation(len(pool)).tolist()
            shared = sa & sb
            rows[a] = shared.union(keep_a, [pool[i] for i in perm[:na]])
            rows[b] = shared.union(keep_b, [pool[i] for i in perm[na:]])

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Current edges, sorted by source then target."""
        sizes = [len(r) for r in self.rows]
        s = np.repeat(self.sources, sizes)
        t = np.fromiter((x for r in self.rows for x in sorted(r)), dtype=np.int64, count=sum(sizes))
        return s, t


def curveball(
    sources_idx: ArrayLike,
    targets_idx: ArrayLike,
    *,
    n_trades: int,
    seed: Seed,
    forbid_self_loops: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Degree-preserving rewiring of a directed bipartite edge set (Curveball).

    Inputs: ``sources_idx``, ``targets_idx`` integer arrays ``(m,)``: edge ``i`` is
    ``sources_idx[i] → targets_idx[i]``; no duplicate pairs (``ValueError``); ``n_trades``
    the number of trades (each between two uniformly chosen distinct sources with at least
    one edge; a pair with nothing to exchange is a no-op). On human TRRUST (795 TFs) the
    fraction of input edges kept falls from 0.71 after 1 trade per source to 0.22 after 10
    and plateaus near 0.08 from about 50 trades per source; ``seed``;
    ``forbid_self_loops``: sources and targets index the same genes and ``i → i`` edges
    are not allowed (the input must have none; no trade creates one). The Curveball chain
    without self-loops is not always irreducible (e.g. a directed 3-cycle cannot be
    reversed by trades), so it samples the networks reachable from the input; for large
    sparse networks this restriction is negligible.

    Output: ``(sources_idx, targets_idx)`` of the rewired network, ``(m,)`` each, sorted by
    source then target. Every source keeps its out-degree and every target its in-degree
    exactly, and no pair is duplicated.
    """
    if isinstance(n_trades, bool) or not isinstance(n_trades, int | np.integer) or n_trades < 0:
        raise ValueError(f"n_trades must be a non-negative integer, got {n_trades!r}.")
    rng = _rng(seed)
    s, t = _check_edges(sources_idx, targets_idx, forbid_self_loops=forbid_self_loops)
    if s.size == 0:
        return s, t
    chain = _Curveball.from_edges(s, t, forbid_self_loops=forbid_self_loops)
    chain.trade(int(n_trades), rng)
    return chain.edges()


def rewire_labels(
    source_pos: ArrayLike,
    target_pos: ArrayLike,
    n_sources: int,
    n_targets: int,
    *,
    n_draws: int,
    seed: Seed,
    n_trades: int | None = None,
    forbid_self_loops: bool = False,
) -> Iterator[np.ndarray]:
    """Labels of degree-preserving rewired reference networks, for a rewiring null.

    Inputs: ``source_pos``, ``target_pos`` ``(m,)``: the reference edges as row / column
    positions in an ``n_sources × n_targets`` score matrix (no duplicates); ``n_draws``
    networks to yield; ``seed``; ``n_trades`` trades per run (default
    ``50 × number of sources with >= 1 edge``; on human TRRUST the fraction of reference
    edges kept by a rewired network plateaus from about 50 trades per source);
    ``forbid_self_loops`` as in :func:`curveball` (rows and columns index the same genes).

    Draws follow the parallel scheme of Besag & Clifford (1989, Biometrika 76:633): one
    run of ``n_trades`` trades from the reference gives a hub network, then each draw is an
    independent run of ``n_trades`` trades from the hub. Because the Curveball chain is
    reversible with respect to the uniform distribution, the reference and the draws are
    exchangeable under H0 whatever ``n_trades`` is, so the +1-corrected p-value
    (:func:`scfm_audit.stats._resampling.empirical_p`) is exact even if the chain has not
    fully mixed; too few trades only cost power (draws stay close to the reference).

    H0 of the resulting test: the reference network is a uniform draw among the networks
    with its in- and out-degrees, i.e. the scores recover it no better than they recover a
    random network with the same degree sequence.

    Output: an iterator of ``n_draws`` boolean arrays of shape ``(n_sources, n_targets)``,
    ``True`` where the rewired network has an edge; pair them with ``scores.ravel()`` via
    ``labels.ravel()``. Costs ``(n_draws + 1) × n_trades`` trades (about 8 µs each).
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int | np.integer) or n_draws < 0:
        raise ValueError(f"n_draws must be a non-negative integer, got {n_draws!r}.")
    if n_sources < 0 or n_targets < 0:
        raise ValueError("n_sources and n_targets must be non-negative.")
    rng = _rng(seed)
    s, t = _check_edges(
        source_pos, target_pos, n_sources, n_targets, forbid_self_loops=forbid_self_loops
    )
    if n_trades is None:
        n_trades = _DEFAULT_TRADES_PER_SOURCE * np.unique(s).size
    if isinstance(n_trades, bool) or not isinstance(n_trades, int | np.integer) or n_trades < 0:
        raise ValueError(f"n_trades must be a non-negative integer, got {n_trades!r}.")
    hub = _Curveball.from_edges(s, t, forbid_self_loops=forbid_self_loops) if s.size else None
    return _rewire_iter(hub, n_sources, n_targets, int(n_draws), int(n_trades), rng)


def _rewire_iter(
    hub: _Curveball | None,
    n_sources: int,
    n_targets: int,
    n_draws: int,
    n_trades: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    if hub is not None:
        hub.trade(n_trades, rng)  # the reversed chain equals the chain (reversible)
    for _ in range(n_draws):
        labels = np.zeros((n_sources, n_targets), dtype=bool)
        if hub is not None:
            chain = hub.copy()
            chain.trade(n_trades, rng)
            rs, rt = chain.edges()
            labels[rs, rt] = True
        yield labels


class _UndirectedCurveball:
    """Curveball chain on a simple undirected graph (Carstens et al. 2016, "Curveball: a
    new generation of sampling algorithms for graphs with fixed degree sequence"): a trade
    picks two nodes ``a, b``, pools the neighbours only one of them has (never ``a`` or
    ``b`` themselves, so no self-loop or duplicate arises) and deals the pool back at
    random, each node keeping its degree. Symmetric, hence uniform over reachable graphs."""

    def __init__(self, adj: list[set[int]], nodes: np.ndarray) -> None:
        self.adj = adj
        self.nodes = nodes  # nodes with >= 1 edge: the only ones a trade can change

    @classmethod
    def from_edges(cls, a: np.ndarray, b: np.ndarray, n: int) -> _UndirectedCurveball:
        adj: list[set[int]] = [set() for _ in range(n)]
        for x, y in zip(a.tolist(), b.tolist()):
            adj[x].add(y)
            adj[y].add(x)
        return cls(adj, np.unique(np.concatenate([a, b])))

    def copy(self) -> _UndirectedCurveball:
        return _UndirectedCurveball([set(r) for r in self.adj], self.nodes)

    def trade(self, n_trades: int, rng: np.random.Generator) -> None:
        r = len(self.nodes)
        if r < 2 or n_trades <= 0:
            return
        ia = rng.integers(0, r, n_trades)
        ib = rng.integers(0, r - 1, n_trades)
        ib += ib >= ia
        adj = self.adj
        nodes = self.nodes.tolist()
        for i, j in zip(ia.tolist(), ib.tolist()):
            a, b = nodes[i], nodes[j]
            na, nb = adj[a], adj[b]
            a_only = na - nb - {b}
            b_only = nb - na - {a}
            if not a_only or not b_only:
                continue
            pool = sorted(a_only) + sorted(b_only)
            perm = rng.permutation(len(pool)).tolist()
            new_a = {pool[k] for k in perm[: len(a_only)]}
            for x in a_only - new_a:  # x moves from a to b
                na.discard(x)
                adj[x].discard(a)
                nb.add(x)
                adj[x].add(b)
            for x in b_only & new_a:  # x moves from b to a
                nb.discard(x)
                adj[x].discard(b)
                na.add(x)
                adj[x].add(a)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges as ``(low, high)`` index arrays, sorted."""
        pairs = sorted((x, y) for x in self.nodes.tolist() for y in self.adj[x] if x < y)
        if not pairs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        arr = np.asarray(pairs, dtype=np.int64)
        return arr[:, 0], arr[:, 1]


def rewire_undirected(
    a: ArrayLike,
    b: ArrayLike,
    n_nodes: int,
    *,
    n_draws: int,
    seed: Seed,
    n_trades: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Degree-preserving rewirings of an undirected simple graph, for a rewiring null.

    Inputs: ``a``, ``b`` ``(m,)`` node indices of the edges ``{a_i, b_i}`` (no self-loop,
    no duplicate in either orientation); ``n_nodes``; ``n_draws``; ``seed``; ``n_trades``
    per run (default ``50 ×`` the number of nodes with an edge).

    Draws follow Besag & Clifford's parallel scheme, as :func:`rewire_labels` does: one
    run from the reference to a hub graph, then each draw is an independent run from the
    hub, so reference and draws are exchangeable under H0 (the reference is a uniform draw
    among graphs with its degree sequence) and the +1-corrected p-value is exact.
    Output: an iterator of ``(low, high)`` edge index arrays, one per draw; every node
    keeps its degree.
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, int | np.integer) or n_draws < 0:
        raise ValueError(f"n_draws must be a non-negative integer, got {n_draws!r}.")
    rng = _rng(seed)
    x = np.asarray(a, dtype=np.int64)
    y = np.asarray(b, dtype=np.int64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("a and b must be 1-D index arrays of equal length.")
    if (x == y).any():
        raise ValueError(f"the graph has {int((x == y).sum())} self-loop(s); remove them.")
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    if np.unique(lo * max(n_nodes, 1) + hi).size != lo.size:
        raise ValueError("the graph has duplicate edges; pass each unordered pair once.")
    if lo.size and hi.max() >= n_nodes:
        raise ValueError(f"a node index ({hi.max()}) is >= n_nodes={n_nodes}.")
    hub = _UndirectedCurveball.from_edges(lo, hi, n_nodes)
    if n_trades is None:
        n_trades = _DEFAULT_TRADES_PER_SOURCE * len(hub.nodes)
    hub.trade(int(n_trades), rng)
    for _ in range(int(n_draws)):
        chain = hub.copy()
        chain.trade(int(n_trades), rng)
        yield chain.edges()
