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

Beside them: the analysis contract (:mod:`._contract`: spec, context, result, verdict,
registration) and the calibration harness (:mod:`._calibration`) that every analysis
registers its null and planted scenarios with. Analyses use the kernels below them
(``evaluate``, ``stats``, ``edges``, ``data``) and never the pipeline, report or CLI.
"""

from scfm_audit.analyses import (  # noqa: F401  (registers each analysis)
    attention_vs_coexpression,
    context_dependence,
    cssi,
    gene_level_null,
    grn_recovery,
    head_ablation,
    head_specialisation,
    in_silico_perturbation,
    incremental_value,
    layer_organisation,
    perturbation_prediction,
    perturbation_responders,
    scaling,
    synthetic_controls,
)
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
