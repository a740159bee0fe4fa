"""The output folder is a transaction; the run's records (config.resolved.yaml, run.json)
are re-runnable and complete; exit codes say when a run is incomplete.

The kill test SIGKILLs a real ``scfm-audit run`` at several points of writing and
swapping (before the first file, midway, before the last file, right after the swap,
while the kept entries move over): the folder must then hold exactly the previous run or
exactly the new one, never a mixture and never a ``.tmp`` file; the next run cleans up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scfm_audit.cli import app

runner = CliRunner()
SIM = {"n_cells": 300, "n_genes": 60, "n_tfs": 6, "n_perturbations": 6, "seed": 0}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.data._simulate import write_benchmark

    root = tmp_path_factory.mktemp("bench")
    write_benchmark(simulate_perturbseq(**SIM), root)
    return root


def config(bench: Path, out: Path | str, refs: tuple[str, ...] = ("grn", "ppi")) -> dict:
    """The README's config for the files of ``scfm-audit simulate`` (relative paths)."""
    return {
        "output": str(out),
        "datasets": {
            "bench": {
                "path": "perturbseq.h5ad",
                "perturbation": "perturbation",
                "control": "non-targeting",
            }
        },
        "references": {
            "grn": {"format": "table", "path": "grn.tsv"},
            "ppi": {"format": "table", "path": "ppi.tsv"},
        },
        "edges": {"spearman": {"scorer": "coexpression", "method": "spearman"}},
        "analyses": {
            "grn_recovery": {"references": list(refs), "n_boot": 20, "n_perm": 20, "n_rewire": 5}
        },
    }


def write_config(bench: Path, name: str, out: Path, **kw) -> Path:
    p = bench / name
    p.write_text(yaml.safe_dump(config(bench, out, **kw)))
    return p


def listing(folder: Path) -> dict[str, str]:
    """Relative path → content hash of every file of a run (the cache and lock aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.parts[len(folder.parts)] not in ("cache", ".scfm-audit.lock")
    }


KILLER = textwrap.dedent(
    """
    import atexit, os, signal, sys
    kind, n, cfg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import scfm_audit.pipeline._output as out_mod
    calls = [0]
    def hit():
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    atexit.register(lambda: print(f"CALLS {calls[0]}", file=sys.stderr))
    if kind == "replace":  # every file write ends with os.replace(tmp, final)
        real_replace = os.replace
        def patched(a, b):
            if str(a).endswith(".tmp"):
                hit()
            return real_replace(a, b)
        os.replace = patched
    elif kind == "exchange":  # right after the staging folder was swapped in
        real_exchange = out_mod._exchange
        def patched(*a):
            real_exchange(*a)
            hit()
        out_mod._exchange = patched
    elif kind == "carry":  # while the kept entries (cache) move into the new folder
        real_rename = os.rename
        def patched(a, b):
            real_rename(a, b)
            hit()
        os.rename = patched
    from scfm_audit.cli import app
    app(["run", cfg, "-q"])
    """
)


def run_killed(cfg: Path, kind: str, n: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", KILLER, kind, str(n), str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


@pytest.mark.slow
def test_kill_during_writing_leaves_the_old_or_the_new_run(bench, tmp_path):
    out = tmp_path / "results"
    old_cfg = write_config(bench, "old.yaml", out, refs=("grn", "ppi"))
    new_cfg = write_config(bench, "new.yaml", tmp_path / "reference_new", refs=("grn",))
    # the new run, complete, in its own folder: what a successful swap must produce
    assert runner.invoke(app, ["run", str(new_cfg), "-q"]).exit_code == 0
    new_files = listing(tmp_path / "reference_new")
    new_cfg.write_text(yaml.safe_dump(config(bench, out, refs=("grn",))))
    assert runner.invoke(app, ["run", str(old_cfg), "-q"]).exit_code == 0  # warms the cache
    counting = run_killed(new_cfg, "replace", 10**9)  # how many files a run writes
    assert counting.returncode == 0, counting.stderr
    n_writes = int(counting.stderr.rsplit("CALLS", 1)[1])
    assert n_writes >= 10  # tables, figures, tests, scorecard, config, run.json, report

    points = [
        ("replace", 1),
        ("replace", n_writes // 2),
        ("replace", n_writes),
        ("exchange", 1),
        ("carry", 1),
    ]
    outcomes = []
    for kind, n in points:
        assert runner.invoke(app, ["run", str(old_cfg), "-q"]).exit_code == 0
        old_files = listing(out)
        assert any("ppi" in f for f in old_files)  # the old run has ppi figures
        p = run_killed(new_cfg, kind, n)
        assert p.returncode == -9, (kind, n, p.stderr)  # killed, not finished
        now = listing(out)
        assert not [f for f in now if f.endswith(".tmp") or "/." in f], (
            kind,
            n,
            n_writes,
            p.stderr[-3000:],
        )
        if set(now) == set(old_files):
            assert now == old_files  # the previous run, byte for byte
            outcomes.append("old")
        else:
            assert set(now) == set(new_files), (kind, n, sorted(now))
            assert not any("ppi" in f for f in now)  # no stale figure of the old run
            assert now["tests.csv"] == new_files["tests.csv"]
            outcomes.append("new")
        # the next run recovers: kept cache, no leftovers beside the folder
        assert runner.invoke(app, ["run", str(new_cfg), "-q"]).exit_code == 0
        assert listing(out)["tests.csv"] == new_files["tests.csv"]
        assert (out / "cache").is_dir() and any((out / "cache").rglob("DONE"))
        assert [e.name for e in tmp_path.iterdir() if e.name.startswith(".")] == []
    assert outcomes == ["old", "old", "old", "new", "new"]


def test_rerun_with_fewer_references_removes_stale_outputs_keeps_cache(bench, tmp_path):
    out = tmp_path / "r"
    both = write_config(bench, "both.yaml", out)
    one = write_config(bench, "one.yaml", out, refs=("grn",))
    assert runner.invoke(app, ["run", str(both), "-q"]).exit_code == 0
    (out / "my_notes.txt").write_text("mine")  # a user's file in the folder is kept
    cached = sorted(p.name for p in (out / "cache" / "edges").iterdir())
    r = runner.invoke(app, ["run", str(one), "-q"])
    assert r.exit_code == 0, r.output
    assert not [f for f in listing(out) if "ppi" in f]
    assert sorted(p.name for p in (out / "cache" / "edges").iterdir()) == cached
    assert json.loads((out / "run.json").read_text())["cache"]["hits"] >= 1
    assert (out / "my_notes.txt").read_text() == "mine"


def test_resolved_config_runs_again_as_is(bench, tmp_path):
    """config.resolved.yaml holds absolute paths: validated and run from anywhere, it
    gives the same tests."""
    out = tmp_path / "r"
    cfg = write_config(bench, "rel.yaml", out)
    assert runner.invoke(app, ["run", str(cfg), "-q"]).exit_code == 0
    resolved = out / "config.resolved.yaml"
    data = yaml.safe_load(resolved.read_text())
    assert Path(data["datasets"]["bench"]["path"]) == bench / "perturbseq.h5ad"
    copy = tmp_path / "elsewhere" / "again.yaml"
    copy.parent.mkdir()
    copy.write_text(resolved.read_text())
    r = runner.invoke(app, ["validate", str(copy)], terminal_width=200)
    assert r.exit_code == 0, r.output
    before = (out / "tests.csv").read_text()
    r = runner.invoke(app, ["run", str(copy), "-q"])
    assert r.exit_code == 0, r.output
    assert (out / "tests.csv").read_text() == before


def test_absolute_and_relative_paths_in_a_config(bench, tmp_path):
    from scfm_audit.pipeline._config import load_config

    cfg = config(bench, "out")
    cfg["references"]["grn"]["path"] = str(bench / "grn.tsv")  # absolute
    cfg["datasets"]["bench"]["path"] = str(bench / "perturbseq.h5ad")
    p = tmp_path / "cfgdir" / "a.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(cfg))
    c = load_config(p)
    assert c.references["grn"].path == bench / "grn.tsv"  # kept as given
    assert c.datasets["bench"].path == bench / "perturbseq.h5ad"
    assert c.references["ppi"].path == p.parent / "ppi.tsv"  # relative: config's folder
    assert c.output == p.parent / "out"


def test_run_json_records_versions_and_times(bench, tmp_path):
    out = tmp_path / "r"
    assert runner.invoke(app, ["run", str(write_config(bench, "v.yaml", out)), "-q"]).exit_code == 0
    meta = json.loads((out / "run.json").read_text())
    env = meta["environment"]
    assert env["python"] and env["platform"]
    for pkg in ("scfm-audit", "torch", "numpy", "scipy", "anndata", "scanpy", "transformers"):
        assert env["packages"][pkg], pkg
    assert meta["seconds_total"] > 0
    assert meta["analyses"]["grn_recovery"]["seconds"] > 0


def test_incomplete_runs_exit_1_with_the_reason(bench, tmp_path, monkeypatch):
    """No test registered (reference too small for min_positives), or a failed analysis
    (its error), ends with exit code 1 and a one-line reason; the outputs are written."""

    def boom(*a, **k):
        raise ValueError("n_perm: injected failure")

    # only grn_recovery@bad reaches the kernel (the other alias stops at min_positives)
    monkeypatch.setattr("scfm_audit.analyses.grn_recovery.edge_recovery", boom)
    out = tmp_path / "r"
    c = config(bench, out, refs=("grn",))
    c["analyses"]["grn_recovery"]["min_positives"] = 10**6
    c["analyses"]["grn_recovery@bad"] = {"references": ["ppi"]}
    p = bench / "incomplete.yaml"
    p.write_text(yaml.safe_dump(c))
    r = runner.invoke(app, ["run", str(p), "-q"], terminal_width=300)
    assert r.exit_code == 1, r.output
    assert "analysis grn_recovery@bad failed: ValueError: n_perm" in r.output
    assert "registered no statistical test" in r.output
    assert (out / "report.html").exists()


def test_progress_on_a_pipe_is_plain_lines_without_source_links(bench, tmp_path):
    cfg = write_config(bench, "p.yaml", tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-m", "scfm_audit.cli", "run", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    assert "_runner.py:" not in p.stderr and ".py:" not in p.stderr
    assert "grn_recovery: " in p.stderr and "tests in" in p.stderr
    assert "\r" not in p.stderr and "\x1b[" not in p.stderr  # no redrawn bars, no colours


def test_analyses_name_lists_every_parameter():
    from scfm_audit.analyses import ANALYSES

    r = runner.invoke(app, ["analyses", "grn_recovery"], terminal_width=250)
    assert r.exit_code == 0, r.output
    for name in ANALYSES.get("grn_recovery").params.model_fields:
        assert name in r.output


def test_readme_config_for_the_simulate_files_validates(bench):
    """The README's config for `scfm-audit simulate` output is valid as printed (and the
    PPI it names loads undirected)."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("### A config for the files `scfm-audit simulate` writes", 1)[1]
    text = re.findall(r"```yaml\n(.*?)```", block, flags=re.S)[0]
    cfg = bench / "audit.yaml"
    cfg.write_text(text)
    r = runner.invoke(app, ["validate", str(cfg)], terminal_width=250)
    assert r.exit_code == 0, r.output
    from scfm_audit.pipeline._cache import ArtifactCache
    from scfm_audit.pipeline._config import load_config
    from scfm_audit.pipeline._runner import Progress, Resources

    res = Resources(load_config(cfg), ArtifactCache(None), Progress(quiet=True))
    assert not res.reference("ppi").directed and res.reference("grn").directed
