"""Check the free-form options of a config entry (``edges.<name>``, ``models.<name>``,
``references.<name>``) against the keyword arguments of the function they are passed to,
so that a misspelt or unknown option is a config error with "did you mean", not a
``TypeError`` deep inside a run.
"""

from __future__ import annotations

import difflib
import inspect
import json
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, ValidationError, create_model

if TYPE_CHECKING:
    from scfm_audit.models._base import ModelAdapter

#: Scorers registered as ``fn(adata, *, genes, seed, **params)`` forward ``params`` to
#: these functions; their keyword arguments are the options a config may set.
SCORER_TARGETS = {
    "coexpression": ("scfm_audit.edges._coexpression", "coexpression"),
    "gene_level": ("scfm_audit.edges._gene_level", "gene_level_scores"),
    "attention": ("scfm_audit.edges._attention", "extract_attention_edges"),
}

#: Arguments the runner fills in itself, per kind of entry; a config cannot set them.
RESERVED = {
    "edges": frozenset(
        {"adata", "adapter", "model", "genes", "seed", "cells", "dataset", "progress"}
    ),
    "models": frozenset({"path", "name", "device", "layout", "module", "vocab", "args"}),
    "references": frozenset({"path", "name"}),
}


def keyword_parameters(*fns: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters accepted by ``fns`` together (all but the first positional), or
    None when one of them takes ``**kwargs`` that go somewhere we cannot see."""
    out: dict[str, inspect.Parameter] = {}
    open_ended = False
    for fn in fns:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
        for n, p in sig.parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif p.kind in (
                inspect.Parameter.KEYWORD_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                if n not in ("self", "cls"):
                    out[n] = p
    if open_ended and len(fns) == 1:
        return None
    return out


def scorer_parameters(name: str, fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """Options of a registered edge scorer (following its ``**params`` for built-ins)."""
    target = SCORER_TARGETS.get(name)
    if target is None:
        return keyword_parameters(fn)
    import importlib

    return keyword_parameters(fn, getattr(importlib.import_module(target[0]), target[1]))


def model_parameters(cls: type[ModelAdapter]) -> dict[str, inspect.Parameter] | None:
    """Options of a model family: keywords of ``cls.load`` plus, when ``load`` forwards
    ``**options`` to the constructor, the constructor's keyword-only arguments."""
    load = keyword_parameters(cls.load)
    if load is not None:
        return load
    init = inspect.signature(cls.__init__).parameters.values()
    own = {
        n: p
        for n, p in inspect.signature(cls.load).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return own | {p.name: p for p in init if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_options(
    where: str,
    given: dict[str, Any],
    accepted: dict[str, inspect.Parameter] | None,
    *,
    fn: Callable[..., Any] | list[Callable[..., Any]] | None = None,
    owner: str,
    reserved: frozenset[str] = frozenset(),
    elsewhere: dict[str, list[str]] | None = None,
) -> list[str]:
    """Error lines for ``given`` options: unknown names (with "did you mean") and, where
    the function annotates its arguments, values of the wrong type or outside a
    ``Literal``. ``elsewhere``: options of sibling kinds (other reference formats) by
    kind, so that an option of another kind is named as such rather than matched to an
    unrelated option of this one."""
    if accepted is None:
        return []
    settable = {n: p for n, p in accepted.items() if n not in reserved}
    errors = []
    for key in given:
        if key in settable:
            continue
        close = difflib.get_close_matches(key, list(settable), n=2, cutoff=0.75)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        if not close and elsewhere:
            other = {o: kind for kind, opts in elsewhere.items() for o in opts}
            near = difflib.get_close_matches(key, list(other), n=1, cutoff=0.75)
            if near:
                hint = f" {near[0]!r} is an option of {other[near[0]]}, not of this one."
        errors.append(
            f"{where}.{key}: unknown option for {owner}.{hint} "
            f"Accepted: {', '.join(sorted(settable)) or '(none)'}."
        )
    if errors:
        return errors
    return _check_values(where, given, settable, fn)


def _check_values(
    where: str,
    given: dict[str, Any],
    params: dict[str, inspect.Parameter],
    fn: Callable[..., Any] | list[Callable[..., Any]] | None,
) -> list[str]:
    hints: dict[str, Any] = {}
    for f in _functions(fn):
        try:
            hints.update(typing.get_type_hints(f))
        except Exception:  # unresolvable annotations (TYPE_CHECKING imports): skip values
            continue
    from scfm_audit.pipeline._config import _accepts_bool, _holds_bool

    booleans = [
        f"{where}.{key}: got {json.dumps(v, default=str)}; a boolean is "
        "not accepted here (it would be read as 1 or 0)."
        for key, v in given.items()
        if key in hints and _holds_bool(v) and not _accepts_bool(hints[key])
    ]
    if booleans:
        return booleans
    fields = {}
    for key in given:
        ann = hints.get(key, Any)
        default = params[key].default
        fields[key] = (ann, ... if default is inspect.Parameter.empty else default)
    try:
        model = create_model(  # type: ignore[call-overload]
            "Options", __config__=ConfigDict(arbitrary_types_allowed=True), **fields
        )
    except Exception:  # an annotation pydantic cannot express: names were checked above
        return []
    try:
        model(**given)
    except ValidationError as e:
        return [
            f"{where}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']} "
            f"(got {err.get('input')!r})"
            for err in e.errors()
        ]
    return []


def _functions(fn: Callable[..., Any] | Any) -> list[Callable[..., Any]]:
    if fn is None:
        return []
    if isinstance(fn, list | tuple):
        return [f for f in fn if f is not None]
    return [fn]
