"""Pure kernels built on ``stats``: recovery of reference networks (candidate universe,
two-way bootstrap, structure-preserving nulls), agreement of edge scores between halves or
contexts beyond gene-level structure, the model's own in-silico perturbation and its
comparison with observed effects. DE and regression kernels will live here too;
the analyses that use them live in :mod:`scfm_audit.analyses`."""

from scfm_audit.evaluate._agreement import (
    ScoreSet,
    bootstrap_agreement,
    relabelling_test,
)
from scfm_audit.evaluate._calibration_metrics import (
    brier_decomposition,
    conformal_sets,
    expected_calibration_error,
    fit_maps,
    perturbation_splits,
    reliability_table,
    spiegelhalter_test,
)
from scfm_audit.evaluate._detectability import (
    cells_needed,
    detectable_effect,
    detection_power,
    simulate_power,
)
from scfm_audit.evaluate._in_silico import (
    compare_in_silico,
    cross_scores,
    in_silico_effects,
    in_silico_test,
    perturbable,
)
from scfm_audit.evaluate._leakage import (
    artifact_sensitivity,
    cv_balanced_accuracy,
    edge_products,
    leakage_test,
    top_edges,
)
from scfm_audit.evaluate._recovery import (
    candidate_pairs,
    edge_recovery,
    vertex_bootstrap_auroc,
    weighted_auroc,
)

__all__ = [
    "ScoreSet",
    "artifact_sensitivity",
    "bootstrap_agreement",
    "brier_decomposition",
    "candidate_pairs",
    "cells_needed",
    "compare_in_silico",
    "conformal_sets",
    "cross_scores",
    "cv_balanced_accuracy",
    "detectable_effect",
    "detection_power",
    "edge_products",
    "edge_recovery",
    "expected_calibration_error",
    "fit_maps",
    "in_silico_effects",
    "in_silico_test",
    "leakage_test",
    "perturbable",
    "perturbation_splits",
    "relabelling_test",
    "reliability_table",
    "simulate_power",
    "spiegelhalter_test",
    "top_edges",
    "vertex_bootstrap_auroc",
    "weighted_auroc",
]
