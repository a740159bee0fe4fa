"""``scfm-audit`` command line: demo, run, compare, validate, analyses, simulate.

Exit codes (also in the README):

==  ==========================================================================
0   success: every analysis ran and the run registered at least one test
1   the run finished but is incomplete: an analysis failed, every analysis
    failed (nothing written), the run produced no statistical test, or a
    Dask cluster lost work it could not redo (the run stops; nothing written)
2   bad config, input or output folder (nothing was computed), or bad usage
3   the output folder is locked by another run
4   internal error (a bug: please report it; ``SCFM_AUDIT_DEBUG=1`` shows the
    traceback)
130 interrupted (Ctrl-C, SIGINT)
143 terminated (SIGTERM: ``kill``, SLURM, Docker); like 130, the previous run
    stays intact and the staging folder is removed
==  ==========================================================================

Tables (the catalogue, parameters, validation, the scorecard) are rich tables on a
terminal and plain tab-separated lines, one row per line, when stdout is a pipe or a
file; ``--json`` gives machines the same rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit the mechanistic interpretability of single-cell foundation models.",
)
console = Console()
err = Console(stderr=True)


EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT, EXIT_BUSY, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM arrived; unwinds like Ctrl-C (``finally`` blocks remove the staging folder
    and release the lock) without being caught by ``except Exception``."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while a command works."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. embedded): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plain() -> bool:
    """Plain lines instead of rich tables: stdout is not a terminal (a pipe, a file)."""
    return not console.is_terminal


def _table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    markup: Sequence[Sequence[str]] | None = None,
    fold: bool = False,
) -> None:
    """A table: rich on a terminal (``markup``: the cells with rich markup); elsewhere one
    tab-separated line per row under a header line, never wrapped."""
    if _plain():
        out = sys.stdout
        out.write("\t".join(columns) + "\n")
        for r in rows:
            out.write("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in r) + "\n")
        out.flush()
        return
    t = Table(title=title)
    for i, c in enumerate(columns):  # the first column (a name) never wraps
        t.add_column(c, overflow="fold" if fold else "ellipsis", no_wrap=i == 0)
    for i, r in enumerate(rows):
        t.add_row(*(markup[i] if markup is not None else [escape(str(v)) for v in r]))
    console.print(t)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=code)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn every exception into one message and an exit code (see the module docstring);
    a traceback only with ``SCFM_AUDIT_DEBUG=1``."""
    from scfm_audit._executor import ExecutorError
    from scfm_audit.pipeline._output import OutputBusyError, OutputWriteError
    from scfm_audit.pipeline._runner import RunFailedError

    try:
        with _sigterm_unwinds():
            yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        _fail("interrupted; the output folder still holds the previous run.", EXIT_INTERRUPTED)
    except Terminated:
        _fail(
            "terminated (SIGTERM); the output folder still holds the previous run.",
            EXIT_TERMINATED,
        )
    except Exception as e:
        if os.environ.get("SCFM_AUDIT_DEBUG"):
            raise
        if isinstance(e, OutputBusyError):
            _fail(str(e), EXIT_BUSY)
        if isinstance(e, RunFailedError | OutputWriteError | ExecutorError):
            _fail(str(e), EXIT_INCOMPLETE)
        if isinstance(e, ValueError | OSError):  # our input errors are ValueErrors
            _fail(str(e), EXIT_BAD_INPUT)
        _fail(
            f"internal error ({type(e).__name__}: {e}). This is a bug in scfm-audit; rerun "
            "with SCFM_AUDIT_DEBUG=1 to see the traceback and report it.",
            EXIT_BUG,
        )


def _print_matrix(matrix, title: str = "QC standard", prefix: str = "") -> None:
    """The standards matrix as fixed-width lines (≤ 100 columns, one word per cell):
    coloured on a terminal, plain on a pipe."""
    from scfm_audit.report._standards import matrix_lines

    if _plain():
        sys.stdout.write(f"\n{title}\n" + "\n".join(matrix_lines(matrix, prefix=prefix)) + "\n")
        sys.stdout.flush()
        return
    console.print(f"\n[bold]{escape(title)}[/]")
    for line in matrix_lines(matrix, colour=True, prefix=prefix):
        console.print(line, soft_wrap=True, highlight=False)


def _finish(run, started: float, *, claims: bool = False) -> None:
    """The run's end: counts, the claim table (on a pipe, or with ``claims``), the
    standards matrix and where the report is."""
    import pandas as pd

    from scfm_audit.report._standards import run_standards

    tests = run.tests
    n_sig = int((tests["q"] < run.alpha).sum()) if len(tests) else 0
    console.print(
        f"\n[bold green]done[/] in {time.perf_counter() - started:.1f}s: "
        f"{len(run.results)} analyses, {len(tests)} tests ({n_sig} with q < {run.alpha})"
    )
    sc = run.verdicts()
    if len(sc) and (claims or _plain()):
        colours = {"yes": "green", "opposite": "magenta", "no evidence": "red"}
        rows, markup = [], []
        for r in sc.itertuples():
            colour = colours.get(r.answer, "yellow")
            est = "" if pd.isna(r.effect) else f"{r.effect_name} {r.effect:.3f}"
            if not (pd.isna(r.ci_low) or pd.isna(r.ci_high)):
                est += f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            layer = "" if pd.isna(r.layer) else str(int(r.layer))
            answer = r.answer + (f" ({r.reason})" if r.reason else "")
            rows.append([r.claim, str(r.dataset), answer, f"{r.q:.3g}", est, layer])
            markup.append(
                [
                    escape(r.claim),
                    escape(str(r.dataset)),
                    f"[{colour}]{r.answer}[/]"
                    + (f"\n[dim]{escape(r.reason)}[/]" if r.reason else ""),
                    f"{r.q:.3g}",
                    escape(est),
                    layer,
                ]
            )
        _table(
            "Scorecard",
            ("claim", "dataset", "answer", "q", "estimate [95% CI]", "layer"),
            rows,
            markup=markup,
            fold=True,
        )
    if len(sc):
        try:
            _print_matrix(run_standards(run, sc))
        except Exception as e:  # the run is written; a display failure must not hide it
            err.print(f"[yellow]the standards matrix could not be printed:[/] {escape(str(e))}")
    if len(sc) and not (claims or _plain()):
        console.print("[dim]the claims behind it: --claims, scorecard.csv or the report[/]")
    console.print(f"report: [bold]{escape(str(run.output / 'report.html'))}[/]", soft_wrap=True)
    problems = [f"analysis {name} failed: {e}" for name, e in run.errors.items()]
    if len(tests) == 0:
        problems.append(
            "the run registered no statistical test; each analysis' n/a line on the "
            "scorecard above says why"
        )
    for p in problems:
        err.print(f"[bold red]error:[/] {escape(p)}", soft_wrap=True)
    if problems:
        raise typer.Exit(code=EXIT_INCOMPLETE)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="Smaller benchmark, fewer draws."),
    no_models: bool = typer.Option(
        False, "--no-models", help="Skip the trained demo models (co-expression only)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything."),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train the demo models instead of using the shipped ones."
    ),
    claims: bool = typer.Option(
        False, "--claims", help="Also print the claim table (always printed on a pipe)."
    ),
) -> None:
    """Run the whole framework on the built-in synthetic benchmark.

    Audits small scGPT- and Geneformer-architecture models of the benchmark: the shipped
    checkpoints (trained once by `scfm-audit train-demo-models`), or with --retrain / --quick
    models trained here (once; kept in OUT/models in their real layouts and reused)."""
    from scfm_audit.pipeline._demo import demo_config, ensure_demo_models
    from scfm_audit.pipeline._output import check_output_path
    from scfm_audit.pipeline._runner import run_audit

    started = time.perf_counter()
    with _clean_errors():
        out = check_output_path(out, fix="choose another folder (--out)")
        models = None
        if not no_models:
            with console.status("preparing the demo models"):
                models = ensure_demo_models(out, quick=quick, retrain=retrain)
        cfg = demo_config(out, quick=quick, models=models)
        run = run_audit(cfg, use_cache=not no_cache)
    _finish(run, started, claims=claims)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Audit YAML."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Override `output`."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    claims: bool = typer.Option(
        False, "--claims", help="Also print the claim table (always printed on a pipe)."
    ),
) -> None:
    """Run an audit config: models × datasets × references × analyses."""
    from scfm_audit.pipeline._runner import run_audit

    started = time.perf_counter()
    with _clean_errors():
        result = run_audit(config, output=out, use_cache=not no_cache, quiet=quiet)
    _finish(result, started, claims=claims)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="A run's output folder."),
    run_b: Path = typer.Argument(..., help="Another run's output folder."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for compare.html."),
) -> None:
    """Two runs side by side: standard by standard, the claims whose answers differ, a
    descriptive test of each matched claim's effect difference, and a paired test where
    both runs scored the same edges (read from their caches); writes compare.html."""
    import math

    from scfm_audit.report._compare import (
        PAIRED_NOTE,
        TEST_NOTE,
        NotARunError,
        compare_runs,
        load_run,
        render_compare,
    )

    with _clean_errors():
        try:
            a, b = load_run(run_a), load_run(run_b)
        except NotARunError as e:
            _fail(str(e), EXIT_BAD_INPUT)
        from scfm_audit.pipeline._runner import finished_run_scores

        res = compare_runs(a, b, scores_of=finished_run_scores)
        if not _plain():
            console.print(f"A: {escape(str(run_a))}\nB: {escape(str(run_b))}", soft_wrap=True)
        import pandas as pd

        both = pd.concat(
            [
                t.standards.assign(model=f"{lab}:" + t.standards["model"].astype(str))
                for lab, t in (("A", a), ("B", b))
            ],
            ignore_index=True,
        )
        _print_matrix(both, title=f"QC standard, side by side (A: {run_a}, B: {run_b})")
        changed = res["changed"]
        console.print(f"\n[bold]standards whose answer changed[/]: {len(changed)}")
        if changed:
            _table(
                "Standards whose answer changed",
                ("standard", "where", "A", "B"),
                [(c["standard"], c["where"], c["a"], c["b"]) for c in changed],
            )
        d = res["differ"]
        console.print(
            f"\n[bold]claims whose answers differ[/]: {len(d)} of {res['n_matched']} matched "
            f"({res['only_a']} only in A, {res['only_b']} only in B)"
        )

        def _n(v: float, fmt: str = ".3g") -> str:
            return "" if math.isnan(v) else format(v, fmt)

        if len(d):
            _table(
                "Claims whose answers differ",
                ("claim", "dataset", "A", "B", "Δ (A−B)", "z", "p (descr.)"),
                [
                    (
                        r.claim,
                        r.dataset,
                        r.answer_a,
                        r.answer_b,
                        _n(r.delta),
                        _n(r.z, ".2f"),
                        _n(r.p_diff),
                    )
                    for r in d.itertuples()
                ],
                fold=True,
            )
        import textwrap

        console.print(f"[dim]{escape(textwrap.fill(TEST_NOTE, 100))}[/]", soft_wrap=True)
        pt = res["paired"]
        console.print(f"\n[bold]paired tests on the same edges[/]: {len(pt)}")
        if len(pt):
            _table(
                "Paired tests on the same edges",
                ("claim", "dataset", "ΔAUROC (A−B)", "95% CI", "p (paired)"),
                [
                    (r.claim, r.dataset, _n(r.delta), f"[{_n(r.ci_low)}, {_n(r.ci_high)}]", _n(r.p))
                    for r in pt.itertuples()
                ],
                fold=True,
            )
            console.print(f"[dim]{escape(textwrap.fill(PAIRED_NOTE, 100))}[/]", soft_wrap=True)
        out.mkdir(parents=True, exist_ok=True)
        path = render_compare(res, out / "compare.html")
        console.print(f"compare: [bold]{escape(str(path))}[/]", soft_wrap=True)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Audit YAML."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Check this output instead."),
    as_json: bool = typer.Option(False, "--json", help="The checks as JSON on stdout."),
) -> None:
    """Check a config, its files, dataset columns, references, models and output folder
    without running anything (exit code 2 if anything is wrong)."""
    from scfm_audit.pipeline._validate import validate_config

    with _clean_errors():
        checks = validate_config(config, output=out)
    if as_json:
        print(json.dumps([{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]))
    else:
        rows = [
            [c.name, "ok" if c.ok else "FAIL", c.detail if c.ok else "see below"] for c in checks
        ]
        markup = [
            [escape(r[0]), f"[{'green' if r[1] == 'ok' else 'red'}]{r[1]}[/]", escape(r[2])]
            for r in rows
        ]
        _table(
            f"Validation of {escape(str(config))}",
            ("check", "status", "detail"),
            rows,
            markup=markup,
        )
    failed = [c for c in checks if not c.ok]
    for c in failed:  # full messages, unwrapped by the table
        err.print(f"[bold red]error:[/] {escape(c.name)}: {escape(c.detail)}", soft_wrap=True)
    if failed:
        raise typer.Exit(code=EXIT_BAD_INPUT)


@app.command()
def analyses(
    name: str | None = typer.Argument(None, help="Show this analysis' parameters."),
    as_json: bool = typer.Option(False, "--json", help="The catalogue (or parameters) as JSON."),
) -> None:
    """List the analysis catalogue, one line each (name, category, description), or every
    parameter of one analysis. On a pipe: plain tab-separated lines."""
    from scfm_audit.analyses._contract import ANALYSES, parameter_table

    if name is None:
        rows = [[n, spec.version, spec.category, spec.description] for n, spec in ANALYSES.items()]
        if as_json:
            keys = ("name", "version", "category", "description")
            print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=1))
            return
        _table(
            "Analyses (scfm-audit analyses NAME: its parameters)",
            ("name", "version", "category", "description"),
            rows,
            fold=True,
        )
        return
    with _clean_errors():
        spec = ANALYSES.get(name)
    params = [{k: str(v) for k, v in row.items()} for row in parameter_table(spec.params)]
    if as_json:
        print(
            json.dumps(
                {
                    "name": name,
                    "version": spec.version,
                    "category": spec.category,
                    "description": spec.description,
                    "parameters": params,
                },
                indent=1,
            )
        )
        return
    if _plain():
        print(f"# {name} v{spec.version}: {spec.description}")
    else:
        console.print(f"[bold]{name}[/] v{spec.version}: {escape(spec.description)}")
    _table(
        f"Parameters (config: analyses: {{{name}: {{...}}}})",
        ("parameter", "type", "default", "description"),
        [list(r.values()) for r in params],
        fold=True,
    )


#: ``audit.yaml`` written by ``scfm-audit simulate``: runs as is on the files beside it.
BENCHMARK_AUDIT = """\
# The audit of the files beside this one (scfm-audit simulate); run it with
#   scfm-audit validate audit.yaml && scfm-audit run audit.yaml
output: results
datasets:
  bench: {path: perturbseq.h5ad, perturbation: perturbation, control: non-targeting,
          modality: modality, cell_state: cell_state, batch: donor,
          gene_id_column: ensembl_id}
references:
  grn: {format: table, path: grn.tsv}     # the TSVs carry a `directed` column
  ppi: {format: table, path: ppi.tsv}     # → loaded as undirected
edges:
  spearman: {scorer: coexpression, method: spearman}
analyses:
  grn_recovery: {references: [grn, ppi]}
"""


@app.command()
def simulate(
    out: Path = typer.Option(Path("synthetic_benchmark"), "--out", "-o"),
    n_cells: int = typer.Option(3000, help="Number of cells."),
    n_genes: int = typer.Option(400, help="Number of genes."),
    n_tfs: int = typer.Option(40, help="Number of transcription factors."),
    seed: int = typer.Option(0),
    regulation_strength: float = typer.Option(1.0, help="0 gives a null benchmark."),
) -> None:
    """Write the synthetic Perturb-seq benchmark (.h5ad + reference TSVs) and an
    ``audit.yaml`` that runs as is on them."""
    from pydantic import ValidationError

    from scfm_audit._io import atomic_write_text
    from scfm_audit.data._simulate import SimulationParams, simulate_perturbseq, write_benchmark
    from scfm_audit.pipeline._output import check_output_path

    try:
        params = SimulationParams(
            n_cells=n_cells,
            n_genes=n_genes,
            n_tfs=n_tfs,
            seed=seed,
            regulation_strength=regulation_strength,
        )
    except ValidationError as e:
        lines = []
        for x in e.errors():
            opt = "--" + str(x["loc"][0]).replace("_", "-") + ": " if x["loc"] else ""
            lines.append(opt + x["msg"].removeprefix("Value error, "))
        _fail("invalid option: " + "; ".join(lines))
    with _clean_errors():
        out = check_output_path(out, what="benchmark folder", fix="choose another folder (--out)")
        with console.status(f"simulating {n_cells} cells × {n_genes} genes"):
            bench = simulate_perturbseq(params, out_path=None)
            files = write_benchmark(bench, out)
            files["audit"] = out / "audit.yaml"
            atomic_write_text(files["audit"], BENCHMARK_AUDIT)
    for k, v in files.items():
        console.print(f"{k}: {v}", soft_wrap=True, highlight=False)
    console.print(
        f"run it: scfm-audit run {escape(str(files['audit']))}", soft_wrap=True, highlight=False
    )


@app.command("train-demo-models")
def train_demo_models_command(
    out: Path = typer.Option(Path("demo_models"), "--out", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="The quick (smaller) demo benchmark."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, cell order and masks."),
) -> None:
    """Train small scGPT and Geneformer models on the demo benchmark (masked value /
    masked gene modelling) and save them in the real checkpoint layouts."""
    from scfm_audit.data._simulate import simulate_perturbseq
    from scfm_audit.models._train import LOG_FILE, train_demo_models
    from scfm_audit.pipeline._demo import DEMO_SIMULATION, QUICK_SIMULATION, write_provenance
    from scfm_audit.pipeline._output import check_output_path

    started = time.perf_counter()
    sim = QUICK_SIMULATION if quick else DEMO_SIMULATION
    with _clean_errors():
        out = check_output_path(out, what="models folder", fix="choose another folder (--out)")
        with console.status(f"simulating {sim['n_cells']} cells × {sim['n_genes']} genes"):
            bench = simulate_perturbseq(**sim)
        paths = train_demo_models(bench.adata, out, quick=quick, seed=seed)
    command = f"scfm-audit train-demo-models --out {out.name} --seed {seed}"
    write_provenance(out, quick=quick, seed=seed, command=command + (" --quick" if quick else ""))
    columns = (
        "model",
        "epochs",
        "steps",
        "loss: first → last epoch",
        "held-out masked loss: untrained → trained",
        "chance",
        "baseline",
        "learned",
        "seconds",
    )
    rows = []
    for family, path in paths.items():
        log = json.loads((Path(path) / LOG_FILE).read_text())
        losses = log["loss_per_epoch"]
        rows.append(
            [
                family,
                str(log["epochs"]),
                str(log["steps"]),
                f"{losses[0]:.4g} → {losses[-1]:.4g}",
                f"{log['eval_loss_initial']:.4g} → {log['eval_loss_final']:.4g}",
                f"{log['chance_loss']:.4g}",
                f"{log['baseline_loss']:.4g} ({log['baseline']})",
                "yes" if log["learned"] else "NO",
                f"{log['seconds']:.1f}",
            ]
        )
    _table("Demo models", columns, rows)
    for family, path in paths.items():
        console.print(f"{family}: {path}")
    console.print(f"[bold green]done[/] in {time.perf_counter() - started:.1f}s")


def main() -> None:  # pragma: no cover - console entry point
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
