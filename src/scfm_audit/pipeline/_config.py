"""The audit config: one YAML file, validated by pydantic, errors pointing at the key.

```yaml
seed: 0
output: results/k562
datasets:
  k562: {path: data/k562.h5ad, perturbation: gene, control: non-targeting,
         modality: modality, cell_state: leiden}
  sim:  {simulate: {n_cells: 3000, seed: 0}}          # the built-in synthetic benchmark
references:
  trrust: {format: trrust, path: refs/trrust_rawdata.human.tsv}
  sim_grn: {format: simulated, dataset: sim, network: grn}
models:
  scgpt: {family: scgpt, path: models/scGPT_human}
edges:                      # edge-score sources the analyses can name
  spearman: {scorer: coexpression, method: spearman}
  scgpt_attn: {scorer: attention, model: scgpt, per_head: true}
analyses:
  grn_recovery: {references: [trrust], edges: [spearman, scgpt_attn]}
```

Relative paths are resolved against the config file's folder; absolute paths are kept
as they are. Every key is checked: a misspelt one gets "did you mean", options of edge
scorers, reference loaders and model families are checked against what those accept.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: Analysis parameter fields that name other config entries, checked at validation.
CROSS_REFERENCES = {
    "datasets": "datasets",
    "dataset": "datasets",
    "references": "references",
    "reference": "references",
    "edges": "edges",
    "models": "models",
    "model": "models",
}


#: Fewest cells an edge source may be computed on (``edges.<name>.min_source_cells``).
MIN_CELLS = 30


class ConfigError(ValueError):
    """An invalid audit config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    """One dataset: an ``.h5ad`` file (``path``) or the built-in simulator (``simulate``)."""

    path: Path | None = None
    simulate: dict[str, Any] | None = None
    counts: str = "X"
    perturbation: str | None = None
    control: str | list[str] = "non-targeting"
    modality: str | None = None
    cell_state: str | None = None
    batch: str | None = None
    gene_id_column: str | None = None
    backed: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.simulate is None):
            raise ValueError("give exactly one of 'path' (an .h5ad file) or 'simulate'")
        if self.simulate is not None:
            # the simulator's columns are fixed; fill them in unless the user overrides
            for k, v in {
                "perturbation": "perturbation",
                "modality": "modality",
                "cell_state": "cell_state",
                "batch": "donor",
                "gene_id_column": "ensembl_id",
            }.items():
                if getattr(self, k) is None:
                    object.__setattr__(self, k, v)
        return self


class ReferenceConfig(BaseModel):
    """``format`` is a registered loader (trrust, dorothea, collectri, string, table,
    chip) or ``simulated`` (the simulator's planted ``grn`` / ``ppi`` of ``dataset``).
    Other keys are passed to the loader (e.g. ``min_score``, ``aliases``)."""

    model_config = ConfigDict(extra="allow")
    format: str
    path: Path | None = None
    dataset: str | None = None
    network: Literal["grn", "ppi"] = "grn"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(BaseModel):
    """A model checkpoint of a registered ``family``. ``device``: ``cpu``, ``cuda``,
    ``cuda:<i>`` or ``auto`` (default: CUDA when available); ``dtype``: the forward dtype
    of every pass of this model (``float32``, ``bfloat16``, ``float16``; attention is
    summed in float32 whatever it is); ``batch_size``: cells per attention-extraction
    batch, an integer or ``auto`` (from free GPU memory; 16 on CPU), default 16 (an edge
    source's own ``batch_size`` wins). Other keys are the family's options (tokenizer
    settings)."""

    model_config = ConfigDict(extra="allow")
    family: str
    path: Path
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int | Literal["auto"] | None = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str | None) -> str | None:
        from scfm_audit.models._device import parse_device

        # the name only: whether a GPU is there is asked where the model is loaded (this
        # machine's input checks for a local run, each worker's for a cluster)
        parse_device(v)
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {v}")
        return v

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the family's ``load`` besides path, device and name:
        the family's own options, plus ``dtype`` and ``batch_size`` when set (left out at
        their defaults, so that a config without them loads exactly as before)."""
        out = dict(self.model_extra or {})
        if self.dtype != "float32":
            out["dtype"] = self.dtype
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        return out


class EdgeConfig(BaseModel):
    """An edge-score source. ``cells``: which cells it is computed on (``control`` =
    non-targeting cells, as the paper does; ``all``); ``max_cells`` subsamples (seeded);
    ``genes``: ``all`` or ``hvg`` (top ``n_top_genes`` highly variable). ``min_source_cells``:
    the run refuses a dataset that gives this source fewer cells (scores from a handful of
    cells have misleadingly tight CIs). Other keys are passed to the scorer."""

    model_config = ConfigDict(extra="allow")
    scorer: str
    model: str | None = None
    cells: Literal["control", "all"] = "control"
    max_cells: int | None = Field(default=2000, ge=1)
    min_source_cells: int = Field(default=MIN_CELLS, ge=2)
    genes: Literal["all", "hvg"] = "all"
    n_top_genes: int = Field(default=2000, ge=2)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


DEFAULT_EDGES = {
    "spearman": {"scorer": "coexpression", "method": "spearman"},
    "pearson": {"scorer": "coexpression", "method": "pearson"},
}


class ExecutorConfig(_Strict):
    """Where the heavy passes run (attention extraction, DE, calibration replicates,
    ablation head sets): ``local`` (this process; the default) or ``dask``. ``dask``
    without ``address`` starts a ``LocalCluster`` of ``n_workers`` processes ×
    ``threads_per_worker`` threads for the run and closes it at the end; with
    ``address`` (``tcp://host:8786``) it uses that running scheduler. Both give the same
    numbers (see ``docs/scaling.md``). ``shard_cells``: cells per attention-extraction
    task (part of the arithmetic, like a batch size: shards are summed in order).
    ``background`` (local only): one process beside the run draws the figures and runs the
    analyses that simulate their own data (``synthetic_controls``) while the others run,
    on machines with two or more cores; the outputs are the same either way."""

    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    shard_cells: int = Field(default=512, ge=1)
    background: bool = True

    @model_validator(mode="after")
    def _usable(self) -> ExecutorConfig:
        from scfm_audit.pipeline._executor import executor_config_problem

        problem = executor_config_problem(self)
        if problem:
            raise ValueError(problem)
        return self


class AuditConfig(_Strict):
    seed: int = 0
    output: Path = Path("results")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    datasets: dict[str, DatasetConfig]
    references: dict[str, ReferenceConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    edges: dict[str, EdgeConfig] = Field(
        default_factory=lambda: {k: EdgeConfig(**v) for k, v in DEFAULT_EDGES.items()}
    )
    analyses: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _some_data(cls, v: dict[str, DatasetConfig]) -> dict[str, DatasetConfig]:
        if not v:
            raise ValueError("at least one dataset is needed")
        return v

    def analysis_params(self) -> dict[str, Any]:
        """Validated parameter objects per analysis (raises ConfigError)."""
        from scfm_audit.analyses._contract import ANALYSES

        out, errors = {}, []
        for name, raw in self.analyses.items():
            base = analysis_base_name(name)
            if base not in ANALYSES:
                close = difflib.get_close_matches(base, ANALYSES.names(), n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                errors.append(
                    f"analyses.{name}: unknown analysis.{hint} "
                    "Run `scfm-audit analyses` for the list."
                )
                continue
            model = ANALYSES.get(base).params
            booleans = bool_errors(model, raw or {}, f"analyses.{name}")
            if booleans:  # pydantic would read true as 1 (a layer index, a draw count)
                errors.extend(booleans)
                continue
            try:
                out[name] = model(**(raw or {}))
            except ValidationError as e:
                errors.extend(_format_errors(e, prefix=f"analyses.{name}", model=model))
        if errors:
            raise ConfigError("Invalid config:\n  " + "\n  ".join(errors))
        return out

    def check_references(self, params: dict[str, Any]) -> None:
        """Every name an analysis, edge or reference points at must exist."""
        errors = []
        for name, p in params.items():
            for fld, section in CROSS_REFERENCES.items():
                val = getattr(p, fld, None)
                if val is None:
                    continue
                for item in [val] if isinstance(val, str) else list(val):
                    errors.extend(self._missing(f"analyses.{name}.{fld}", item, section))
        for name, e in self.edges.items():
            if e.model is not None:
                errors.extend(self._missing(f"edges.{name}.model", e.model, "models"))
        for name, r in self.references.items():
            if r.format == "simulated":
                if r.dataset is None:
                    errors.append(f"references.{name}: format 'simulated' needs 'dataset'")
                else:
                    errors.extend(
                        self._missing(f"references.{name}.dataset", r.dataset, "datasets")
                    )
                    if r.dataset in self.datasets and self.datasets[r.dataset].simulate is None:
                        errors.append(
                            f"references.{name}.dataset: {r.dataset!r} is not a simulated dataset"
                        )
            elif r.path is None:
                errors.append(f"references.{name}: 'path' is required for format {r.format!r}")
        errors.extend(self._option_errors())
        if errors:
            raise ConfigError("Invalid config:\n  " + "\n  ".join(errors))

    def _option_errors(self) -> list[str]:
        """Unknown scorers, formats and families, and options their functions do not take."""
        from scfm_audit._registry import UnknownNameError
        from scfm_audit.data._references import REFERENCE_LOADERS
        from scfm_audit.edges._registry import EDGE_SCORERS
        from scfm_audit.models._base import MODEL_FAMILIES
        from scfm_audit.pipeline._options import (
            RESERVED,
            check_options,
            keyword_parameters,
            model_parameters,
            scorer_parameters,
        )

        errors: list[str] = []
        for name, e in self.edges.items():
            try:
                fn = EDGE_SCORERS.get(e.scorer)
            except UnknownNameError as err:
                errors.append(f"edges.{name}.scorer: {err}")
                continue
            if e.scorer == "attention" and e.model is None:
                errors.append(f"edges.{name}: the attention scorer needs 'model' (a models entry)")
            accepted = scorer_parameters(e.scorer, fn)
            errors += check_options(
                f"edges.{name}",
                e.options(),
                accepted,
                fn=[fn, *_targets(e.scorer)],
                owner=f"edge scorer {e.scorer!r}",
                reserved=RESERVED["edges"],
            )
        for name, r in self.references.items():
            if r.format == "simulated":
                extra = sorted(r.options())
                if extra:
                    errors.append(
                        f"references.{name}: format 'simulated' takes only 'dataset' and "
                        f"'network'; remove {', '.join(extra)}"
                    )
                continue
            try:
                loader = REFERENCE_LOADERS.get(r.format)
            except UnknownNameError as err:
                errors.append(f"references.{name}.format: {err} (or 'simulated')")
                continue
            siblings = {
                f"format {f!r}": [
                    o for o in (keyword_parameters(fn) or {}) if o not in RESERVED["references"]
                ]
                for f, fn in REFERENCE_LOADERS.items()
                if f != r.format
            }
            errors += check_options(
                f"references.{name}",
                r.options(),
                keyword_parameters(loader),
                fn=loader,
                owner=f"reference format {r.format!r}",
                reserved=RESERVED["references"],
                elsewhere=siblings,
            )
        for name, m in self.models.items():
            try:
                cls = MODEL_FAMILIES.get(m.family)
            except UnknownNameError as err:
                errors.append(f"models.{name}.family: {err}")
                continue
            errors += check_options(
                f"models.{name}",
                m.options(),
                model_parameters(cls),
                fn=[cls.load, cls.__init__],
                owner=f"model family {m.family!r}",
                reserved=RESERVED["models"],
            )
        return errors

    def _missing(self, where: str, item: str, section: str) -> list[str]:
        known = list(getattr(self, section))
        if item in known:
            return []
        close = difflib.get_close_matches(item, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return [
            f"{where}: {item!r} is not defined under '{section}'.{hint} "
            f"Defined: {', '.join(known) or '(none)'}."
        ]


def bool_errors(model: type[BaseModel], raw: Any, prefix: str) -> list[str]:
    """Error lines for ``true`` / ``false`` given where ``model``'s field takes no boolean
    (pydantic reads ``true`` as 1, so ``verdict_layer: true`` would become layer 1 and
    ``n_boot: true`` one draw). Looks into lists and mappings of values too."""
    if not isinstance(raw, dict):
        return []
    out = []
    for key, value in raw.items():
        field = model.model_fields.get(str(key))
        if field is None:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):  # a section: its own fields
            out += bool_errors(ann, value, f"{prefix}.{key}")
            continue
        if not _holds_bool(value) or _accepts_bool(ann):
            continue
        import json

        out.append(
            f"{prefix}.{key}: expects {_expected(field.annotation)}, got "
            f"{json.dumps(value, default=str)}; a boolean is not accepted here (it would be "
            "read as 1 or 0; YAML also reads yes / no / on / off as booleans)."
        )
    return out


def _holds_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, list | tuple):
        return any(isinstance(x, bool) for x in v)
    if isinstance(v, dict):
        return any(isinstance(x, bool) for x in v.values())
    return False


def _accepts_bool(ann: Any) -> bool:
    import typing

    if ann is bool or ann is Any:
        return True
    origin = typing.get_origin(ann)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(ann))
    if origin is dict:
        return _accepts_bool(typing.get_args(ann)[1])
    args = typing.get_args(ann)
    return bool(args) and any(_accepts_bool(a) for a in args if a is not Ellipsis)


def _expected(ann: Any) -> str:
    import typing

    text = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
    if typing.get_origin(ann) in (typing.Union, type(int | None)):
        text = " or ".join(
            repr(a)
            if not isinstance(a, type)
            else {"int": "an integer"}.get(a.__name__, a.__name__)
            for arg in typing.get_args(ann)
            for a in (typing.get_args(arg) if typing.get_origin(arg) is Literal else [arg])
            if a is not type(None)
        )
    return {"int": "an integer", "float": "a number"}.get(text, text)


def analysis_base_name(name: str) -> str:
    """``grn_recovery@null`` → ``grn_recovery``: a tag after ``@`` lets one analysis run
    several times with different parameters in one config."""
    return name.split("@", 1)[0]


def _targets(scorer: str) -> list[Any]:
    import importlib

    from scfm_audit.pipeline._options import SCORER_TARGETS

    if scorer not in SCORER_TARGETS:
        return []
    module, fn = SCORER_TARGETS[scorer]
    return [getattr(importlib.import_module(module), fn)]


def _format_errors(
    e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[str]:
    """One line per pydantic error: the dotted key, what is wrong and, for an unknown key,
    the closest known keys."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        where = ".".join(x for x in (prefix, loc) if x)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_keys(model or AuditConfig, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=2, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            msg = f"unknown key.{hint} Known keys here: {', '.join(known)}."
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error", "model_type", "dict_type"):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{where}: {msg}")
    return lines


def _known_keys(model: Any, loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the (nested) pydantic model found at ``loc`` inside ``model``."""
    import typing

    def unwrap(ann: Any) -> Any:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if typing.get_origin(ann) in (typing.Union, type(int | None)) and args:
            return next((a for a in args if _is_model(a) or typing.get_origin(a) is dict), args[0])
        return ann

    ann = unwrap(model)
    for part in loc:
        if _is_model(ann):
            field = ann.model_fields.get(str(part))
            if field is None:
                return []
            ann = unwrap(field.annotation)
        elif typing.get_origin(ann) is dict:
            ann = unwrap(typing.get_args(ann)[1])
        else:
            return []
    return list(ann.model_fields) if _is_model(ann) else []


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate an audit YAML; relative paths resolve against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file not found: {path}; check the path.")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the audit YAML file inside it.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as a text file ({e}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], *, base: Path | None = None) -> AuditConfig:
    """Validate a config given as a dict; relative paths resolve against ``base`` (default:
    the working folder)."""
    booleans = bool_errors(AuditConfig, raw, "").copy()
    booleans = [b.lstrip(".") for b in booleans]
    sections = (("edges", EdgeConfig), ("datasets", DatasetConfig), ("models", ModelConfig))
    for section, model in sections:
        entries = raw.get(section)
        if isinstance(entries, dict):
            for name, entry in entries.items():
                booleans += bool_errors(model, entry, f"{section}.{name}")
    if booleans:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(booleans))
    try:
        cfg = AuditConfig(**raw)
    except ValidationError as e:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(_format_errors(e))) from None
    cfg = _resolve_paths(cfg, Path.cwd() if base is None else base)
    params = cfg.analysis_params()
    cfg.check_references(params)
    return cfg


def _resolve_paths(cfg: AuditConfig, base: Path) -> AuditConfig:
    """Relative paths → absolute, against ``base``; absolute paths stay as given (so a
    written ``config.resolved.yaml`` runs again from anywhere)."""
    base = base.absolute()

    def fix(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.normpath(base / p.expanduser()))

    for d in cfg.datasets.values():
        d.path = fix(d.path)
    for r in cfg.references.values():
        r.path = fix(r.path)
        extra = r.model_extra or {}
        for k in ("aliases",):
            if isinstance(extra.get(k), str):
                extra[k] = str(fix(Path(extra[k])))
    for m in cfg.models.values():
        m.path = fix(m.path) or m.path
    cfg.output = fix(cfg.output) or cfg.output
    return cfg


def config_to_yaml(cfg: AuditConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
