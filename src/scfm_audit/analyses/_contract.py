"""Analysis = pure kernel + frozen spec + the shared runner.

An analysis is a function ``run(ctx: AnalysisContext, params) -> AnalysisResult``
registered with :func:`register_analysis`. It asks the context for what it needs
(datasets, references, edge scores — resolved once per run and cached), registers every
statistical test with ``ctx.add_test`` and returns tables, figures and scorecard verdicts.
The runner does the rest (caching, FDR across the run, writing, the report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict

from scfm_audit._registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData
    from matplotlib.figure import Figure

    from scfm_audit.data._network import ReferenceNetwork
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.models._base import ModelAdapter
    from scfm_audit.stats._registry import TestRecord


class AnalysisParams(BaseModel):
    """Base of every analysis' parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    description: str
    params: type[AnalysisParams]
    run: Callable[[AnalysisContext, AnalysisParams], AnalysisResult]
    version: str
    category: str = ""
    reference: str = ""  # where the design comes from (paper section / catalogue number)


def parameter_table(params: type[BaseModel]) -> list[dict[str, str]]:
    """One row per parameter of an analysis: name, type, default and the description
    given with ``Field(description=...)`` (empty where none is given)."""
    import typing

    rows = []
    for name, f in params.model_fields.items():
        ann = f.annotation
        kind = getattr(ann, "__name__", None) if typing.get_origin(ann) is None else None
        default = f.get_default(call_default_factory=True)
        rows.append(
            {
                "parameter": name,
                "type": kind or str(ann).replace("typing.", ""),
                "default": "(required)" if f.is_required() else repr(default),
                "description": f.description or "",
            }
        )
    return rows


ANALYSES: Registry[AnalysisSpec] = Registry("analysis", modules=("scfm_audit.analyses",))


def register_analysis(
    name: str,
    *,
    description: str,
    params: type[AnalysisParams],
    version: str,
    category: str = "",
    reference: str = "",
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(ctx, params) -> AnalysisResult`` as analysis ``name``."""

    def deco(fn: Callable) -> Callable:
        ANALYSES.add(
            name,
            AnalysisSpec(
                name=name,
                description=description,
                params=params,
                run=fn,
                version=version,
                category=category,
                reference=reference,
            ),
        )
        return fn

    return deco


@dataclass
class Verdict:
    """One scorecard line: a claim answered by one registered test (after BH).

    ``direction``: the direction the claim asserts ("greater": the effect lies above the
    test's ``null_value``; "less"). The answer is four-valued (see
    :func:`scfm_audit.stats.four_valued_answer`): a significant effect in the other
    direction reads ``opposite``. ``layer_choice`` says which layer the claim rests on and
    why; ``reason`` explains an ``n/a`` that the analysis knows of in advance.
    """

    claim: str
    record: TestRecord
    model: str | None = None
    dataset: str | None = None
    direction: str = "greater"
    layer_choice: str = ""
    reason: str = ""


@dataclass
class AnalysisResult:
    """What an analysis returns: named long tables, named figures, a one-paragraph
    summary and scorecard verdicts."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    summary: str = ""
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class AnalysisContext(Protocol):
    """What the runner gives an analysis."""

    analysis: str
    seed: int

    def dataset_names(self) -> list[str]: ...
    def dataset(self, name: str) -> AnnData: ...
    def reference_names(self) -> list[str]: ...
    def reference(self, name: str) -> ReferenceNetwork: ...
    def edge_names(self) -> list[str]: ...
    def edge_scores(self, edges: str, dataset: str) -> list[EdgeScores]: ...
    def model_names(self) -> list[str]: ...
    def model(self, name: str) -> ModelAdapter: ...
    def rng(self, *keys: Any) -> np.random.Generator: ...
    def add_test(self, **fields: Any) -> TestRecord: ...
    def progress(self, iterable, *, description: str, total: int | None = None): ...
    def cached(self, key: dict[str, Any], compute: Callable[[], Any], *, kind: str) -> Any: ...


def source_label(es: EdgeScores) -> str:
    """How a claim names an edge source: a model's by its method and model
    (``attention [scgpt_demo]``), a model-free one by its name in the config
    (``spearman_attention_cells``), so two co-expression sources never read alike."""
    if es.model:
        return f"{es.method} [{es.model}]"
    return str(es.params.get("edges", es.method))


def estimate_fields(
    es: EdgeScores,
    dataset: str,
    reference: str | None,
    *,
    estimate: float,
    ci: tuple[float, float],
    n: int,
    name: str = "AUROC",
    null_value: float = 0.5,
) -> dict[str, Any]:
    """The fields every test about one score set shares (provenance, the estimate on its
    natural scale with its CI and its value under H0, two-sided), for ``ctx.add_test``."""
    return dict(
        model=es.model,
        dataset=dataset,
        reference=reference,
        method=es.label,
        layer=es.layer,
        head=es.head,
        n=n,
        statistic_name=name,
        statistic=estimate,
        effect_name=name,
        effect=estimate,
        null_value=null_value,
        ci_low=ci[0],
        ci_high=ci[1],
        direction="two-sided",
    )
