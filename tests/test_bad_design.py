"""Issue 18: every input checked against the models and the design before anything is
computed, by ``validate`` and ``run`` alike.

Each :data:`CASES` entry is a bad input a new user makes (a layer index the model does not
have, a boolean where a number goes, a checkpoint whose config contradicts its weights, a
pre-declared design the data cannot honour, a count hidden beyond any sample, ...).
``test_validate_and_run_agree`` runs ``scfm-audit validate`` and ``scfm-audit run`` on each
and asserts they agree: exit code 2, one message naming the problem, no traceback, no
output folder (nothing was computed). The other tests cover one kind each: the Python API,
real processes, SIGTERM, pipes, ``simulate``'s audit.yaml, warnings, mount points and a
full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from scfm_audit.cli import app

runner = CliRunner()
SIM = {"n_cells": 300, "n_genes": 60, "n_tfs": 6, "n_perturbations": 6, "seed": 0}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _edit_json(path: Path, **changes: Any) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The files ``scfm-audit simulate`` writes (tiny), variants of the data and tiny
    checkpoints (2 layers × 4 heads), some of them contradicting themselves."""
    import scipy.sparse as sp

    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.data._simulate import write_benchmark
    from scfm_audit.models.geneformer import build_geneformer_checkpoint
    from scfm_audit.models.scgpt import build_scgpt_checkpoint

    root = tmp_path_factory.mktemp("design")
    b = simulate_perturbseq(**SIM)
    write_benchmark(b, root)
    a = b.adata
    ctrl = (a.obs["perturbation"] == "non-targeting").to_numpy()
    a[ctrl].copy().write_h5ad(root / "all_control.h5ad")
    arm = a.copy()
    mod = arm.obs["modality"].astype(str).to_numpy().copy()
    mod[(arm.obs["perturbation"] == "TF005").to_numpy()] = "CRISPRa"
    arm.obs["modality"] = mod
    arm.write_h5ad(root / "orphan_arm.h5ad")
    for name, value in (
        ("nan_last", np.nan),
        ("negative_last", -2.0),
        ("fraction_last", 0.5),
        ("inf_last", np.inf),
    ):
        v = a.copy()
        X = sp.csr_matrix(v.X, dtype=np.float32)
        X.data[-1] = value  # the very last stored value: beyond any sample of the start
        v.X = X
        v.write_h5ad(root / f"{name}.h5ad")
    dup = a.copy()
    ids = dup.var["ensembl_id"].astype(str).to_numpy().copy()
    ids[11] = ids[10]
    dup.var["ensembl_id"] = ids
    dup.write_h5ad(root / "dup_ensembl.h5ad")
    (root / "a_folder.h5ad").mkdir()
    (root / "refs_folder").mkdir()
    (root / "header_only.tsv").write_text("source\ttarget\n")
    (root / "empty.tsv").write_text("")

    genes = list(a.var_names)
    build_scgpt_checkpoint(root / "scgpt", genes, n_layers=2, n_heads=4, seed=0)
    for variant, args, log in (
        ("scgpt_heads_vs_log", {"nheads": 2}, {"params": {"n_heads": 4, "n_layers": 2}}),
        ("scgpt_layers_vs_weights", {"nlayers": 3}, None),
        ("scgpt_width_vs_weights", {"embsize": 64}, None),
        ("scgpt_heads_cannot_split", {"nheads": 5}, None),
    ):
        shutil.copytree(root / "scgpt", root / variant)
        _edit_json(root / variant / "args.json", **args)
        if log is not None:
            (root / variant / "train_log.json").write_text(json.dumps(log))
    ens = list(a.var["ensembl_id"].astype(str))
    build_geneformer_checkpoint(root / "gf", ens, n_layers=2, n_heads=4, seed=0)
    for variant, cfg, log in (
        ("gf_heads_vs_log", {"num_attention_heads": 8}, {"params": {"n_heads": 4}}),
        ("gf_layers_vs_weights", {"num_hidden_layers": 4}, None),
    ):
        shutil.copytree(root / "gf", root / variant)
        _edit_json(root / variant / "config.json", **cfg)
        if log is not None:
            (root / variant / "train_log.json").write_text(json.dumps(log))
    return root


def base_config(bench: Path, out: Path) -> dict[str, Any]:
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
            "grn_recovery": {"references": ["grn", "ppi"], "n_boot": 20, "n_perm": 20},
        },
    }


Edit = Callable[[dict, Path], None]


def _set(path: str, value: Any) -> Edit:
    def f(c: dict, b: Path) -> None:
        *head, last = path.split(".")
        d = c
        for k in head:
            d = d.setdefault(k, {})
        d[last] = value

    return f


def _ds(**kw: Any) -> Edit:
    def f(c: dict, b: Path) -> None:
        c["datasets"]["bench"].update(
            {k: (str(b / v) if k == "path" else v) for k, v in kw.items()}
        )

    return f


def _model(folder: str, family: str = "scgpt", attention: bool = True) -> Edit:
    """Add model ``m`` (a checkpoint of the fixture) and an attention source on it."""

    def f(c: dict, b: Path) -> None:
        c["models"] = {"m": {"family": family, "path": str(b / folder)}}
        if family == "geneformer":
            c["datasets"]["bench"]["gene_id_column"] = "ensembl_id"
        if attention:
            c["edges"]["attn"] = {"scorer": "attention", "model": "m"}

    return f


def _analysis(name: str, **params: Any) -> Edit:
    def f(c: dict, b: Path) -> None:
        c["analyses"] = {name: params}

    return f


def _all(*edits: Edit) -> Edit:
    def f(c: dict, b: Path) -> None:
        for e in edits:
            e(c, b)

    return f


@dataclass
class Case:
    id: str
    edit: Edit
    expect: tuple[str, ...]  # all in the message
    code: int = 2


SCGPT = _model("scgpt")
# fmt: off
CASES = [
    # -- layer indices against the model (2 layers), never wrapped; booleans refused
    Case("verdict-layer-too-high", _all(SCGPT, _analysis("grn_recovery", verdict_layer=9)),
         ("analyses.grn_recovery.verdict_layer: 9 is out of range", "2 layers", "never wrapped")),
    Case("verdict-layer-too-low", _all(SCGPT, _analysis("grn_recovery", verdict_layer=-3)),
         ("verdict_layer: -3 is out of range",)),
    Case("verdict-layer-bool", _all(SCGPT, _analysis("grn_recovery", verdict_layer=True)),
         ("analyses.grn_recovery.verdict_layer", "got true", "boolean")),
    Case("verdict-layer-gene-level-null", _all(SCGPT, _analysis("gene_level_null",
         verdict_layer=2)), ("gene_level_null.verdict_layer: 2 is out of range",)),
    Case("verdict-layer-attention-vs-coexpression", _all(SCGPT, _analysis(
         "attention_vs_coexpression", verdict_layer=5)), ("verdict_layer: 5 is out of range",)),
    Case("verdict-layer-cssi", _all(SCGPT, _analysis("cssi", verdict_layer=4)),
         ("cssi.verdict_layer: 4",)),
    Case("verdict-layer-scaling", _all(SCGPT, _analysis("scaling", verdict_layer=2)),
         ("scaling.verdict_layer: 2",)),
    Case("verdict-layer-perturbation-prediction", _all(SCGPT, _analysis(
         "perturbation_prediction", verdict_layer=7)), ("perturbation_prediction.verdict_layer: 7",)),
    Case("verdict-layer-incremental-value", _all(SCGPT, _analysis("incremental_value",
         verdict_layer=3)), ("incremental_value.verdict_layer: 3",)),
    Case("mlp-layers-out-of-range", _all(SCGPT, _analysis("head_ablation", mlp_layers=[9])),
         ("analyses.head_ablation.mlp_layers: 9 is out of range", "model 'm'")),
    Case("mlp-layers-bool", _all(SCGPT, _analysis("head_ablation", mlp_layers=[1, True])),
         ("analyses.head_ablation.mlp_layers", "boolean")),
    Case("prediction-layer-out-of-range", _all(SCGPT, _analysis("head_ablation",
         prediction_layer=2)), ("prediction_layer: 2 is out of range",)),
    Case("embedding-layer-out-of-range", _all(SCGPT, _analysis("in_silico_perturbation",
         embedding_layer=-2)), ("embedding_layer: -2 is out of range", "-1..0")),
    Case("edge-layers-out-of-range", _all(SCGPT, _set("edges.attn.layers", [0, 7])),
         ("edges.attn.layers: 7 is out of range", "2 layers")),
    Case("n-boot-bool", _set("analyses.grn_recovery.n_boot", True),
         ("analyses.grn_recovery.n_boot", "got true")),
    Case("seed-bool", _set("seed", True), ("seed: expects an integer, got true",)),
    Case("edges-max-cells-bool", _set("edges.spearman.max_cells", True),
         ("edges.spearman.max_cells", "got true")),
    Case("edges-option-bool", _set("edges.spearman.min_cells", True),
         ("edges.spearman.min_cells: got true", "boolean")),
    Case("model-option-bool", _all(SCGPT, _set("models.m.max_seq_len", True)),
         ("models.m.max_seq_len: got true",)),
    # -- checkpoints whose config contradicts the weights or the training log
    Case("scgpt-heads-vs-train-log", _model("scgpt_heads_vs_log"),
         ("nheads=2", "n_heads=4", "train_log.json")),
    Case("scgpt-layers-vs-weights", _model("scgpt_layers_vs_weights"),
         ("nlayers=3", "weights hold 2 encoder layers")),
    Case("scgpt-width-vs-weights", _model("scgpt_width_vs_weights"),
         ("embsize=64", "32 wide")),
    Case("scgpt-heads-cannot-split", _model("scgpt_heads_cannot_split"),
         ("nheads=5", "32 wide")),
    Case("geneformer-heads-vs-train-log", _model("gf_heads_vs_log", "geneformer"),
         ("num_attention_heads=8", "n_heads=4")),
    Case("geneformer-layers-vs-weights", _model("gf_layers_vs_weights", "geneformer"),
         ("num_hidden_layers=4", "weights hold 2 encoder layers")),
    Case("model-path-is-a-file", lambda c, b: c.update(models={"m": {"family": "scgpt",
         "path": str(b / "grn.tsv")}}), ("grn.tsv", "is a file")),
    # -- pre-declared design the data cannot honour
    Case("cssi-annotation-without-cell-state", _analysis("cssi", strata="annotation"),
         ("analyses.cssi.strata: 'annotation' stratifies", "dataset 'bench'", "cell_state",
          "'cell_state'")),
    Case("scaling-annotation-without-cell-state", _analysis("scaling", strata="annotation"),
         ("analyses.scaling.strata: 'annotation'",)),
    Case("pseudobulk-by-missing-column", _analysis("perturbation_responders",
         pseudobulk_by="donr"), ("pseudobulk_by: column 'donr'", "Did you mean 'donor'")),
    Case("scaling-grid-zero", _analysis("scaling", grid=[0, 50]),
         ("analyses.scaling.grid: 0", "at least 1")),
    Case("scaling-grid-negative", _analysis("scaling", grid=[-5, 100]),
         ("analyses.scaling.grid: -5",)),
    Case("scaling-grid-empty", _analysis("scaling", grid=[]), ("analyses.scaling.grid: empty",)),
    Case("cssi-k-scan-zero", _analysis("cssi", k_scan=[0, 2]), ("analyses.cssi.k_scan: 0",)),
    Case("responders-all-control", _all(_ds(path="all_control.h5ad"),
         _analysis("perturbation_responders", datasets=["bench"])),
         ("holds only control cells", "perturbation_responders")),
    Case("prediction-on-all-control", _all(_ds(path="all_control.h5ad"),
         _analysis("perturbation_prediction")), ("no dataset it uses (bench) has both",)),
    Case("crispra-arm-without-controls", _all(_ds(path="orphan_arm.h5ad", modality="modality"),
         _analysis("perturbation_responders")),
         ("modality arm 'CRISPRa' has 35 perturbed cells", "no control cell of its own")),
    Case("min-perturbations-above-screen", _analysis("perturbation_prediction",
         min_perturbations=50), ("min_perturbations=50", "(bench: 6)")),
    Case("context-min-perturbations-above-screen", _analysis("context_dependence",
         min_perturbations=7), ("context_dependence.min_perturbations=7",)),
    Case("layer-organisation-without-ppi", _all(lambda c, b: c["references"].pop("ppi"),
         _analysis("layer_organisation")), ("no undirected (PPI-type) one",)),
    Case("layer-organisation-ppi-is-directed", _analysis("layer_organisation",
         ppi_references=["grn"]), ("reference 'grn' is directed",)),
    Case("recovery-without-references", _all(lambda c, b: c.update(references={}),
         _analysis("grn_recovery")), ("defines none",)),
    Case("geneformer-token-collision", _all(_ds(path="dup_ensembl.h5ad"),
         _model("gf", "geneformer")), ("share an Ensembl id", "G0005 + G0006")),
    # -- every stored count value is checked (the bad one is the very last)
    Case("nan-beyond-any-sample", _ds(path="nan_last.h5ad"), ("1 NaN among all",)),
    Case("inf-beyond-any-sample", _ds(path="inf_last.h5ad"), ("1 inf among all",)),
    Case("negative-beyond-any-sample", _ds(path="negative_last.h5ad"),
         ("negative (min -2) in 1 value",)),
    Case("fraction-beyond-any-sample", _ds(path="fraction_last.h5ad"), ("non-integer", "0.5")),
    # -- paths and references that say what they are
    Case("dataset-path-is-a-folder", _ds(path="a_folder.h5ad"), ("is a folder, not a file",)),
    Case("reference-path-is-a-folder", _set("references.grn.path", "REF_FOLDER"),
         ("is a folder, not a file",)),
    Case("reference-header-only", _set("references.grn.path", "HEADER_ONLY"),
         ("reference 'grn'", "has no edges")),
    Case("reference-empty-file", _set("references.grn.path", "EMPTY"),
         ("the file is empty; expected a table.",)),
    Case("reference-option-of-another-format", _set("references.grn.min_scor", 700),
         ("'min_score' is an option of format 'string'",)),
]
# fmt: on
PLACEHOLDERS = {
    "REF_FOLDER": "refs_folder",
    "HEADER_ONLY": "header_only.tsv",
    "EMPTY": "empty.tsv",
}


def _prepare(case: Case, bench: Path, tmp_path: Path) -> Path:
    cfg = base_config(bench, tmp_path / "results")
    case.edit(cfg, bench)
    for r in cfg.get("references", {}).values():
        if r.get("path") in PLACEHOLDERS:
            r["path"] = str(bench / PLACEHOLDERS[r["path"]])
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _clean(output: str) -> None:
    assert "Traceback" not in output and 'File "' not in output, output


def test_enough_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_and_run_agree(case, bench, tmp_path):
    """Both commands refuse with exit 2 and the same message; run computes nothing."""
    cfg = _prepare(case, bench, tmp_path)
    v = runner.invoke(app, ["validate", str(cfg)], terminal_width=400)
    r = runner.invoke(app, ["run", str(cfg), "-q"], terminal_width=400)
    for res in (v, r):
        _clean(res.output)
        assert res.exit_code == case.code, res.output
        assert "error:" in res.output
        for s in case.expect:
            assert s in res.output, (s, res.output)
    assert not (tmp_path / "results").exists()  # nothing was computed or written


API = [
    "verdict-layer-too-high",
    "scgpt-heads-vs-train-log",
    "nan-beyond-any-sample",
    "crispra-arm-without-controls",
    "pseudobulk-by-missing-column",
    "verdict-layer-bool",
]


@pytest.mark.parametrize("cid", API)
def test_python_api_raises_the_same(cid, bench, tmp_path):
    import scfm_audit as sa

    case = next(c for c in CASES if c.id == cid)
    with pytest.raises(ValueError) as e:
        sa.run_audit(_prepare(case, bench, tmp_path), quiet=True)
    for s in case.expect:
        assert s in str(e.value), (s, str(e.value))
    assert not (tmp_path / "results").exists()


def test_real_process(bench, tmp_path):
    """The exit code of a real process, the message on stderr, nothing written (one
    process: each costs seconds of start-up; the in-process cases cover the rest)."""
    case = next(c for c in CASES if c.id == "verdict-layer-too-high")
    cfg = _prepare(case, bench, tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "scfm_audit.cli", "run", str(cfg)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    _clean(p.stdout + p.stderr)
    assert p.returncode == 2, p.stderr
    assert all(s in p.stderr for s in case.expect), p.stderr
    assert not (tmp_path / "results").exists()


def test_load_model_verifies_the_checkpoint(bench):
    """The Python API's load_model refuses a self-contradicting checkpoint too."""
    import scfm_audit as sa

    with pytest.raises(ValueError, match=r"nheads=2 .* n_heads=4"):
        sa.models.load_model("scgpt", bench / "scgpt_heads_vs_log")
    m = sa.models.load_model("scgpt", bench / "scgpt")
    assert (m.n_layers, m.n_heads) == (2, 4)


def test_count_check_reads_every_chunk(monkeypatch):
    """The streamed count check covers every stored value, chunk after chunk, in memory
    and for a dense matrix; a NaN in the last chunk is found."""
    import anndata as ad
    import scipy.sparse as sp

    from scfm_audit.data import _dataset as dmod

    monkeypatch.setattr(dmod, "CHUNK_VALUES", 7)
    X = np.ones((40, 9), dtype=np.float32)
    X[-1, -1] = np.nan
    for mat in (X, sp.csr_matrix(X)):
        s = dmod.count_summary(ad.AnnData(mat), dmod.DatasetSpec())
        assert s.n_values == 360 and s.n_nan == 1, s


def test_n_perm_max_zero_means_no_refinement(bench, tmp_path):
    """Documented as "0 = no refinement": accepted by validate."""
    cfg = base_config(bench, tmp_path / "results")
    cfg["analyses"]["grn_recovery"]["n_perm_max"] = 0
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["validate", str(path)], terminal_width=300)
    assert r.exit_code == 0, r.output


def test_simulate_message_names_the_option(tmp_path):
    r = runner.invoke(
        app,
        ["simulate", "--out", str(tmp_path / "b"), "--n-tfs", "10", "--n-genes", "8"],
        terminal_width=300,
    )
    assert r.exit_code == 2
    assert "invalid option: n_tfs=10 must be smaller" in r.output and ": :" not in r.output
    (tmp_path / "f").write_text("x")
    r = runner.invoke(app, ["simulate", "--out", str(tmp_path / "f")], terminal_width=300)
    assert r.exit_code == 2 and "(--out)" in r.output and "config key" not in r.output


# -- the shell ---------------------------------------------------------------------------
def test_analyses_in_a_pipe_one_line_each():
    """`scfm-audit analyses | grep NAME` works: plain lines, never wrapped; --json too."""
    from scfm_audit.analyses._contract import ANALYSES

    p = subprocess.run(
        [sys.executable, "-m", "scfm_audit.cli", "analyses"],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "40"},
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "version", "category", "description"]
    assert len(lines) == 1 + len(ANALYSES.names())
    for name, spec in ANALYSES.items():
        line = next(ln for ln in lines if ln.startswith(name + "\t"))
        assert line.split("\t")[2:] == [spec.category, spec.description]
    r = runner.invoke(app, ["analyses", "--json"])
    assert [d["name"] for d in json.loads(r.output)] == list(ANALYSES.names())
    r = runner.invoke(app, ["analyses", "grn_recovery"])
    assert "\nn_perm_max\tint\t19999\t" in r.output
    r = runner.invoke(app, ["analyses", "grn_recovery", "--json"])
    assert {x["parameter"] for x in json.loads(r.output)["parameters"]} >= {"verdict_layer"}


def test_validate_in_a_pipe_and_json(bench, tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(base_config(bench, tmp_path / "results")))
    r = runner.invoke(app, ["validate", str(path)])
    assert r.exit_code == 0 and "check\tstatus\tdetail" in r.output
    assert any(ln.startswith("dataset bench\tok\t") for ln in r.output.splitlines())
    r = runner.invoke(app, ["validate", str(path), "--json"])
    assert all(c["ok"] for c in json.loads(r.output))


def test_simulate_writes_an_audit_yaml_that_runs(tmp_path):
    """`scfm-audit simulate --out bench && scfm-audit run bench/audit.yaml`, as is."""
    out = tmp_path / "bench"
    r = runner.invoke(
        app,
        ["simulate", "--out", str(out), "--n-cells", "300", "--n-genes", "60", "--n-tfs", "6"],
        terminal_width=300,
    )
    assert r.exit_code == 0, r.output
    assert (out / "audit.yaml").is_file()
    cfg = yaml.safe_load((out / "audit.yaml").read_text())
    assert set(cfg["references"]) == {"grn", "ppi"}
    r = runner.invoke(app, ["validate", str(out / "audit.yaml")], terminal_width=300)
    assert r.exit_code == 0, r.output
    # quicker draws, else the file as written
    cfg["analyses"]["grn_recovery"].update(n_boot=20, n_perm=19, n_perm_max=0)
    (out / "audit.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["run", str(out / "audit.yaml"), "-q"], terminal_width=300)
    assert r.exit_code == 0, r.output
    assert (out / "results" / "report.html").is_file()
    # not a terminal: the scorecard is plain lines too, one claim per line
    assert "claim\tdataset\tanswer\tq\testimate [95% CI]\tlayer" in r.output
    assert "┃" not in r.output and "│" not in r.output


def test_sigterm_exits_143_and_keeps_the_previous_run(bench, tmp_path):
    """SIGTERM mid-compute: exit 143, the previous run intact, the staging folder gone."""
    out = tmp_path / "results"
    cfg = tmp_path / "audit.yaml"
    c = base_config(bench, out)
    cfg.write_text(yaml.safe_dump(c))
    r = runner.invoke(app, ["run", str(cfg), "-q"], terminal_width=300)
    assert r.exit_code == 0, r.output
    before = (out / "run.json").read_bytes()
    flag = tmp_path / "computing"
    code = (
        "import sys, time, pathlib\n"
        "import scfm_audit.pipeline._runner as r\n"
        f"def slow(*a, **k):\n    pathlib.Path({str(flag)!r}).touch(); time.sleep(60)\n"
        "r._run_analyses = slow\n"
        "from scfm_audit.cli import main\n"
        f"sys.argv = ['scfm-audit', 'run', {str(cfg)!r}, '-q']\n"
        "main()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert flag.exists()
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr
    assert (out / "run.json").read_bytes() == before
    assert not list(tmp_path.glob(".results.scfm-*"))


def test_warnings_are_logged_and_counted(bench, tmp_path, monkeypatch, capfd):
    """numpy / scipy warnings while computing stay off the console and land in run.json."""
    import warnings

    import scfm_audit as sa
    from scfm_audit.pipeline import _runner

    original = _runner.Resources.edge_scores

    def noisy(self, *a, **k):
        np.log(np.zeros(1))  # RuntimeWarning: divide by zero
        warnings.warn("curve fit did not converge", RuntimeWarning, stacklevel=1)
        return original(self, *a, **k)

    monkeypatch.setattr(_runner.Resources, "edge_scores", noisy)
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(base_config(bench, tmp_path / "results")))
    run = sa.run_audit(path, quiet=True)
    assert sum(run.warnings.values()) >= 2
    meta = json.loads((tmp_path / "results" / "run.json").read_text())
    assert meta["warnings"]["n"] >= 2
    assert any("divide by zero" in k for k in meta["warnings"]["by_message"])
    captured = capfd.readouterr()
    assert "RuntimeWarning" not in captured.err + captured.out


def test_analysis_without_claims_gets_a_scorecard_line(bench, tmp_path, monkeypatch):
    """A requested analysis that answers nothing shows as n/a with the reason."""
    import scfm_audit as sa
    from scfm_audit.analyses._contract import AnalysisResult
    from scfm_audit.pipeline import _runner

    real = _runner._run_analyses

    def drop(*args):
        run = real(*args)
        run.results["grn_recovery"] = AnalysisResult(notes=["too few reference edges"])
        return run

    monkeypatch.setattr(_runner, "_run_analyses", drop)
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(base_config(bench, tmp_path / "results")))
    sc = sa.run_audit(path, quiet=True).verdicts()
    row = sc[sc["analysis"] == "grn_recovery"]
    assert list(row["answer"]) == ["n/a"] and "too few reference edges" in row["reason"].iloc[0]
    assert row["dataset"].iloc[0] == "bench"


# -- the output folder -------------------------------------------------------------------
def _namespace(script: str) -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=ENV, timeout=180
    )


def test_mount_point_as_output_is_refused_before_computing(bench, tmp_path, monkeypatch):
    """validate (in process, a mount point simulated) and a real run on a real tmpfs mount
    refuse before computing, naming the folder; nothing is written into it."""
    out = tmp_path / "mnt"
    out.mkdir()
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml.safe_dump(base_config(bench, out)))
    real = os.path.ismount
    with monkeypatch.context() as m:
        m.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real(p))
        r = runner.invoke(app, ["validate", str(cfg)], terminal_width=300)
    assert r.exit_code == 2 and f"The output folder {out} is a mount point" in r.output
    p = _namespace(
        f"mount -t tmpfs tmpfs {out} && {sys.executable} -m scfm_audit.cli run "
        f"{cfg} -q; echo rc=$?; ls -A {out} | wc -l"
    )
    _clean(p.stdout + p.stderr)
    assert "rc=2" in p.stdout, p.stdout + p.stderr
    assert f"The output folder {out} is a mount point" in p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0"  # nothing written into it


def test_full_disk_names_the_path_and_cleans_up(bench, tmp_path):
    """A 64 KiB file system as the output's parent: the run stops with exit 1 naming the
    path; neither the fresh output folder nor a staging folder is left behind."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml.safe_dump(base_config(bench, disk / "results")))
    p = _namespace(
        f"mount -t tmpfs -o size=64k tmpfs {disk} && {sys.executable} -m "
        f"scfm_audit.cli run {cfg} -q; echo rc=$?; ls -A {disk} | wc -l"
    )
    _clean(p.stdout + p.stderr)
    assert "rc=1" in p.stdout, p.stdout + p.stderr
    assert "no space left to write " + str(disk) in p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0", p.stdout  # nothing left behind


def test_layer_index_checked_against_what_it_indexes():
    """A verdict_layer indexes the layers a source scored (an attention source's `layers`
    option); an mlp_layers index, the model's own layers. Neither wraps round."""
    from types import SimpleNamespace

    from scfm_audit.pipeline._config import config_from_dict
    from scfm_audit.pipeline._design import design_checks

    cfg = config_from_dict(
        {
            "datasets": {"d": {"path": "d.h5ad"}},
            "references": {"r": {"format": "table", "path": "r.tsv"}},
            "models": {"m": {"family": "scgpt", "path": "m"}},
            "edges": {"attn": {"scorer": "attention", "model": "m", "layers": [0]}},
            "analyses": {
                "grn_recovery": {"verdict_layer": 1},
                "head_ablation": {"mlp_layers": [1], "prediction_layer": -2},
            },
        }
    )
    m = SimpleNamespace(n_layers=2, family="scgpt")
    failed = design_checks(cfg, cfg.analysis_params(), {}, {}, {"m": m})
    assert [c.name for c in failed] == ["analyses.grn_recovery.verdict_layer"], failed
    assert "edge source 'attn', which has 1 layer " in failed[0].detail
