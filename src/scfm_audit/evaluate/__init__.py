"""Pure kernels built on ``stats``: recovery of reference networks (candidate universe,
two-way bootstrap, structure-preserving nulls), the model's own in-silico perturbation
and its comparison with observed effects. DE and regression kernels will live here too;
the analyses that use them live in :mod:`scfm_audit.analyses`."""

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
from scfm_audit.evaluate._recovery import (
    candidate_pairs,
    edge_recovery,
    vertex_bootstrap_auroc,
    weighted_auroc,
)

__all__ = [
    "candidate_pairs",
    "cells_needed",
    "compare_in_silico",
    "cross_scores",
    "detectable_effect",
    "detection_power",
    "edge_recovery",
    "in_silico_effects",
    "in_silico_test",
    "perturbable",
    "simulate_power",
    "vertex_bootstrap_auroc",
    "weighted_auroc",
]
