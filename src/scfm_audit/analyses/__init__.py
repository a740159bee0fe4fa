"""The analysis catalogue: one module per analysis, registered on import.

Families (see each module's docstring):

* A. Does attention encode biology? — :mod:`~scfm_audit.analyses.grn_recovery`,
  :mod:`~scfm_audit.analyses.layer_organisation`, :mod:`~scfm_audit.analyses.head_specialisation`
* A (headline): :mod:`~scfm_audit.analyses.attention_vs_coexpression`,
  :mod:`~scfm_audit.analyses.gene_level_null`
* B. Does it predict causal effects? — :mod:`~scfm_audit.analyses.perturbation_prediction`,
  :mod:`~scfm_audit.analyses.context_dependence`,
  :mod:`~scfm_audit.analyses.in_silico_perturbation`,
  :mod:`~scfm_audit.analyses.perturbation_responders`
* C. Does the model use those heads? — :mod:`~scfm_audit.analyses.head_ablation`
* D. Scaling and CSSI — :mod:`~scfm_audit.analyses.cssi`, :mod:`~scfm_audit.analyses.scaling`
* E. Quality control — :mod:`~scfm_audit.analyses.synthetic_controls` (the calibration
  harness inside an audit)

Adding an analysis is one file: every public module of this folder (a name without a
leading underscore) is imported here and registers itself with ``@register_analysis`` and
``register_calibration``. Beside them: the analysis contract (:mod:`._contract`: spec, context, result, verdict,
registration) and the calibration harness (:mod:`._calibration`) that every analysis
registers its null and planted scenarios with. Analyses use the kernels below them
(``evaluate``, ``stats``, ``edges``, ``data``) and never the pipeline, report or CLI.
"""

import importlib
import pkgutil

from scfm_audit.analyses._calibration import (
    CALIBRATIONS,
    Calibration,
    ReplicateOutcome,
    Scenario,
    calibrate,
    register_calibration,
)
from scfm_audit.analyses._contract import (
    ANALYSES,
    AnalysisParams,
    AnalysisResult,
    AnalysisSpec,
    Verdict,
    register_analysis,
)

__all__ = [
    "ANALYSES",
    "CALIBRATIONS",
    "AnalysisParams",
    "AnalysisResult",
    "AnalysisSpec",
    "Calibration",
    "ReplicateOutcome",
    "Scenario",
    "Verdict",
    "calibrate",
    "register_analysis",
    "register_calibration",
]


def _discover() -> list[str]:
    """Import every public module of this package (each registers its analysis), in
    name order so registration does not depend on the file system's listing order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


MODULES = _discover()
