"""What the perturbation analyses (family B, and head ablation's readouts) share: the
responder labels of a dataset, computed once per parameter set and cached.

The responder definition is a parameter of every analysis that uses it
(:class:`ResponderParams`), so a run states its thresholds and FDR scope in each
analysis' resolved parameters.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import AnalysisParams


class ResponderParams(AnalysisParams):
    """Responder definition shared by the perturbation analyses (paper defaults)."""

    lfc: float = Field(0.5, ge=0, description="responder: |log2 fold change| above this")
    fdr: float = Field(0.05, gt=0, lt=1, description="responder: BH q below this")
    fdr_scope: Literal["within", "screen"] = Field(
        "within",
        description="BH over the genes of one perturbation ('within', the paper's scope) or "
        "over every (perturbation, gene) of the screen ('screen')",
    )
    de_method: Literal["welch", "wilcoxon"] = Field(
        "welch",
        description="DE test on log-normalised data: 'welch' (the paper's) or 'wilcoxon' "
        "(Mann–Whitney, scanpy's tie handling)",
    )


def dataset_responders(ctx, dataset: str, p: ResponderParams) -> pd.DataFrame:
    """DE of every perturbation of ``dataset`` against its arm's controls with the
    ``responder`` column (see :mod:`scfm_audit.evaluate._de`); cached per parameters."""
    from scfm_audit.evaluate._de import differential_expression, responder_labels

    def compute() -> pd.DataFrame:
        de = differential_expression(
            ctx.dataset(dataset),
            ctx.dataset_spec(dataset),
            method=p.de_method,
            progress=ctx.progress,
        )
        return responder_labels(de, lfc=p.lfc, fdr=p.fdr, scope=p.fdr_scope)

    key = {
        "what": "responders",
        "dataset": ctx.dataset_fingerprint(dataset),
        "params": {k: getattr(p, k) for k in ResponderParams.model_fields},
    }
    return ctx.cached(key, compute, kind="responders")
