"""scGPT adapter: real checkpoint layout, faithful tokenization, attention equal to the
upstream (torch.nn) implementation, perturbations, save/load round trip.

Expected values in the tokenizer tests are derived by hand from scGPT's rules
(``scgpt/preprocess.py::binning``, ``scgpt/data_collator.py``, ``scgpt/tasks/cell_emb.py``):

* genes are matched by symbol; genes outside the vocabulary are dropped before binning;
* per cell, the non-zero in-vocabulary genes in ``var`` order; binning with ``n_bins = 51``
  puts 50 edges at quantiles k/49 (k = 0..49) of the cell's non-zero values. For n
  distinct values, the value of rank j (0-based, ascending) lies at quantile position
  j/(n-1); the number of edges ≤ it is floor(49·j/(n-1)) + 1, which is its bin
  (exactly on an edge only when 49·j/(n-1) is an integer, and then the tie-break range is
  that single bin). So with n = 2: ranks → 1, 50; n = 3: 1, 25, 50; n = 4: 1, 17, 33, 50;
* ``<cls>`` first with value pad_value = -2; ``<pad>`` / -2 after the last gene;
* vocabulary of the test checkpoint: D=0, C=1, B=2, A=3, E=4, <pad>=5, <cls>=6, <eoc>=7.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from torch import nn

from scfm_audit.models._base import MODEL_FAMILIES, CheckpointError, load_model
from scfm_audit.models.scgpt import ScGPTAdapter, bin_expression, build_scgpt_checkpoint

GENES = ["D", "C", "B", "A", "E"]
PAD, CLS = 5, 6
# cells × genes; X and Y are not in the vocabulary
VAR = ["A", "X", "B", "C", "Y", "D"]
COUNTS = np.array(
    [
        [3, 7, 0, 1, 0, 5],  # A=3 C=1 D=5 (X dropped)        → ranks C<A<D: C=1, A=25, D=50
        [0, 9, 2, 0, 4, 4],  # B=2 D=4 (X, Y dropped)          → B=1, D=50
        [10, 8, 20, 30, 1, 40],  # A=10 B=20 C=30 D=40          → A=1, B=17, C=33, D=50
    ],
    dtype=np.float32,
)


def _layer_norm(x, ln):
    return torch.nn.functional.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _adata() -> ad.AnnData:
    a = ad.AnnData(COUNTS.copy())
    a.var_names = VAR
    a.obs_names = ["c0", "c1", "c2"]
    return a


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_scgpt_checkpoint(tmp_path_factory.mktemp("ck") / "scgpt_tiny", GENES, seed=1)


@pytest.fixture(scope="module")
def ckpt_flash(tmp_path_factory):
    return build_scgpt_checkpoint(
        tmp_path_factory.mktemp("ckf") / "scgpt_tiny_flash", GENES, seed=1, flash=True
    )


@pytest.fixture(scope="module")
def model(ckpt):
    return ScGPTAdapter.load(ckpt, device="cpu")


def _resave(src, dst, *, edit_state=None, drop=None):
    dst.mkdir()
    for name in ("args.json", "vocab.json", "best_model.pt"):
        if name != drop:
            (dst / name).write_bytes((src / name).read_bytes())
    if edit_state is not None:
        sd = torch.load(dst / "best_model.pt", weights_only=True)
        edit_state(sd)
        torch.save(sd, dst / "best_model.pt")
    return dst


# ---------------------------------------------------------------------------------------
# checkpoint files


def test_registered_and_files_in_real_format(ckpt, ckpt_flash):
    assert MODEL_FAMILIES.get("scgpt") is ScGPTAdapter
    args = json.loads((ckpt / "args.json").read_text())
    for key in (
        "embsize",
        "nheads",
        "d_hid",
        "nlayers",
        "n_bins",
        "max_seq_len",
        "pad_token",
        "pad_value",
        "input_emb_style",
        "fast_transformer",
        "n_layers_cls",
    ):
        assert key in args
    assert args["pad_value"] == -2 and args["pad_token"] == "<pad>"
    vocab = json.loads((ckpt / "vocab.json").read_text())
    assert vocab == {"D": 0, "C": 1, "B": 2, "A": 3, "E": 4, "<pad>": 5, "<cls>": 6, "<eoc>": 7}
    plain = torch.load(ckpt / "best_model.pt", weights_only=True)
    flash = torch.load(ckpt_flash / "best_model.pt", weights_only=True)
    assert "transformer_encoder.layers.0.self_attn.in_proj_weight" in plain
    assert "transformer_encoder.layers.0.self_attn.Wqkv.weight" in flash
    assert not any("Wqkv" in k for k in plain) and not any("in_proj" in k for k in flash)
    # the released pretrained layout: flag_encoder and MVC head, no cls_decoder
    assert "flag_encoder.weight" in plain and "mvc_decoder.W.weight" in plain
    assert not any(k.startswith("cls_decoder") for k in plain)


def test_flash_and_plain_layouts_load_strict_and_agree(ckpt, ckpt_flash, model):
    flash = load_model("scgpt", ckpt_flash, device="cpu")
    assert (model.layout, flash.layout) == ("torch", "flash")
    batch = model.tokenize(_adata())
    a, b = model.forward(batch), flash.forward(batch)
    assert torch.equal(a.hidden, b.hidden)
    assert torch.equal(a.gene_predictions, b.gene_predictions)
    assert torch.equal(a.cell_embedding, a.hidden[:, 0])


def test_extra_key_is_reported(ckpt, tmp_path):
    def add(sd):
        sd["batch_encoder.embedding.weight"] = torch.zeros(3, 32)

    bad = _resave(ckpt, tmp_path / "extra", edit_state=add)
    with pytest.raises(CheckpointError, match="unexpected") as e:
        ScGPTAdapter.load(bad, device="cpu")
    assert "batch_encoder.embedding.weight" in str(e.value)
    assert "batch" in str(e.value).lower()


def test_missing_key_is_reported_in_the_checkpoints_own_naming(ckpt, ckpt_flash, tmp_path):
    def drop(sd):
        del sd["decoder.fc.2.bias"]

    with pytest.raises(CheckpointError, match=r"missing[\s\S]*decoder\.fc\.2\.bias"):
        ScGPTAdapter.load(_resave(ckpt, tmp_path / "miss", edit_state=drop), device="cpu")

    def drop_qkv(sd):
        del sd["transformer_encoder.layers.1.self_attn.Wqkv.bias"]

    with pytest.raises(CheckpointError) as e:
        ScGPTAdapter.load(_resave(ckpt_flash, tmp_path / "missf", edit_state=drop_qkv))
    assert "transformer_encoder.layers.1.self_attn.Wqkv.bias" in str(e.value)


def test_wrong_shape_names_key_shapes_and_args_field(ckpt, tmp_path):
    key = "transformer_encoder.layers.1.linear1.weight"

    def widen(sd):
        sd[key] = torch.zeros(65, 32)

    with pytest.raises(CheckpointError) as e:
        ScGPTAdapter.load(_resave(ckpt, tmp_path / "shape", edit_state=widen), device="cpu")
    msg = str(e.value)
    assert key in msg and "(65, 32)" in msg and "(64, 32)" in msg and "d_hid" in msg


def test_extra_layer_mentions_nlayers(ckpt, tmp_path):
    def add_layer(sd):
        for k in [k for k in sd if k.startswith("transformer_encoder.layers.1.")]:
            sd[k.replace("layers.1.", "layers.2.")] = sd[k].clone()

    with pytest.raises(CheckpointError, match="nlayers=2"):
        ScGPTAdapter.load(_resave(ckpt, tmp_path / "deep", edit_state=add_layer), device="cpu")


@pytest.mark.parametrize("missing", ["vocab.json", "args.json", "best_model.pt"])
def test_missing_file_is_named(ckpt, tmp_path, missing):
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        ScGPTAdapter.load(_resave(ckpt, tmp_path / "nofile", drop=missing), device="cpu")


def test_save_pretrained_round_trip(ckpt_flash, tmp_path):
    m = ScGPTAdapter.load(ckpt_flash, device="cpu")
    out = tmp_path / "saved"
    m.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best_model.pt", "vocab.json"]
    assert json.loads((out / "args.json").read_text()) == m.args
    assert json.loads((out / "vocab.json").read_text()) == m.vocab
    orig = torch.load(ckpt_flash / "best_model.pt", weights_only=True)
    saved = torch.load(out / "best_model.pt", weights_only=True)
    assert list(saved) == list(orig)  # same (flash) layout and key order
    assert all(torch.equal(saved[k], orig[k]) for k in orig)
    m.save_pretrained(out)  # overwriting an existing folder works too
    m2 = ScGPTAdapter.load(out, device="cpu")
    batch = m.tokenize(_adata())
    assert torch.equal(m.forward(batch).hidden, m2.forward(batch).hidden)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


# ---------------------------------------------------------------------------------------
# tokenizer (expected arrays derived by hand, see module docstring)


def test_tokenize_by_hand(model):
    b = model.tokenize(_adata())
    assert b.input_ids.tolist() == [
        [CLS, 3, 1, 0, PAD],  # <cls> A C D
        [CLS, 2, 0, PAD, PAD],  # <cls> B D
        [CLS, 3, 2, 1, 0],  # <cls> A B C D
    ]
    assert b.values.tolist() == [
        [-2, 25, 1, 50, -2],
        [-2, 1, 50, -2, -2],
        [-2, 1, 17, 33, 50],
    ]
    assert b.gene_index.tolist() == [
        [-1, 0, 3, 5, -1],
        [-1, 2, 5, -1, -1],
        [-1, 0, 2, 3, 5],
    ]
    assert b.attention_mask.tolist() == [
        [True, True, True, True, False],
        [True, True, True, False, False],
        [True, True, True, True, True],
    ]
    assert b.cell_index.tolist() == [0, 1, 2]
    # a subset: padded to its own longest cell
    b1 = model.tokenize(_adata(), np.array([1]))
    assert b1.input_ids.tolist() == [[CLS, 2, 0]] and b1.values.tolist() == [[-2, 1, 50]]


def test_tokenize_truncation_first_and_sample(ckpt):
    # max_seq_len = 4 (<cls> + 3 genes); bins are computed on the whole cell first
    first = ScGPTAdapter.load(ckpt, device="cpu", max_seq_len=4, truncation="first")
    b = first.tokenize(_adata())
    assert b.input_ids.tolist() == [[CLS, 3, 1, 0], [CLS, 2, 0, PAD], [CLS, 3, 2, 1]]
    assert b.values.tolist() == [[-2, 25, 1, 50], [-2, 1, 50, -2], [-2, 1, 17, 33]]
    assert b.gene_index[2].tolist() == [-1, 0, 2, 3]

    samp = ScGPTAdapter.load(ckpt, device="cpu", max_seq_len=4)  # upstream: random subset
    s = samp.tokenize(_adata())
    assert s.input_ids.shape == (3, 4) and s.input_ids[:, 0].tolist() == [CLS] * 3
    full = {3: 1, 2: 17, 1: 33, 0: 50}  # cell 2: token → bin from the full cell
    ids2, vals2 = s.input_ids[2, 1:].tolist(), s.values[2, 1:].tolist()
    assert len(set(ids2)) == 3 and set(ids2) <= set(full)
    assert all(full[t] == v for t, v in zip(ids2, vals2))
    assert s.input_ids[:2].tolist() == b.input_ids[:2].tolist()  # short cells untouched
    # seeded per cell: the same tokens alone or in a batch, and again on a second call
    again = samp.tokenize(_adata(), np.array([2]))
    assert torch.equal(again.input_ids[0], s.input_ids[2])


def test_tokenize_ties_zero_genes_and_symbol_column(ckpt):
    m = ScGPTAdapter.load(ckpt, device="cpu", include_zero_genes=True)
    b = m.tokenize(_adata(), np.array([1]))
    # all in-vocab genes in var order A B C D; zeros keep value 0
    assert b.input_ids.tolist() == [[CLS, 3, 2, 1, 0]]
    assert b.values.tolist() == [[-2, 0, 1, 0, 50]]

    # ties: A=B=1, D=2 → the two 1s lie on edges 0..24 → a random bin in 1..25, D → 50
    a = ad.AnnData(np.array([[1, 0, 1, 0, 0, 2]], dtype=np.float32))
    a.var["symbol"] = VAR
    a.var_names = [f"ENSG{i}" for i in range(6)]
    m2 = ScGPTAdapter.load(ckpt, device="cpu", gene_symbol_column="symbol")
    t = m2.tokenize(a)
    assert t.input_ids.tolist() == [[CLS, 3, 2, 0]]
    v = t.values[0].tolist()
    assert 1 <= v[1] <= 25 and 1 <= v[2] <= 25 and v[3] == 50
    assert torch.equal(m2.tokenize(a).values, t.values)  # seeded
    with pytest.raises(ValueError, match="gene_symbol_column"):
        ScGPTAdapter.load(ckpt, device="cpu", gene_symbol_column="nope").tokenize(a)


def test_bin_expression_matches_rule():
    # n distinct values: bin of rank j is floor(49 j / (n-1)) + 1
    for n in (2, 3, 4, 6, 30):
        x = np.arange(1, n + 1, dtype=np.float32)[::-1].copy()
        got = bin_expression(x, 51, np.random.default_rng(0))
        j = np.arange(n)[::-1]
        assert got.tolist() == (49 * j // (n - 1) + 1).tolist()


def test_log1p_transform_keeps_distinct_ranks(ckpt):
    m = ScGPTAdapter.load(ckpt, device="cpu", value_transform="log1p")
    assert m.describe()["value_transform"] == "log1p"
    b = m.tokenize(_adata())
    assert b.values[:, 1:4].tolist()[0] == [25, 1, 50]
    with pytest.raises(ValueError, match="value_transform"):
        ScGPTAdapter.load(ckpt, device="cpu", value_transform="zscore")


def test_vocabulary_report(model):
    r = model.vocabulary_report(_adata())
    assert (r.n_genes, r.n_in_vocab) == (6, 4)
    assert r.fraction_genes == pytest.approx(4 / 6)
    # counts in A, B, C, D: 9 + 6 + 100 = 115 of 16 + 19 + 109 = 144
    assert r.fraction_counts == pytest.approx(115 / 144)
    assert r.missing == ["X", "Y"]


# ---------------------------------------------------------------------------------------
# attention and hidden states equal upstream's non-flash implementation (torch.nn)


def _capture(model, batch, sites):
    got = {}

    def keep(t, *, site, ctx):
        got[site] = t.detach().clone()

    with model.hooks({s: keep for s in sites}):
        out = model.forward(batch)
    return out, got


def test_attention_pattern_equals_torch_multihead_attention(model):
    batch = model.tokenize(_adata())
    sites = [
        f"layers.{L}.{k}" for L in range(2) for k in ("attn.pattern", "attn.out", "resid_post")
    ]
    _, got = _capture(model, batch, sites)
    with torch.no_grad():
        layer_in = [model.embed(batch), got["layers.0.resid_post"]]
        for L in range(2):
            lay = model.module.transformer_encoder.layers[L]
            mha = nn.MultiheadAttention(32, 4, dropout=0.0, batch_first=True)
            mha.load_state_dict(
                {
                    "in_proj_weight": lay.self_attn.in_proj_weight,
                    "in_proj_bias": lay.self_attn.in_proj_bias,
                    "out_proj.weight": lay.self_attn.out_proj.weight,
                    "out_proj.bias": lay.self_attn.out_proj.bias,
                }
            )
            mha.eval()
            x = layer_in[L]
            out, w = mha(
                x,
                x,
                x,
                key_padding_mask=~batch.attention_mask,
                need_weights=True,
                average_attn_weights=False,
            )
            pattern = got[f"layers.{L}.attn.pattern"]
            assert pattern.shape == (3, 4, 5, 5)
            assert (pattern - w).abs().max().item() <= 1e-5
            assert (got[f"layers.{L}.attn.out"] - out).abs().max().item() <= 1e-5
            assert torch.all(pattern[..., ~batch.attention_mask[0]][0] == 0)  # pads get 0


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_full_stack_equals_torch_transformer_encoder(model):
    """Upstream's non-flash model: nn.TransformerEncoder of nn.TransformerEncoderLayer
    (post-norm, ReLU, eps 1e-5), key padding mask = token == <pad>."""
    batch = model.tokenize(_adata())
    m = model.module
    ref = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.2, batch_first=True), num_layers=2
    )
    enc = {
        k.removeprefix("transformer_encoder."): v
        for k, v in m.state_dict().items()
        if k.startswith("transformer_encoder.")
    }
    ref.load_state_dict(enc, strict=True)  # our parameter names are torch.nn's
    ref.eval()
    with torch.no_grad():
        # embeddings by hand: LayerNorm(token embedding) + value encoder of the clamped value
        e = _layer_norm(m.encoder.embedding.weight[batch.input_ids], m.encoder.enc_norm)
        ve = m.value_encoder
        v = batch.values.unsqueeze(-1).clamp(max=512)
        v = ve.linear2(torch.relu(ve.linear1(v)))
        x = e + _layer_norm(v, ve.norm)
        assert (x - model.embed(batch)).abs().max().item() <= 1e-6
        want = ref(x, src_key_padding_mask=batch.input_ids.eq(PAD))
        dec = nn.Sequential(*m.decoder.fc)
        want_pred = dec(want).squeeze(-1)
    out = model.forward(batch)
    real = batch.attention_mask
    assert (out.hidden - want)[real].abs().max().item() <= 1e-5
    assert (out.gene_predictions - want_pred)[real].abs().max().item() <= 1e-5
    assert (out.cell_embedding - want[:, 0]).abs().max().item() <= 1e-5


def test_forward_is_differentiable(model):
    batch = model.tokenize(_adata())
    out = model._forward(batch)
    out.gene_predictions[batch.attention_mask].sum().backward()
    grads = [p.grad for p in model.module.transformer_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.module.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------
# in-silico perturbation


def test_perturb_delete(model):
    batch = model.tokenize(_adata())
    d = model.perturb(batch, "A", mode="delete")
    # cell 0 <cls> A C D <pad> → <cls> C D <pad> <pad>; cell 1 has no A; cell 2 loses A
    assert d.input_ids.tolist() == [
        [CLS, 1, 0, PAD, PAD],
        [CLS, 2, 0, PAD, PAD],
        [CLS, 2, 1, 0, PAD],
    ]
    assert d.values.tolist() == [[-2, 1, 50, -2, -2], [-2, 1, 50, -2, -2], [-2, 17, 33, 50, -2]]
    assert d.gene_index.tolist() == [[-1, 3, 5, -1, -1], [-1, 2, 5, -1, -1], [-1, 2, 3, 5, -1]]
    assert d.attention_mask.sum(1).tolist() == [3, 3, 4]
    assert torch.equal(batch.input_ids[0], torch.tensor([CLS, 3, 1, 0, PAD]))  # not mutated
    # the same deletion by dataset gene index (A is var position 0)
    assert torch.equal(model.perturb(batch, 0, mode="delete").input_ids, d.input_ids)
    base, pert = model.forward(batch), model.forward(d)
    assert not torch.allclose(base.cell_embedding[0], pert.cell_embedding[0])
    assert torch.equal(base.cell_embedding[1], pert.cell_embedding[1])  # untouched cell


def test_perturb_overexpress(model):
    batch = model.tokenize(_adata())
    o = model.perturb(batch, "C", mode="overexpress")
    # C's value → n_bins - 1 = 50; cell 1 has no C token: appended after its last gene
    assert o.input_ids.tolist() == [[CLS, 3, 1, 0, PAD], [CLS, 2, 0, 1, PAD], [CLS, 3, 2, 1, 0]]
    assert o.values.tolist() == [[-2, 25, 50, 50, -2], [-2, 1, 50, 50, -2], [-2, 1, 17, 50, 50]]
    assert o.gene_index[1].tolist() == [-1, 2, 5, 3, -1]
    assert o.attention_mask.sum(1).tolist() == [4, 4, 5]
    out0, out1 = model.forward(batch), model.forward(o)
    assert not torch.allclose(out0.cell_embedding, out1.cell_embedding)
    # a full row grows by one column
    e = model.perturb(batch, "E", mode="overexpress")
    assert e.input_ids.shape == (3, 6) and e.input_ids[2, 5].item() == 4
    with pytest.raises(ValueError, match="vocabulary"):
        model.perturb(batch, "X", mode="overexpress")


def test_describe_records_tokenizer_options(model):
    d = model.describe()
    assert d["family"] == "scgpt" and d["n_layers"] == 2 and d["n_heads"] == 4
    assert d["value_transform"] == "raw" and d["cls_value"] == -2.0
    assert d["max_seq_len"] == 128 and d["truncation"] == "sample" and d["n_bins"] == 51
