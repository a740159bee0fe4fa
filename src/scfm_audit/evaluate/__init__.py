"""Metrics and analyses. Importing this package registers every built-in analysis."""

from scfm_audit.evaluate import (
    _grn_recovery,  # noqa: F401  (registers grn_recovery)
    _synthetic_controls,  # noqa: F401  (registers synthetic_controls)
)
from scfm_audit.evaluate._calibration import CALIBRATIONS, calibrate
from scfm_audit.evaluate._grn_recovery import edge_recovery
from scfm_audit.evaluate._metrics import auprc, auroc, early_precision_ratio
from scfm_audit.evaluate._recovery import candidate_pairs, vertex_bootstrap_auroc

__all__ = [
    "CALIBRATIONS",
    "auprc",
    "auroc",
    "calibrate",
    "candidate_pairs",
    "early_precision_ratio",
    "edge_recovery",
    "vertex_bootstrap_auroc",
]
