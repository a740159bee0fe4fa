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

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class ConfigError(ValueError):
    """An invalid audit config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
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

    def model_post_init(self, _: Any) -> None:
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
    model_config = ConfigDict(extra="allow")
    family: str
    path: Path
    device: str | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EdgeConfig(BaseModel):
    """An edge-score source. ``cells``: which cells it is computed on (``control`` =
    non-targeting cells, as the paper does; ``all``); ``max_cells`` subsamples (seeded);
    ``genes``: ``all``, ``hvg`` (top ``n_top_genes`` highly variable) or ``references``
    (genes of the run's references). Other keys are passed to the scorer."""

    model_config = ConfigDict(extra="allow")
    scorer: str
    model: str | None = None
    cells: Literal["control", "all"] = "control"
    max_cells: int | None = Field(default=2000, ge=1)
    genes: Literal["all", "hvg"] = "all"
    n_top_genes: int = Field(default=2000, ge=2)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


DEFAULT_EDGES = {
    "spearman": {"scorer": "coexpression", "method": "spearman"},
    "pearson": {"scorer": "coexpression", "method": "pearson"},
}


class AuditConfig(_Strict):
    seed: int = 0
    output: Path = Path("results")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    datasets: dict[str, DatasetConfig]
    references: dict[str, ReferenceConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    edges: dict[str, EdgeConfig] = Field(
        default_factory=lambda: {k: EdgeConfig(**v) for k, v in DEFAULT_EDGES.items()}
    )
    analyses: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _some_data(cls, v: dict) -> dict:
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
            try:
                out[name] = ANALYSES.get(base).params(**(raw or {}))
            except ValidationError as e:
                errors.extend(_format_errors(e, prefix=f"analyses.{name}"))
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
        if errors:
            raise ConfigError("Invalid config:\n  " + "\n  ".join(errors))

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


def analysis_base_name(name: str) -> str:
    """``grn_recovery@null`` → ``grn_recovery``: a tag after ``@`` lets one analysis run
    several times with different parameters in one config."""
    return name.split("@", 1)[0]


def _format_errors(e: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        where = ".".join(x for x in (prefix, loc) if x)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the README's config reference)"
        lines.append(f"{where}: {msg}")
    return lines


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate an audit YAML; relative paths resolve against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], *, base: Path | None = None) -> AuditConfig:
    try:
        cfg = AuditConfig(**raw)
    except ValidationError as e:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(_format_errors(e))) from None
    if base is not None:
        cfg = _resolve_paths(cfg, base)
    params = cfg.analysis_params()
    cfg.check_references(params)
    return cfg


def _resolve_paths(cfg: AuditConfig, base: Path) -> AuditConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p)

    for d in cfg.datasets.values():
        d.path = fix(d.path)
    for r in cfg.references.values():
        r.path = fix(r.path)
        extra = r.model_extra or {}
        for k in ("aliases",):
            if isinstance(extra.get(k), str) and not Path(extra[k]).is_absolute():
                extra[k] = str(base / extra[k])
    for m in cfg.models.values():
        m.path = fix(m.path)
    cfg.output = fix(cfg.output) or cfg.output
    return cfg


def config_to_yaml(cfg: AuditConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
