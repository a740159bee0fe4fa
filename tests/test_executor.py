"""The run's executor: ``local`` and ``dask`` give the same numbers, a lost worker is
redone or stops the run with a clear error, and the config says what is wrong in one line.

Equality as stated in ``docs/scaling.md``: under either executor the work is cut into
the same items (cell shards, row chunks, gene blocks, replicate batches, condition
chunks) and merged in item order, so attention sums, DE moments, Wilcoxon U, calibration
replicates and ablation losses are equal bit for bit between ``local`` and a 2-worker
``LocalCluster``. Against a plain library call (no executor: one pass, no shards) the
float32 attention sums differ by summation order only: relative 1e-5.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scfm_audit._executor import (
    DaskExecutor,
    ExecutorError,
    LocalExecutor,
    loaded_models,
    register_model_source,
    using,
)
from scfm_audit.data._dataset import DatasetSpec
from scfm_audit.data._simulate import simulate_perturbseq
from scfm_audit.edges._attention import extract_attention_accumulator
from scfm_audit.evaluate._de import differential_expression
from scfm_audit.models._base import load_model
from scfm_audit.pipeline._config import ConfigError, config_from_dict
from scfm_audit.pipeline._demo import DEMO_SIMULATION, shipped_demo_models

SPEC = DatasetSpec(perturbation="perturbation", modality="modality")
FAMILIES = ("scgpt", "geneformer")
#: extraction settings: 32 cells in shards of 8 (4 tasks), per head, the demo's reading
EXTRACT = {"per_head": True, "score": "softmax_relative", "batch_size": 8, "progress": False}
N_CELLS = 32
SHARD = 8


@pytest.fixture(scope="module")
def bench():
    return simulate_perturbseq(**{**DEMO_SIMULATION, "n_cells": 400})


@pytest.fixture(scope="module")
def models():
    """The shipped demo models, registered as the runner registers a config's models
    (workers load them from the checkpoint, once each)."""
    folder = shipped_demo_models()
    out = {}
    for fam in FAMILIES:
        path = folder / f"{fam}_demo"
        m = load_model(fam, path, device="cpu", name=f"{fam}_demo")
        register_model_source(
            m, f"test-{fam}", load_model, fam, str(path), device="cpu", name=f"{fam}_demo"
        )
        out[fam] = m
    return out


def _extract(model, adata, groups=None):
    cells = np.arange(N_CELLS)
    g = None if groups is None else groups[:N_CELLS]
    return extract_attention_accumulator(model, adata, cells=cells, groups=g, **EXTRACT)


def _grouping(adata) -> np.ndarray:
    return (np.arange(adata.n_obs) % 3).astype(np.int64)  # three "strata"


def _same_acc(a, b) -> None:
    assert a.n_cells == b.n_cells == N_CELLS
    assert torch.equal(a.count, b.count)
    assert torch.equal(a.sum, b.sum), float((a.sum - b.sum).abs().max())


# -- config -------------------------------------------------------------------------------------
def _cfg(tmp_path, executor):
    return {
        "output": str(tmp_path / "out"),
        "executor": executor,
        "datasets": {"sim": {"simulate": {"n_cells": 200, "n_genes": 40, "seed": 0}}},
    }


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ({"kind": "local", "n_workers": 2}, "only apply to kind: dask"),
        ({"kind": "dask", "address": "localhost:8786"}, "write it as tcp://host:8786"),
        ({"kind": "dask", "address": "tcp://h:8786", "n_workers": 2}, "dask worker <address>"),
        ({"kind": "spark"}, "executor.kind"),
    ],
)
def test_executor_config_errors_name_the_fix(tmp_path, executor, message):
    if executor["kind"] == "dask":
        pytest.importorskip("distributed")
    with pytest.raises(ConfigError, match="executor") as e:
        config_from_dict(_cfg(tmp_path, executor))
    assert message in str(e.value)


def test_dask_not_installed_says_which_extra(tmp_path, monkeypatch):
    import scfm_audit.pipeline._executor as pe

    monkeypatch.setattr(pe, "dask_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        config_from_dict(_cfg(tmp_path, {"kind": "dask"}))
    assert "pip install 'scfm-audit[dask]'" in str(e.value)
    assert str(e.value).count("\n") == 1  # "Invalid config:" and one line


def test_local_is_the_default(tmp_path):
    cfg = config_from_dict(_cfg(tmp_path, {}))
    assert cfg.executor.kind == "local" and cfg.executor.address is None


def test_unreachable_scheduler_is_a_config_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import scfm_audit.pipeline._executor as pe

    monkeypatch.setattr(pe, "CONNECT_TIMEOUT", 1)
    cfg = config_from_dict(_cfg(tmp_path, {"kind": "dask", "address": "tcp://127.0.0.1:9"}))
    with pytest.raises(
        ConfigError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"
    ):
        with pe.open_executor(cfg.executor):
            pass


def test_lost_work_exits_1_with_the_message(capsys):
    import typer

    from scfm_audit.cli import EXIT_INCOMPLETE, _clean_errors

    with pytest.raises(typer.Exit) as e, _clean_errors():
        raise ExecutorError("attention-x 3/4: its workers kept dying while running it")
    assert e.value.exit_code == EXIT_INCOMPLETE == 1
    assert "workers kept dying" in capsys.readouterr().err


# -- local executor against a plain call ------------------------------------------------------
def test_local_shards_equal_one_pass_to_rounding(bench, models):
    """The shards of the local executor sum to the one-pass accumulator: counts exactly,
    float32 sums to relative 1e-5 (summation order)."""
    m = models["geneformer"]
    plain = _extract(m, bench.adata)
    with using(LocalExecutor(shard_cells=SHARD)):
        sharded = _extract(m, bench.adata)
    assert sharded.params["shards"] == N_CELLS // SHARD
    assert torch.equal(plain.count, sharded.count)
    torch.testing.assert_close(sharded.sum, plain.sum, rtol=1e-5, atol=1e-5)


# -- a 2-worker LocalCluster ------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """2 worker processes × 1 thread; a task whose worker dies is retried once
    (``allowed-failures: 1``), the second death stops it."""
    pytest.importorskip("distributed")
    import cloudpickle
    import dask
    from distributed import Client

    from scfm_audit.pipeline._executor import local_cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the killing loaders below
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        local_cluster(2, 1) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.mark.slow
def test_dask_equals_local(client, bench, models, tmp_path):
    """Demo extraction (both demo models, per head, grouped into strata as CSSI does) and
    one calibration: bitwise equal. DE (Welch and Wilcoxon, five row chunks): the local
    executor runs the engine's own pass, the cluster chunk tasks whose float64 sums are
    added in another order: equal to relative 1e-10 (counts and U exactly)."""
    from scfm_audit.analyses._calibration import calibrate

    ex = DaskExecutor(client, shard_cells=SHARD)
    loc = LocalExecutor(shard_cells=SHARD)
    groups = _grouping(bench.adata)
    results = {}
    for name, e in (("local", loc), ("dask", ex)):
        with using(e):
            results[name] = {
                **{f: _extract(models[f], bench.adata, groups) for f in FAMILIES},
                "welch": differential_expression(bench.adata, SPEC, chunk_size=90),
                "wilcoxon": differential_expression(
                    bench.adata, SPEC, method="wilcoxon", chunk_size=90
                ),
                "calibration": calibrate(
                    "grn_recovery", n_replicates=4, scenarios=["hub_null_directed_150"]
                ),
            }
    a, b = results["local"], results["dask"]
    for f in FAMILIES:
        assert a[f].n_groups == 3 and a[f].params["shards"] == N_CELLS // SHARD
        _same_acc(a[f], b[f])  # every stratum's sums and counts
        _same_acc(a[f].pooled(), b[f].pooled())
        np.testing.assert_array_equal(a[f].group_cells, b[f].group_cells)
    for method in ("welch", "wilcoxon"):
        pd.testing.assert_frame_equal(a[method], b[method], check_exact=False, rtol=1e-10)
    pd.testing.assert_frame_equal(a["calibration"][1], b["calibration"][1], check_exact=True)
    # every worker that ran a shard loaded each model once (a cache keyed by checkpoint)
    held = client.run(loaded_models)
    assert all(sorted(v) == [f"test-{f}" for f in sorted(FAMILIES)] for v in held.values())


@pytest.mark.slow
def test_ablation_conditions_equal_local(client, bench, models):
    """More conditions than one task takes: chunks on the cluster, the same losses."""
    from scfm_audit.evaluate._ablation import Condition, all_heads, masked_loss_conditions
    from scfm_audit.models._masked import masked_inputs

    m = models["scgpt"]
    batch = m.tokenize(bench.adata, np.arange(8))
    mb = masked_inputs(m, batch, ratio=0.3, seed=0)
    heads = all_heads(m.n_layers, m.n_heads)
    conds = [Condition("random-k", "zero", heads=(h,), draw=i) for i, h in enumerate(heads[:10])]
    out = {}
    for name, e in (("local", LocalExecutor()), ("dask", DaskExecutor(client))):
        with using(e):
            out[name] = masked_loss_conditions(m, [mb], conds)
    np.testing.assert_array_equal(out["local"].loss, out["dask"].loss)
    np.testing.assert_array_equal(out["local"].baseline, out["dask"].baseline)
    plain = masked_loss_conditions(m, [mb], conds)  # one pass, no chunks
    np.testing.assert_allclose(out["local"].loss, plain.loss, rtol=1e-6)


def _loader_that_kills(marker: str, always: bool, *args, **kwargs):
    """A checkpoint loader that kills its worker process (as the OOM killer would): the
    first time only, or every time."""
    from scfm_audit.models._base import load_model as real

    if always or not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return real(*args, **kwargs)


@pytest.mark.slow
def test_a_killed_worker_is_redone_with_the_same_numbers(client, bench, models, tmp_path):
    fam = "geneformer"
    with using(LocalExecutor(shard_cells=SHARD)):
        want = _extract(models[fam], bench.adata)
    m = load_model(fam, shipped_demo_models() / f"{fam}_demo", device="cpu", name=f"{fam}_demo")
    marker = str(tmp_path / "killed-once")
    path = str(shipped_demo_models() / f"{fam}_demo")
    register_model_source(
        m, "kill-once", _loader_that_kills, marker, False, fam, path, device="cpu", name=m.name
    )
    with using(DaskExecutor(client, shard_cells=SHARD)):
        got = _extract(m, bench.adata)
    assert Path(marker).exists()  # a worker did die
    _same_acc(want, got)


@pytest.mark.slow
def test_a_task_that_keeps_killing_stops_with_a_clear_error(client, bench, models, tmp_path):
    fam = "geneformer"
    m = load_model(fam, shipped_demo_models() / f"{fam}_demo", device="cpu", name="doomed")
    path = str(shipped_demo_models() / f"{fam}_demo")
    register_model_source(
        m,
        "kill-always",
        _loader_that_kills,
        str(tmp_path / "m"),
        True,
        fam,
        path,
        device="cpu",
        name="doomed",
    )
    with using(DaskExecutor(client, shard_cells=SHARD)):
        with pytest.raises(ExecutorError, match="workers kept dying") as e:
            _extract(m, bench.adata)
    assert "partial" in str(e.value)


def _audit(tmp_path, executor: dict, out: str) -> dict:
    """A small audit touching every distributed pass: attention edges of the demo scGPT
    (32 cells, 4 shards) into grn_recovery, DE into perturbation_responders (3 row
    chunks), calibration replicates inside synthetic_controls."""
    folder = shipped_demo_models()
    return {
        "seed": 0,
        "output": str(tmp_path / out),
        "executor": {**executor, "shard_cells": SHARD},
        "datasets": {"sim": {"simulate": {**DEMO_SIMULATION, "n_cells": 400}}},
        "references": {"grn": {"format": "simulated", "dataset": "sim", "network": "grn"}},
        "models": {"scgpt_demo": {"family": "scgpt", "path": str(folder / "scgpt_demo")}},
        "edges": {
            "attn": {
                "scorer": "attention",
                "model": "scgpt_demo",
                "score": "softmax_relative",
                "batch_size": 8,
                "max_cells": N_CELLS,
            }
        },
        "analyses": {
            "grn_recovery": {"references": ["grn"], "edges": ["attn"], "n_boot": 50, "n_perm": 99},
            "perturbation_responders": {"datasets": ["sim"], "sweep": False, "chunk_size": 150},
            "synthetic_controls": {
                "analyses": ["grn_recovery"],
                "scenarios": ["hub_null_directed_150"],
                "n_replicates": 5,
            },
        },
    }


@pytest.mark.slow
def test_a_dask_run_writes_the_numbers_of_a_local_run(client, tmp_path):
    from scfm_audit.pipeline._runner import run_audit

    runs = {}
    for name, ex in (("local", {"kind": "local"}), ("dask", {"kind": "dask"})):
        if name == "dask":
            ex["address"] = client.scheduler.address
        cfg = config_from_dict(_audit(tmp_path, ex, name))
        runs[name] = run_audit(cfg, quiet=True, report=False)
    a, b = runs["local"], runs["dask"]
    assert not a.errors and not b.errors
    assert len(a.tests) > 0
    # bitwise but for DE, whose float64 sums a cluster adds in another order (1e-10)
    pd.testing.assert_frame_equal(a.tests, b.tests, check_exact=False, rtol=1e-10)
    for name, res in a.results.items():
        for t, df in res.tables.items():
            exact = name != "perturbation_responders"
            kw = {"check_exact": True} if exact else {"check_exact": False, "rtol": 1e-10}
            pd.testing.assert_frame_equal(df, b.results[name].tables[t], **kw)
