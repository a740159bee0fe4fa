"""scfm-audit: audit the mechanistic interpretability of single-cell foundation models.

``import scfm_audit as sa`` gives the layers as sub-modules (``sa.data``, ``sa.edges``,
``sa.models``, ``sa.stats``, ``sa.evaluate``, ``sa.analyses``, ``sa.pipeline``,
``sa.report``), imported on
first use, and the runner as ``sa.run_audit``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("data", "edges", "models", "stats", "evaluate", "analyses", "pipeline", "report")

__all__ = [*_SUBMODULES, "__version__", "run_audit"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"scfm_audit.{name}")
    if name == "run_audit":
        from scfm_audit.pipeline import run_audit

        return run_audit
    raise AttributeError(f"module 'scfm_audit' has no attribute {name!r}")
