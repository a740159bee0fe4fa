"""Analysis = pure kernel + frozen spec + the shared runner.

An analysis is a function ``run(ctx: AnalysisContext, params) -> AnalysisResult``
registered with :func:`register_analysis`. It asks the context for what it needs
(datasets, references, edge scores — resolved once per run and cached), computes typed
test results (:class:`~scfm_audit.stats._tests.StatTestResult`) and records them:
``ctx.claim(result, unit, claim=...)`` for the one test that answers a scorecard line,
``ctx.describe(result, unit, hypothesis=...)`` for every other test. It returns tables,
figures and notes. ``stats/_verdict.py`` alone turns claims into answers (family, side,
floor); the runner does the rest (caching, FDR, writing, the report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from scfm_audit._registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData
    from matplotlib.figure import Figure

    from scfm_audit.data._network import ReferenceNetwork
    from scfm_audit.edges._scores import EdgeScores
    from scfm_audit.evaluate._recovery import CandidatePairs
    from scfm_audit.models._base import ModelAdapter
    from scfm_audit.stats._registry import TestRecord
    from scfm_audit.stats._tests import StatTestResult

T = TypeVar("T")


class AnalysisParams(BaseModel):
    """Base of every analysis' parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitParams(AnalysisParams):
    """The fields every analysis over datasets × edge sources × references repeats, and
    what they resolve to in a run (None: all of the run's)."""

    datasets: list[str] | None = Field(None, description="datasets to use (default: all)")
    references: list[str] | None = Field(None, description="references (default: all)")
    edges: list[str] | None = Field(None, description="edge sources (default: all)")
    min_positives: int = Field(5, ge=1, description="fewer reference edges: not evaluated")

    def datasets_in(self, ctx: AnalysisContext) -> list[str]:
        return list(self.datasets or ctx.dataset_names())

    def references_in(self, ctx: AnalysisContext) -> list[str]:
        return list(self.references if self.references is not None else ctx.reference_names())

    def edges_in(self, ctx: AnalysisContext) -> list[str]:
        return list(self.edges or ctx.edge_names())

    def evaluable(
        self, ctx: AnalysisContext, genes: pd.Index, *, where: str, notes: list[str]
    ) -> dict[str, CandidatePairs]:
        """Candidate pairs of each reference over ``genes`` that has at least
        ``min_positives`` edges among them (a note for each that has not)."""
        out = {}
        for ref_name in self.references_in(ctx):
            pairs = evaluable_pairs(
                genes,
                ctx.reference(ref_name),
                where=f"{where}/{ref_name}",
                min_positives=self.min_positives,
                notes=notes,
            )
            if pairs is not None:
                out[ref_name] = pairs
        return out


class LayerClaimParams(AnalysisParams):
    """``verdict_layer``: the layer a claim about a layered source rests on."""

    verdict_layer: int | Literal["best"] = Field(
        "best",
        description="layer behind the scorecard answer of a layered source: an index fixed a "
        "priori (negative counts from the last), or 'best' (largest null-standardised "
        "effect, p × number of layers: Bonferroni for the selection)",
    )


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    description: str
    params: type[AnalysisParams]
    run: Callable[[AnalysisContext, AnalysisParams], AnalysisResult]
    version: str
    category: str = ""
    reference: str = ""  # where the design comes from (paper section / catalogue number)
    #: parameters that keep a run on the toy simulator short (the contract test's)
    quick: dict[str, Any] = field(default_factory=dict)
    #: the demo's block: ``demo(quick=..., models=...)`` -> parameters, or None (not run)
    demo: Callable[..., dict[str, Any] | None] | None = None
    #: the claims it answers: (claim, its one test and H0), for the README and the CLI
    claims: tuple[tuple[str, str], ...] = ()
    #: why an analysis answers no claim (a planning tool); empty for every other
    no_claims: str = ""
    #: reads nothing of the run (datasets, models, references, edges, cache): it simulates
    #: its own data, so the runner may run it in a process beside the others
    self_contained: bool = False


def claims_table() -> str:
    """The README's claims table (Markdown), from every registered analysis' ``claims``:
    one row per claim with the one test that answers it."""
    import re

    def cell(text: str) -> str:  # placeholders as {name}, pipes escaped: valid Markdown
        return re.sub(r"<([^<>]+)>", r"{\1}", text).replace("|", "\\|")

    rows = ["| analysis | claim | test (H0) |", "| --- | --- | --- |"]
    for name in ANALYSES.names():
        for claim, test in ANALYSES.get(name).claims:
            rows.append(f"| `{name}` | {cell(claim)} | {cell(test)} |")
    return "\n".join(rows)


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
    quick: dict[str, Any] | None = None,
    demo: Callable[..., dict[str, Any] | None] | None = None,
    claims: tuple[tuple[str, str], ...] = (),
    no_claims: str = "",
    self_contained: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(ctx, params) -> AnalysisResult`` as analysis ``name``;
    ``quick``: the parameters of a short run on the toy simulator (the contract test);
    ``demo(quick=bool, models=bool)``: its block in the demo config (None: not in it);
    ``claims``: ``(claim, test and H0)`` of each scorecard line it writes, or
    ``no_claims``: why it writes none (then the scorecard shows no n/a line for it);
    ``self_contained``: it reads nothing of the run (it simulates its own data), so it may
    run in a process beside the other analyses."""

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
                quick=dict(quick or {}),
                demo=demo,
                claims=tuple(claims),
                no_claims=no_claims,
                self_contained=self_contained,
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


@dataclass(frozen=True)
class Unit:
    """What a test is about: dataset, model, reference, method (an edge source's label),
    layer and head; any may be None."""

    dataset: str | None = None
    model: str | None = None
    reference: str | None = None
    method: str | None = None
    layer: int | None = None
    head: int | None = None

    @classmethod
    def of(cls, es: EdgeScores, dataset: str | None, reference: str | None = None) -> Unit:
        """The unit of one edge-score set on ``dataset`` against ``reference``."""
        return cls(dataset, es.model, reference, es.label, es.layer, es.head)

    def fields(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("dataset", "model", "reference", "method", "layer", "head")
        }


class ClaimRecorder:
    """``claim`` and ``describe``: the only ways an analysis records a test. Mixed into
    the runner's context (which provides ``add_test`` and the ``claims`` list)."""

    claims: list[Verdict]

    def add_test(self, **fields: Any) -> TestRecord:  # provided by the context
        raise NotImplementedError

    def _record(
        self,
        result: StatTestResult,
        unit: Unit,
        *,
        hypothesis: str,
        family: str,
        extra: dict[str, Any] | None,
    ) -> TestRecord:
        more = dict(extra or {})
        if result.reason:
            more.setdefault("reason", result.reason)
        return self.add_test(
            hypothesis=hypothesis,
            family=family,
            extra=more,
            **result.registry_fields(),
            **unit.fields(),
        )

    def claim(
        self,
        result: StatTestResult,
        unit: Unit,
        *,
        claim: str,
        hypothesis: str | None = None,
        direction: str = "greater",
        layer_choice: str = "",
        reason: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Verdict:
        """Record ``result`` as the one test answering ``claim`` (a scorecard line) about
        ``unit``; ``direction``: the side the claim asserts ("greater": the tested
        statistic above its null centre). The answer is decided by
        :func:`scfm_audit.stats._verdict.answer_claims`, not here."""
        if direction not in ("greater", "less"):
            raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
        more = dict(extra or {})
        if layer_choice:
            more.setdefault("layer_choice", layer_choice)
        rec = self._record(result, unit, hypothesis=hypothesis or claim, family="claim", extra=more)
        v = Verdict(claim, rec, unit.model, unit.dataset, direction, layer_choice, reason)
        self.claims.append(v)
        return v

    def describe(
        self,
        result: StatTestResult,
        unit: Unit,
        *,
        hypothesis: str,
        extra: dict[str, Any] | None = None,
    ) -> TestRecord:
        """Record ``result`` as a descriptive test (its own BH family; answers nothing)."""
        return self._record(result, unit, hypothesis=hypothesis, family="descriptive", extra=extra)

    def not_assessable(
        self,
        unit: Unit,
        *,
        claim: str,
        reason: str,
        test: str = "",
        h0: str = "",
        direction: str = "greater",
    ) -> Verdict:
        """A claim that cannot be tested here (n/a with ``reason``): it keeps its
        scorecard line instead of vanishing; ``test`` and ``h0`` name the test that could
        not run."""
        from scfm_audit.stats._tests import StatTestResult

        nan = math.nan
        empty = StatTestResult(
            nan,
            nan,
            nan,
            0,
            test or "not run",
            "",
            "",
            "two-sided",
            reason=reason,
            h0=h0 or f"not tested: {reason}",
        )
        return self.claim(empty, unit, claim=claim, direction=direction, reason=reason)


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
    def dataset_spec(self, name: str) -> Any: ...
    def dataset_fingerprint(self, name: str) -> dict[str, Any]: ...
    def reference_names(self) -> list[str]: ...
    def reference(self, name: str) -> ReferenceNetwork: ...
    def edge_names(self) -> list[str]: ...
    def edge_scores(self, edges: str, dataset: str) -> list[EdgeScores]: ...
    def edge_source(self, edges: str) -> Any: ...
    def edge_cells(self, edges: str, dataset: str) -> np.ndarray: ...
    def model_names(self) -> list[str]: ...
    def model(self, name: str) -> ModelAdapter: ...
    def rng(self, *keys: Any) -> np.random.Generator: ...
    def add_test(self, **fields: Any) -> TestRecord: ...
    def claim(
        self,
        result: StatTestResult,
        unit: Unit,
        *,
        claim: str,
        hypothesis: str | None = None,
        direction: str = "greater",
        layer_choice: str = "",
        reason: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Verdict: ...
    def describe(
        self,
        result: StatTestResult,
        unit: Unit,
        *,
        hypothesis: str,
        extra: dict[str, Any] | None = None,
    ) -> TestRecord: ...
    def not_assessable(
        self,
        unit: Unit,
        *,
        claim: str,
        reason: str,
        test: str = "",
        h0: str = "",
        direction: str = "greater",
    ) -> Verdict: ...
    def seed_for(self, *keys: Any) -> int: ...
    def progress(
        self, iterable: Iterable[T], *, description: str, total: int | None = None
    ) -> Iterator[T]: ...
    def cached(
        self, key: dict[str, Any], compute: Callable[[], Any], *, kind: str, shared: bool = False
    ) -> Any: ...


def source_label(es: EdgeScores) -> str:
    """How a claim names an edge source: a model's by its method and model
    (``attention [scgpt_demo]``), a model-free one by its name in the config
    (``spearman_attention_cells``), so two co-expression sources never read alike."""
    if es.model:
        return f"{es.method} [{es.model}]"
    return str(es.params.get("edges", es.method))


def select_layer(
    layers: list[int], scores: list[float], verdict_layer: int | str, *, what: str
) -> tuple[int, int, str]:
    """The layer behind a claim about a layered source. ``layers`` ascending, ``scores``
    the per-layer values the "best" rule maximises. ``verdict_layer``: an index fixed a
    priori (negative counts from the last) or ``"best"``, whose p is then multiplied by
    the number of layers (Bonferroni: valid whatever the selection rule). Returns the
    position in ``layers``, the multiplier, and why (for the scorecard)."""
    k = len(layers)
    if verdict_layer == "best":
        vals = np.asarray(scores, dtype=float)
        i = int(np.nanargmax(vals)) if np.isfinite(vals).any() else k - 1
        return (
            i,
            k,
            f"best of {k} layers ({layers[0]}–{layers[-1]}) by {what}; p × {k} (Bonferroni)",
        )
    try:
        i = layers.index(layers[int(verdict_layer)])
    except IndexError:
        raise ValueError(
            f"verdict_layer={verdict_layer} but the source has layers {layers[0]}–{layers[-1]}; "
            "use an index in that range or 'best'."
        ) from None
    return i, 1, f"layer {layers[i]} fixed a priori (verdict_layer: {verdict_layer})"


def choose_layer(
    items: list[tuple[int, StatTestResult]],
    verdict_layer: int | str,
    *,
    claimed: str = "greater",
) -> tuple[int, StatTestResult, str]:
    """The layer a claim about a layered source rests on, from per-layer typed results
    ``(layer, result)``: fixed a priori (``verdict_layer`` an index, negative from the
    last), or ``"best"``: the largest null-standardised effect on the claimed side, its
    p, tails and floor × number of layers (Bonferroni: valid whatever the selection).
    Returns the position in ``items`` (sorted by layer), the result to claim with, and why."""
    items = sorted(items, key=lambda x: x[0])
    layers = [lay for lay, _ in items]
    sign = 1.0 if claimed == "greater" else -1.0
    scores = [sign * r.standardised for _, r in items]
    i, mult, why = select_layer(layers, scores, verdict_layer, what="null-standardised effect")
    return i, items[i][1].times(mult, why=why if mult > 1 else ""), why


def best_of(
    results: list[StatTestResult], *, claimed: str = "greater", what: str
) -> tuple[int, StatTestResult, str]:
    """ "Some member of a set shows the effect" (e.g. some head recovers): the member with
    the smallest one-sided p on the claimed side, that p × the set's size (Bonferroni),
    as a one-sided test of the claimed side (an anti-effect of one member cannot turn the
    answer into "opposite"). Returns the member's position, the result, and why."""
    from dataclasses import replace

    tails = np.array([r.one_sided(claimed) for r in results], dtype=float)
    k = len(results)
    if not np.isfinite(tails).any():
        return 0, results[0], f"no {what} could be tested"
    i = int(np.nanargmin(tails))
    r = results[i]
    # an untestable member (NaN floor) must not hide the others' floors
    floors = np.array(
        [x.p_floor if x.alternative != "two-sided" else x.p_floor / 2 for x in results], dtype=float
    )
    floor = float(np.nanmin(floors)) if np.isfinite(floors).any() else 1.0
    why = f"smallest one-sided p of {k} {what}s (× {k}, Bonferroni)"
    nan = math.nan
    best = replace(
        r,
        p=min(1.0, float(tails[i]) * k),
        p_greater=min(1.0, float(tails[i]) * k) if claimed == "greater" else nan,
        p_less=min(1.0, float(tails[i]) * k) if claimed == "less" else nan,
        p_floor=min(1.0, floor * k),
        alternative=claimed,
        test=f"{r.test}; {why}",
    )
    return i, best, why


def evaluable_pairs(
    genes: pd.Index, reference: ReferenceNetwork, *, min_positives: int, where: str, notes: list
) -> CandidatePairs | None:
    """The candidate pairs of ``reference`` over ``genes``, or None — with a note saying
    why — when fewer than ``min_positives`` reference edges are among them."""
    from scfm_audit.evaluate._recovery import candidate_pairs

    pairs = candidate_pairs(genes, reference)
    if pairs.n_pos < min_positives:
        notes.append(
            f"{where}: only {pairs.n_pos} reference edges among the scored genes "
            f"(< {min_positives}); not evaluated."
        )
        return None
    return pairs
