"""``docs/adding-a-model.md`` checked against the code: the skeleton family of
``tests/_skeleton_family.py`` implements the adapter protocol, registers under its name,
loads a checkpoint it wrote itself, and then works with the layers above ``models/``
unchanged: attention extraction (``sa.edges.extract_attention_edges``) equals the
attention patterns read directly at the hook sites, and a head intervention changes
exactly what it should."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import scfm_audit as sa
from _skeleton_family import SkeletonAdapter, build_skeleton_checkpoint
from scfm_audit.models import MODEL_FAMILIES, CheckpointError, ablate_heads, load_model

GENES = ["G0", "G1", "G2", "G3", "G4", "G5"]
ACC = ["G0", "G1", "G2", "G3", "G5"]  # the vocabulary genes the data has (G4 is absent)
# cells × var; var "X" is not in the vocabulary
VAR = ["G2", "G0", "X", "G1", "G5", "G3"]
COUNTS = np.array(
    [
        [3, 0, 9, 5, 1, 0],  # G1 5, G2 3, G5 1          (X dropped)
        [0, 2, 0, 2, 7, 4],  # G5 7, G3 4, G0 2, G1 2   (tie G0/G1: var order)
        [1, 6, 2, 0, 0, 3],  # G0 6, G3 3, G2 1
        [4, 4, 0, 4, 4, 4],  # all tied: var order G2 G0 G1 G5 G3
    ],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def adata():
    a = ad.AnnData(COUNTS.copy())
    a.var_names = VAR
    return a


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = build_skeleton_checkpoint(tmp_path_factory.mktemp("sk") / "skeleton_tiny", GENES)
    return load_model("skeleton", path, device="cpu")


def test_registered_and_loaded_through_the_registry(model, tmp_path):
    assert MODEL_FAMILIES.get("skeleton") is SkeletonAdapter
    assert isinstance(model, SkeletonAdapter) and model.name == "skeleton_tiny"
    assert (model.n_layers, model.n_heads, model.d_model) == (2, 2, 16)
    assert sorted(model.hook_points)[:2] == ["layers.0.attn.out", "layers.0.attn.pattern"]
    with pytest.raises(ValueError, match="already registered"):
        MODEL_FAMILIES.register("skeleton")(SkeletonAdapter)
    with pytest.raises(CheckpointError, match=r"skeleton\.json"):
        load_model("skeleton", tmp_path)


def test_tokenization_ranks_genes_by_count(model, adata):
    b = model.tokenize(adata)
    assert b.input_ids.shape == (4, 6)  # <cls> + the longest cell's 5 genes
    real = [b.gene_index[i][b.attention_mask[i]].tolist() for i in range(4)]
    var = {g: i for i, g in enumerate(VAR)}
    as_pos = [
        [-1, *(var[g] for g in genes)]
        for genes in (
            ["G1", "G2", "G5"],
            ["G5", "G3", "G0", "G1"],
            ["G0", "G3", "G2"],
            ["G2", "G0", "G1", "G5", "G3"],
        )
    ]
    assert real == as_pos
    assert b.input_ids[0, :4].tolist() == [1, 3, 4, 7]  # <cls>, then gene id + 2
    np.testing.assert_allclose(b.values[1, 1:5].numpy(), np.log1p([7, 4, 2, 2]), rtol=1e-6)
    rep = model.vocabulary_report(adata)
    assert rep.n_in_vocab == 5 and rep.missing == ["X"]


def test_save_and_reload_give_the_same_outputs(model, adata, tmp_path):
    model.save_pretrained(tmp_path / "copy")
    again = SkeletonAdapter.load(tmp_path / "copy", device="cpu")
    b = model.tokenize(adata)
    assert torch.equal(model.forward(b).hidden, again.forward(b).hidden)


def _patterns(model, batch) -> dict[int, torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}

    def grab(p, *, site, ctx):
        seen[int(site.split(".")[1])] = p.clone()

    with model.hooks({"layers.*.attn.pattern": grab}):
        model.forward(batch)
    return seen


def test_attention_edges_are_the_hooked_patterns(model, adata):
    """``extract_attention_edges(score="softmax", normalisation="present")``: entry
    (i, j) is the mean over the cells holding both genes of the probability with which
    gene i's token attends to gene j's; recomputed here from the pattern hook."""
    edges = sa.edges.extract_attention_edges(
        model, adata, genes=ACC, per_head=True, batch_size=3, progress=False
    )
    assert [(e.layer, e.head) for e in edges] == [(L, h) for L in (0, 1) for h in (None, 0, 1)]
    batch = model.tokenize(adata)
    pats = _patterns(model, batch)
    var = list(VAR)
    for e in edges:
        assert list(e.genes) == ACC and e.method == "attention" and e.n_cells == 4
        ref = np.full((5, 5), np.nan)
        for i, gi in enumerate(ACC):
            for j, gj in enumerate(ACC):
                vals = []
                for c in range(4):
                    pos = batch.gene_index[c].tolist()
                    if var.index(gi) in pos and var.index(gj) in pos:
                        p = pats[e.layer][c, :, pos.index(var.index(gi)), pos.index(var.index(gj))]
                        vals.append(float(p.mean() if e.head is None else p[e.head]))
                if vals:
                    ref[i, j] = np.mean(vals)
        ok = ~np.eye(5, dtype=bool)
        np.testing.assert_allclose(e.scores[ok], ref[ok], rtol=1e-5, atol=1e-7)
    # coverage: cells holding both genes (G1 and G2: cells 0 and 3; G0 and G3: 1, 2, 3)
    assert edges[0].coverage[ACC.index("G1"), ACC.index("G2")] == 2
    assert edges[0].coverage[ACC.index("G0"), ACC.index("G3")] == 3


def test_head_ablation_changes_only_downstream(model, adata):
    batch = model.tokenize(adata)
    base = model.forward(batch)
    base_pats = _patterns(model, batch)
    with ablate_heads(model, [(1, 0)], method="zero") as iv:
        assert iv.sites == ["layers.1.attn.z"]
        out = model.forward(batch)
        pats = _patterns(model, batch)
    # layer 1's patterns are read before its z is zeroed; the outputs move
    assert all(torch.equal(base_pats[L], pats[L]) for L in (0, 1))
    assert not torch.allclose(out.hidden, base.hidden)
    assert torch.equal(model.forward(batch).hidden, base.hidden)  # hooks removed on exit
    with ablate_heads(model, [(0, 1)], method="uniform"):
        pats = _patterns(model, batch)
    real = batch.attention_mask[:, None, None, :].float()
    uniform = real / real.sum(-1, keepdim=True)
    torch.testing.assert_close(pats[0][:, 1], uniform[:, 0].expand_as(pats[0][:, 1]))
    assert not torch.equal(pats[1], base_pats[1])  # layer 1 sees layer 0's change


def test_perturbation_deletes_the_gene(model, adata):
    batch = model.tokenize(adata)
    g = VAR.index("G3")
    out = model.perturb(batch, g, mode="delete")
    assert not (out.gene_index[out.attention_mask] == g).any()
    assert int(out.attention_mask.sum()) == int(batch.attention_mask.sum()) - 3
    with pytest.raises(ValueError, match="delete"):
        model.perturb(batch, g, mode="overexpress")
