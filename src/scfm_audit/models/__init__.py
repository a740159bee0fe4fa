"""Model adapters (scGPT, Geneformer), hook sites, interventions, demo training."""

from scfm_audit.models._base import (
    MODEL_FAMILIES,
    CheckpointError,
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    load_model,
)
from scfm_audit.models._hooks import HookContext, HookPoint, hooks
from scfm_audit.models._interventions import (
    Intervention,
    ablate_heads,
    check_intervention_order,
    compose,
    compute_head_means,
    fidelity,
    intervention_order,
    parse_heads,
    zero_mlp,
)
from scfm_audit.models.geneformer import GeneformerAdapter, build_geneformer_checkpoint
from scfm_audit.models.scgpt import ScGPTAdapter, build_scgpt_checkpoint

__all__ = [
    "MODEL_FAMILIES",
    "CheckpointError",
    "GeneformerAdapter",
    "HookContext",
    "HookPoint",
    "Intervention",
    "ModelAdapter",
    "ModelOutput",
    "ScGPTAdapter",
    "TokenizedBatch",
    "VocabularyReport",
    "ablate_heads",
    "build_geneformer_checkpoint",
    "build_scgpt_checkpoint",
    "check_intervention_order",
    "compose",
    "compute_head_means",
    "fidelity",
    "hooks",
    "intervention_order",
    "load_model",
    "parse_heads",
    "zero_mlp",
]
