"""``scfm-audit validate``: check a config, its files, columns, references and models
without running any analysis."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def validate_config(path: str | Path) -> list[Check]:
    """Every check, in order; stops early only if the config itself is invalid."""
    from scfm_audit.pipeline._cache import ArtifactCache
    from scfm_audit.pipeline._config import load_config
    from scfm_audit.pipeline._runner import Progress, Resources

    checks: list[Check] = []
    try:
        cfg = load_config(path)
    except ValueError as e:
        return [Check("config", False, str(e))]
    checks.append(
        Check(
            "config",
            True,
            f"{len(cfg.datasets)} datasets, {len(cfg.references)} references, "
            f"{len(cfg.models)} models, {len(cfg.analyses)} analyses",
        )
    )
    res = Resources(cfg, ArtifactCache(None), Progress(quiet=True))
    for name, d in cfg.datasets.items():
        if d.simulate is not None:
            checks.append(Check(f"dataset {name}", True, "simulated (built at run time)"))
            continue
        try:
            from scfm_audit.data._dataset import load_dataset

            adata = load_dataset(d.path, res.dataset_spec(name), backed=True, name=name)
            checks.append(
                Check(f"dataset {name}", True, f"{adata.n_obs} cells × {adata.n_vars} genes")
            )
            if adata.isbacked:
                adata.file.close()
        except (ValueError, OSError) as e:
            checks.append(Check(f"dataset {name}", False, str(e)))
    for name, r in cfg.references.items():
        if r.format == "simulated":
            checks.append(Check(f"reference {name}", True, f"planted {r.network} of {r.dataset}"))
            continue
        try:
            net = res.reference(name)
            checks.append(Check(f"reference {name}", True, repr(net)))
        except (ValueError, OSError, KeyError) as e:
            checks.append(Check(f"reference {name}", False, str(e)))
    for name in cfg.models:
        try:
            m = res.model(name)
            checks.append(
                Check(f"model {name}", True, f"{m.family}: {m.n_layers} layers × {m.n_heads} heads")
            )
        except (ValueError, OSError, KeyError) as e:
            checks.append(Check(f"model {name}", False, str(e)))
    return checks
