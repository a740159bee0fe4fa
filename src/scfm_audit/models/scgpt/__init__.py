"""scGPT: the real checkpoint format, scGPT's own tokenization, a hooked forward.

``_modules``: :class:`ScGPTModule`, scGPT's ``TransformerModel`` in plain PyTorch with the
checkpoint's parameter names. ``_checkpoint``: the folder layout (``args.json``,
``vocab.json``, ``best_model.pt``), the flash-attention key layouts and the errors that name
the file, key or shape at fault. ``_adapter``: :class:`ScGPTAdapter`, the family behind the
shared adapter protocol (tokenization, forward, perturbation). ``_build``: tiny random
checkpoints in the released layout, for tests and the demo.
"""

from scfm_audit.models.scgpt._adapter import ScGPTAdapter, bin_expression
from scfm_audit.models.scgpt._build import build_scgpt_checkpoint
from scfm_audit.models.scgpt._modules import ScGPTConfig, ScGPTModule

__all__ = [
    "ScGPTAdapter",
    "ScGPTConfig",
    "ScGPTModule",
    "bin_expression",
    "build_scgpt_checkpoint",
]
