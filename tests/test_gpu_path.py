"""The GPU path of attention extraction, checked on CPU with the same code and dtypes.

* forward dtype: a bfloat16 / float16 forward against float32 on the trained demo models
  (null hypothesis: the low-precision edges equal the float32 ones up to the stated
  tolerance), sums cast up to float32 before they are added;
* length-bucketed batches: the same sums as the unsorted stream within float rounding,
  less padding;
* the forward stops after the last requested layer (real adapters);
* batch size from free device memory: the memory model against a mocked free value;
* device, dtype and batch-size validation, in the adapters and in the config.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from _toy_model import ToyAdapter, toy_adata
from scfm_audit.edges._attention import (
    AttentionAccumulator,
    extract_attention_accumulator,
    extract_attention_edges,
)
from scfm_audit.models import GeneformerAdapter, ScGPTAdapter, load_model
from scfm_audit.models import _device as dev
from scfm_audit.models._device import (
    attention_batch_bytes,
    auto_batch_size,
    padding_fraction,
    plan_batches,
    resolve_device,
    resolve_dtype,
)

#: bfloat16 / float16 forward against float32, per layer of the trained demo models
#: (max |Δ| of the accumulated mean softmax edge scores relative to the largest float32
#: score; Spearman of the off-diagonal edge rankings). Measured on these 96 demo cells
#: (CPU, torch 2.13): bf16 max|Δ|/max 0.0068–0.0125 (scGPT, 4 layers), 0.013–0.0245
#: (Geneformer, 2 layers), ρ ≥ 0.99992; fp16 max|Δ|/max 0.0006–0.0011 (scGPT),
#: 0.0018–0.0044 (Geneformer), ρ ≥ 0.999998.
TOLERANCE = {
    "bfloat16": {"max_rel": 0.06, "spearman": 0.9995},
    "float16": {"max_rel": 0.01, "spearman": 0.99999},
}
FAMILIES = {"scgpt": "scgpt_demo", "geneformer": "geneformer_demo"}


@pytest.fixture(scope="module")
def demo_adata():
    from scfm_audit.data import simulate_perturbseq

    # the demo models' benchmark (PROVENANCE.json): same genes and ids, fewer cells
    sim = simulate_perturbseq(n_cells=96, n_genes=300, n_tfs=30, module_strength=2.0, seed=0)
    return sim.adata


def _demo(family: str, **kw):
    from scfm_audit.pipeline._demo import shipped_demo_models

    root = shipped_demo_models()
    if root is None:
        pytest.skip("the shipped demo models are absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_model(family, root / FAMILIES[family], device="cpu", **kw)


def _edges(model, adata, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return extract_attention_edges(model, adata, progress=False, **kw)


# -- forward dtype ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def float32_edges(demo_adata):
    return {fam: _edges(_demo(fam), demo_adata, score="softmax", batch_size=16) for fam in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_forward_within_stated_error(demo_adata, float32_edges, family, dtype):
    """Null hypothesis: a bf16 / fp16 forward (weights and activations in that dtype,
    attention cast up to float32 before it is summed) gives the float32 edges up to
    :data:`TOLERANCE` (max |Δ| / max |score| and Spearman of the edge rankings)."""
    model = _demo(family, dtype=dtype)
    assert model.dtype == resolve_dtype(dtype)
    assert {p.dtype for p in model.module.parameters()} == {resolve_dtype(dtype)}
    low = _edges(model, demo_adata, score="softmax", batch_size=16)
    tol = TOLERANCE[dtype]
    for ref, got in zip(float32_edges[family], low, strict=True):
        assert ref.layer == got.layer and got.params["forward_dtype"] == dtype
        assert got.params["accumulator_dtype"] == "float32"
        a, b = ref.dense(), got.dense()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        ok = np.isfinite(a)
        off = ok & ~np.eye(a.shape[0], dtype=bool)
        rel = np.abs(a[ok] - b[ok]).max() / np.abs(a[ok]).max()
        rho = spearmanr(a[off], b[off]).statistic
        assert rel <= tol["max_rel"], (family, dtype, ref.layer, rel)
        assert rho >= tol["spearman"], (family, dtype, ref.layer, rho)
        assert rel > 0  # the low-precision path really ran


def test_float32_is_the_default_and_bitwise_unchanged(demo_adata, float32_edges):
    model = _demo("scgpt", dtype="float32")
    assert model.dtype == torch.float32 and model.describe()["dtype"] == "float32"
    again = _edges(model, demo_adata, score="softmax", batch_size=16)
    for a, b in zip(float32_edges["scgpt"], again, strict=True):
        np.testing.assert_array_equal(a.dense(), b.dense())


def test_fold_casts_up_before_the_head_sum():
    """A bf16 pattern folds exactly as its float32 copy: the head sum and the gathered
    values are float32 before index_add_, so no bf16 running sum exists."""
    g = torch.Generator().manual_seed(0)
    B, H, T, G = 3, 4, 7, 6
    values = torch.softmax(torch.randn(B, H, T, T, generator=g), -1).to(torch.bfloat16)
    slot = torch.randint(-1, G, (B, T), generator=g)
    for per_head in (False, True):
        low = AttentionAccumulator(
            [f"g{i}" for i in range(G)],
            layers=[0],
            n_heads=H,
            per_head=per_head,
            dtype=torch.float32,
        )
        ref = AttentionAccumulator(
            low.genes, layers=[0], n_heads=H, per_head=per_head, dtype=torch.float32
        )
        low.update(values, slot)
        ref.update(values.float(), slot)
        np.testing.assert_array_equal(low.sum.numpy(), ref.sum.numpy())
    with pytest.raises(ValueError, match="float32 or float64"):
        AttentionAccumulator(["a"], layers=[0], n_heads=1, dtype=torch.bfloat16)


def test_low_precision_adapter_outputs_and_interventions(demo_adata):
    from scfm_audit.models import ablate_heads, compute_head_means

    model = _demo("scgpt", dtype="bfloat16")
    batch = model.tokenize(demo_adata, np.arange(8))
    out = model.forward(batch)
    assert out.hidden.dtype == torch.float32 and out.gene_predictions.dtype == torch.float32
    means = compute_head_means(model, [batch], layers=[1])
    assert means[(1, 0)].dtype == torch.float64 and torch.isfinite(means[(1, 0)]).all()
    with ablate_heads(model, [(1, 0)], method="mean", reference=means):
        ablated = model.forward(batch)
    assert not torch.equal(ablated.hidden, out.hidden)
    edges = _edges(model, demo_adata[:16], score="softmax_relative", layers=[0])
    assert edges[0].params["forward_dtype"] == "bfloat16"
    assert np.isfinite(edges[0].dense()).any()


# -- length-bucketed batches --------------------------------------------------------------------
def test_plan_batches_sorts_and_covers_every_cell_once():
    lens = np.array([5, 9, 2, 9, 7, 1, 3, 8])
    plain = plan_batches(lens, batch_size=3, sort=False)
    assert [b.tolist() for b in plain] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    sorted_ = plan_batches(lens, batch_size=3, sort=True)
    assert [b.tolist() for b in sorted_] == [[1, 3, 7], [4, 0, 6], [2, 5]]
    assert padding_fraction(lens, sorted_) < padding_fraction(lens, plain)
    assert padding_fraction(lens, plain) == pytest.approx(1 - 44 / (3 * 9 + 3 * 9 + 2 * 8))
    squares = (lens**2).sum() / (3 * 81 + 3 * 81 + 2 * 64)
    assert padding_fraction(lens, plain, power=2) == pytest.approx(1 - squares)
    # a batch size that depends on the batch's padded length (the memory model's shape)
    by_len = plan_batches(lens, batch_size=lambda T: 2 if T > 6 else 4, sort=True)
    assert [len(b) for b in by_len] == [2, 2, 4]
    assert sorted(np.concatenate(by_len).tolist()) == list(range(lens.size))
    # unsorted: one size, from the longest cell
    assert [len(b) for b in plan_batches(lens, batch_size=lambda T: 3, sort=False)] == [3, 3, 2]
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(lens, batch_size=0, sort=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_length_buckets_give_the_unsorted_sums(demo_adata, family):
    """Null hypothesis: sorting cells by token count changes nothing but the order of the
    float additions (and the padding each cell's forward sees): sums within float32
    rounding (rtol 1e-5), coverage counts and cell counts exactly equal."""
    model = _demo(family)
    kw = dict(per_head=True, batch_size=8, progress=False, score="softmax", layers=[0, 1])
    cells = np.arange(48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = extract_attention_accumulator(
            model, demo_adata, cells=cells, length_buckets=False, **kw
        )
        bucket = extract_attention_accumulator(
            model, demo_adata, cells=cells, length_buckets=True, **kw
        )
    assert plain.params["length_buckets"] is False and bucket.params["length_buckets"] is True
    assert plain.n_cells == bucket.n_cells == cells.size
    np.testing.assert_array_equal(plain.count.numpy(), bucket.count.numpy())
    np.testing.assert_allclose(bucket.sum.numpy(), plain.sum.numpy(), rtol=1e-5, atol=1e-6)
    assert bucket.params["padding_fraction"] < plain.params["padding_fraction"]


def test_length_buckets_with_groups_and_cpu_default_off():
    adata = toy_adata(n_cells=14, n_genes=20, seed=2)
    model = ToyAdapter(adata.var_names, n_layers=2, n_heads=2, d_model=8, seed=1)
    groups = np.arange(14) % 3
    kw = dict(groups=groups, per_head=True, batch_size=4, progress=False, dtype=torch.float64)
    plain = extract_attention_accumulator(model, adata, **kw)
    bucket = extract_attention_accumulator(model, adata, length_buckets=True, **kw)
    assert plain.params["length_buckets"] is False  # CPU default: the unsorted stream
    np.testing.assert_array_equal(plain.group_cells, bucket.group_cells)
    np.testing.assert_array_equal(plain.count.numpy(), bucket.count.numpy())
    # float64 sums of a float32 forward: only the padding each cell sees differs
    np.testing.assert_allclose(bucket.sum.numpy(), plain.sum.numpy(), rtol=1e-5, atol=1e-6)


def test_token_counts_equal_the_tokenizers_lengths(demo_adata, tmp_path):
    from scfm_audit.models import build_geneformer_checkpoint, build_scgpt_checkpoint

    cells = np.array([5, 0, 17, 33, 2, 60])
    genes = list(demo_adata.var_names)
    path = build_scgpt_checkpoint(tmp_path / "s", genes[:250], n_layers=1, max_seq_len=64)
    for opts in ({}, {"max_seq_len": 9}, {"include_zero_genes": True, "max_seq_len": 400}):
        m = ScGPTAdapter.load(path, device="cpu", **opts)
        want = m.tokenize(demo_adata, cells).attention_mask.sum(1).numpy()
        np.testing.assert_array_equal(m.token_counts(demo_adata, cells), want)
    ids = list(demo_adata.var["ensembl_id"])
    for version in ("V1", "V2"):
        p = build_geneformer_checkpoint(
            tmp_path / version,
            ids[:280],
            {e: 1.0 for e in ids[:280]},
            version=version,
            max_input_size=40 if version == "V1" else None,
        )
        m = GeneformerAdapter.load(p, device="cpu")
        want = m.tokenize(demo_adata, cells).attention_mask.sum(1).numpy()
        np.testing.assert_array_equal(m.token_counts(demo_adata, cells), want)


# -- stop after the last requested layer --------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_stops_after_the_last_requested_layer(demo_adata, family):
    """Layers above the last requested one never run (no attention, no MLP, no output
    head); the requested layer's scores equal those of a full pass."""
    model = _demo(family)
    seen: list[str] = []
    spy = [
        ("layers.*.attn.pattern", lambda x, *, site, **_: seen.append(site)),
        ("layers.*.resid_post", lambda x, *, site, **_: seen.append(site)),
    ]
    with model.hooks(spy):
        sub = _edges(model, demo_adata[:10], layers=[0], batch_size=5)
    assert sorted(set(seen)) == ["layers.0.attn.pattern"]  # layer 0 stopped at its pattern
    full = _edges(model, demo_adata[:10], batch_size=5)
    np.testing.assert_array_equal(sub[0].dense(), full[0].dense())


# -- batch size from free device memory ---------------------------------------------------------
def _mock_cuda(monkeypatch, *, free: int, reserved: int = 0, allocated: int = 0) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_memory_model_terms():
    # scGPT size, bf16, softmax: T²·(3·8·2 + 24) + T·(8·512 + 512)·2 bytes per cell
    one = attention_batch_bytes(1, 1200, n_heads=8, d_model=512, d_ff=512, element_size=2)
    assert one == 1200**2 * 72 + 1200 * 4608 * 2
    assert (
        attention_batch_bytes(5, 1200, n_heads=8, d_model=512, d_ff=512, element_size=2) == 5 * one
    )
    rel = attention_batch_bytes(
        1, 100, n_heads=8, d_model=64, d_ff=64, element_size=2, score="softmax_relative"
    )
    assert rel - attention_batch_bytes(1, 100, n_heads=8, d_model=64, d_ff=64, element_size=2) == (
        100**2 * 32
    )


def test_auto_batch_size_from_mocked_free_memory(monkeypatch):
    cuda = torch.device("cuda", 0)
    shape = dict(n_heads=8, d_model=512, d_ff=512, dtype=torch.bfloat16)
    per_cell = attention_batch_bytes(1, 1200, n_heads=8, d_model=512, d_ff=512, element_size=2)
    _mock_cuda(monkeypatch, free=40 * 2**30, reserved=3 * 2**30, allocated=1 * 2**30)
    b = auto_batch_size(1200, device=cuda, **shape)
    budget = int(0.8 * (40 + 3 - 1) * 2**30)  # free + reserved-but-unallocated
    assert b == budget // per_cell
    assert b * per_cell <= budget < (b + 1) * per_cell
    # shorter sequences fit more cells (quadratic in T); the cap and the floor of one cell
    short = attention_batch_bytes(1, 300, n_heads=8, d_model=512, d_ff=512, element_size=2)
    assert budget // short > 10 * b  # quadratic in T: a quarter of the tokens, 16× the cells
    assert auto_batch_size(300, device=cuda, **shape) == 1024  # the cap (max_batch)
    assert auto_batch_size(300, device=cuda, max_batch=10**6, **shape) == budget // short
    assert auto_batch_size(10, device=cuda, max_batch=256, **shape) == 256
    _mock_cuda(monkeypatch, free=2**20)
    assert auto_batch_size(1200, device=cuda, **shape) == 1
    # float32 needs more per cell than bf16
    _mock_cuda(monkeypatch, free=40 * 2**30)
    assert auto_batch_size(1200, device=cuda, **{**shape, "dtype": torch.float32}) < b
    # CPU: the fixed default, whatever the memory
    assert auto_batch_size(1200, device="cpu", **shape) == dev.CPU_BATCH_SIZE == 16


def test_auto_batches_follow_the_memory_model(demo_adata, monkeypatch):
    """batch_size="auto" plans each batch from the size function at its padded length; on CPU
    it is the fixed default, bitwise the explicit batch size of 16."""
    model = _demo("scgpt")
    kw = dict(per_head=False, progress=False, layers=[0, 1], cells=np.arange(64))
    fixed = extract_attention_accumulator(model, demo_adata, batch_size=16, **kw)
    auto = extract_attention_accumulator(model, demo_adata, batch_size="auto", **kw)
    np.testing.assert_array_equal(auto.sum.numpy(), fixed.sum.numpy())
    assert auto.params["batch_size"] == "auto"

    seen: list[int] = []
    monkeypatch.setattr(
        "scfm_audit.edges._attention.auto_batch_size", lambda T, **_: 4 if T > 200 else 32
    )
    orig = model.iter_batches

    def spy(adata, **k):
        for b in orig(adata, **k):
            seen.append(len(b))
            yield b

    monkeypatch.setattr(model, "iter_batches", spy)
    sized = extract_attention_accumulator(
        model, demo_adata, batch_size="auto", length_buckets=True, **kw
    )
    assert sum(seen) == 64 and {4, 32} <= set(seen)
    np.testing.assert_allclose(sized.sum.numpy(), fixed.sum.numpy(), rtol=1e-5, atol=1e-6)


# -- devices and validation ---------------------------------------------------------------------
def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError) as err:
        resolve_device("cuda")
    msg = str(err.value)
    assert "\n" not in msg and "CUDA is not available" in msg and "set device: cpu" in msg
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
    # two GPUs: workers spread over them; an index beyond them is named
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [resolve_device("cuda", worker=k).index for k in range(4)] == [0, 1, 0, 1]
    assert resolve_device("auto", worker=3) == torch.device("cuda", 1)
    assert resolve_device("cuda:1", worker=0) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"has 2 GPU\(s\); use cuda:0 … cuda:1"):
        resolve_device("cuda:5")


def test_adapter_rejects_unknown_dtype_and_batch_size():
    with pytest.raises(ValueError, match="forward dtype 'float8'"):
        resolve_dtype("float8")
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(None) == torch.float32
    with pytest.raises(ValueError, match="batch_size must be a positive integer or 'auto'"):
        _demo("scgpt", batch_size=0)
    model = _demo("geneformer", batch_size="auto")
    assert model.batch_size == "auto"
    with pytest.raises(ValueError, match="batch_size must be ≥ 1 or 'auto'"):
        extract_attention_edges(model, None, batch_size=-2)


def _cuda_config(tmp_path, executor: dict) -> dict:
    from scfm_audit.pipeline._demo import shipped_demo_models

    root = shipped_demo_models()
    if root is None:
        pytest.skip("the shipped demo models are absent")
    return {
        "output": str(tmp_path / "out"),
        "executor": executor,
        "datasets": {"sim": {"simulate": {"n_cells": 50}}},
        "models": {"m": {"family": "scgpt", "path": str(root / "scgpt_demo"), "device": "cuda"}},
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_is_looked_for_where_the_model_is_loaded(tmp_path):
    """A config naming ``device: cuda`` reads on a machine without a GPU (a login node);
    a local run there stops at its input checks with one line naming the fix."""
    import yaml

    from scfm_audit.pipeline._config import config_from_dict
    from scfm_audit.pipeline._validate import validate_config

    raw = _cuda_config(tmp_path, {"kind": "local"})
    assert config_from_dict(raw).models["m"].device == "cuda"
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(raw))
    bad = [c for c in validate_config(path) if not c.ok]
    assert [c.name for c in bad] == ["model m"]
    assert "\n" not in bad[0].detail
    assert "device 'cuda' requested but CUDA is not available" in bad[0].detail
    assert "set device: cpu" in bad[0].detail


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_a_driver_without_the_workers_gpu_loads_the_model_on_cpu(tmp_path):
    """With a Dask cluster the driver may have no GPU: it loads the model on the CPU (to
    tokenize and for the passes it keeps), says so in the run's notes, and the workers
    are told to load it on the configured device."""
    from scfm_audit._executor import model_source
    from scfm_audit.pipeline._cache import ArtifactCache
    from scfm_audit.pipeline._config import config_from_dict
    from scfm_audit.pipeline._runner import Progress, Resources

    cfg = config_from_dict(_cuda_config(tmp_path, {"kind": "dask", "address": "tcp://h:8786"}))
    res = Resources(cfg, ArtifactCache(None), Progress(quiet=True))
    model = res.model("m")
    assert model.device.type == "cpu"
    assert model_source(model).kwargs["device"] == "cuda"
    assert any("loaded on the CPU in this process" in n for n in res.notes)


def test_config_numerics_fields(tmp_path):
    from scfm_audit.pipeline._config import ConfigError, config_from_dict

    def cfg(**model):
        return config_from_dict(
            {
                "datasets": {"sim": {"simulate": {"n_cells": 50}}},
                "models": {"m": {"family": "scgpt", "path": str(tmp_path), **model}},
            }
        )

    plain = cfg().models["m"]
    assert (plain.device, plain.dtype, plain.batch_size) == (None, "float32", None)
    assert plain.options() == {}  # defaults load exactly as before
    set_ = cfg(device="cpu", dtype="bfloat16", batch_size="auto", max_seq_len=64).models["m"]
    assert set_.options() == {"max_seq_len": 64, "dtype": "bfloat16", "batch_size": "auto"}
    assert cfg(batch_size=32).models["m"].options() == {"batch_size": 32}
    for bad, where in (
        ({"dtype": "bf32"}, "models.m.dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
        ({"batch_size": 0}, "models.m.batch_size: batch_size must be a positive integer"),
        ({"batch_size": True}, "models.m.batch_size: expects"),
        ({"device": "tpu"}, "models.m.device: device 'tpu' is not a device"),
    ):
        with pytest.raises(ConfigError, match="Invalid config") as err:
            cfg(**bad)
        assert where in str(err.value), str(err.value)


def test_config_options_reach_the_adapter(tmp_path, demo_adata):
    from scfm_audit.pipeline._config import config_from_dict
    from scfm_audit.pipeline._demo import shipped_demo_models

    root = shipped_demo_models()
    if root is None:
        pytest.skip("the shipped demo models are absent")
    m = config_from_dict(
        {
            "datasets": {"sim": {"simulate": {"n_cells": 50}}},
            "models": {
                "m": {
                    "family": "scgpt",
                    "path": str(root / "scgpt_demo"),
                    "device": "cpu",
                    "dtype": "float16",
                    "batch_size": 8,
                },
            },
        }
    ).models["m"]
    model = load_model(m.family, m.path, device=m.device, name="m", **m.options())
    assert model.dtype == torch.float16 and model.batch_size == 8
    edges = _edges(model, demo_adata[:12], layers=[0])
    assert edges[0].params["batch_size"] == 8 and edges[0].params["forward_dtype"] == "float16"


# -- the benchmark ------------------------------------------------------------------------------
def test_gpu_benchmark_small_runs_on_cpu(tmp_path):
    """``benchmarks/gpu_extraction.py --small`` (CI size) runs on CPU and reports every
    number it promises; length buckets never pad more than the unsorted stream."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_extraction.py"
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(script), "--small", "--cells", "12", "--repeats", "1"]
    run = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "no GPU numbers exist" in run.stdout and "threadpools" in run.stdout
    r = json.loads(out.read_text())
    for key in (
        "extract_cells_per_s",
        "ratio_extract_to_bare",
        "peak_extract_bytes",
        "projected_100k_cells_s",
        "scatter_limit_cells_per_s_sector",
    ):
        assert r[key] > 0, key
    assert r["padding_buckets"] <= r["padding_unsorted"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_head_entropy_of_a_low_precision_forward(demo_adata, dtype):
    """Attention entropy (head ablation's entropy-matched sets) from a bf16 / fp16 forward
    is finite and within 2% of float32's: -p·log p is taken in float32, since fp16 cannot
    hold the 1e-30 floor that keeps log away from 0."""
    from scfm_audit.evaluate._ablation import head_entropy

    ref_model, low_model = _demo("scgpt", dtype="float32"), _demo("scgpt", dtype=dtype)
    ref = head_entropy(ref_model, [ref_model.tokenize(demo_adata, np.arange(16))])
    low = head_entropy(low_model, [low_model.tokenize(demo_adata, np.arange(16))])
    assert np.isfinite(low.to_numpy()).all()
    np.testing.assert_allclose(low.to_numpy(), ref.to_numpy(), rtol=0.02)
