"""Config, artifact cache and runner."""

from scfm_audit.analyses._contract import (
    ANALYSES,
    AnalysisParams,
    AnalysisResult,
    AnalysisSpec,
    Verdict,
    register_analysis,
)
from scfm_audit.analyses._run import RunResult
from scfm_audit.pipeline._cache import ArtifactCache
from scfm_audit.pipeline._config import AuditConfig, ConfigError, config_from_dict, load_config
from scfm_audit.pipeline._demo import demo_config
from scfm_audit.pipeline._runner import RunContext, run_audit

__all__ = [
    "ANALYSES",
    "AnalysisParams",
    "AnalysisResult",
    "AnalysisSpec",
    "ArtifactCache",
    "AuditConfig",
    "ConfigError",
    "RunContext",
    "RunResult",
    "Verdict",
    "config_from_dict",
    "demo_config",
    "load_config",
    "register_analysis",
    "run_audit",
]
