"""Geneformer adapter: checkpoint layout and errors, rank-value tokenization (hand-derived
sequences), hooked forward equal to Hugging Face's own, in-silico perturbation, save/load.

Hand-made vocabulary used throughout (medians are powers of two so that ties are exact in
floating point)::

    var   A   B   C    D   E   F        G
    id    E1  E2  E3   E4  E5  E6       E99 (not in the vocabulary)
    med   1   2   0.5  1   4   (none)
    V1 token  2   3   4    5   6   7    (<pad>=0, <mask>=1)
    V2 token  4   5   6    7   8   9    (<pad>=0, <mask>=1, <cls>=2, <eos>=3)
"""

from __future__ import annotations

import json
import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from scfm_audit.models._base import MODEL_FAMILIES, CheckpointError, load_model
from scfm_audit.models.geneformer import GeneformerAdapter, build_geneformer_checkpoint

E = [f"ENSG{i:011d}" for i in range(1, 7)]
E_OUT = "ENSG00000000099"
MEDIANS = {E[0]: 1.0, E[1]: 2.0, E[2]: 0.5, E[3]: 1.0, E[4]: 4.0}  # E6: no median
COUNTS = np.array(
    [
        # A  B  C  D  E   F  G
        [4, 2, 1, 3, 0, 5, 9],  # A 4, B 1, C 2, D 3      -> A D C B
        [0, 6, 0, 1, 20, 0, 0],  # B 3, D 1, E 5           -> E B D
        [2, 4, 3, 0, 8, 7, 1],  # A 2, B 2, C 6, E 2      -> C, then the tie {A, B, E}
    ],
    dtype=np.float32,
)


def make_adata(counts=COUNTS, *, sparse: bool = True, column: str = "ensembl_id") -> ad.AnnData:
    X = sp.csr_matrix(counts) if sparse else np.asarray(counts)
    var = pd.DataFrame({column: [*E, E_OUT]}, index=list("ABCDEFG"))
    return ad.AnnData(X, var=var)


def quiet_tokenize(model, adata, cells=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gene F has no median
        return model.tokenize(adata, cells)


def real_tokens(batch, i):
    return batch.input_ids[i][batch.attention_mask[i]].tolist()


def real_genes(batch, i):
    return batch.gene_index[i][batch.attention_mask[i]].tolist()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("gf")
    return {
        "V1": build_geneformer_checkpoint(root / "v1", E, MEDIANS, version="V1"),
        "V2": build_geneformer_checkpoint(root / "v2", E, MEDIANS, version="V2"),
        "V2small": build_geneformer_checkpoint(
            root / "v2s", E, MEDIANS, version="V2", max_input_size=5, seed=1
        ),
        "V1small": build_geneformer_checkpoint(
            root / "v1s", E, MEDIANS, version="V1", max_input_size=3, seed=2
        ),
        "root": root,
    }


@pytest.fixture(scope="module")
def v1(ckpt):
    return GeneformerAdapter.load(ckpt["V1"], device="cpu")


@pytest.fixture(scope="module")
def v2(ckpt):
    return GeneformerAdapter.load(ckpt["V2"], device="cpu")


# ---------------------------------------------------------------------------------------
# checkpoint layout and errors


def test_layout_and_version_inference(ckpt, v1, v2):
    files1 = sorted(p.name for p in ckpt["V1"].iterdir())
    files2 = sorted(p.name for p in ckpt["V2"].iterdir())
    assert files1 == [
        "config.json",
        "gene_median_dictionary.pkl",
        "model.safetensors",
        "token_dictionary.pkl",
    ]
    assert files2 == [
        "config.json",
        "ensembl_mapping_dict_gc104M.pkl",
        "gene_median_dictionary_gc104M.pkl",
        "model.safetensors",
        "token_dictionary_gc104M.pkl",
    ]
    cfg = json.loads((ckpt["V2"] / "config.json").read_text())
    assert cfg["hidden_act"] == "relu" and cfg["layer_norm_eps"] == 1e-12
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["pad_token_id"] == 0
    assert v1.version == "V1" and v1.model_input_size == 2048
    assert v2.version == "V2" and v2.model_input_size == 4096
    assert v2.token_dictionary["<cls>"] == 2 and v2.token_dictionary["<eos>"] == 3
    assert v1.token_dictionary[E[0]] == 2 and v2.token_dictionary[E[0]] == 4
    assert (v1.n_layers, v1.n_heads, v1.d_model) == (2, 4, 32)
    assert type(v1.module).__name__ == "BertForMaskedLM"
    assert MODEL_FAMILIES.get("geneformer") is GeneformerAdapter
    assert load_model("geneformer", ckpt["V1"], device="cpu").version == "V1"


def test_missing_dictionary_error(ckpt, tmp_path):
    import shutil

    folder = tmp_path / "nodict"
    shutil.copytree(ckpt["V1"], folder)
    (folder / "token_dictionary.pkl").unlink()
    with pytest.raises(CheckpointError, match=r"token dictionary not found.*token_dictionary="):
        GeneformerAdapter.load(folder, device="cpu")
    # passing it explicitly works
    m = GeneformerAdapter.load(
        folder, device="cpu", token_dictionary=ckpt["V1"] / "token_dictionary.pkl"
    )
    assert m.version == "V1"
    (folder / "gene_median_dictionary.pkl").unlink()
    with pytest.raises(CheckpointError, match=r"gene median dictionary not found"):
        GeneformerAdapter.load(
            folder, device="cpu", token_dictionary=ckpt["V1"] / "token_dictionary.pkl"
        )


def test_vocab_mismatch_error(ckpt, tmp_path):
    with open(ckpt["V1"] / "token_dictionary.pkl", "rb") as fh:
        tok = pickle.load(fh)
    tok["ENSG00000000777"] = len(tok)
    bad = tmp_path / "tok.pkl"
    bad.write_bytes(pickle.dumps(tok))
    with pytest.raises(CheckpointError, match=r"vocab_size=8 but the token dictionary.*9 tokens"):
        GeneformerAdapter.load(ckpt["V1"], device="cpu", token_dictionary=bad)


def test_config_and_weight_errors(ckpt, tmp_path):
    import shutil

    with pytest.raises(CheckpointError, match=r"No config\.json"):
        GeneformerAdapter.load(tmp_path, device="cpu")
    folder = tmp_path / "shape"
    shutil.copytree(ckpt["V1"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shapes .* disagree with its config.json"):
        GeneformerAdapter.load(folder, device="cpu")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No weights"):
        GeneformerAdapter.load(folder, device="cpu")
    with pytest.raises(CheckpointError, match=r"version='V2' needs '<cls>'"):
        GeneformerAdapter.load(ckpt["V1"], device="cpu", version="V2")


def test_missing_ensembl_column_error(v1):
    adata = ad.AnnData(COUNTS.copy(), var=pd.DataFrame(index=list("ABCDEFG")))
    with pytest.raises(ValueError, match=r"Ensembl gene ids.*gene_id_column="):
        v1.tokenize(adata)
    # an explicit column name works, and var_names that are Ensembl ids are used as such
    other = make_adata(column="my_ids")
    assert real_tokens(quiet_tokenize_col(v1, other, "my_ids"), 0) == [2, 5, 4, 3]
    by_name = ad.AnnData(COUNTS.copy(), var=pd.DataFrame(index=[*E, E_OUT]))
    assert real_tokens(quiet_tokenize(v1, by_name), 1) == [6, 3, 5]


def quiet_tokenize_col(model, adata, column):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return model.tokenize(adata, gene_id_column=column)


# ---------------------------------------------------------------------------------------
# tokenization (sequences derived by hand from the rules in the module docstring)


@pytest.mark.parametrize("sparse", [True, False])
def test_tokenize_v1_by_hand(v1, sparse):
    adata = make_adata(sparse=sparse)
    # the adapter caches its gene plan per dataset (keyed by id): a new AnnData may reuse
    # the id of the previous one, and then the plan (and its warning) is not rebuilt
    v1._plan = None
    with pytest.warns(UserWarning, match="no median"):
        b = v1.tokenize(adata)
    assert b.values is None and b.input_ids.shape == (3, 4)
    # cell 0: A 4/1, B 2/2, C 1/0.5, D 3/1 (F: no median, G: not in vocab) -> A D C B
    assert b.input_ids[0].tolist() == [2, 5, 4, 3]
    assert b.gene_index[0].tolist() == [0, 3, 2, 1]
    # cell 1: B 6/2=3, D 1, E 20/4=5 -> E B D, padded with <pad>=0
    assert b.input_ids[1].tolist() == [6, 3, 5, 0]
    assert b.gene_index[1].tolist() == [4, 1, 3, -1]
    assert b.attention_mask[1].tolist() == [True, True, True, False]
    # cell 2: C 3/0.5=6 first, then A 2/1 = B 4/2 = E 8/4 = 2 tied; Geneformer orders ties
    # by np.argsort(-x) (NumPy's default, unstable on SIMD builds), so only the set is fixed
    assert b.input_ids[2].tolist()[0] == 4
    assert sorted(b.input_ids[2].tolist()[1:]) == [2, 3, 6]
    assert b.cell_index.tolist() == [0, 1, 2]


def test_tokenize_v2_specials_and_truncation(v2, ckpt):
    adata = make_adata()
    b = quiet_tokenize(v2, adata, np.array([1, 0]))
    # <cls>=2 first, <eos>=3 last; genes A..E = 4..8
    assert real_tokens(b, 0) == [2, 8, 5, 7, 3]  # cell 1: E B D
    assert real_tokens(b, 1) == [2, 4, 7, 6, 5, 3]  # cell 0: A D C B
    assert real_genes(b, 1) == [-1, 0, 3, 2, 1, -1]
    assert b.input_ids[0].tolist() == [2, 8, 5, 7, 3, 0]
    assert b.cell_index.tolist() == [1, 0]
    # input size 5: at most 5 - 2 = 3 gene tokens, then <eos>
    small = GeneformerAdapter.load(ckpt["V2small"], device="cpu")
    s = quiet_tokenize(small, adata)
    assert real_tokens(s, 0) == [2, 4, 7, 6, 3]  # A D C (B cut)
    assert real_tokens(s, 1) == [2, 8, 5, 7, 3]
    # V1 with input size 3: the first 3 genes, no special tokens
    small1 = GeneformerAdapter.load(ckpt["V1small"], device="cpu")
    assert real_tokens(quiet_tokenize(small1, adata), 0) == [2, 5, 4]


def test_tokenize_uses_obs_n_counts(v1):
    """n_counts from obs is used as given (upstream); it rescales a cell but cannot
    reorder it, and a zero total gives an empty cell with a warning."""
    adata = make_adata()
    adata.obs["n_counts"] = [100.0, 0.0, 7.0]
    with pytest.warns(UserWarning, match="zero or non-finite n_counts") as caught:
        warnings.filterwarnings("ignore", message=".*no median.*")
        b = v1.tokenize(adata)
    # the warning names the line that called tokenize(), not the tokenizer's internals
    assert {w.filename for w in caught if "n_counts" in str(w.message)} == {__file__}
    assert real_tokens(b, 0) == [2, 5, 4, 3]
    assert real_tokens(b, 1) == []


def test_tokenize_matches_upstream_expression(tmp_path):
    """Reference implementation: Geneformer's own expression
    ``csr(X[:, vocab] / n_counts * 10_000 / medians)`` ranked by ``np.argsort(-data)``, on a
    tie-heavy random matrix (so the tie order of the default sort is exercised) and more
    genes than the input size (truncation)."""
    rng = np.random.default_rng(0)
    genes = [f"ENSG{i:011d}" for i in range(1, 301)]
    meds = {g: float(m) for g, m in zip(genes, rng.choice([0.5, 1.0, 2.0], len(genes)))}
    folder = build_geneformer_checkpoint(
        tmp_path / "ref",
        genes,
        meds,
        version="V2",
        max_input_size=128,
        hidden_size=8,
        n_heads=2,
        intermediate_size=8,
        n_layers=1,
    )
    m = GeneformerAdapter.load(folder, device="cpu")
    var_ids = [*genes[::-1], "ENSG00000099999"]
    X = sp.random(
        20,
        len(var_ids),
        density=0.6,
        random_state=1,
        format="csr",
        data_rvs=lambda n: rng.integers(1, 3, n),
    ).astype(np.float32)
    adata = ad.AnnData(X, var=pd.DataFrame({"ensembl_id": var_ids}, index=var_ids))
    b = m.tokenize(adata)
    tok = m.token_dictionary
    loc = np.array([i for i, g in enumerate(var_ids) if g in tok])
    n_counts = np.asarray(X.sum(axis=1, dtype=np.float64))
    norm = np.array([meds[var_ids[i]] for i in loc])
    x_norm = sp.csr_matrix(X[:, loc] / n_counts * 10_000 / norm)
    tokens = np.array([tok[var_ids[i]] for i in loc])
    for i in range(X.shape[0]):
        ranked = tokens[x_norm[i].indices][np.argsort(-x_norm[i].data)][:126]
        assert real_tokens(b, i) == [2, *ranked.tolist(), 3]


# ---------------------------------------------------------------------------------------
# forward pass: our hooked layers equal Hugging Face's own computation


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_attention_hidden_logits_match_hf(ckpt, version):
    m = GeneformerAdapter.load(ckpt[version], device="cpu")
    b = quiet_tokenize(m, make_adata())
    captured = {}

    def grab(x, *, site, ctx):
        captured[site] = x.detach().clone()

    with m.hooks({"layers.*.attn.pattern": grab}):
        out = m.forward(b, return_logits=True)
    with torch.no_grad():
        ref = m.module(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask.long(),
            output_attentions=True,
            output_hidden_states=True,
        )
        base = m.module.bert(input_ids=b.input_ids, attention_mask=b.attention_mask.long())
    assert m.module.config._attn_implementation == "eager"
    for L in range(m.n_layers):
        pat = captured[f"layers.{L}.attn.pattern"]
        assert pat.shape == ref.attentions[L].shape
        assert (pat - ref.attentions[L]).abs().max().item() <= 1e-5
    assert torch.allclose(out.hidden, base.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.hidden, ref.hidden_states[-1], atol=1e-5)
    assert torch.allclose(out.logits, ref.logits, atol=1e-4)
    assert out.logits.shape == (3, b.seq_len, len(m.token_dictionary))


def test_cell_embedding_is_mean_of_gene_tokens(v2):
    b = quiet_tokenize(v2, make_adata())
    out = v2.forward(b)
    for i in range(len(b)):
        n = int(b.attention_mask[i].sum())
        expected = out.hidden[i, 1 : n - 1].mean(0)  # without <cls> and <eos>
        assert torch.allclose(out.cell_embedding[i], expected, atol=1e-6)
    # upstream EmbExtractor default (emb_layer=-1): second-to-last layer
    captured = {}
    with v2.hooks({"layers.0.resid_post": lambda x, *, site, ctx: captured.setdefault(site, x)}):
        v2.emb_layer = -1
        try:
            out2 = v2.forward(b)
        finally:
            v2.emb_layer = 0
    h0 = captured["layers.0.resid_post"]
    n = int(b.attention_mask[0].sum())
    assert torch.allclose(out2.cell_embedding[0], h0[0, 1 : n - 1].mean(0), atol=1e-6)


def test_forward_is_differentiable(v1):
    b = quiet_tokenize(v1, make_adata())
    v1.module.zero_grad()
    out = v1._forward(b, return_logits=True)
    out.logits.sum().backward()
    grad = v1.module.bert.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    v1.module.zero_grad()


# ---------------------------------------------------------------------------------------
# in-silico perturbation (expected sequences from perturber_utils' rules, by hand)


def test_perturb_v1(v1):
    b = quiet_tokenize(v1, make_adata(), np.array([0, 1]))  # [A D C B], [E B D]
    d = v1.perturb(b, "D", mode="delete")  # token 5 removed
    assert real_tokens(d, 0) == [2, 4, 3] and real_genes(d, 0) == [0, 2, 1]
    assert real_tokens(d, 1) == [6, 3]
    o = v1.perturb(b, "C", mode="overexpress")  # token 4 moved / inserted first
    assert real_tokens(o, 0) == [4, 2, 5, 3] and real_genes(o, 0) == [2, 0, 3, 1]
    assert real_tokens(o, 1) == [4, 6, 3, 5] and real_genes(o, 1) == [2, 4, 1, 3]
    # a cell without the gene is unchanged by deletion
    assert real_tokens(v1.perturb(b, 0, mode="delete"), 1) == [6, 3, 5]
    # gene given as an Ensembl id, or as a var position
    assert real_tokens(v1.perturb(b, E[2], mode="overexpress"), 0) == [4, 2, 5, 3]
    assert real_tokens(v1.perturb(b, 2, mode="overexpress"), 0) == [4, 2, 5, 3]
    base, pert = v1.forward(b), v1.forward(d)
    assert not torch.allclose(base.cell_embedding, pert.cell_embedding)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v1.perturb(b, "G", mode="delete")


def test_perturb_v2(v2, ckpt):
    b = quiet_tokenize(v2, make_adata(), np.array([0, 1]))  # [cls A D C B eos], [cls E B D eos]
    o = v2.perturb(b, "C", mode="overexpress")  # after <cls>
    assert real_tokens(o, 0) == [2, 6, 4, 7, 5, 3]
    assert real_tokens(o, 1) == [2, 6, 8, 5, 7, 3]
    d = v2.perturb(b, "B", mode="delete")
    assert real_tokens(d, 0) == [2, 4, 7, 6, 3] and real_tokens(d, 1) == [2, 8, 7, 3]
    assert not torch.allclose(v2.forward(b).cell_embedding, v2.forward(o).cell_embedding)
    # at the input size (5) an inserted gene pushes out the last gene, <eos> stays last
    small = GeneformerAdapter.load(ckpt["V2small"], device="cpu")
    s = quiet_tokenize(small, make_adata(), np.array([1]))  # [cls E B D eos]
    assert real_tokens(small.perturb(s, "C", mode="overexpress"), 0) == [2, 6, 8, 5, 3]


# ---------------------------------------------------------------------------------------
# vocabulary report and save/load


def test_vocabulary_report(v1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rep = v1.vocabulary_report(make_adata())
    assert rep.n_genes == 7 and rep.n_in_vocab == 5
    assert rep.missing == ["F", "G"]
    total = COUNTS.sum()
    assert rep.fraction_counts == pytest.approx(COUNTS[:, :5].sum() / total)


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_save_pretrained_round_trip(ckpt, tmp_path, version):
    m = GeneformerAdapter.load(ckpt[version], device="cpu")
    b = quiet_tokenize(m, make_adata())
    before = m.forward(b, return_logits=True)
    out = tmp_path / "saved"
    m.save_pretrained(out)
    m.save_pretrained(out)  # replacing an existing folder is fine
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ckpt[version].iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    m2 = GeneformerAdapter.load(out, device="cpu")
    assert m2.version == version and m2.token_dictionary == m.token_dictionary
    after = m2.forward(quiet_tokenize(m2, make_adata()), return_logits=True)
    assert torch.equal(before.hidden, after.hidden)
    assert torch.equal(before.logits, after.logits)


def test_bin_weights_and_headless_fallback(ckpt, v1, tmp_path):
    """The original V1 release ships ``pytorch_model.bin`` (with the tied decoder and the
    ``position_ids`` buffer); a plain ``BertModel`` folder loads without logits."""
    import shutil

    b = quiet_tokenize(v1, make_adata())
    ref = v1.forward(b, return_logits=True)
    old = tmp_path / "bin"
    shutil.copytree(ckpt["V1"], old)
    (old / "model.safetensors").unlink()
    sd = {k: v.clone() for k, v in v1.module.state_dict().items()}
    sd["bert.embeddings.position_ids"] = torch.arange(2048)[None]
    torch.save(sd, old / "pytorch_model.bin")
    m = GeneformerAdapter.load(old, device="cpu")
    assert torch.equal(m.forward(b, return_logits=True).logits, ref.logits)

    base = tmp_path / "base"
    v1.module.bert.save_pretrained(base)
    for f in ckpt["V1"].glob("*.pkl"):
        shutil.copy(f, base)
    m = GeneformerAdapter.load(base, device="cpu")
    assert type(m.module).__name__ == "BertModel"
    assert torch.allclose(m.forward(b).hidden, ref.hidden, atol=1e-6)
    with pytest.raises(ValueError, match="no masked-LM head"):
        m.forward(b, return_logits=True)
