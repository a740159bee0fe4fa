"""Checks of a config's inputs, shared by ``scfm-audit validate`` and by every run (which
refuses to start computing until they pass): files, dataset columns and counts (every
stored value), references (with edges, sharing genes with the data), models (declared
heads and layers against the weights), the cells each edge source gets, the output folder,
and the design (:mod:`~scfm_audit.pipeline._design`: layer indices against the models,
columns, sizes, strata, perturbations and references each analysis needs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scfm_audit.pipeline._config import AuditConfig
    from scfm_audit.pipeline._runner import Resources


class InputError(ValueError):
    """One or more inputs of a run are unusable; the message lists each problem."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def validate_config(path: str | Path, *, output: str | Path | None = None) -> list[Check]:
    """Every check, in order; stops early only if the config itself is invalid. Reads
    datasets in backed mode (nothing is computed or written)."""
    from scfm_audit.pipeline._cache import ArtifactCache
    from scfm_audit.pipeline._config import load_config
    from scfm_audit.pipeline._runner import Progress, Resources

    try:
        cfg = load_config(path)
        params = cfg.analysis_params()
    except ValueError as e:
        return [Check("config", False, str(e))]
    if output is not None:
        cfg = cfg.model_copy(update={"output": Path(output).absolute()})
    checks = [
        Check(
            "config",
            True,
            f"{len(cfg.datasets)} datasets, {len(cfg.references)} references, "
            f"{len(cfg.models)} models, {len(cfg.analyses)} analyses",
        )
    ]
    checks.append(output_check(cfg.output))
    res = Resources(cfg, ArtifactCache(None), Progress(quiet=True))
    return checks + input_checks(cfg, res, params, backed=True)


def output_check(output: str | Path) -> Check:
    from scfm_audit.pipeline._output import OutputFolderError, check_output_path, refuse_foreign

    try:
        path = check_output_path(output)
        refuse_foreign(path)
        return Check("output", True, str(path))
    except OutputFolderError as e:
        return Check("output", False, str(e))


def input_checks(
    cfg: AuditConfig, res: Resources, params: dict[str, Any], *, backed: bool = False
) -> list[Check]:
    """Datasets, references (and their genes in the data), models, cells per edge source.

    ``backed``: open ``.h5ad`` files in backed mode (validate) rather than through
    ``res.dataset`` (a run, which keeps what it loaded)."""
    checks: list[Check] = []
    data: dict[str, Any] = {}
    for name, d in cfg.datasets.items():
        try:
            if d.simulate is not None or not backed:
                adata = res.dataset(name)
            else:
                from scfm_audit.data._dataset import load_dataset

                adata = load_dataset(d.path, res.dataset_spec(name), backed=True, name=name)
            data[name] = adata
            kind = "simulated, " if d.simulate is not None else ""
            checks.append(
                Check(f"dataset {name}", True, f"{kind}{adata.n_obs} cells × {adata.n_vars} genes")
            )
        except Exception as e:  # any failure to read the user's file is reported, not raised
            from scfm_audit.data._simulate import SimulationParams

            where = f"datasets.{name}" + (".simulate" if d.simulate is not None else "")
            text = _message(e, where, SimulationParams)
            # the loader speaks Python (DatasetSpec(counts=...)); a config user needs the key
            text = re.sub(r"DatasetSpec\((\w+)=[^)]*\)", rf"datasets.{name}.\1 in the config", text)
            checks.append(Check(f"dataset {name}", False, text))
    refs: dict[str, Any] = {}
    for name in cfg.references:
        try:
            net = res.reference(name)
        except Exception as e:
            checks.append(Check(f"reference {name}", False, _message(e, f"references.{name}")))
            continue
        if len(net.edges) == 0:
            where = str(
                cfg.references[name].path or f"the simulated {cfg.references[name].network}"
            )
            checks.append(
                Check(
                    f"reference {name}",
                    False,
                    (
                        f"reference {name!r} ({where}) has no edges: the file has a header and no "
                        "edge line, or every line was filtered out (e.g. by min_score / "
                        "min_confidence). Give a reference with edges, or loosen its filter."
                    ),
                )
            )
            continue
        refs[name] = net
        checks.append(Check(f"reference {name}", True, repr(net)))
    models: dict[str, Any] = {}
    for name in cfg.models:
        try:
            m = res.model(name)
            models[name] = m
            checks.append(
                Check(f"model {name}", True, f"{m.family}: {m.n_layers} layers × {m.n_heads} heads")
            )
        except Exception as e:
            checks.append(Check(f"model {name}", False, _message(e, f"models.{name}")))
    checks += _usage_checks(cfg, res, params, data, refs)
    from scfm_audit.pipeline._design import design_checks

    checks += design_checks(cfg, params, data, refs, models)
    for adata in data.values():
        if getattr(adata, "isbacked", False) and backed:
            adata.file.close()
    return checks


def _usage_checks(
    cfg: AuditConfig,
    res: Resources,
    params: dict[str, Any],
    data: dict[str, Any],
    refs: dict[str, Any],
) -> list[Check]:
    """Per analysis: each reference shares genes with each dataset it is used on; each
    edge source gets at least ``min_source_cells`` cells of each dataset."""
    checks: list[Check] = []
    seen: set[tuple[str, ...]] = set()
    for analysis, analysis_params in params.items():
        datasets = [
            d for d in (getattr(analysis_params, "datasets", None) or cfg.datasets) if d in data
        ]
        references = [
            r for r in (getattr(analysis_params, "references", None) or cfg.references) if r in refs
        ]
        edges = list(getattr(analysis_params, "edges", None) or cfg.edges)
        for dataset in datasets:
            genes = data[dataset].var_names
            for ref in references:
                if ("ref", ref, dataset) in seen:
                    continue
                seen.add(("ref", ref, dataset))
                n = int(genes.isin(refs[ref].genes).sum())
                if n == 0:
                    checks.append(
                        Check(
                            f"reference {ref} on {dataset}",
                            False,
                            _no_overlap(ref, refs[ref].genes, dataset, genes, analysis),
                        )
                    )
            for edge in edges:
                if ("edge", edge, dataset) in seen or edge not in cfg.edges:
                    continue
                seen.add(("edge", edge, dataset))
                try:
                    n_cells = len(res.edge_cells(edge, dataset))
                except Exception as err:
                    checks.append(
                        Check(f"edges {edge} on {dataset}", False, _message(err, f"edges.{edge}"))
                    )
                    continue
                need = cfg.edges[edge].min_source_cells
                if n_cells < need:
                    which = "control cells" if cfg.edges[edge].cells == "control" else "cells"
                    checks.append(
                        Check(
                            f"edges {edge} on {dataset}",
                            False,
                            (
                                f"dataset {dataset!r} gives edge source {edge!r} only {n_cells} {which}; at "
                                f"least {need} are needed for scores and CIs that mean anything. Use a "
                                f"dataset with more {which}, set edges.{edge}.cells: all, or (at your own "
                                f"risk) lower edges.{edge}.min_source_cells."
                            ),
                        )
                    )
    return checks


def _no_overlap(
    ref: str, ref_genes: Iterable[str], ds: str, genes: Iterable[str], analysis: str
) -> str:
    def show(idx: Iterable[str]) -> str:
        return ", ".join(map(str, list(idx)[:3]))

    return (
        f"reference {ref!r} shares no gene with dataset {ds!r} (used together by analysis "
        f"{analysis!r}): the reference names genes like {show(ref_genes)}, the data like "
        f"{show(genes)}. Use the same identifiers on both sides (gene symbols in var_names, "
        f"or map the reference), or do not pair them (analyses.{analysis}.references / "
        ".datasets)."
    )


def _message(e: Exception, where: str, model: Any = None) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        from scfm_audit.pipeline._config import _format_errors

        return "; ".join(_format_errors(e, prefix=where, model=model))
    text = str(e).strip() or type(e).__name__
    if isinstance(e, ValueError | OSError | KeyError):
        return text
    return f"{type(e).__name__}: {text}"


def raise_on_failures(checks: list[Check]) -> None:
    """Raise :class:`InputError` listing every failed check."""
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "\n".join(f"  {c.name}: {c.detail}" for c in failed)
        raise InputError(
            f"{len(failed)} input problem{'s' if len(failed) > 1 else ''} "
            f"(nothing was computed):\n{lines}"
        )
