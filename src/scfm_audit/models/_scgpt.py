"""Former home of the scGPT family, now :mod:`scfm_audit.models.scgpt`; kept so that
imports written against it (``analyses/head_ablation.py``) keep working."""

from scfm_audit.models.scgpt import (
    ScGPTAdapter,
    ScGPTConfig,
    ScGPTModule,
    bin_expression,
    build_scgpt_checkpoint,
)

__all__ = [
    "ScGPTAdapter",
    "ScGPTConfig",
    "ScGPTModule",
    "bin_expression",
    "build_scgpt_checkpoint",
]
