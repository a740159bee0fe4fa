"""Figure helpers the analyses share (matplotlib, Agg): ROC/PR, metric by layer, head
heat maps, null distributions, forest plots, hexbins, scaling curves. Below the analyses
and the report, so that analyses draw their figures without importing the report."""

from scfm_audit.plotting._figures import (
    PALETTE,
    ablation_figure,
    cssi_figures,
    distribution_figure,
    forest_figure,
    head_heatmap,
    hexbin_figure,
    leakage_figure,
    metric_by_layer_figure,
    null_distribution_figure,
    nulls_figure,
    perturbation_bars_figure,
    reliability_figure,
    roc_pr_figure,
    scaling_figure,
    sweep_heatmap,
)
from scfm_audit.plotting._quality import agreement_heatmap, stability_figure

__all__ = [
    "PALETTE",
    "ablation_figure",
    "agreement_heatmap",
    "cssi_figures",
    "distribution_figure",
    "forest_figure",
    "head_heatmap",
    "hexbin_figure",
    "leakage_figure",
    "metric_by_layer_figure",
    "null_distribution_figure",
    "nulls_figure",
    "perturbation_bars_figure",
    "reliability_figure",
    "roc_pr_figure",
    "scaling_figure",
    "stability_figure",
    "sweep_heatmap",
]
