"""Demo-model training: the masked losses really fall below chance and a context-free
baseline on held-out cells, the checkpoints load back in the real layouts with identical
outputs, training is deterministic (also on a busy machine), and — the point of the
demo — trained attention is related to co-expression where random-init attention is not.

Benchmark: 1,200 cells × 40 genes with 4 strong co-expression modules of 8 genes
(``module_strength=2``). Settings: the demo recipe (``DEMO_RECIPE``, the one the shipped
demo models are trained with) applied to this benchmark by ``recipe_settings``: scGPT 4
layers of 4 heads, d_model 16, d_hid 32, 11 value bins, mask ratio 0.6, 5,440 steps (80
epochs, ~90 s per seed on an idle core); Geneformer 2 layers of 4 heads, hidden 64, mask
ratio 0.15, 4,080 steps (60 epochs, ~50 s).

Attention versus co-expression: Spearman correlation between |co-expression|
(``coexpression(method="spearman")``) and head-pooled attention over the off-diagonal
covered gene pairs, per layer, with attention read as the demo reads it
(``ATTENTION_READING``: softmax relative to uniform attention over the cell, then the
average product correction); "best layer" = the largest *signed* correlation, trained
minus the same architecture at its random initialisation (same seed). Acceptance, read
strictly: ≥ 0.2 on *every* one of three seeds (data seed = training seed), and the
held-out masked loss below the context-free baseline. The numbers are printed
(``pytest -s``). The acceptance seeds were fixed before any run of them and run once,
after the recipe was chosen on development seeds; the protocol, the rounds it took and
the numbers are in ``docs/validation/demo-models.md``.

The trained attention depends chaotically on float rounding (another processor gives a
different model), so a single seed's margin is a draw.

Cost: the acceptance models are shipped test data (``tests/data/acceptance_models``, see
``make.py`` there) instead of ~7 minutes of training per run.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from scfm_audit.data._simulate import simulate_perturbseq
from scfm_audit.edges._attention import extract_attention_edges
from scfm_audit.edges._coexpression import coexpression
from scfm_audit.models._train import (
    LOG_FILE,
    cpu_signature,
    gene_medians_from_counts,
    recipe_settings,
    train_geneformer_demo,
    train_scgpt_demo,
)
from scfm_audit.models.geneformer import GeneformerAdapter, build_geneformer_checkpoint
from scfm_audit.models.scgpt import ScGPTAdapter, build_scgpt_checkpoint
from scfm_audit.pipeline._demo import ATTENTION_READING

#: every test here trains a model or runs one trained on 1,200 cells
pytestmark = pytest.mark.slow

SIM = dict(
    n_cells=1200,
    n_genes=40,
    n_tfs=4,
    n_perturbations=6,
    n_modules=4,
    module_size=8,
    module_strength=2.0,
    mean_library_size=4000,
    seed=0,
)
#: the demo recipe applied to this benchmark (only the number of epochs is its own)
SCGPT_TRAIN = recipe_settings("scgpt", SIM["n_cells"])
GF_TRAIN = recipe_settings("geneformer", SIM["n_cells"])
#: acceptance seeds (data seed = training seed), fixed before any run of them and run
#: only after the recipe and benchmark were committed (docs/validation/demo-models.md)
SEEDS = (30, 31, 32)


@pytest.fixture(scope="module")
def benchmarks():
    """data seed → AnnData, built on first use."""
    cache: dict[int, object] = {}

    def get(seed: int):
        if seed not in cache:
            cache[seed] = simulate_perturbseq(**{**SIM, "seed": seed}).adata
        return cache[seed]

    return get


@pytest.fixture(scope="module")
def adata(benchmarks):
    """The seed-0 benchmark (small checks: determinism, the reading at random init)."""
    return benchmarks(0)


@pytest.fixture(scope="module")
def first_adata(benchmarks):
    """The benchmark of the first acceptance seed, which the suite trains on."""
    return benchmarks(SEEDS[0])


@pytest.fixture(scope="module")
def trained(benchmarks, tmp_path_factory):
    """(family, seed) → TrainReport, trained on first use on the benchmark of that seed."""
    cache: dict[tuple[str, int], object] = {}

    def get(family: str, seed: int):
        if (family, seed) not in cache:
            out = tmp_path_factory.mktemp(f"train_{family}_{seed}") / f"{family}_demo"
            fn, kw = (
                (train_scgpt_demo, SCGPT_TRAIN)
                if family == "scgpt"
                else (train_geneformer_demo, GF_TRAIN)
            )
            cache[family, seed] = fn(benchmarks(seed), out, **kw, seed=seed, progress=False)
        return cache[family, seed]

    return get


@pytest.fixture(scope="module")
def scgpt_run(trained):
    return trained("scgpt", SEEDS[0])


@pytest.fixture(scope="module")
def geneformer_run(trained):
    return trained("geneformer", SEEDS[0])


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
        f"{family}: loss per epoch {first:.4g} → {last:.4g}; held-out masked loss "
        f"{rep.eval_loss_initial:.4g} → {rep.eval_loss_final:.4g} (chance "
        f"{rep.chance_loss:.4g}, {rep.baseline} {rep.baseline_loss:.4g}) in {rep.seconds:.1f}s"
    )
    n_epochs = (SCGPT_TRAIN if family == "scgpt" else GF_TRAIN)["epochs"]
    assert rep.complete and rep.epochs == len(rep.loss_per_epoch) == n_epochs
    assert len(rep.eval_loss_per_epoch) == n_epochs + 1 and len(rep.loss_per_step) == rep.steps
    assert rep.eval_held_out and rep.n_eval_cells == SIM["n_cells"] // 10
    assert last < first
    # the untrained model is at chance; the trained one beats the context-free baseline
    # (which on this benchmark is barely better than chance for Geneformer: the 40 genes'
    # rank positions vary so much from cell to cell that a per-rank frequency with add-one
    # smoothing is within 0.001 nats of ln 40, on either side)
    assert rep.eval_loss_initial > 0.9 * rep.chance_loss
    assert rep.eval_loss_final < min(rep.baseline_loss, rep.chance_loss)
    assert rep.baseline_loss < 1.001 * rep.chance_loss
    assert rep.learned and rep.beat_chance
    log = json.loads((rep.path / LOG_FILE).read_text())
    assert log["loss_per_epoch"] == pytest.approx(rep.loss_per_epoch)
    assert log["eval_loss_per_epoch"] == pytest.approx(rep.eval_loss_per_epoch)
    assert log["learned"] is True and log["chance_loss"] == pytest.approx(rep.chance_loss)
    assert log["family"] == family and log["steps"] == rep.steps > 0
    assert log["seconds"] > 0 and log["n_params"] == rep.n_params > 0
    assert log["params"]["cells"].startswith("all but the held-out")
    assert log["n_cells"] == SIM["n_cells"]


def test_untrained_model_is_reported_as_not_learned(adata, tmp_path):
    """One step of training cannot beat the per-gene-mean baseline: the log says so."""
    rep = train_scgpt_demo(
        adata,
        tmp_path / "m",
        n_layers=1,
        n_heads=2,
        d_model=16,
        d_hid=32,
        epochs=1,
        max_steps=1,
        progress=False,
    )
    log = json.loads((tmp_path / "m" / LOG_FILE).read_text())
    assert rep.eval_loss_final > rep.baseline_loss
    assert log["learned"] is False and rep.learned is False


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


def test_scgpt_checkpoint_round_trip(first_adata, scgpt_run):
    adata = first_adata
    path = scgpt_run.path
    assert {"args.json", "vocab.json", "best_model.pt", LOG_FILE} <= {
        p.name for p in path.iterdir()
    }
    args = json.loads((path / "args.json").read_text())
    assert args["mask_value"] == -1 and args["pad_value"] == -2
    assert args["embsize"] == SCGPT_TRAIN["d_model"] and args["d_hid"] == SCGPT_TRAIN["d_hid"]
    assert args["nlayers"] == SCGPT_TRAIN["n_layers"] and args["nheads"] == SCGPT_TRAIN["n_heads"]
    assert args["mask_ratio"] == SCGPT_TRAIN["mask_ratio"]
    assert args["max_seq_len"] >= 1 + int(np.diff(adata.X.indptr).max())
    # value binning breaks ties at random (upstream ``_digitize``), seeded by the adapter
    loaded = ScGPTAdapter.load(path, seed=SEEDS[0])
    trained = scgpt_run.adapter
    batch = trained.tokenize(adata, np.arange(24))
    torch.testing.assert_close(loaded.tokenize(adata, np.arange(24)).values, batch.values)
    _same_outputs(trained, loaded, batch, logits=False)
    # and it is not the initial model
    init = ScGPTAdapter.load(
        build_scgpt_checkpoint(
            path.parent / "init_s",
            list(adata.var_names),
            d_model=SCGPT_TRAIN["d_model"],
            n_layers=SCGPT_TRAIN["n_layers"],
            n_heads=SCGPT_TRAIN["n_heads"],
            d_hid=SCGPT_TRAIN["d_hid"],
            n_bins=SCGPT_TRAIN["n_bins"],
            seed=SEEDS[0],
            max_seq_len=args["max_seq_len"],
        )
    )
    assert not torch.allclose(init.forward(batch).hidden, loaded.forward(batch).hidden)


def test_geneformer_checkpoint_round_trip(first_adata, geneformer_run):
    adata = first_adata
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
    assert loaded.version == "V1" and loaded.n_layers == GF_TRAIN["n_layers"]
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
    import scfm_audit.models._trainer as trainer

    small = adata[:64].copy()
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    kw = _tiny_kw(family)
    a = fn(small, tmp_path / "a", **kw)
    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(ticks)))
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
    import scfm_audit.models._trainer as trainer

    ticks = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(ticks)))
    fn = train_scgpt_demo if family == "scgpt" else train_geneformer_demo
    with pytest.raises(trainer.TrainingBudgetExceeded, match="nothing was saved"):
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
    # not a terminal: the table is plain text, a header line then one line per family
    lines = res.output.splitlines()
    header = next(i for i, x in enumerate(lines) if x.startswith("model\tepochs"))
    assert {lines[header + 1].split("\t")[0], lines[header + 2].split("\t")[0]} == {
        "scgpt",
        "geneformer",
    }
    for name in ("scgpt_demo", "geneformer_demo"):
        assert (tmp_path / name / LOG_FILE).is_file()
    ScGPTAdapter.load(tmp_path / "scgpt_demo")
    GeneformerAdapter.load(tmp_path / "geneformer_demo")


# -- (3) the key test: trained attention relates to co-expression ---------------------------
def _random_init(family, rep, adata, folder):
    p = rep.params
    if family == "scgpt":
        ck = build_scgpt_checkpoint(
            folder / "random_scgpt",
            list(adata.var_names),
            d_model=p["d_model"],
            n_layers=p["n_layers"],
            n_heads=p["n_heads"],
            d_hid=p["d_hid"],
            n_bins=p["n_bins"],
            max_seq_len=p["max_seq_len"],
            seed=p["seed"],
        )
        return ScGPTAdapter.load(ck)
    ids = list(adata.var["ensembl_id"])
    ck = build_geneformer_checkpoint(
        folder / "random_geneformer",
        ids,
        dict(zip(ids, gene_medians_from_counts(adata))),
        hidden_size=p["hidden_size"],
        n_layers=p["n_layers"],
        n_heads=p["n_heads"],
        intermediate_size=p["intermediate_size"],
        seed=p["seed"],
    )
    return GeneformerAdapter.load(ck)


def _layer_correlations(
    adapter, adata, abs_coexpr: np.ndarray, reading: dict | None = None
) -> list[float]:
    """Spearman(|co-expression|, head-pooled attention) per layer, over the off-diagonal
    gene pairs both matrices cover; attention read as the demo reads it
    (``ATTENTION_READING``) unless ``reading`` says otherwise."""
    out = []
    kw = ATTENTION_READING if reading is None else reading
    for e in extract_attention_edges(adapter, adata, per_head=False, progress=False, **kw):
        ok = np.isfinite(e.scores) & np.isfinite(abs_coexpr)
        np.fill_diagonal(ok, False)
        out.append(float(spearmanr(e.scores[ok], abs_coexpr[ok])[0]))
    return out


def test_relative_reading_removes_the_cell_length_confound(adata, tmp_path):
    """At random initialisation Geneformer's attention is nearly uniform, ≈ 1/T for a cell
    of T tokens; averaged over the cells where two genes are co-present, plain softmax
    attention then tracks which cells those are, which is related to co-expression. The
    demo's reading (attention relative to uniform, then the average product correction)
    leaves a random-initialised model with no relation to |co-expression|."""
    ids = list(adata.var["ensembl_id"])
    ck = build_geneformer_checkpoint(
        tmp_path / "gf",
        ids,
        dict(zip(ids, gene_medians_from_counts(adata))),
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=128,
        seed=0,
    )
    model = GeneformerAdapter.load(ck)
    abs_co = np.abs(coexpression(adata, method="spearman").scores)
    plain = _layer_correlations(model, adata, abs_co, reading={"score": "softmax"})
    demo = _layer_correlations(model, adata, abs_co)
    print(
        f"random-init Geneformer: plain softmax {np.round(plain, 3).tolist()}, "
        f"demo reading {np.round(demo, 3).tolist()}"
    )
    assert min(plain) > 0.15  # the confound: no training, yet a relation
    assert max(abs(r) for r in demo) < 0.1


def _best_layer_margin(family, model, params, adata, folder) -> tuple[float, list, list]:
    abs_co = np.abs(coexpression(adata, method="spearman").scores)
    trained = _layer_correlations(model, adata, abs_co)
    random = _layer_correlations(
        _random_init(family, SimpleNamespace(params=params), adata, folder), adata, abs_co
    )
    return max(trained) - max(random), trained, random


# The acceptance models (both families × the three acceptance seeds) take ~5 minutes to
# train on two cores, so they are kept as test data, made by
# ``tests/data/acceptance_models/make.py`` with this module's benchmark and settings. They are
# tied to the training code by (a) the suite's own training of the first seed, which must
# give bitwise the shipped weights of that seed, and (b) re-training the first steps of
# every seed, which must give the logged losses.
ACCEPTANCE_MODELS = Path(__file__).parent / "data" / "acceptance_models"
_ADAPTERS = {"scgpt": ScGPTAdapter, "geneformer": GeneformerAdapter}


def _shipped(family: str, seed: int):
    folder = ACCEPTANCE_MODELS / f"{family}_{seed}"
    return _ADAPTERS[family].load(folder), json.loads((folder / LOG_FILE).read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_first_seed_training_gives_the_shipped_acceptance_weights(runs, family):
    """The suite trains the first acceptance seed anyway (above): on the torch build and CPU
    kernels that made the shipped checkpoints its weights are bitwise theirs. (On another
    processor MKL and torch pick other code paths: the losses differ by float rounding
    from a few steps in, and after thousands of steps the model is a different one; the
    first-steps test below still ties the shipped models to this training there.)"""
    shipped, log = _shipped(family, SEEDS[0])
    if log["torch_version"] != torch.__version__:
        pytest.skip(f"shipped on torch {log['torch_version']}, running {torch.__version__}")
    if log.get("cpu") != cpu_signature():
        pytest.skip(f"shipped on CPU kernels {log.get('cpu')!r}, running {cpu_signature()!r}")
    a = runs[family].adapter.module.state_dict()
    b = shipped.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)
    assert runs[family].loss_per_step == log["loss_per_step"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_acceptance_models_are_this_training(benchmarks, tmp_path, family, seed):
    """Each shipped acceptance model was trained with this module's settings and seed:
    re-training its first steps gives its logged losses."""
    _, log = _shipped(family, seed)
    fn, kw = (
        (train_scgpt_demo, SCGPT_TRAIN) if family == "scgpt" else (train_geneformer_demo, GF_TRAIN)
    )
    assert {k: log["params"][k] for k in kw} == kw and log["params"]["seed"] == seed
    assert log["complete"] and log["n_cells"] == SIM["n_cells"]
    rep = fn(benchmarks(seed), tmp_path / "m", **kw, seed=seed, max_steps=3, progress=False)
    assert rep.loss_per_step == pytest.approx(log["loss_per_step"][:3], rel=1e-5)
    assert rep.baseline_loss == pytest.approx(log["baseline_loss"], rel=1e-9)


@pytest.fixture(scope="module")
def acceptance(benchmarks, tmp_path_factory):
    """family → [(seed, margin, held-out loss, baseline loss)] of the shipped acceptance
    models, measured on first use (the per-layer numbers are printed: ``pytest -s``)."""
    cache: dict[str, list] = {}

    def get(family: str) -> list:
        if family in cache:
            return cache[family]
        rows = []
        for seed in SEEDS:
            adata = benchmarks(seed)
            model, log = _shipped(family, seed)
            folder = tmp_path_factory.mktemp(f"random_{family}_{seed}")
            margin, tr, rn = _best_layer_margin(family, model, log["params"], adata, folder)
            loss, baseline = log["eval_loss_final"], log["baseline_loss"]
            rows.append((seed, margin, loss, baseline))
            print(
                f"\n{family} seed {seed}: Spearman(|co-expression|, attention) per layer\n"
                f"  trained: {np.round(tr, 3).tolist()} (best {max(tr):+.3f})\n"
                f"  random : {np.round(rn, 3).tolist()} (best {max(rn):+.3f})  margin "
                f"{margin:+.3f}\n  held-out loss {loss:.4g} vs {log['baseline']} "
                f"{baseline:.4g} (chance {log['chance_loss']:.4g})"
            )
        cache[family] = rows
        return rows

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_acceptance_models_beat_the_context_free_baseline(acceptance, family):
    """Acceptance, second half: on every acceptance seed the held-out masked
    loss is below the context-free baseline's (per-gene mean bin / per-rank frequency)."""
    for seed, _, loss, baseline in acceptance(family):
        assert loss < baseline, f"seed {seed}: held-out loss {loss:.4g} ≥ baseline {baseline:.4g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_attention_relates_to_coexpression(acceptance, family):
    """Acceptance, first half, on every one of the three acceptance seeds: the
    best layer's Spearman(|co-expression|, attention read as the demo reads it) exceeds
    the random-initialised model's by ≥ 0.2."""
    for seed, margin, _, _ in acceptance(family):
        assert margin >= 0.2, f"seed {seed}: best-layer margin {margin:+.3f} < 0.2"
