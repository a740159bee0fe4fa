"""Bad inputs, as a new user makes them: every one ends with one clean message that names
the problem (and the fix), no traceback, a non-zero exit code, and the user's files
untouched — through ``scfm-audit validate`` and ``scfm-audit run``.

Most cases go through typer's CliRunner (in process, fast); ``test_real_processes`` runs a
handful through real ``python -m scfm_audit.cli`` subprocesses.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from scfm_audit.cli import app

runner = CliRunner()
SIM = {"n_cells": 300, "n_genes": 60, "n_tfs": 6, "n_perturbations": 6, "seed": 0}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The files ``scfm-audit simulate`` writes (tiny), plus variants of the data."""
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.data._simulate import write_benchmark
    from scfm_audit.models.scgpt import build_scgpt_checkpoint

    root = tmp_path_factory.mktemp("bench")
    b = simulate_perturbseq(**SIM)
    write_benchmark(b, root)
    a = b.adata
    logged = a.copy()
    logged.X = np.log1p(
        np.asarray(logged.X.todense() if hasattr(logged.X, "todense") else logged.X)
    )
    logged.write_h5ad(root / "lognorm.h5ad")
    ctrl = np.flatnonzero(a.obs["perturbation"].to_numpy() == "non-targeting")[:1]
    pert = np.flatnonzero(a.obs["perturbation"].to_numpy() != "non-targeting")[:2]
    a[np.sort(np.r_[ctrl, pert])].copy().write_h5ad(root / "three_cells.h5ad")
    a[:, []].copy().write_h5ad(root / "no_genes.h5ad")
    (root / "corrupt.h5ad").write_text("this is not HDF5")
    blank = a.copy()
    blank.obs["perturbation"] = blank.obs["perturbation"].astype(str)
    blank.obs.iloc[:5, blank.obs.columns.get_loc("perturbation")] = ""
    blank.write_h5ad(root / "blank_label.h5ad")
    ghost = a.copy()
    labels = ghost.obs["perturbation"].astype(str)
    ghost.obs["perturbation"] = pd.Categorical(labels, categories=[*labels.unique(), "GHOST"])
    ghost.write_h5ad(root / "empty_group.h5ad")
    (root / "ensembl_grn.tsv").write_text("source\ttarget\nENSG01\tENSG02\nENSG03\tENSG04\n")
    (root / "bad_columns.tsv").write_text("regulator_name\tthe_target\nTF001\tG0011\n")
    ck = build_scgpt_checkpoint(root / "scgpt_corrupt", list(a.var_names), seed=0)
    (Path(ck) / "best_model.pt").write_bytes(b"\x00garbage, not a checkpoint" * 20)
    (root / "a_file").write_text("I am a file")
    return root


def base_config(bench: Path, out: Path) -> dict[str, Any]:
    """A good config over the simulated files (what the README shows)."""
    return {
        "seed": 0,
        "output": str(out),
        "datasets": {
            "bench": {
                "path": str(bench / "perturbseq.h5ad"),
                "perturbation": "perturbation",
                "control": "non-targeting",
            }
        },
        "references": {
            "grn": {"format": "table", "path": str(bench / "grn.tsv")},
            "ppi": {"format": "table", "path": str(bench / "ppi.tsv")},
        },
        "edges": {"spearman": {"scorer": "coexpression", "method": "spearman"}},
        "analyses": {
            "grn_recovery": {
                "references": ["grn", "ppi"],
                "n_boot": 20,
                "n_perm": 20,
                "n_rewire": 5,
            },
        },
    }


def _ds(**kw: Any) -> Callable[[dict, Path], None]:
    def f(c: dict, b: Path) -> None:
        c["datasets"]["bench"].update(
            {k: (str(b / v) if k == "path" else v) for k, v in kw.items()}
        )

    return f


def _set(path: str, value: Any) -> Callable[[dict, Path], None]:
    """Set a dotted key (``a.b.c``) to ``value``."""

    def f(c: dict, b: Path) -> None:
        *head, last = path.split(".")
        d = c
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value

    return f


def _del(path: str) -> Callable[[dict, Path], None]:
    def f(c: dict, b: Path) -> None:
        *head, last = path.split(".")
        d = c
        for k in head:
            d = d[k]
        del d[last]

    return f


@dataclass
class Case:
    id: str
    edit: Callable[[dict, Path], None] | None  # change to the good config
    expect: tuple[str, ...]  # all must appear in the message
    code: int = 2
    raw: str | None = None  # config text instead of a config (YAML problems)
    out: str | None = None  # output override (relative to bench, or absolute)


# fmt: off
CASES = [
    # -- the config file itself
    Case("config-not-yaml", None, ("not valid YAML",), raw="datasets: [unclosed\n"),
    Case("config-top-level-list", None, ("top level must be a mapping",), raw="- a\n- b\n"),
    Case("top-level-typo", _set("outptu", "x"), ("outptu", "Did you mean 'output'")),
    Case("dataset-key-typo", _set("datasets.bench.pth", "x.h5ad"), ("datasets.bench.pth",
         "Did you mean 'path'")),
    Case("dataset-path-and-simulate", _set("datasets.bench.simulate", {"n_cells": 100}),
         ("exactly one of 'path'",)),
    Case("no-datasets", _set("datasets", {}), ("at least one dataset",)),
    Case("unknown-analysis", _set("analyses.grn_recvery", {}), ("grn_recvery",
         "Did you mean grn_recovery")),
    Case("analysis-param-typo", _set("analyses.grn_recovery.n_bot", 3), ("n_bot",
         "Did you mean 'n_boot'")),
    Case("analysis-param-type", _set("analyses.grn_recovery.n_boot", "many"), ("n_boot",
         "valid integer")),
    Case("analysis-unknown-reference", _set("analyses.grn_recovery.references", ["trrust"]),
         ("'trrust' is not defined under 'references'",)),
    Case("alpha-out-of-range", _set("alpha", 2), ("alpha", "less than 1")),
    Case("seed-not-a-number", _set("seed", "abc"), ("seed", "valid integer")),
    Case("edges-option-typo", _set("edges.spearman.methd", "pearson"), ("edges.spearman.methd",
         "Did you mean 'method'")),
    Case("edges-option-bad-value", _set("edges.spearman.method", "bogus"),
         ("edges.spearman.method", "'spearman' or 'pearson'")),
    Case("edges-unknown-scorer", _set("edges.spearman.scorer", "coexpresion"),
         ("Did you mean 'coexpression'",)),
    Case("edges-max-cells-zero", _set("edges.spearman.max_cells", 0), ("max_cells",
         "greater than or equal to 1")),
    Case("edges-cells-enum", _set("edges.spearman.cells", "some"), ("edges.spearman.cells",
         "'control' or 'all'")),
    Case("model-unknown-family", _set("models.m", {"family": "scgtp", "path": "m"}),
         ("Did you mean 'scgpt'",)),
    Case("model-option-typo", _set("models.m", {"family": "scgpt", "path": "m", "max_seq_lne": 9}),
         ("models.m.max_seq_lne", "Did you mean 'max_seq_len'")),
    Case("reference-unknown-format", _set("references.grn.format", "trrsut"),
         ("Did you mean 'trrust'",)),
    Case("reference-option-typo", _set("references.ppi.direted", False), ("references.ppi.direted",
         "Did you mean 'directed'")),
    Case("reference-without-path", _del("references.grn.path"), ("'path' is required",)),
    Case("simulated-reference-on-file-dataset",
         _set("references.grn", {"format": "simulated", "dataset": "bench"}),
         ("not a simulated dataset",)),
    # -- analysis parameters out of range or not in their enum
    Case("n-perm-negative", _set("analyses.grn_recovery.n_perm", -5), ("n_perm",)),
    Case("n-perm-zero", _set("analyses.grn_recovery.n_perm", 0), ("n_perm",)),
    Case("score-transform-bogus", _set("analyses.grn_recovery.score_transform", "bogus"),
         ("score_transform",)),
    # -- the data
    Case("h5ad-missing", _ds(path="nope.h5ad"), ("nope.h5ad", "does not exist")),
    Case("h5ad-corrupt", _ds(path="corrupt.h5ad"), ("corrupt.h5ad",)),
    Case("h5ad-log-normalised", _ds(path="lognorm.h5ad"), ("dataset bench", "counts")),
    Case("perturbation-column-missing", _ds(perturbation="gene"), ("'gene'", "perturbation")),
    Case("control-label-absent", _ds(control="NT"), ("'NT'",)),
    Case("counts-layer-missing", _ds(counts="raw_counts"), ("raw_counts",)),
    Case("three-cells-one-control", _ds(path="three_cells.h5ad"), ("only 1 control cells",
         "at least 30")),
    Case("zero-genes", _ds(path="no_genes.h5ad"), ("dataset bench", "0 genes")),
    Case("empty-perturbation-group", _ds(path="empty_group.h5ad"), ("zero cells", "'GHOST'")),
    Case("blank-perturbation-label", _ds(path="blank_label.h5ad"), ("5 cell(s)",
         "empty label")),
    Case("reference-file-missing", _set("references.grn.path", "/nonexistent/grn.tsv"),
         ("/nonexistent/grn.tsv",)),
    Case("reference-bad-columns", lambda c, b: c["references"]["grn"].update(
         path=str(b / "bad_columns.tsv")), ("bad_columns.tsv", "source")),
    Case("reference-matches-no-gene", lambda c, b: c["references"]["grn"].update(
         path=str(b / "ensembl_grn.tsv")), ("shares no gene", "ENSG01")),
    Case("model-folder-missing", _set("models.m", {"family": "scgpt", "path": "/nonexistent/m"}),
         ("/nonexistent/m", "does not exist")),
    Case("model-weights-corrupt", lambda c, b: c.setdefault("models", {}).update(
         m={"family": "scgpt", "path": str(b / "scgpt_corrupt")}),
         ("best_model.pt", "corrupt or not a PyTorch checkpoint")),
    # -- the output folder
    Case("output-is-a-file", None, ("is an existing file", "choose another folder"),
         out="a_file"),
    Case("output-under-a-file", None, ("a_file is a file",), out="a_file/results"),
    Case("output-under-proc", None, ("output folder /proc/scfm", "kernel file system"),
         out="/proc/scfm"),
    Case("output-under-sys", None, ("output folder /sys/scfm",), out="/sys/scfm"),
]
# fmt: on


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _clean(output: str) -> None:
    assert "Traceback" not in output and 'File "' not in output, output
    assert "weights_only=False" not in output


@pytest.fixture(scope="module")
def snapshot(bench):
    return _snapshot(bench)


def _prepare(case: Case, bench: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    cfg_path = tmp_path / "audit.yaml"
    out = tmp_path / "results"
    if case.raw is not None:
        cfg_path.write_text(case.raw)
    else:
        cfg = base_config(bench, out)
        if case.edit is not None:
            case.edit(cfg, bench)
        cfg_path.write_text(yaml.safe_dump(cfg))
    extra = []
    if case.out is not None:
        extra = ["--out", case.out if case.out.startswith("/") else str(bench / case.out)]
    return cfg_path, extra


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_refuses_with_one_clean_message(case, bench, snapshot, tmp_path):
    cfg_path, extra = _prepare(case, bench, tmp_path)
    r = runner.invoke(app, ["run", str(cfg_path), "-q", *extra], terminal_width=300)
    _clean(r.output)
    assert r.exit_code == case.code, r.output
    assert r.output.count("error:") >= 1
    for s in case.expect:
        assert s in r.output, (s, r.output)
    assert _snapshot(bench) == snapshot  # the user's files are untouched
    if case.code == 2:  # refused before computing: no output folder appears
        assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_reports_it(case, bench, snapshot, tmp_path):
    cfg_path, extra = _prepare(case, bench, tmp_path)
    r = runner.invoke(app, ["validate", str(cfg_path), *extra], terminal_width=300)
    _clean(r.output)
    assert r.exit_code == 2, r.output
    for s in case.expect:
        assert s in r.output, (s, r.output)
    assert _snapshot(bench) == snapshot
    assert not (tmp_path / "results").exists()


def test_config_path_problems(tmp_path):
    """A missing config file, or a folder given as the config."""
    for args, expect in (
        (["run", str(tmp_path / "nope.yaml")], "Config file not found"),
        (["run", str(tmp_path)], "is a folder; give the audit YAML file"),
        (["validate", str(tmp_path)], "is a folder; give the audit YAML file"),
    ):
        r = runner.invoke(app, args, terminal_width=300)
        _clean(r.output)
        assert r.exit_code == 2 and expect in r.output, r.output


def test_output_with_foreign_files_is_refused(bench, tmp_path):
    """A run replaces its output folder's outputs; a folder of someone else's files is
    never used (nothing in it is touched)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    cfg_path = tmp_path / "audit.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(bench, out)))
    r = runner.invoke(app, ["run", str(cfg_path), "-q"], terminal_width=300)
    _clean(r.output)
    assert r.exit_code == 2 and "did not write (thesis.tex)" in r.output, r.output
    r = runner.invoke(app, ["validate", str(cfg_path)], terminal_width=300)
    assert r.exit_code == 2 and "did not write (thesis.tex)" in r.output, r.output
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_locked_output_is_refused_with_exit_3(bench, tmp_path):
    """A second run into a folder another run holds refuses at once."""
    out = tmp_path / "results"
    out.mkdir()
    cfg_path = tmp_path / "audit.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(bench, out)))
    fd = os.open(out / ".scfm-audit.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 424242, started now")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        r = runner.invoke(app, ["run", str(cfg_path), "-q"], terminal_width=300)
    finally:
        os.close(fd)
    _clean(r.output)
    assert r.exit_code == 3, r.output
    assert "Another scfm-audit run (pid 424242" in r.output


def test_simulate_and_demo_refuse_a_file_as_out(bench):
    for args in (
        ["simulate", "--out", str(bench / "a_file"), "--n-cells", "50"],
        ["demo", "--out", str(bench / "a_file"), "--quick"],
        ["train-demo-models", "--out", str(bench / "a_file"), "--quick"],
    ):
        r = runner.invoke(app, args, terminal_width=300)
        _clean(r.output)
        assert r.exit_code == 2 and "is an existing file" in r.output, (args, r.output)
    assert (bench / "a_file").read_text() == "I am a file"
    r = runner.invoke(app, ["simulate", "--out", str(bench / "x"), "--n-cells", "-1"])
    assert r.exit_code == 2 and "--n-cells" in r.output and ": :" not in r.output
    assert not (bench / "x").exists()


def test_unknown_analysis_name_in_analyses_command():
    r = runner.invoke(app, ["analyses", "grn_recvery"], terminal_width=300)
    _clean(r.output)
    assert r.exit_code == 2 and "Did you mean 'grn_recovery'" in r.output


REAL = [
    "top-level-typo",
    "h5ad-log-normalised",
    "three-cells-one-control",
    "model-weights-corrupt",
    "output-is-a-file",
]


@pytest.mark.slow
def test_real_processes(bench, snapshot, tmp_path):
    """The same through real processes: stderr carries the message, the exit code is the
    process's own, and nothing is written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for cid in REAL:
        case = next(c for c in CASES if c.id == cid)
        work = tmp_path / cid
        work.mkdir()
        cfg_path, extra = _prepare(case, bench, work)
        p = subprocess.run(
            [sys.executable, "-m", "scfm_audit.cli", "run", str(cfg_path), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        _clean(p.stdout + p.stderr)
        assert p.returncode == 2, (cid, p.stderr)
        assert all(s in p.stderr for s in case.expect), (cid, p.stderr)
        assert not (work / "results").exists()
    assert _snapshot(bench) == snapshot


@pytest.mark.parametrize(
    "cid",
    ["top-level-typo", "h5ad-log-normalised", "output-is-a-file", "reference-matches-no-gene"],
)
def test_python_api_raises_the_same_message(cid, bench, tmp_path):
    """``sa.run_audit`` raises a ValueError carrying the message the CLI prints; the
    output folder does not appear."""
    import scfm_audit as sa

    case = next(c for c in CASES if c.id == cid)
    cfg_path, extra = _prepare(case, bench, tmp_path)
    out = extra[1] if extra else None
    with pytest.raises(ValueError) as e:
        sa.run_audit(cfg_path, output=out, quiet=True)
    for s in case.expect:
        assert s in str(e.value)
    assert not (tmp_path / "results").exists()


def test_output_on_a_read_only_mount_is_refused_before_computing(bench, tmp_path):
    """In a private mount namespace (nothing leaks out), a read-only tmpfs as the output's
    parent: the run refuses at once, naming the output folder. Skipped where unprivileged."""
    import shutil

    ro = tmp_path / "ro"
    ro.mkdir()
    cfg_path = tmp_path / "audit.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(bench, tmp_path / "unused")))
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = (
        f"mount -t tmpfs -o ro tmpfs {ro} && exec {sys.executable} -m scfm_audit.cli run "
        f"{cfg_path} -q --out {ro / 'results'}"
    )
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=120
    )
    _clean(p.stdout + p.stderr)
    assert p.returncode == 2, p.stderr
    assert f"The output folder {ro / 'results'} cannot be written" in p.stderr
    assert "read-only mount" in p.stderr
