"""Report layer: the HTML run report and the figure helpers the analyses share."""

from scfm_audit.report._figures import (
    PALETTE,
    forest_figure,
    head_heatmap,
    metric_by_layer_figure,
    null_distribution_figure,
    nulls_figure,
    roc_pr_figure,
)
from scfm_audit.report._html import render_report

__all__ = [
    "PALETTE",
    "forest_figure",
    "head_heatmap",
    "metric_by_layer_figure",
    "null_distribution_figure",
    "nulls_figure",
    "render_report",
    "roc_pr_figure",
]
