"""Interventions on a model's heads and MLP blocks, built on the canonical hook sites.

Every intervention is an :class:`Intervention`: a reversible, re-enterable context
manager that attaches its hooks through ``adapter.hooks(...)`` on entry and removes them on
exit — also when the ``with`` block raises. Interventions compose: nest ``with`` blocks
or combine them with ``a & b`` / :func:`compose`.

The paper's three channels plus mean-ablation::

    ablate_heads(adapter, [(3, 5)], method="zero")      # head masking: z[..., h, :] = 0
    ablate_heads(adapter, [(3, 5)], method="mean",      # z[..., h, :] = mean over a
                 reference=compute_head_means(adapter, batches))  # reference set
    ablate_heads(adapter, [(3, 5)], method="uniform")   # pattern rows = 1/n over real keys
    zero_mlp(adapter, [3])                              # MLP output of layer 3 = 0

Order matters: an intervention at or after the site a readout reads cannot change that
readout (zeroing a head of layer 5 cannot change the attention read at layer 5 or
earlier). :func:`check_intervention_order` / :func:`intervention_order` say so
explicitly; :func:`fidelity` measures how much an intervention changed the model's
hidden states and outputs.
"""

from scfm_audit.models._interventions._ablate import (
    AblationMethod,
    ablate_heads,
    compute_head_means,
    parse_heads,
    zero_mlp,
)
from scfm_audit.models._interventions._fidelity import fidelity, fidelity_per_cell
from scfm_audit.models._interventions._intervention import Intervention, compose
from scfm_audit.models._interventions._order import (
    InterventionOrder,
    check_intervention_order,
    intervention_order,
)

__all__ = [
    "AblationMethod",
    "Intervention",
    "InterventionOrder",
    "ablate_heads",
    "check_intervention_order",
    "compose",
    "compute_head_means",
    "fidelity",
    "fidelity_per_cell",
    "intervention_order",
    "parse_heads",
    "zero_mlp",
]
