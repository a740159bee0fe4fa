"""Geneformer's model is Hugging Face's ``BertForMaskedLM`` (or ``BertModel`` / a Bert
classifier when the checkpoint has no masked-LM head); this module maps its parameters
onto the shared functional encoder layer (canonical names, so every hook site exists)."""

from __future__ import annotations

from collections.abc import Iterator

from scfm_audit.models._transformer import LayerWeights


def bert_layer_weights(bert, n_heads: int, activation, eps: float) -> Iterator[LayerWeights]:
    """Views of every encoder layer of the Hugging Face ``BertModel`` ``bert`` as
    :class:`LayerWeights` (post-norm, ``activation``, LayerNorm ``eps``)."""
    for layer in bert.encoder.layer:
        att = layer.attention
        yield LayerWeights(
            q_w=att.self.query.weight,
            q_b=att.self.query.bias,
            k_w=att.self.key.weight,
            k_b=att.self.key.bias,
            v_w=att.self.value.weight,
            v_b=att.self.value.bias,
            o_w=att.output.dense.weight,
            o_b=att.output.dense.bias,
            ln1_w=att.output.LayerNorm.weight,
            ln1_b=att.output.LayerNorm.bias,
            ff1_w=layer.intermediate.dense.weight,
            ff1_b=layer.intermediate.dense.bias,
            ff2_w=layer.output.dense.weight,
            ff2_b=layer.output.dense.bias,
            ln2_w=layer.output.LayerNorm.weight,
            ln2_b=layer.output.LayerNorm.bias,
            n_heads=n_heads,
            activation=activation,
            ln_eps=eps,
            norm_first=False,
        )
