"""The local runner: resolve each artifact once, run the analyses, correct across the
run, write one output folder.

Order of work for ``run_audit(config)``:

1. validate the config (names, parameters, cross-references), check and lock the output
   folder, then check every input (:mod:`~scfm_audit.pipeline._validate`): nothing is
   computed unless all of it is usable;
2. for each analysis in config order, run it with a :class:`RunContext` that resolves
   datasets, references, models and edge scores lazily, once per run, through the
   on-disk :class:`ArtifactCache` (``<output>/cache``);
3. BH-FDR over every registered test of the run;
4. write tables (Parquet + CSV), figures (PNG), ``tests.parquet``/``tests.csv``,
   ``config.resolved.yaml``, ``run.json`` and ``report.html`` into a staging folder and
   swap it in as a whole (:mod:`~scfm_audit.pipeline._output`).

The same config gives the same numbers: every random draw comes from
``RunContext.rng(*keys)``, a generator seeded by (run seed, analysis, keys).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import numpy as np
import pandas as pd
from rich.markup import escape

from scfm_audit import __version__
from scfm_audit._executor import ExecutorError
from scfm_audit._io import atomic_path, atomic_write_text, write_table
from scfm_audit.analyses._contract import (
    ANALYSES,
    AnalysisResult,
    AnalysisSpec,
    ClaimRecorder,
    Verdict,
)
from scfm_audit.analyses._run import RunResult
from scfm_audit.pipeline._cache import ArtifactCache, file_fingerprint, stable_hash
from scfm_audit.pipeline._config import (
    AuditConfig,
    analysis_base_name,
    config_to_yaml,
    load_config,
)
from scfm_audit.stats._registry import TestRecord, TestRegistry

if TYPE_CHECKING:
    from anndata import AnnData

    from scfm_audit.data._dataset import DatasetSpec
    from scfm_audit.data._network import ReferenceNetwork
    from scfm_audit.data._simulate import SimulatedBenchmark
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.models._base import ModelAdapter
    from scfm_audit.pipeline._beside import Beside
    from scfm_audit.pipeline._config import EdgeConfig

    T = TypeVar("T")

log = logging.getLogger("scfm_audit")


def _seed_of(*keys: Any) -> int:
    return zlib.crc32(json.dumps(keys, default=str).encode())


class Resources:
    """Run-wide resolution of datasets, references, models and edge scores (memoised in
    memory, cached on disk)."""

    def __init__(self, cfg: AuditConfig, cache: ArtifactCache, progress: Progress) -> None:
        self.cfg = cfg
        self.cache = cache
        self.progress = progress
        self._datasets: dict[str, Any] = {}
        self._benchmarks: dict[str, Any] = {}
        self._references: dict[str, Any] = {}
        self._models: dict[str, Any] = {}
        self._edges: dict[tuple[str, str], list[EdgeScores]] = {}
        self._shared: dict[tuple[str, str], Any] = {}
        self.notes: list[str] = []

    def shared(self, kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """An artifact several analyses derive alike (e.g. a dataset's responders): computed
        once per run (kept in memory, and in the artifact cache when there is one)."""
        k = (kind, stable_hash(key))
        if k not in self._shared:
            self._shared[k] = self.cache.get_or_compute(kind, key, compute, codec="pickle")
        return self._shared[k]

    # -- datasets ----------------------------------------------------------------------
    def _simulated(self, name: str) -> SimulatedBenchmark:
        if name not in self._benchmarks:
            from scfm_audit.data._simulate import SimulationParams, simulate_perturbseq

            sim = self.cfg.datasets[name].simulate
            if sim is None:  # the config's validation rules this out
                raise ValueError(f"datasets.{name}: not a simulated dataset")
            params = SimulationParams(**sim)
            self._benchmarks[name] = self.cache.get_or_compute(
                "simulation",
                {"params": params.model_dump(mode="json")},
                lambda: simulate_perturbseq(params),
                codec="pickle",
            )
        bench: SimulatedBenchmark = self._benchmarks[name]
        return bench

    def dataset_spec(self, name: str) -> DatasetSpec:
        from scfm_audit.data._dataset import DatasetSpec

        d = self.cfg.datasets[name]
        control = tuple(d.control) if isinstance(d.control, list) else d.control
        return DatasetSpec(
            counts=d.counts,
            perturbation=d.perturbation,
            control=control,
            modality=d.modality,
            cell_state=d.cell_state,
            batch=d.batch,
            gene_id_column=d.gene_id_column,
        )

    def dataset(self, name: str) -> AnnData:
        if name not in self._datasets:
            from scfm_audit.data._dataset import load_dataset, validate_dataset

            d = self.cfg.datasets[name]
            spec = self.dataset_spec(name)
            if d.simulate is not None:
                adata = self._simulated(name).adata
                validate_dataset(adata, spec)
                adata.uns.setdefault("scfm_audit", {})
                adata.uns["scfm_audit"].update({"spec": spec.__dict__, "name": name})
            else:
                adata = load_dataset(d.path, spec, backed=d.backed, name=name)
            self._datasets[name] = adata
        return self._datasets[name]

    def dataset_fingerprint(self, name: str) -> dict[str, Any]:
        d = self.cfg.datasets[name]
        base = d.model_dump(mode="json")
        if d.path is not None:
            base["file"] = file_fingerprint(d.path)
        return base

    # -- references ----------------------------------------------------------------------
    def reference(self, name: str) -> ReferenceNetwork:
        if name not in self._references:
            r = self.cfg.references[name]
            if r.format == "simulated":
                if r.dataset is None:  # the config's validation rules this out
                    raise ValueError(f"references.{name}: format 'simulated' needs 'dataset'")
                bench = self._simulated(r.dataset)
                net = bench.grn if r.network == "grn" else bench.ppi
                net = replace(net, name=name)
            else:
                from scfm_audit.data._references import load_reference

                if r.path is None:  # the config's validation rules this out
                    raise ValueError(f"references.{name}: 'path' is required for {r.format!r}")
                net = load_reference(r.format, r.path, name=name, **r.options())
            self._references[name] = net
        ref: ReferenceNetwork = self._references[name]
        return ref

    # -- models --------------------------------------------------------------------------
    def model(self, name: str) -> ModelAdapter:
        if name not in self._models:
            from scfm_audit.models._base import load_model
            from scfm_audit.models._device import device_available

            m = self.cfg.models[name]
            device = m.device
            if self.cfg.executor.kind == "dask" and not device_available(m.device):
                # a driver without the workers' GPU (a login node): here the model only
                # tokenizes and runs the passes that stay in this process, on the CPU
                device = "cpu"
                self.notes.append(
                    f"model {name}: loaded on the CPU in this process (it has no "
                    f"{m.device}); the cluster's workers load it on {m.device}"
                )
            self._models[name] = load_model(
                m.family, m.path, device=device, name=name, **m.options()
            )
            _register_on_workers(self._models[name], name, m)
        model: ModelAdapter = self._models[name]
        return model

    def _note_vocabulary(self, model: str, dataset: str) -> None:
        note_key = f"vocabulary {model} {dataset}"
        if any(n.startswith(note_key) for n in self.notes):
            return
        r = self.model(model).vocabulary_report(self.dataset(dataset))
        missing = ", ".join(r.missing[:10]) + (" ..." if len(r.missing) > 10 else "")
        self.notes.append(
            f"{note_key}: {r.n_in_vocab}/{r.n_genes} genes in the vocabulary "
            f"({r.fraction_genes:.1%} of genes, {r.fraction_counts:.1%} of counts)"
            + (f"; not in the vocabulary: {missing}" if r.missing else "")
        )

    # -- edges ---------------------------------------------------------------------------
    def edge_cells(self, edges: str, dataset: str) -> np.ndarray:
        """Obs positions the edge source uses (controls or all, subsampled with a seed)."""
        from scfm_audit.data._dataset import control_mask

        e = self.cfg.edges[edges]
        adata = self.dataset(dataset)
        spec = self.dataset_spec(dataset)
        if e.cells == "control" and spec.perturbation is not None:
            cells = np.flatnonzero(control_mask(adata, spec))
        else:
            cells = np.arange(adata.n_obs)
        if e.max_cells is not None and len(cells) > e.max_cells:
            rng = np.random.default_rng(_seed_of(self.cfg.seed, "cells", dataset))
            cells = np.sort(rng.choice(cells, size=e.max_cells, replace=False))
        return cells

    def edge_genes(self, edges: str, dataset: str, adata_cells: AnnData) -> list[str] | None:
        e = self.cfg.edges[edges]
        if e.genes == "all" or adata_cells.n_vars <= e.n_top_genes:
            return None
        import scanpy as sc

        from scfm_audit.data._dataset import counts_matrix

        tmp = sc.AnnData(counts_matrix(adata_cells, self.dataset_spec(dataset)).astype(np.float32))
        tmp.var_names = adata_cells.var_names
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=e.n_top_genes, flavor="seurat")
        return list(tmp.var_names[tmp.var["highly_variable"].to_numpy()])

    def edge_scores(self, edges: str, dataset: str) -> list[EdgeScores]:
        """Score sets of edge source ``edges`` on ``dataset`` (computed once, cached)."""
        out = self._edge_scores(edges, dataset, cached_only=False)
        assert out is not None
        return out

    def cached_edge_scores(self, edges: str, dataset: str) -> list[EdgeScores] | None:
        """The score sets a finished run left in the artifact cache, or None: never
        computes (``scfm-audit compare`` reads them for its paired tests)."""
        return self._edge_scores(edges, dataset, cached_only=True)

    def _edge_scores(
        self, edges: str, dataset: str, *, cached_only: bool
    ) -> list[EdgeScores] | None:
        key = (edges, dataset)
        if key in self._edges:
            return self._edges[key]
        from scfm_audit.edges._registry import EDGE_SCORERS

        e = self.cfg.edges[edges]
        scorer = EDGE_SCORERS.get(e.scorer)
        cells = self.edge_cells(edges, dataset)
        adata = self.dataset(dataset)
        spec = self.dataset_spec(dataset)
        cache_key = {
            "edges": e.model_dump(mode="json"),
            "dataset": self.dataset_fingerprint(dataset),
            "cells": stable_hash(cells.tolist()),
            "seed": self.cfg.seed,
        }
        if e.model is not None:
            m = self.cfg.models[e.model]
            model_key: dict[str, Any] = {"family": m.family, "files": file_fingerprint(m.path)}
            if m.dtype != "float32":  # a low-precision forward gives other scores
                model_key["dtype"] = m.dtype
            cache_key["model"] = model_key

        def compute() -> list[EdgeScores]:
            sub = adata[cells]
            sub = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
            genes = self.edge_genes(edges, dataset, sub)
            kwargs = dict(e.options())
            kwargs.setdefault("counts", spec.counts)
            if e.model is not None:
                kwargs["model"] = self.model(e.model)
            t0 = time.perf_counter()
            with self.progress.status(f"edges {edges} on {dataset} ({len(cells)} cells)"):
                out = scorer(sub, genes=genes, seed=self.cfg.seed, **kwargs)
            log.info(
                "edges %s/%s: %d score sets in %.1fs",
                edges,
                dataset,
                len(out),
                time.perf_counter() - t0,
            )
            scores: list[EdgeScores] = out
            return scores

        if cached_only:
            where = self.cache.path_for("edges", cache_key)
            if where is None or not (where / "DONE").exists():
                return None
        elif e.model is not None:  # genes the model cannot see are reported, never dropped
            self._note_vocabulary(e.model, dataset)
        out = self.cache.get_or_compute("edges", cache_key, compute, codec="edges")
        out = [
            replace(
                s,
                dataset=dataset,
                model=s.model or e.model,  # provenance: the config's model name
                params={**s.params, "edges": edges},
            )
            for s in out
        ]
        self._edges[key] = out
        return out


def _register_on_workers(model: Any, name: str, m: Any) -> None:
    """Workers of a cluster load this model from its checkpoint themselves, once each
    (keyed by the checkpoint's files and the options), instead of receiving it."""
    from scfm_audit._executor import register_model_source
    from scfm_audit.models._base import load_model

    key = stable_hash(
        {
            "family": m.family,
            "path": str(m.path),
            "files": file_fingerprint(m.path),
            "device": m.device,
            "name": name,
            "options": m.options(),
        }
    )
    register_model_source(
        model, key, load_model, m.family, str(m.path), device=m.device, name=name, **m.options()
    )


class Progress:
    """What the user sees while a run works (stderr): rich bars and spinners on a
    terminal; on a pipe or a log file, one plain, timestamped line per step (start and end,
    never a redrawn bar); nothing when quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)
        self.live = self.console.is_terminal and not quiet

    def say(self, message: str) -> None:
        """One line of rich markup, timestamped (no source file:line, unlike console.log)."""
        if not self.quiet:
            self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")

    def track(
        self, iterable: Iterable[T], *, description: str, total: int | None = None
    ) -> Iterator[T]:
        if not self.live:
            if self.quiet:
                yield from iterable
                return
            t0 = time.perf_counter()
            n = 0
            self.say(f"{escape(description)} ...")
            for n, item in enumerate(iterable, 1):  # noqa: B007 - n is reported below
                yield item
            self.say(f"{escape(description)}: {n} done in {time.perf_counter() - t0:.1f}s")
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        with RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            yield from bar.track(iterable, description=description, total=total)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on a terminal; start and end lines elsewhere."""
        if self.quiet:
            yield
        elif self.live:
            with self.console.status(escape(message)):
                yield
        else:
            t0 = time.perf_counter()
            self.say(f"{escape(message)} ...")
            yield
            self.say(f"{escape(message)}: done in {time.perf_counter() - t0:.1f}s")


@dataclass
class RunContext(ClaimRecorder):
    """The :class:`~scfm_audit.analyses._contract.AnalysisContext` the runner gives one
    analysis."""

    analysis: str
    seed: int
    resources: Resources
    registry: TestRegistry
    progress_: Progress
    alpha: float = 0.05
    claims: list[Verdict] = field(default_factory=list)

    def dataset_names(self) -> list[str]:
        return list(self.resources.cfg.datasets)

    def dataset(self, name: str) -> AnnData:
        return self.resources.dataset(name)

    def dataset_spec(self, name: str) -> DatasetSpec:
        return self.resources.dataset_spec(name)

    def dataset_fingerprint(self, name: str) -> dict[str, Any]:
        """What identifies a dataset's content (for cache keys of derived artifacts)."""
        return self.resources.dataset_fingerprint(name)

    def reference_names(self) -> list[str]:
        return list(self.resources.cfg.references)

    def reference(self, name: str) -> ReferenceNetwork:
        return self.resources.reference(name)

    def edge_names(self) -> list[str]:
        return list(self.resources.cfg.edges)

    def edge_scores(self, edges: str, dataset: str) -> list[EdgeScores]:
        return self.resources.edge_scores(edges, dataset)

    def edge_source(self, edges: str) -> EdgeConfig:
        """The edge source's config entry (scorer, model, cells, options())."""
        return self.resources.cfg.edges[edges]

    def edge_cells(self, edges: str, dataset: str) -> np.ndarray:
        """Obs positions of ``dataset`` that edge source ``edges`` is computed on."""
        return self.resources.edge_cells(edges, dataset)

    def model_names(self) -> list[str]:
        return list(self.resources.cfg.models)

    def model(self, name: str) -> ModelAdapter:
        return self.resources.model(name)

    def rng(self, *keys: Any) -> np.random.Generator:
        return np.random.default_rng([self.seed, _seed_of(self.analysis, *keys)])

    def seed_for(self, *keys: Any) -> int:
        """An integer seed derived like :meth:`rng` (for functions that take a seed)."""
        return _seed_of(self.seed, self.analysis, *keys)

    def add_test(self, **fields: Any) -> TestRecord:
        fields.setdefault("analysis", self.analysis)
        fields.setdefault("seed", self.seed)
        return self.registry.add(**fields)

    def progress(
        self, iterable: Iterable[T], *, description: str, total: int | None = None
    ) -> Iterator[T]:
        return self.progress_.track(iterable, description=description, total=total)

    def cached(
        self, key: dict[str, Any], compute: Callable[[], Any], *, kind: str, shared: bool = False
    ) -> Any:
        """``compute()`` through the artifact cache, keyed by ``key`` and the seed. ``shared``:
        the artifact does not depend on which analysis asks (``key`` says everything it
        depends on), so every analysis of the run gets the one computed copy."""
        if shared:
            return self.resources.shared(kind, {"seed": self.seed, **key}, compute)
        return self.resources.cache.get_or_compute(
            kind,
            {"analysis": self.analysis, "seed": self.seed, **key},
            compute,
            codec="pickle",
        )


def _unlearned_models(cfg: AuditConfig) -> dict[str, str]:
    """Models trained by scfm-audit whose ``train_log.json`` says they did not beat their
    chance or baseline loss on held-out cells; what their internals show is not assessable."""
    from scfm_audit.models._train import LOG_FILE

    out = {}
    for name, m in cfg.models.items():
        p = Path(m.path) / LOG_FILE
        try:
            tlog = json.loads(p.read_text()) if p.is_file() else None
        except (OSError, ValueError):
            tlog = None
        if tlog is not None and tlog.get("learned") is False:
            out[name] = (
                f"model {name} did not learn in training (held-out loss "
                f"{tlog.get('eval_loss_final', float('nan')):.4g}, chance "
                f"{tlog.get('chance_loss', float('nan')):.4g}, baseline "
                f"{tlog.get('baseline_loss', float('nan')):.4g}; see {LOG_FILE})"
            )
    return out


class RunFailedError(RuntimeError):
    """Every analysis of a run failed; nothing was written (the previous outputs stay)."""


def run_audit(
    config: AuditConfig | str | Path,
    *,
    output: str | Path | None = None,
    quiet: bool = False,
    use_cache: bool = True,
    report: bool = True,
) -> RunResult:
    """Run every analysis of ``config`` and write the output folder.

    Before computing anything the run checks the config, the output folder (writable, not
    locked by another run) and every input (:func:`~scfm_audit.pipeline._validate.
    input_checks`), raising ``ConfigError`` / ``InputError`` / ``OutputFolderError`` /
    ``OutputBusyError`` with one message listing each problem. An analysis that raises is
    recorded in ``RunResult.errors`` (and the report) and the run goes on;
    :class:`RunFailedError` if every analysis failed. The outputs are staged and swapped in
    as a whole (:mod:`~scfm_audit.pipeline._output`).
    """
    from scfm_audit.pipeline._beside import merge_counts, open_beside
    from scfm_audit.pipeline._executor import open_executor
    from scfm_audit.pipeline._output import OutputTransaction, OutputWriteError, no_space
    from scfm_audit.pipeline._validate import input_checks, raise_on_failures

    started = time.perf_counter()
    cfg = load_config(config) if isinstance(config, str | Path) else config
    if output is not None:
        cfg = cfg.model_copy(update={"output": Path(output).expanduser().absolute()})
    params = cfg.analysis_params()
    cfg.check_references(params)
    tx = OutputTransaction(cfg.output)
    created = not tx.path.exists()
    tx.open()
    stack = contextlib.ExitStack()  # the executor: a cluster started here closes with it
    try:
        out = tx.path
        progress = Progress(quiet=quiet)
        # started first, so that its imports overlap the input checks
        beside = open_beside(
            cfg.executor.kind == "local" and cfg.executor.background and _worth_a_process(params)
        )
        if beside is not None:
            stack.enter_context(beside)
        cache = ArtifactCache(out / "cache" if use_cache else None)
        resources = Resources(cfg, cache, progress)
        try:
            if cfg.executor.kind != "local":
                with progress.status(f"starting the {cfg.executor.kind} executor"):
                    ex = stack.enter_context(open_executor(cfg.executor))
                progress.say(f"executor: {ex.describe()}")
            else:
                stack.enter_context(open_executor(cfg.executor))
            with progress.status("checking the inputs"), _routed_warnings() as checking:
                raise_on_failures(input_checks(cfg, resources, params))
        except BaseException:  # also Ctrl-C / SIGTERM while checking
            if created:  # leave no trace of a run that never started
                tx.close()
                shutil.rmtree(out, ignore_errors=True)
            raise
        try:
            with _routed_warnings() as caught:
                run = _run_analyses(cfg, params, resources, progress, beside)
                run.total_seconds = time.perf_counter() - started
                merge_counts(caught, checking)
                merge_counts(caught, run.warnings)
                run.warnings = caught
                write_outputs(run, report=report, folder=tx.staging)
        except (OSError, OutputWriteError) as e:
            full = e if isinstance(e, OutputWriteError) else no_space(e, tx.staging)
            if full is None:
                raise
            tx.close()  # removes the staging folder; the previous outputs stay
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise full from None
        if run.warnings:
            n = sum(run.warnings.values())
            progress.say(
                f"{n} warning{'s' if n > 1 else ''} while computing (numpy / scipy "
                "and others): counted in run.json, logged at debug level"
            )
        with progress.status("swapping the new outputs in"):
            tx.commit()
        return run
    finally:
        try:
            stack.close()
        finally:
            tx.close()


@contextlib.contextmanager
def _routed_warnings() -> Iterator[dict[str, int]]:
    """Every warning raised inside (numpy / scipy ``RuntimeWarning``, ``OptimizeWarning``,
    ``UserWarning``, ...; library deprecations aside) goes to the ``scfm_audit`` log (debug
    level) and is counted by "Category: message" instead of reaching the console
    mid-progress."""
    import warnings

    counts: dict[str, int] = {}

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        key = f"{category.__name__}: {str(message).strip()}"[:300]
        counts[key] = counts.get(key, 0) + 1
        log.debug("warning %s (%s:%s)", key, filename, lineno)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for dev in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", dev)  # for developers of the libraries, not users
        warnings.showwarning = show
        yield counts


#: analyses of a run from which the figures alone are worth a process beside it
FIGURES_WORTH_A_PROCESS = 4


def _worth_a_process(params: dict[str, Any]) -> bool:
    """Whether a process beside the run pays for its start (about 3 CPU seconds of
    imports): it has a self-contained analysis to run, or the figures of several."""
    specs = [ANALYSES.get(analysis_base_name(n)) for n in params]
    return any(s.self_contained for s in specs) or len(specs) >= FIGURES_WORTH_A_PROCESS


def _run_analyses(
    cfg: AuditConfig,
    params: dict[str, Any],
    resources: Resources,
    progress: Progress,
    beside: Beside | None = None,
) -> RunResult:
    """Every analysis of ``params``; the self-contained ones in the process ``beside`` the
    run when there is one (while the others run here), each figure drawn there as soon as
    its analysis is done. Results, test records and timings are kept in config order,
    wherever they were computed."""
    from scfm_audit.pipeline._beside import (
        BesideFailed,
        BesideLost,
        merge_counts,
        run_self_contained,
    )

    registry = TestRegistry(alpha=cfg.alpha)
    specs = {name: ANALYSES.get(analysis_base_name(name)) for name in params}
    outcomes: dict[str, _Outcome] = {}
    pngs: dict[str, dict[str, Any]] = {}
    warned: dict[str, int] = {}
    away = {}
    if beside is not None:
        away = {
            name: beside.submit(run_self_contained, name, p, seed=cfg.seed, alpha=cfg.alpha)
            for name, p in params.items()
            if specs[name].self_contained
        }
        for name in away:
            progress.say(f"{name}: runs in a process beside the others")
    for name, p in params.items():
        if name in away:
            continue
        outcomes[name] = _run_here(name, specs[name], p, cfg, resources, registry, progress)
        res = outcomes[name].result
        if beside is not None and res is not None:
            pngs[name] = _draw_beside(beside, res.figures)
    for name, fut in away.items():
        spec = specs[name]
        try:
            with progress.status(f"{name} (running beside the others)"):
                res, records, seconds, caught, drawn = fut.result()
        except BesideLost as e:  # the process is gone: do it here
            log.debug("%s: %s; running it here", name, e)
            outcomes[name] = _run_here(name, spec, params[name], cfg, resources, registry, progress)
            continue
        except BesideFailed as e:
            debug = bool(os.environ.get("SCFM_AUDIT_DEBUG"))
            level = logging.ERROR if debug else logging.DEBUG
            log.log(level, "analysis %s failed beside the run:\n%s", name, e.trace)
            outcomes[name] = _Outcome(None, [], 0.0, f"{e.kind}: {e.message}", beside=True)
            progress.say(f"[red]{name} failed[/]: {escape(str(e))}")
            continue
        progress.say(f"[bold]{name}[/] v{spec.version}: {spec.description}")
        progress.say(f"{name}: {len(records)} tests in {seconds:.1f}s (beside the others)")
        outcomes[name] = _Outcome(res, records, seconds, None, beside=True)
        pngs[name] = dict(drawn)
        merge_counts(warned, caught)
    # the registry in config order, wherever each analysis ran
    registry.rollback(0)
    for name in params:
        registry.extend(outcomes[name].records)
    errors = {n: o.error for n, o in outcomes.items() if o.error is not None}
    if params and len(errors) == len(params):
        raise RunFailedError(
            "every analysis failed (nothing was written):\n"
            + "\n".join(f"  {k}: {v}" for k, v in errors.items())
        )
    run = RunResult(
        config=cfg,
        output=Path(cfg.output),
        specs=specs,
        params=params,
        results={n: res for n in params if (res := outcomes[n].result) is not None},
        tests=registry.to_frame(),
        family_sensitivity=registry.family_sensitivity(),
        timings={n: outcomes[n].seconds for n in params},
        notes=resources.notes,
        errors={n: errors[n] for n in params if n in errors},
        alpha=cfg.alpha,
        cache_hits=list(resources.cache.hits),
        cache_misses=list(resources.cache.misses),
        unlearned_models=_unlearned_models(cfg),
        pngs=pngs,
        ran_beside=[n for n in params if outcomes[n].beside],
    )
    run.warnings = warned  # the caller adds what was raised here
    return run


@dataclass
class _Outcome:
    """One analysis of a run: its result (None if it failed), its test records, seconds,
    and the error that stopped it."""

    result: AnalysisResult | None
    records: list[TestRecord]
    seconds: float
    error: str | None
    beside: bool = False  # computed in the process beside the run


def _run_here(
    name: str,
    spec: AnalysisSpec,
    p: Any,
    cfg: AuditConfig,
    resources: Resources,
    registry: TestRegistry,
    progress: Progress,
) -> _Outcome:
    """Run one analysis in this process; a failure is recorded, not raised (a full disk
    or a lost cluster excepted: the remaining analyses would fail alike)."""
    from scfm_audit.pipeline._output import OutputWriteError, no_space

    ctx = RunContext(name, cfg.seed, resources, registry, progress, alpha=cfg.alpha)
    t0 = time.perf_counter()
    progress.say(f"[bold]{name}[/] v{spec.version}: {spec.description}")
    n_before = len(registry)
    res: AnalysisResult | None = None
    error = None
    try:
        res = spec.run(ctx, p)
        # claims recorded through ctx.claim, then any a result still lists itself
        known = {id(v) for v in ctx.claims}
        res.verdicts = ctx.claims + [v for v in res.verdicts if id(v) not in known]
    except (OutputWriteError, ExecutorError):
        raise
    except Exception as e:  # one failing analysis must not lose the others
        full = no_space(e, Path(cfg.output))
        if full is not None:
            raise full from None
        # the traceback is for developers: SCFM_AUDIT_DEBUG=1 shows it
        debug = bool(os.environ.get("SCFM_AUDIT_DEBUG"))
        log.log(
            logging.ERROR if debug else logging.DEBUG, "analysis %s failed", name, exc_info=True
        )
        error = f"{type(e).__name__}: {e}"
        registry.rollback(n_before)
        progress.say(f"[red]{name} failed[/]: {escape(error)}")
    seconds = time.perf_counter() - t0
    records = registry.records()[n_before:]
    progress.say(f"{name}: {len(records)} tests in {seconds:.1f}s")
    return _Outcome(res, records, seconds, error)


def _draw_beside(beside: Beside, figures: dict[str, Any]) -> dict[str, Any]:
    """Send each figure to be drawn beside the run (futures of PNG bytes); a figure that
    cannot be pickled is left out and drawn here when the outputs are written."""
    import pickle

    from scfm_audit.plotting._render import render_pickled

    out = {}
    for fname, fig in figures.items():
        try:
            blob = pickle.dumps(fig, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # e.g. a formatter holding a lambda
            log.debug("figure %s is drawn here: it does not pickle (%s)", fname, e)
            continue
        out[fname] = beside.submit(render_pickled, blob)
    return out


#: Packages whose versions ``run.json`` records.
RECORDED_PACKAGES = (
    "scfm-audit",
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "anndata",
    "scanpy",
    "transformers",
    "pydantic",
)


def environment() -> dict[str, Any]:
    """Python, platform and package versions (``None`` for a package not installed)."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for pkg in RECORDED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["scfm-audit"] = __version__
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
    }


def _drawn_png(drawn: Any, what: str) -> bytes | None:
    """The PNG drawn beside the run (bytes, or a future of them); None if there is none
    or drawing it there failed (then it is drawn here)."""
    if drawn is None or isinstance(drawn, bytes):
        return drawn
    try:
        data: bytes = drawn.result()
    except Exception as e:
        log.debug("figure %s is drawn here: %s", what, e)
        return None
    return data


def write_outputs(run: RunResult, *, report: bool = True, folder: Path | None = None) -> None:
    """Write every table, figure, the test registry, the config and the report into
    ``folder`` (default ``run.output``; a run passes its staging folder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scfm_audit.plotting._render import render_png

    out = Path(folder) if folder is not None else run.output
    files: dict[str, list[Path]] = {}
    for name, res in run.results.items():
        paths: list[Path] = []
        for tname, df in res.tables.items():
            paths += write_table(_parquet_safe(df), out / "tables" / f"{name}__{tname}")
        drawn = run.pngs.get(name, {})
        for fname, fig in res.figures.items():
            png = out / "figures" / f"{name}__{fname}.png"
            data = _drawn_png(drawn.get(fname), f"{name}__{fname}")
            with atomic_path(png) as tmp:
                tmp.write_bytes(render_png(fig) if data is None else data)
            plt.close(fig)
            paths.append(png)
        files[name] = paths
    run.files = files
    write_table(_parquet_safe(run.tests), out / "tests")
    write_table(run.family_sensitivity, out / "tables" / "family_sensitivity")
    scorecard = run.verdicts()
    write_table(scorecard, out / "scorecard")
    from scfm_audit.report._standards import run_standards

    # the QC standard: one row per standard × model × dataset (scorecard: one per claim)
    write_table(_parquet_safe(run_standards(run, scorecard)), out / "standards")
    atomic_write_text(out / "config.resolved.yaml", config_to_yaml(run.config))
    caught = run.warnings
    meta = {
        "version": __version__,
        "seed": run.config.seed,
        "environment": environment(),
        "seconds_total": round(run.total_seconds or sum(run.timings.values()), 3),
        "analyses": {
            n: {"version": s.version, "seconds": round(run.timings[n], 3)}
            for n, s in run.specs.items()
        },
        "ran_beside": run.ran_beside,
        "n_tests": len(run.tests),
        "errors": run.errors,
        "cache": {"hits": len(run.cache_hits), "misses": len(run.cache_misses)},
        "warnings": {"n": sum(caught.values()), "by_message": caught},
    }
    atomic_write_text(out / "run.json", json.dumps(meta, indent=1))
    if report:
        from scfm_audit.report import render_report

        render_report(run, out / "report.html")
    # the files' paths once the staging folder is swapped in
    run.files = {n: [run.output / p.relative_to(out) for p in paths] for n, paths in files.items()}


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns with None mixed into ints / floats / bools get nullable dtypes;
    any other mixture becomes text, so that every table writes to Parquet."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype != object:
            continue
        kinds = {type(v) for v in df[c].dropna()}
        if not kinds or kinds <= {str}:
            continue
        if kinds <= {int, np.int64, np.int32}:
            df[c] = df[c].astype("Int64")
        elif kinds <= {float, int, np.float64, np.int64}:
            df[c] = df[c].astype("Float64")
        elif kinds <= {bool, np.bool_}:
            df[c] = df[c].astype("boolean")
        else:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return df


class FinishedRunScores:
    """A finished run's cached score sets and references, for ``scfm-audit compare``'s
    paired tests (:class:`scfm_audit.report._compare.RunScores`): read from the run's
    artifact cache with its resolved config, never recomputed."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def source(self, dataset: str, label: str) -> EdgeScores | None:
        cfg = self.resources.cfg
        if dataset not in cfg.datasets:
            return None
        for name in cfg.edges:
            for es in self.resources.cached_edge_scores(name, dataset) or []:
                if es.head is None and es.label == label:
                    return es
        return None

    def reference(self, name: str) -> ReferenceNetwork | None:
        if name not in self.resources.cfg.references:
            return None
        return self.resources.reference(name)


def finished_run_scores(folder: Path) -> FinishedRunScores | None:
    """The cached scores of the run in ``folder`` (None without its resolved config or
    its cache)."""
    cfg_path, cache = Path(folder) / "config.resolved.yaml", Path(folder) / "cache"
    if not (cfg_path.is_file() and cache.is_dir()):
        return None
    cfg = load_config(cfg_path)
    return FinishedRunScores(Resources(cfg, ArtifactCache(cache), Progress(quiet=True)))
