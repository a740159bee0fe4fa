"""Curveball rewiring: exact degree preservation, simple graphs, movement, determinism."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from scfm_audit.stats._rewire import _Curveball, curveball, rewire_labels


def _random_bipartite(seed: int, n_sources: int = 60, n_targets: int = 200):
    """Simple directed bipartite graph with heterogeneous (hub-like) out-degrees."""
    rng = np.random.default_rng(seed)
    deg = np.clip((rng.pareto(1.5, n_sources) * 4).astype(int) + 1, 1, n_targets // 2)
    s = np.repeat(np.arange(n_sources), deg)
    t = np.concatenate([rng.choice(n_targets, d, replace=False) for d in deg])
    perm = rng.permutation(s.size)
    return s[perm], t[perm], n_sources, n_targets


def _edge_set(s, t) -> set[tuple[int, int]]:
    return set(zip(np.asarray(s).tolist(), np.asarray(t).tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_degrees_preserved_and_no_duplicates(seed: int) -> None:
    s, t, ns, nt = _random_bipartite(seed)
    rs, rt = curveball(s, t, n_trades=5000, seed=seed)
    assert rs.shape == s.shape and rt.shape == t.shape
    np.testing.assert_array_equal(np.bincount(rs, minlength=ns), np.bincount(s, minlength=ns))
    np.testing.assert_array_equal(np.bincount(rt, minlength=nt), np.bincount(t, minlength=nt))
    assert len(_edge_set(rs, rt)) == rs.size  # no duplicate edges


def test_rewired_network_moves_away_from_input_and_plateaus() -> None:
    s, t, *_ = _random_bipartite(4)
    original = _edge_set(s, t)
    n_rows = np.unique(s).size
    kept = {}
    for per_source in (1, 10, 50, 100):
        rs, rt = curveball(s, t, n_trades=per_source * n_rows, seed=1)
        kept[per_source] = len(original & _edge_set(rs, rt)) / s.size
    assert kept[1] > kept[10] > kept[50]  # moves away
    assert kept[50] < 0.5  # most edges changed
    assert abs(kept[100] - kept[50]) < 0.1  # near the plateau
    assert curveball(s, t, n_trades=0, seed=1)[0].size == s.size
    assert _edge_set(*curveball(s, t, n_trades=0, seed=1)) == original


def test_determinism_per_seed() -> None:
    s, t, *_ = _random_bipartite(5)
    a = curveball(s, t, n_trades=2000, seed=7)
    b = curveball(s, t, n_trades=2000, seed=7)
    c = curveball(s, t, n_trades=2000, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert _edge_set(*a) != _edge_set(*c)
    # the result does not depend on the order in which the input edges are listed
    perm = np.random.default_rng(0).permutation(s.size)
    d = curveball(s[perm], t[perm], n_trades=2000, seed=7)
    np.testing.assert_array_equal(a[1], d[1])


def test_uniform_over_small_space() -> None:
    """On a tiny instance the chain visits every degree-matched matrix about equally often."""
    # 3 sources with out-degrees (2, 1, 1) over 4 targets with in-degrees (1, 1, 1, 1)
    s = np.array([0, 0, 1, 2])
    t = np.array([0, 1, 2, 3])
    chain = _Curveball.from_edges(s, t)
    rng = np.random.default_rng(0)
    counts: Counter[tuple] = Counter()
    for _ in range(6000):
        chain.trade(3, rng)
        counts[tuple(tuple(sorted(r)) for r in chain.rows)] += 1
    # all matrices: choose source 0's two targets (6 ways), then 2 ways for the other two
    n_states = 6 * 2
    assert len(counts) == n_states
    freq = np.array(list(counts.values())) / 6000
    assert np.all(np.abs(freq - 1 / n_states) < 0.03)
    # sanity: the enumeration count is right
    states = {
        (a, (r1,), (r2,))
        for a in combinations(range(4), 2)
        for r1 in set(range(4)) - set(a)
        for r2 in set(range(4)) - set(a) - {r1}
    }
    assert len(states) == n_states


def test_forbid_self_loops() -> None:
    """Square gene × gene index space: no trade creates an i → i edge; degrees kept."""
    rng = np.random.default_rng(9)
    n = 40
    adj = rng.random((n, n)) < 0.15
    np.fill_diagonal(adj, False)
    s, t = np.nonzero(adj)
    rs, rt = curveball(s, t, n_trades=4000, seed=1, forbid_self_loops=True)
    assert not (rs == rt).any()
    np.testing.assert_array_equal(np.bincount(rs, minlength=n), adj.sum(axis=1))
    np.testing.assert_array_equal(np.bincount(rt, minlength=n), adj.sum(axis=0))
    assert len(_edge_set(rs, rt)) == rs.size
    assert len(_edge_set(s, t) & _edge_set(rs, rt)) < 0.5 * s.size
    # without the constraint, self-loops do appear on the same input
    free = curveball(s, t, n_trades=4000, seed=1)
    assert (free[0] == free[1]).any()
    labels = next(rewire_labels(s, t, n, n, n_draws=1, seed=0, forbid_self_loops=True))
    assert not labels.diagonal().any()
    with pytest.raises(ValueError, match="self-loop"):
        curveball([0, 1], [0, 2], n_trades=1, seed=0, forbid_self_loops=True)


def test_forbid_self_loops_uniform_over_small_space() -> None:
    """4 genes, out-degrees (2, 1, 1, 0), in-degrees (1, 1, 1, 1), no i → i: every such
    matrix the chain reaches is visited about equally often."""
    s = np.array([0, 0, 1, 2])
    t = np.array([1, 2, 3, 0])
    chain = _Curveball.from_edges(s, t, forbid_self_loops=True)
    rng = np.random.default_rng(1)
    counts: Counter[tuple] = Counter()
    for _ in range(6000):
        chain.trade(3, rng)
        counts[tuple(tuple(sorted(r)) for r in chain.rows)] += 1
    # enumerate all valid matrices: source 0 picks 2 of {1,2,3}, source 1 one of {0,2,3},
    # source 2 one of {0,1,3}, all four targets covered exactly once
    valid = {
        (a, (r1,), (r2,))
        for a in combinations([1, 2, 3], 2)
        for r1 in {0, 2, 3} - set(a)
        for r2 in {0, 1, 3} - set(a) - {r1}
        if len({*a, r1, r2}) == 4
    }
    assert set(counts) == valid  # this small instance is irreducible
    freq = np.array(list(counts.values())) / 6000
    assert np.all(np.abs(freq - 1 / len(counts)) < 0.03)
    for state in counts:
        assert all(src not in row for src, row in enumerate(state))


def test_rewire_labels() -> None:
    s, t, ns, nt = _random_bipartite(6, n_sources=30, n_targets=80)
    draws = list(rewire_labels(s, t, ns, nt, n_draws=5, seed=3, n_trades=600))
    assert len(draws) == 5
    ref = np.zeros((ns, nt), dtype=bool)
    ref[s, t] = True
    for lab in draws:
        assert lab.shape == (ns, nt) and lab.dtype == bool
        np.testing.assert_array_equal(lab.sum(axis=1), ref.sum(axis=1))
        np.testing.assert_array_equal(lab.sum(axis=0), ref.sum(axis=0))
        assert (lab & ref).sum() < 0.8 * ref.sum()
    assert not np.array_equal(draws[0], draws[1])
    again = list(rewire_labels(s, t, ns, nt, n_draws=5, seed=3, n_trades=600))
    for a, b in zip(draws, again):
        np.testing.assert_array_equal(a, b)
    # default number of trades and empty input
    assert next(rewire_labels(s, t, ns, nt, n_draws=1, seed=0)).sum() == s.size
    empty = list(rewire_labels([], [], 3, 4, n_draws=2, seed=0))
    assert len(empty) == 2 and not empty[0].any()


def test_validation() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        curveball([0, 0, 1], [1, 1, 2], n_trades=10, seed=0)
    with pytest.raises(ValueError, match="n_sources"):
        rewire_labels([0, 5], [0, 1], 3, 4, n_draws=1, seed=0)
    with pytest.raises(ValueError, match="n_targets"):
        rewire_labels([0, 1], [0, 9], 3, 4, n_draws=1, seed=0)
    with pytest.raises(ValueError, match="integer"):
        curveball([0.5, 1.0], [1, 2], n_trades=10, seed=0)
    with pytest.raises(ValueError, match="n_trades"):
        curveball([0, 1], [1, 2], n_trades=-1, seed=0)
    with pytest.raises(TypeError, match="seed"):
        curveball([0, 1], [1, 2], n_trades=1, seed=None)  # type: ignore[arg-type]


def test_undirected_rewiring_keeps_every_degree_and_stays_simple():
    from scfm_audit.stats import rewire_undirected

    rng = np.random.default_rng(5)
    n = 60
    w = rng.pareto(1.3, n) + 1  # hubs
    iu, ju = np.triu_indices(n, 1)
    keep = rng.random(len(iu)) < np.minimum(1, 0.02 * w[iu] * w[ju])
    a, b = iu[keep], ju[keep]
    deg = np.bincount(np.r_[a, b], minlength=n)
    original = set(zip(a.tolist(), b.tolist()))
    kept = []
    for lo, hi in rewire_undirected(a, b, n, n_draws=20, seed=0):
        assert (lo < hi).all()  # no self-loop, one orientation
        assert len(set(zip(lo.tolist(), hi.tolist()))) == len(lo) == len(a)  # no duplicate
        np.testing.assert_array_equal(np.bincount(np.r_[lo, hi], minlength=n), deg)
        kept.append(len(original & set(zip(lo.tolist(), hi.tolist()))) / len(a))
    assert np.mean(kept) < 0.6  # it mixes


def test_undirected_rewiring_refuses_self_loops_and_duplicates():
    from scfm_audit.stats import rewire_undirected

    with pytest.raises(ValueError, match="self-loop"):
        next(rewire_undirected([0, 1], [0, 2], 3, n_draws=1, seed=0))
    with pytest.raises(ValueError, match="duplicate"):
        next(rewire_undirected([0, 1], [1, 0], 3, n_draws=1, seed=0))
