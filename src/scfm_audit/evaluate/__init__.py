"""Pure kernels built on ``stats``: recovery of reference networks (candidate universe,
two-way bootstrap, structure-preserving nulls). DE and regression kernels will live here
too; the analyses that use them live in :mod:`scfm_audit.analyses`."""

from scfm_audit.evaluate._recovery import (
    candidate_pairs,
    edge_recovery,
    vertex_bootstrap_auroc,
    weighted_auroc,
)

__all__ = ["candidate_pairs", "edge_recovery", "vertex_bootstrap_auroc", "weighted_auroc"]
