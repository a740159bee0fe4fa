"""Per-group attention accumulation in one pass (CSSI strata, nested subsamples).

Null hypothesis of every comparison: folding each cell into its group's accumulator in
one pass gives exactly what separate passes over each group's cells give, cumulative
sums over groups give exactly a separate pass over each nested subset, and several
groupings of the same cells in one pass give exactly one grouped pass per grouping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _toy_model import ToyAdapter, toy_adata
from scfm_audit.edges._attention import (
    GroupedAttentionAccumulator,
    MultiGroupedAttentionAccumulator,
    extract_attention_accumulator,
)

KW = dict(per_head=True, batch_size=5, progress=False, dtype=torch.float64)


@pytest.fixture(scope="module")
def adata():
    return toy_adata(n_cells=17, n_genes=25, seed=2)


@pytest.fixture(scope="module")
def model(adata):
    return ToyAdapter(adata.var_names, n_layers=2, n_heads=2, d_model=16, seed=4)


def test_one_pass_per_group_equals_separate_passes(model, adata):
    cells = np.random.default_rng(0).permutation(adata.n_obs)[:15]
    groups = np.arange(15) % 3  # groups interleaved within every batch
    acc = extract_attention_accumulator(model, adata, cells=cells, groups=groups, **KW)
    assert isinstance(acc, GroupedAttentionAccumulator)
    assert acc.group_cells.tolist() == [5, 5, 5]
    for k in range(3):
        alone = extract_attention_accumulator(model, adata, cells=cells[groups == k], **KW)
        got = acc.group(k)
        torch.testing.assert_close(got.sum, alone.sum, rtol=1e-12, atol=1e-12)
        assert torch.equal(got.count, alone.count) and got.n_cells == alone.n_cells
    pooled = extract_attention_accumulator(model, adata, cells=cells, **KW)
    torch.testing.assert_close(acc.pooled().sum, pooled.sum, rtol=1e-12, atol=1e-12)
    assert torch.equal(acc.pooled().count, pooled.count)


def test_nested_subsets_equal_separate_passes(model, adata):
    order = np.random.default_rng(1).permutation(adata.n_obs)
    grid = [4, 9, 17]  # nested subsets order[:n]; each cell in its smallest bucket
    bucket = np.searchsorted(grid, np.arange(len(order)), side="right")
    acc = extract_attention_accumulator(model, adata, cells=order, groups=bucket, **KW)
    nested = acc.cumulative()
    for n, got in zip(grid, nested, strict=True):
        alone = extract_attention_accumulator(model, adata, cells=order[:n], **KW)
        torch.testing.assert_close(got.sum, alone.sum, rtol=1e-12, atol=1e-12)
        assert torch.equal(got.count, alone.count) and got.n_cells == n
        a = got.to_edge_scores()[0].scores
        b = alone.to_edge_scores()[0].scores
        np.testing.assert_allclose(a, b, rtol=1e-12, equal_nan=True)


def test_grouped_merge_and_validation(model, adata):
    g = np.arange(adata.n_obs) % 2
    full = extract_attention_accumulator(model, adata, groups=g, **KW)
    halves = [
        extract_attention_accumulator(model, adata, cells=c, groups=g[c], n_groups=2, **KW)
        for c in np.array_split(np.arange(adata.n_obs), 2)
    ]
    merged = halves[0].merge(halves[1])
    torch.testing.assert_close(merged.sum, full.sum, rtol=1e-12, atol=1e-12)
    assert merged.group_cells.tolist() == full.group_cells.tolist()
    with pytest.raises(ValueError, match="groups"):
        extract_attention_accumulator(model, adata, groups=g[:-1], **KW)
    with pytest.raises(ValueError, match="0 … 1"):
        extract_attention_accumulator(model, adata, groups=g + 1, n_groups=2, **KW)


def test_several_groupings_in_one_pass_equal_one_pass_each(model, adata):
    rng = np.random.default_rng(3)
    cells = np.sort(rng.permutation(adata.n_obs)[:15])
    strata = np.arange(15) % 3
    shuffled = rng.permutation(strata)
    partial = np.where(np.arange(15) % 4 == 0, -1, np.arange(15) % 2)  # −1: not in it
    grid = [4, 9, 15]  # nested buckets of a random order of the cells
    buckets = np.full(15, -1)
    buckets[rng.permutation(15)] = np.searchsorted(grid, np.arange(15), side="right")
    groupings = [strata, shuffled, partial, buckets]
    sizes = [3, 3, 2, 3]
    acc = extract_attention_accumulator(
        model, adata, cells=cells, groups=np.column_stack(groupings), n_groups=sizes, **KW
    )
    assert isinstance(acc, MultiGroupedAttentionAccumulator)
    assert acc.sizes == tuple(sizes) and acc.n_cells == 15
    for m, (g, k) in enumerate(zip(groupings, sizes, strict=True)):
        keep = g >= 0
        alone = extract_attention_accumulator(
            model, adata, cells=cells[keep], groups=g[keep], n_groups=k, **KW
        )
        got = acc.grouping(m)
        assert isinstance(got, GroupedAttentionAccumulator)
        torch.testing.assert_close(got.sum, alone.sum, rtol=1e-12, atol=1e-12)
        assert torch.equal(got.count, alone.count)
        assert got.group_cells.tolist() == alone.group_cells.tolist()
        assert got.n_cells == alone.n_cells == int(keep.sum())
    nested = acc.grouping(3).cumulative()
    order = np.argsort(buckets, kind="stable")
    for n, got in zip(grid, nested, strict=True):
        alone = extract_attention_accumulator(model, adata, cells=np.sort(cells[order[:n]]), **KW)
        torch.testing.assert_close(got.sum, alone.sum, rtol=1e-12, atol=1e-12)


def test_several_groupings_merge_and_validation(model, adata):
    n = adata.n_obs
    G = np.column_stack([np.arange(n) % 2, np.arange(n) % 3])
    full = extract_attention_accumulator(model, adata, groups=G, n_groups=[2, 3], **KW)
    halves = [
        extract_attention_accumulator(model, adata, cells=c, groups=G[c], n_groups=[2, 3], **KW)
        for c in np.array_split(np.arange(n), 2)
    ]
    merged = halves[0].merge(halves[1])
    torch.testing.assert_close(merged.sum, full.sum, rtol=1e-12, atol=1e-12)
    assert merged.group_cells.tolist() == full.group_cells.tolist()
    with pytest.raises(NotImplementedError, match="grouping"):
        full.pooled()
    with pytest.raises(ValueError, match="one size per grouping"):
        extract_attention_accumulator(model, adata, groups=G, n_groups=3, **KW)
    with pytest.raises(ValueError, match="must lie in"):
        extract_attention_accumulator(model, adata, groups=G + 2, n_groups=[2, 3], **KW)
