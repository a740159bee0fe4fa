"""The process beside the run (``pipeline/_beside.py``): work done there — a self-contained
analysis, the drawing of figures — gives byte for byte the outputs of a run without it,
and a process that fails or dies costs nothing but the time: the work is done here."""

from __future__ import annotations

import operator
import os
import threading

import pandas as pd
import pytest

from scfm_audit.pipeline import _beside
from scfm_audit.pipeline._beside import Beside, BesideFailed, BesideLost
from scfm_audit.pipeline._config import ConfigError, config_from_dict
from scfm_audit.pipeline._runner import run_audit

pytestmark = pytest.mark.skipif(
    _beside.usable_cores() < 2, reason="a process beside the run needs two cores"
)


@pytest.fixture(scope="module")
def beside():
    with Beside() as b:
        yield b


def test_jobs_come_back_in_order_and_prints_do_not_mix_in(beside):
    futs = [beside.submit(operator.add, i, 1) for i in range(5)]
    said = beside.submit(print, "a library printing to stdout")
    after = beside.submit(operator.mul, 6, 7)
    assert [f.result(timeout=60) for f in futs] == [1, 2, 3, 4, 5]
    assert said.result(timeout=60) is None
    assert after.result(timeout=60) == 42
    assert beside.same_package()


def test_a_failing_job_says_what_it_raised(beside):
    with pytest.raises(BesideFailed, match="ValueError: invalid literal") as e:
        beside.submit(int, "not a number").result(timeout=60)
    assert e.value.kind == "ValueError" and "Traceback" in e.value.trace
    assert beside.submit(operator.add, 1, 1).result(timeout=60) == 2  # still serving


def test_a_result_that_cannot_travel_is_left_to_the_caller(beside):
    with pytest.raises(BesideLost, match="does not pickle"):
        beside.submit(threading.Lock).result(timeout=60)


def test_a_dead_process_fails_every_pending_and_later_job():
    with Beside() as b:
        dying = b.submit(os._exit, 3)
        with pytest.raises(BesideLost, match="exit code 3"):
            dying.result(timeout=60)
        with pytest.raises(BesideLost):
            b.submit(operator.add, 1, 1).result(timeout=5)


def test_a_self_contained_analysis_cannot_read_the_run():
    ctx_resources = _beside._NoRunInputs("my_analysis")
    with pytest.raises(RuntimeError, match="registered self_contained=True but asked for"):
        ctx_resources.dataset("sim")


def test_background_is_a_boolean_of_the_executor_section(tmp_path):
    base = {
        "output": str(tmp_path / "out"),
        "datasets": {"sim": {"simulate": {"n_cells": 100, "n_genes": 20, "seed": 0}}},
    }
    assert not config_from_dict({**base, "executor": {"background": False}}).executor.background
    # a section's own booleans are allowed; a boolean where a number goes is still caught
    with pytest.raises(ConfigError, match=r"executor\.shard_cells: expects an integer"):
        config_from_dict({**base, "executor": {"shard_cells": True}})


def _audit(tmp_path, out: str, background: bool) -> dict:
    """Co-expression recovery (figures drawn beside) and a small synthetic_controls
    (run beside: it simulates its own data)."""
    return {
        "seed": 3,
        "output": str(tmp_path / out),
        "executor": {"background": background},
        "datasets": {"sim": {"simulate": {"n_cells": 300, "n_genes": 60, "n_tfs": 8, "seed": 0}}},
        "references": {"grn": {"format": "simulated", "dataset": "sim", "network": "grn"}},
        "analyses": {
            "synthetic_controls": {
                "analyses": ["stability"],
                "scenarios": ["hub_null_additive", "planted_shared_edges_1"],
                "n_replicates": 5,
            },
            "grn_recovery": {"references": ["grn"], "n_boot": 50, "n_perm": 99},
        },
    }


def _same_outputs(a, b) -> None:
    pd.testing.assert_frame_equal(a.tests, b.tests, check_exact=True)
    assert list(a.results) == list(b.results) == ["synthetic_controls", "grn_recovery"]
    for name in ("tests.csv", "scorecard.csv", "standards.csv"):
        assert (a.output / name).read_bytes() == (b.output / name).read_bytes(), name
    figs = sorted(p.name for p in (a.output / "figures").iterdir())
    assert figs and figs == sorted(p.name for p in (b.output / "figures").iterdir())
    for f in figs:
        assert (a.output / "figures" / f).read_bytes() == (b.output / "figures" / f).read_bytes()
    for name, res in a.results.items():
        for t, df in res.tables.items():
            pd.testing.assert_frame_equal(df, b.results[name].tables[t], check_exact=True)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The reference: the same audit with no process beside it."""
    tmp = tmp_path_factory.mktemp("alone")
    return run_audit(config_from_dict(_audit(tmp, "alone", False)), quiet=True)


def test_work_beside_the_run_writes_the_outputs_of_a_run_without_it(alone, tmp_path):
    run = run_audit(config_from_dict(_audit(tmp_path, "beside", True)), quiet=True)
    assert alone.ran_beside == [] and not alone.pngs
    assert run.ran_beside == ["synthetic_controls"]
    assert set(run.pngs["grn_recovery"]) == set(run.results["grn_recovery"].figures)
    _same_outputs(alone, run)
    # the report says where it ran, and its total is the wall time, not a sum that counts
    # the overlapping analysis twice
    html = (run.output / "report.html").read_text()
    assert (
        "beside the run" in html
        and "beside the run"
        not in (alone.output / "report.html").read_text().split("<h3>Timings</h3>")[1]
    )


def test_a_process_that_dies_leaves_its_work_to_the_run(alone, tmp_path, monkeypatch):
    def dead_on_arrival(enabled: bool, **kw):
        b = Beside()
        b._proc.kill()
        b._proc.wait()
        return b

    monkeypatch.setattr(_beside, "open_beside", dead_on_arrival)
    run = run_audit(config_from_dict(_audit(tmp_path, "dead", True)), quiet=True)
    assert run.ran_beside == [] and not run.errors
    _same_outputs(alone, run)
