"""The streaming attention engine against a naive reference.

Null hypothesis of every comparison: the engine's batched, padded, on-device index
arithmetic gives exactly what a plain loop over cells and token pairs gives.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from _toy_model import ToyAdapter, toy_adata
from scfm_audit.edges._attention import (
    AttentionAccumulator,
    extract_attention_accumulator,
    extract_attention_edges,
    scgpt_rank_normalise,
)

N_LAYERS, N_HEADS, D = 3, 2, 16


@pytest.fixture(scope="module")
def adata():
    return toy_adata(n_cells=12, n_genes=30, seed=1)


@pytest.fixture(scope="module")
def model(adata):
    return ToyAdapter(adata.var_names, n_layers=N_LAYERS, n_heads=N_HEADS, d_model=D, seed=3)


# -- naive reference --------------------------------------------------------------------------
def tutorial_rank_normalise(qk: torch.Tensor) -> torch.Tensor:
    """scGPT Tutorial_Attention_GRN.ipynb, verbatim (one cell, no padding): (1, H, M, M)."""
    H, M = qk.shape[1], qk.shape[-1]
    attn_scores = qk.reshape((-1, M))
    order = torch.argsort(attn_scores, dim=1)
    rank = torch.argsort(order, dim=1)
    attn_scores = rank.reshape((-1, H, M, M)) / M
    attn_scores = attn_scores.permute(0, 1, 3, 2).reshape((-1, M))
    order = torch.argsort(attn_scores, dim=1)
    rank = torch.argsort(order, dim=1)
    return (rank.reshape((-1, H, M, M)) / M).permute(0, 1, 3, 2)


def naive(model, adata, *, score="softmax", genes=None, layers=None):
    """One cell at a time, every layer's tensor captured in a list, numpy accumulation
    with Python loops over token pairs. Returns (sums {layer: (H, G, G)}, count, n)."""
    genes = list(adata.var_names) if genes is None else list(genes)
    layers = list(range(model.n_layers)) if layers is None else layers
    slot = {g: k for k, g in enumerate(genes)}
    G, H = len(genes), model.n_heads
    sums = {L: np.zeros((H, G, G)) for L in layers}
    count = np.zeros((G, G), np.int64)
    site = "attn.pattern" if score in ("softmax", "softmax_relative") else "attn.scores"
    for c in range(adata.n_obs):
        batch = model.tokenize(adata, [c])  # one cell: no padding
        captured: list[torch.Tensor] = []
        with model.hooks({f"layers.*.{site}": lambda x, _c=captured, **_: _c.append(x.clone())}):
            model.forward(batch)
        gi = batch.gene_index[0].numpy()
        s = [slot.get(adata.var_names[g], -1) if g >= 0 else -1 for g in gi]
        T = len(s)
        for L in layers:
            A = captured[L]
            if score == "qk":
                A = A * math.sqrt(model.d_model // H)
            elif score == "scgpt_grn":
                A = tutorial_rank_normalise(A)
            elif score == "softmax_relative":  # one cell, no padding: T real tokens
                A = A * A.shape[-1]
            A = A[0].double().numpy()
            for a in range(T):
                for b in range(T):
                    if s[a] >= 0 and s[b] >= 0:
                        sums[L][:, s[a], s[b]] += A[:, a, b]
        for a in range(T):
            for b in range(T):
                if s[a] >= 0 and s[b] >= 0:
                    count[s[a], s[b]] += 1
    return sums, count, adata.n_obs


def by_key(edges):
    return {(e.layer, e.head): e for e in edges}


def check_against_naive(edges, ref, *, per_head=True, atol=1e-5):
    sums, count, n = ref
    got = by_key(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        for L, S in sums.items():
            pooled = S.mean(0) / count
            e = got[(L, None)]
            np.testing.assert_allclose(e.dense(), pooled, atol=atol, rtol=1e-5, equal_nan=True)
            np.testing.assert_array_equal(e.coverage, count)
            assert e.n_cells == n
            if per_head:
                for h in range(S.shape[0]):
                    np.testing.assert_allclose(
                        got[(L, h)].dense(), S[h] / count, atol=atol, rtol=1e-5, equal_nan=True
                    )


# -- equality with the reference ---------------------------------------------------------------
@pytest.mark.parametrize("score", ["softmax", "softmax_relative", "qk", "qk_scaled", "scgpt_grn"])
def test_matches_naive_reference(model, adata, score):
    edges = extract_attention_edges(
        model,
        adata,
        score=score,
        per_head=True,
        batch_size=5,
        progress=False,
        dtype=torch.float64,
    )
    assert len(edges) == N_LAYERS * (N_HEADS + 1)
    check_against_naive(edges, naive(model, adata, score=score))


def test_relative_to_uniform_counts_real_tokens_only():
    """Uniform attention over a cell's real tokens reads 1 whatever the padding."""
    from scfm_audit.edges._attention import relative_to_uniform

    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    p = mask[:, None, None, :].float().expand(2, 2, 4, 4)
    p = p / p.sum(-1, keepdim=True)
    out = relative_to_uniform(p, mask)
    torch.testing.assert_close(out[0, :, :, :3], torch.ones(2, 4, 3))
    torch.testing.assert_close(out[1], torch.ones(2, 4, 4))


def test_average_product_correction():
    """F − F_i· F_·j / F_·· over off-diagonal means; on a row × column background a
    planted pair stands out; NaN stays NaN."""
    from scfm_audit.edges._attention import average_product_correction

    rng = np.random.default_rng(0)
    r, c = rng.uniform(1, 2, 6), rng.uniform(1, 2, 6)
    F = np.outer(r, c)
    np.fill_diagonal(F, 100.0)  # the diagonal is ignored by the means
    off = ~np.eye(6, dtype=bool)
    row = np.array([F[i, off[i]].mean() for i in range(6)])
    col = np.array([F[off[:, j], j].mean() for j in range(6)])
    expected = F - np.outer(row, col) / F[off].mean()
    got = average_product_correction(F)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    F2 = F.copy()
    F2[1, 4] += 1.0
    F2[2, 3] = np.nan
    got2 = average_product_correction(F2)
    assert np.isnan(got2[2, 3])
    assert got2[1, 4] == got2[off & np.isfinite(got2)].max()


def test_correction_apc_in_extraction(model, adata):
    plain = extract_attention_edges(model, adata, layers=[0], progress=False)[0]
    apc = extract_attention_edges(model, adata, layers=[0], progress=False, correction="apc")[0]
    from scfm_audit.edges._attention import average_product_correction

    np.testing.assert_allclose(apc.dense(), average_product_correction(plain.dense()))
    assert apc.params["correction"] == "apc" and plain.params["correction"] is None
    with pytest.raises(ValueError, match="correction"):
        extract_attention_edges(model, adata, layers=[0], progress=False, correction="x")


def test_float32_default_within_tolerance(model, adata):
    edges = extract_attention_edges(model, adata, batch_size=4, progress=False)
    assert edges[0].dense().dtype == np.float32
    check_against_naive(edges, naive(model, adata), per_head=False)


def test_scgpt_grn_matches_tutorial_qk(model, adata):
    """Tutorial recipe from its own q·kᵀ: the input of the last layer through Wq, Wk
    (with bias, unscaled), no softmax; our engine reads the attn.scores site."""
    L = N_LAYERS - 1
    w = model.weights[L]
    G, H, dh = adata.n_vars, N_HEADS, D // N_HEADS
    total, count = np.zeros((G, G)), np.zeros((G, G))
    for c in range(adata.n_obs):
        batch = model.tokenize(adata, [c])
        x = []
        with model.hooks({f"layers.{L - 1}.resid_post": lambda t, _x=x, **_: _x.append(t)}):
            model.forward(batch)
        emb = x[0]
        M = emb.shape[1]
        q = (emb @ w.q_w.T + w.q_b).view(1, M, H, dh)
        k = (emb @ w.k_w.T + w.k_b).view(1, M, H, dh)
        attn = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1)
        a = tutorial_rank_normalise(attn).mean(1)[0].double().numpy()
        gi = batch.gene_index[0].numpy()
        keep = np.flatnonzero(gi >= 0)
        total[np.ix_(gi[keep], gi[keep])] += a[np.ix_(keep, keep)]
        count[np.ix_(gi[keep], gi[keep])] += 1
    (e,) = extract_attention_edges(
        model, adata, layers=[L], score="scgpt_grn", batch_size=7, progress=False
    )
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(e.dense(), total / count, atol=1e-5, equal_nan=True)


def test_scgpt_rank_normalise_excludes_padding():
    torch.manual_seed(0)
    s = torch.randn(1, 2, 6, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    padded = scgpt_rank_normalise(s, mask)[..., :4, :4]
    alone = scgpt_rank_normalise(s[..., :4, :4])
    torch.testing.assert_close(padded, alone)
    torch.testing.assert_close(alone, tutorial_rank_normalise(s[..., :4, :4]).float())


# -- accumulator algebra -----------------------------------------------------------------------
def test_three_shards_merge_equals_one_pass(model, adata):
    kw = dict(per_head=True, batch_size=4, progress=False, dtype=torch.float64)
    full = extract_attention_accumulator(model, adata, **kw)
    shards = [
        extract_attention_accumulator(model, adata, cells=c, **kw)
        for c in np.array_split(np.arange(adata.n_obs), 3)
    ]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.n_cells == full.n_cells == adata.n_obs
    torch.testing.assert_close(merged.sum, full.sum, rtol=1e-12, atol=1e-12)
    assert torch.equal(merged.count, full.count)


def test_state_dict_roundtrip(model, adata):
    acc = extract_attention_accumulator(model, adata, layers=[1], progress=False)
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    back = AttentionAccumulator.from_state_dict(torch.load(buf))
    assert back.n_cells == acc.n_cells and back.layers == acc.layers
    assert torch.equal(back.sum, acc.sum) and torch.equal(back.count, acc.count)
    a, b = acc.to_edge_scores()[0], back.to_edge_scores()[0]
    np.testing.assert_array_equal(a.dense(), b.dense())
    assert back.params["score"] == "softmax"
    with pytest.raises(ValueError, match="different layers"):
        back.merge(extract_attention_accumulator(model, adata, layers=[0], progress=False))
    with pytest.raises(ValueError, match="different params"):
        back.merge(
            extract_attention_accumulator(
                model, adata, layers=[1], score="scgpt_grn", progress=False
            )
        )


def test_pooled_is_mean_of_heads(model, adata):
    edges = by_key(extract_attention_edges(model, adata, per_head=True, progress=False))
    pooled_only = by_key(extract_attention_edges(model, adata, per_head=False, progress=False))
    for L in range(N_LAYERS):
        heads = np.stack([edges[(L, h)].dense() for h in range(N_HEADS)])
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(edges[(L, None)].dense(), heads.mean(0), atol=1e-6)
        np.testing.assert_allclose(
            pooled_only[(L, None)].dense(), edges[(L, None)].dense(), atol=1e-6
        )
        assert edges[(L, None)].head is None and edges[(L, 1)].head == 1


def test_genes_restriction(model, adata):
    genes = ["g7", "g2", "g11", "g0", "g29"]  # a subset, in its own order
    sub = extract_attention_edges(model, adata, genes=genes, per_head=True, progress=False)
    full = by_key(extract_attention_edges(model, adata, per_head=True, progress=False))
    for e in sub:
        assert list(e.genes) == genes
        ref = full[(e.layer, e.head)].subset(genes)
        np.testing.assert_allclose(e.dense(), ref.dense(), atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(e.coverage, ref.coverage)
    check_against_naive(sub, naive(model, adata, genes=genes))
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        extract_attention_edges(model, adata, genes=["g1", "nope"], progress=False)


def test_coverage_brute_force(model, adata):
    (e,) = extract_attention_edges(model, adata, layers=[0], progress=False)
    X = adata.X.toarray() > 0
    brute = np.zeros((adata.n_vars, adata.n_vars), int)
    for c in range(adata.n_obs):
        for i in range(adata.n_vars):
            for j in range(adata.n_vars):
                brute[i, j] += X[c, i] and X[c, j]
    np.testing.assert_array_equal(e.coverage, brute)
    assert np.isnan(e.dense()[brute == 0]).all()
    assert np.isfinite(e.dense()[brute > 0]).all()


def test_normalisation_all(model, adata):
    present = extract_attention_edges(model, adata, layers=[2], progress=False)[0]
    allc = extract_attention_edges(model, adata, layers=[2], normalisation="all", progress=False)[0]
    expect = np.nan_to_num(present.dense()) * present.coverage / adata.n_obs
    np.testing.assert_allclose(allc.dense(), expect, atol=1e-6)
    assert allc.params["normalisation"] == "all"


# -- padding, special tokens, duplicates ---------------------------------------------------------
def test_padding_and_specials_never_contribute_unit():
    acc = AttentionAccumulator(["a", "b", "c"], layers=[0], n_heads=2)
    slot = torch.tensor([[-1, 0, 2, -1, -1], [-1, 1, 0, 2, -1]])  # cls, genes, padding
    pattern = torch.full((2, 2, 5, 5), 1000.0)
    real = slot >= 0
    pattern[(real[:, :, None] & real[:, None, :])[:, None].expand_as(pattern)] = 1.0
    acc.update(pattern, slot)
    torch.testing.assert_close(acc.sum[0, 0], 2.0 * acc.count.double())  # 2 heads × 1.0
    assert acc.count.tolist() == [[2, 1, 2], [1, 1, 1], [2, 1, 2]]
    (e,) = acc.to_edge_scores()
    np.testing.assert_allclose(e.dense(), np.ones((3, 3)))


def test_padding_invariance_through_model(adata):
    """Each batch padded to 40 tokens: padded keys have finite q·kᵀ and padded queries
    non-zero attention rows; including them would change the edges."""
    kw = dict(n_layers=2, n_heads=2, d_model=16, seed=5)
    plain = ToyAdapter(adata.var_names, **kw)
    padded = ToyAdapter(adata.var_names, pad_to=40, **kw)
    b = padded.tokenize(adata, [0, 1])
    assert (~b.attention_mask).sum(1).min() > 5
    for score in ("softmax", "qk"):
        one = extract_attention_edges(plain, adata, score=score, batch_size=1, progress=False)
        pad = extract_attention_edges(padded, adata, score=score, batch_size=4, progress=False)
        for x, y in zip(one, pad):
            np.testing.assert_allclose(x.dense(), y.dense(), atol=1e-5, equal_nan=True)


def test_duplicate_gene_counts_every_token_pair():
    acc = AttentionAccumulator(["a", "b"], layers=[0], n_heads=1)
    slot = torch.tensor([[-1, 0, 1, 0]])  # gene a tokenised twice
    pattern = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    acc.update(pattern, slot)
    assert acc.count.tolist() == [[4, 2], [2, 1]]
    # a→a: pairs (1,1), (1,3), (3,1), (3,3) = 5 + 7 + 13 + 15
    assert acc.sum[0, 0, 0, 0].item() == 40.0
    assert acc.to_edge_scores()[0].dense()[0, 0] == 10.0


# -- memory, layers, bookkeeping --------------------------------------------------------------------
def test_memory_independent_of_cells(model, adata):
    few = extract_attention_accumulator(model, adata, cells=[0, 1], per_head=True, progress=False)
    many = extract_attention_accumulator(model, adata, per_head=True, progress=False)
    G = adata.n_vars
    assert few.sum.shape == many.sum.shape == (N_LAYERS, N_HEADS, G, G)
    assert few.count.shape == many.count.shape == (G, G)
    assert few.nbytes == many.nbytes == N_LAYERS * N_HEADS * G * G * 4 + G * G * 4
    pooled = extract_attention_accumulator(model, adata, progress=False, dtype=torch.float64)
    assert pooled.sum.shape == (N_LAYERS, 1, G, G)
    assert few.n_cells == 2 and many.n_cells == adata.n_obs


def test_layer_subset_stops_forward_early(model, adata):
    calls = []
    with model.hooks({"layers.2.resid_post": lambda x, **_: calls.append(1)}):
        sub = extract_attention_edges(model, adata, layers=[-3, 0], progress=False)
    assert calls == []  # layer 2 never ran
    assert [e.layer for e in sub] == [0]
    full = extract_attention_edges(model, adata, progress=False)
    np.testing.assert_array_equal(sub[0].dense(), full[0].dense())
    with pytest.raises(ValueError, match="out of range"):
        extract_attention_edges(model, adata, layers=[3], progress=False)


def test_hooks_detached_and_provenance(model, adata):
    edges = extract_attention_edges(
        model, adata, score="raw", batch_size=6, dataset="toyset", progress=False
    )
    assert not any(hp.active for hp in model.hook_points.values())
    e = edges[-1]
    assert (e.method, e.model, e.dataset, e.layer, e.head) == (
        "attention",
        "toy",
        "toyset",
        N_LAYERS - 1,
        None,
    )
    assert e.params["score"] == "qk" and e.params["batch_size"] == 6
    assert e.params["n_layers"] == N_LAYERS and e.params["normalisation"] == "present"
    with pytest.raises(ValueError, match="unknown attention score"):
        extract_attention_edges(model, adata, score="softmx", progress=False)


def test_symmetrise(model, adata):
    (e,) = extract_attention_edges(model, adata, layers=[1], symmetrise=True, progress=False)
    d = e.dense()
    np.testing.assert_allclose(d, d.T, equal_nan=True)
    assert not e.directed


def test_update_requires_all_layers():
    acc = AttentionAccumulator(["a"], layers=[0, 1], n_heads=1)
    with pytest.raises(ValueError, match="several layers"):
        acc.update(torch.ones(1, 1, 2, 2), torch.tensor([[-1, 0]]))
    acc.update({0: torch.ones(1, 1, 2, 2), 1: torch.ones(1, 1, 2, 2)}, torch.tensor([[-1, 0]]))
    assert acc.n_cells == 1 and acc.count.item() == 1


def test_registered_as_scorer(model, adata):
    reg = pytest.importorskip("scfm_audit.edges._registry")
    import scfm_audit.edges._attention  # noqa: F401  (registers on import)

    # read the items directly: Registry.get would also import the other built-in scorer
    # modules, which this test does not need
    fn = reg.EDGE_SCORERS._items["attention"]
    edges = fn(adata, genes=["g0", "g1", "g2"], model=model, layers=[0], progress=False)
    assert edges[0].n_genes == 3 and edges[0].method == "attention"
    with pytest.raises(ValueError, match="model="):
        fn(adata)


def test_edges_do_not_alias_accumulator(model, adata):
    acc = extract_attention_accumulator(model, adata, layers=[0], cells=[0, 1], progress=False)
    (e,) = acc.to_edge_scores()
    before = (e.dense().copy(), e.coverage.copy())
    acc.merge(extract_attention_accumulator(model, adata, layers=[0], progress=False))
    np.testing.assert_array_equal(e.dense(), before[0])
    np.testing.assert_array_equal(e.coverage, before[1])
