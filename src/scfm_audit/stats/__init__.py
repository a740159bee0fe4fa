"""Test registry, BH-FDR, resampling, DeLong, rewiring and test wrappers."""

from scfm_audit.stats._delong import DeLongResult, delong_auroc_var, delong_test
from scfm_audit.stats._fdr import bh_fdr
from scfm_audit.stats._montecarlo import MonteCarloP, adaptive_mc_pvalue, permute_within_classes
from scfm_audit.stats._paired import (
    hodges_lehmann,
    rank_biserial,
    sign_flip_test,
    signed_rank,
    within_block_permutation,
)
from scfm_audit.stats._registry import TestRecord, TestRegistry
from scfm_audit.stats._resampling import (
    BootstrapResult,
    PermutationResult,
    bootstrap_ci,
    empirical_p,
    label_permutation_auroc,
    permutation_test,
)
from scfm_audit.stats._rewire import curveball, rewire_labels, rewire_undirected
from scfm_audit.stats._tests import (
    StatTestResult,
    cohens_d,
    fisher_exact,
    mann_whitney,
    paired_wilcoxon,
    partial_spearman,
    sign_test,
    spearman_trend,
    welch_t,
)
from scfm_audit.stats._verdict import (
    ANSWERS,
    FAMILY_SENTENCE,
    answer,
    answer_claims,
    answer_result,
)

__all__ = [
    "ANSWERS",
    "FAMILY_SENTENCE",
    "BootstrapResult",
    "DeLongResult",
    "MonteCarloP",
    "PermutationResult",
    "StatTestResult",
    "TestRecord",
    "TestRegistry",
    "adaptive_mc_pvalue",
    "answer",
    "answer_claims",
    "answer_result",
    "bh_fdr",
    "bootstrap_ci",
    "cohens_d",
    "curveball",
    "delong_auroc_var",
    "delong_test",
    "empirical_p",
    "fisher_exact",
    "hodges_lehmann",
    "label_permutation_auroc",
    "mann_whitney",
    "paired_wilcoxon",
    "partial_spearman",
    "permutation_test",
    "permute_within_classes",
    "rank_biserial",
    "rewire_labels",
    "rewire_undirected",
    "sign_flip_test",
    "sign_test",
    "signed_rank",
    "spearman_trend",
    "welch_t",
    "within_block_permutation",
]
