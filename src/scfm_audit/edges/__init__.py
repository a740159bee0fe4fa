"""Edge scorers: every one returns :class:`EdgeScores` (genes × genes)."""

from scfm_audit.edges._coexpression import coexpression, pearson_matrix, spearman_matrix
from scfm_audit.edges._gene_level import gene_level_scores, gene_statistics
from scfm_audit.edges._registry import EDGE_SCORERS, register_scorer
from scfm_audit.edges._scores import EdgeScores

__all__ = [
    "EDGE_SCORERS",
    "EdgeScores",
    "coexpression",
    "extract_attention_accumulator",
    "extract_attention_edges",
    "gene_level_scores",
    "gene_statistics",
    "pearson_matrix",
    "register_scorer",
    "spearman_matrix",
]


def __getattr__(name: str):
    # attention extraction imports torch; keep `import scfm_audit.edges` light
    if name in (
        "extract_attention_edges",
        "extract_attention_accumulator",
        "AttentionAccumulator",
        "GroupedAttentionAccumulator",
    ):
        from scfm_audit.edges import _attention

        return getattr(_attention, name)
    raise AttributeError(name)
