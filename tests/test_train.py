"""Demo-model training: the masked losses really fall, the checkpoints load back in the
real layouts with identical outputs, training is deterministic, and — the point of the
demo — trained attention is related to co-expression where random-init attention is not.

The models are trained once per module on a small simulated benchmark with strong
co-expression modules (40 genes, 6 modules of 6 genes): ~15 s for scGPT, ~10 s for
Geneformer on two CPU cores.

Attention versus co-expression (measured while writing this test with data seeds and
training seeds 0 / 1 / 2, all 600 cells): Spearman correlation between |co-expression|
(``coexpression(method="spearman")``) and head-pooled softmax attention over the
off-diagonal covered gene pairs, per layer.

* scGPT, trained: [-0.12, -0.20, 0.00, -0.31] / [0.18, -0.24, -0.08, -0.08] /
  [0.13, -0.22, -0.13, 0.05], max |r| over layers 0.31 / 0.24 / 0.22; random init
  (same architecture and seed): max |r| 0.05 / 0.06 / 0.03. The relation is strong but
  its sign depends on the layer (the second layer consistently attends *away* from
  co-expressed partners), so the mean over layers (-0.16 / +0.02 / +0.01) has no stable
  sign and cannot carry the assertion; the assertion is on the strongest layer:
  max |r| trained − max |r| random > 0.1 (observed margins 0.26 / 0.18 / 0.19).
* Geneformer (masked-LM), trained: max |r| 0.04 / 0.05 / 0.03 against 0.07 / 0.04 / 0.04
  at random initialisation (a fresh BERT's softmax attention is nearly uniform, ≈ 1/T,
  which alone correlates with |co-expression| through detection rates). Geneformer's
  attention does not learn co-expression at this budget (nor with 4× longer training on
  60 genes), so the same assertion is marked as an expected failure: it still runs and
  prints the numbers, and reports XPASS should that change.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from scfm_audit.data._simulate import simulate_perturbseq
from scfm_audit.edges._attention import extract_attention_edges
from scfm_audit.edges._coexpression import coexpression
from scfm_audit.models._geneformer import GeneformerAdapter, build_geneformer_checkpoint
from scfm_audit.models._scgpt import ScGPTAdapter, build_scgpt_checkpoint
from scfm_audit.models._train import (
    LOG_FILE,
    gene_medians_from_counts,
    train_geneformer_demo,
    train_scgpt_demo,
)

SIM = dict(
    n_cells=600, n_genes=40, n_tfs=4, n_perturbations=6, n_modules=6, module_size=6,
    module_strength=1.0, mean_library_size=4000, seed=0,
)  # fmt: skip
ARCH = dict(n_layers=4, n_heads=4)
SCGPT_TRAIN = dict(d_model=64, d_hid=128, epochs=25, batch_size=16, lr=2e-3)
GF_TRAIN = dict(hidden_size=64, intermediate_size=128, epochs=15, batch_size=16, lr=2e-3)


@pytest.fixture(scope="module")
def adata():
    return simulate_perturbseq(**SIM).adata


@pytest.fixture(scope="module")
def scgpt_run(adata, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "scgpt_demo"
    return train_scgpt_demo(adata, out, **ARCH, **SCGPT_TRAIN, seed=0, progress=False)


@pytest.fixture(scope="module")
def geneformer_run(adata, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "geneformer_demo"
    return train_geneformer_demo(adata, out, **ARCH, **GF_TRAIN, seed=0, progress=False)


@pytest.fixture(scope="module")
def runs(scgpt_run, geneformer_run):
    return {"scgpt": scgpt_run, "geneformer": geneformer_run}


FAMILIES = ["scgpt", "geneformer"]


# -- (1) the masked loss falls --------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_training_reduces_masked_loss(runs, family):
    rep = runs[family]
    first, last = rep.loss_per_epoch[0], rep.loss_per_epoch[-1]
    print(
        f"{family}: loss per epoch {first:.4g} → {last:.4g}; fixed-mask loss "
        f"{rep.eval_loss_initial:.4g} → {rep.eval_loss_final:.4g} in {rep.seconds:.1f}s"
    )
    assert not rep.stopped_by_budget
    assert rep.epochs == len(rep.loss_per_epoch) == (25 if family == "scgpt" else 15)
    if family == "scgpt":  # MSE on bins 1..50: the variance is ~200, per-gene means ~130
        assert last < 0.6 * first
        assert rep.eval_loss_final < 0.6 * rep.eval_loss_initial
        assert rep.eval_loss_final < 110  # below the per-gene-mean predictor: context used
    else:  # cross-entropy over 40 genes: ln 40 = 3.69 at chance
        assert rep.eval_loss_initial > 3.5
        assert last < first - 0.3
        assert rep.eval_loss_final < rep.eval_loss_initial - 0.3
    log = json.loads((rep.path / LOG_FILE).read_text())
    assert log["loss_per_epoch"] == pytest.approx(rep.loss_per_epoch)
    assert log["family"] == family and log["steps"] == rep.steps > 0
    assert log["seconds"] > 0 and log["n_params"] == rep.n_params > 0
    assert log["params"]["cells"].startswith("all")
    assert log["n_cells"] == SIM["n_cells"]


# -- (2) the saved checkpoints load back ---------------------------------------------------
def _same_outputs(a, b, batch, *, logits: bool) -> None:
    pats = {}

    def grab(key):
        def hook(x, *, site, ctx):
            pats[key, site] = x.clone()

        return hook

    with a.hooks({"layers.*.attn.pattern": grab("a")}):
        oa = a.forward(batch, return_logits=logits)
    with b.hooks({"layers.*.attn.pattern": grab("b")}):
        ob = b.forward(batch, return_logits=logits)
    torch.testing.assert_close(oa.hidden, ob.hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(oa.cell_embedding, ob.cell_embedding, rtol=0, atol=1e-6)
    if logits:
        torch.testing.assert_close(oa.logits, ob.logits, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(oa.gene_predictions, ob.gene_predictions, rtol=0, atol=1e-5)
    for site in [s for k, s in pats if k == "a"]:
        torch.testing.assert_close(pats["a", site], pats["b", site], rtol=0, atol=1e-6)


def test_scgpt_checkpoint_round_trip(adata, scgpt_run):
    path = scgpt_run.path
    assert {"args.json", "vocab.json", "best_model.pt", LOG_FILE} <= {
        p.name for p in path.iterdir()
    }
    args = json.loads((path / "args.json").read_text())
    assert args["mask_value"] == -1 and args["pad_value"] == -2
    assert args["embsize"] == 64 and args["nlayers"] == 4 and args["nheads"] == 4
    assert args["max_seq_len"] >= 1 + int(np.diff(adata.X.indptr).max())
    loaded = ScGPTAdapter.load(path)
    trained = scgpt_run.adapter
    batch = trained.tokenize(adata, np.arange(24))
    torch.testing.assert_close(loaded.tokenize(adata, np.arange(24)).values, batch.values)
    _same_outputs(trained, loaded, batch, logits=False)
    # and it is not the initial model
    init = ScGPTAdapter.load(
        build_scgpt_checkpoint(path.parent / "init_s", list(adata.var_names), d_model=64,
                               n_layers=4, n_heads=4, d_hid=128, seed=0,
                               max_seq_len=args["max_seq_len"])
    )  # fmt: skip
    assert not torch.allclose(init.forward(batch).hidden, loaded.forward(batch).hidden)


def test_geneformer_checkpoint_round_trip(adata, geneformer_run):
    path = geneformer_run.path
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "token_dictionary.pkl", "gene_median_dictionary.pkl"} <= names
    assert names & {"model.safetensors", "pytorch_model.bin"}
    with open(path / "gene_median_dictionary.pkl", "rb") as fh:
        medians = pickle.load(fh)
    expected = gene_medians_from_counts(adata)
    ids = list(adata.var["ensembl_id"])
    assert [medians[g] for g in ids] == pytest.approx(expected.tolist())
    loaded = GeneformerAdapter.load(path)
    assert loaded.version == "V1" and loaded.n_layers == 4
    trained = geneformer_run.adapter
    batch = trained.tokenize(adata, np.arange(24))
    assert torch.equal(loaded.tokenize(adata, np.arange(24)).input_ids, batch.input_ids)
    _same_outputs(trained, loaded, batch, logits=True)


def test_gene_medians_are_nonzero_medians_of_normalised_counts():
    import anndata as ad
    import scipy.sparse as sp

    X = np.array([[1, 0, 3], [3, 0, 1], [0, 0, 4]], dtype=np.float32)  # totals 4, 4, 4
    a = ad.AnnData(sp.csr_matrix(X))
    med = gene_medians_from_counts(a)
    assert med.tolist() == pytest.approx([5000.0, 1.0, 7500.0])  # gene 1 never detected


# -- determinism: no clock, fixed threads, the same weights on a busy machine ---------------
def _tiny_kw(family: str) -> dict:
    kw = dict(n_layers=2, n_heads=2, epochs=2, batch_size=16, seed=3, progress=False)
    if family == "scgpt":
        kw.update(d_model=16, d_hid=32)
    else:
        kw.update(hidden_size=16, intermediate_size=32)
    return kw


def _hog(n: int) -> list:
    """``n`` busy-looping processes (the machine made artificially busy)."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_training_is_deterministic_on_a_busy_machine(adata, tmp_path, family, monkeypatch):
    """Idle run versus a run with two CPU hogs, a clock that jumps 1,000 s per reading
    and a different caller thread count: bitwise identical weights and losses."""
    import scfm_audit.models._train as train

    small = adata[:64].copy()
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    kw = _tiny_kw(family)
    a = fn(small, tmp_path / "a", **kw)
    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(train, "_clock", lambda: float(next(ticks)))
    old = torch.get_num_threads()
    hogs = _hog(2)
    try:
        torch.set_num_threads(2 if old == 1 else 1)
        b = fn(small, tmp_path / "b", **kw)
    finally:
        torch.set_num_threads(old)
        for h in hogs:
            h.kill()
            h.wait()
    assert torch.get_num_threads() == old
    assert a.loss_per_step == b.loss_per_step and len(a.loss_per_step) == a.steps == 8
    assert a.eval_loss_per_epoch == b.eval_loss_per_epoch
    sa, sb = a.adapter.module.state_dict(), b.adapter.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = fn(small, tmp_path / "c", **{**kw, "seed": 4})
    assert c.loss_per_step != a.loss_per_step


@pytest.mark.parametrize("family", FAMILIES)
def test_time_budget_only_aborts(adata, tmp_path, family, monkeypatch):
    import scfm_audit.models._train as train

    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(train, "_clock", lambda: float(next(ticks)))
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    with pytest.raises(train.TrainingBudgetExceeded, match="nothing was saved"):
        fn(adata[:64].copy(), tmp_path / "d", **_tiny_kw(family), max_seconds=1500.0)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_first_steps_reproduce(adata, tmp_path, family):
    """Re-training for a few steps from the same seed gives the full run's first losses
    (how a shipped checkpoint's log can be checked without re-training it)."""
    small = adata[:64].copy()
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    kw = _tiny_kw(family)
    full = fn(small, tmp_path / "full", **kw)
    part = fn(small, tmp_path / "part", **kw, max_steps=3)
    assert part.steps == 3 and not part.complete and full.complete
    assert part.loss_per_step == full.loss_per_step[:3]
    log = json.loads((tmp_path / "part" / LOG_FILE).read_text())
    assert log["complete"] is False and log["params"]["max_steps"] == 3


def test_cli_train_demo_models(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import scfm_audit.models._train as train
    from scfm_audit.cli import app

    tiny = {"epochs": 1, "batch_size": 8}
    monkeypatch.setitem(train.DEMO_TRAINING, "quick", {"scgpt": tiny, "geneformer": tiny})
    res = CliRunner().invoke(app, ["train-demo-models", "--out", str(tmp_path), "--quick"])
    assert res.exit_code == 0, res.output
    assert "Demo models" in res.output
    for name in ("scgpt_demo", "geneformer_demo"):
        assert (tmp_path / name / LOG_FILE).is_file()
    ScGPTAdapter.load(tmp_path / "scgpt_demo")
    GeneformerAdapter.load(tmp_path / "geneformer_demo")


# -- (3) the key test: trained attention relates to co-expression ---------------------------
def _random_init(family, rep, adata, folder):
    p = rep.params
    if family == "scgpt":
        ck = build_scgpt_checkpoint(
            folder / "random_scgpt", list(adata.var_names), d_model=p["d_model"],
            n_layers=p["n_layers"], n_heads=p["n_heads"], d_hid=p["d_hid"],
            n_bins=p["n_bins"], max_seq_len=p["max_seq_len"], seed=p["seed"],
        )  # fmt: skip
        return ScGPTAdapter.load(ck)
    ids = list(adata.var["ensembl_id"])
    ck = build_geneformer_checkpoint(
        folder / "random_geneformer", ids, dict(zip(ids, gene_medians_from_counts(adata))),
        hidden_size=p["hidden_size"], n_layers=p["n_layers"], n_heads=p["n_heads"],
        intermediate_size=p["intermediate_size"], seed=p["seed"],
    )  # fmt: skip
    return GeneformerAdapter.load(ck)


def _layer_correlations(adapter, adata, abs_coexpr: np.ndarray) -> list[float]:
    """Spearman(|co-expression|, head-pooled attention) per layer, over the off-diagonal
    gene pairs both matrices cover."""
    out = []
    for e in extract_attention_edges(adapter, adata, per_head=False, progress=False):
        ok = np.isfinite(e.scores) & np.isfinite(abs_coexpr)
        np.fill_diagonal(ok, False)
        out.append(float(spearmanr(e.scores[ok], abs_coexpr[ok])[0]))
    return out


@pytest.mark.parametrize(
    "family",
    [
        "scgpt",
        pytest.param(
            "geneformer",
            marks=pytest.mark.xfail(
                strict=False,
                reason="measured: masked-gene-modelling attention does not learn "
                "co-expression at demo budgets (max |r| trained ≈ 0.03–0.05 vs random "
                "0.04–0.07); see the module docstring",
            ),
        ),
    ],
)
def test_trained_attention_relates_to_coexpression(adata, runs, family, tmp_path):
    rep = runs[family]
    abs_co = np.abs(coexpression(adata, method="spearman").scores)
    trained = _layer_correlations(rep.adapter, adata, abs_co)
    random = _layer_correlations(_random_init(family, rep, adata, tmp_path), adata, abs_co)
    best_t, best_r = max(map(abs, trained)), max(map(abs, random))
    print(
        f"\n{family}: Spearman(|co-expression|, attention) per layer\n"
        f"  trained: {np.round(trained, 3).tolist()} (max |r| {best_t:.3f}, "
        f"mean over layers {np.mean(trained):+.3f})\n"
        f"  random : {np.round(random, 3).tolist()} (max |r| {best_r:.3f}, "
        f"mean over layers {np.mean(random):+.3f})"
    )
    assert best_t - best_r > 0.1
