"""Geneformer: real Hugging Face BERT checkpoints (V1 ``gf-6L-30M-i2048`` style, V2
``gf-12L-95M-i4096`` / ``gf-18L-316M-i4096`` style), Geneformer's rank-value tokenization
and in-silico perturbation, and a hooked forward pass.

``_modules``: Hugging Face's BERT viewed as the shared encoder layer's weights.
``_checkpoint``: the folder layout, the dictionaries, the version, reading in named steps
and atomic writing. ``_tokenize``: the gene plan (``var`` → token columns) and the
normalisation before ranking. ``_adapter``: :class:`GeneformerAdapter`. ``_build``: tiny
random checkpoints in the released layout, for tests and the demo.

Fidelity notes (upstream = ``ctheodoris/Geneformer``, ``geneformer/`` package):

* Tokenization follows ``tokenizer.py`` (``TranscriptomeTokenizer.tokenize_anndata``,
  ``tokenize_cell`` / ``rank_genes``, ``sum_ensembl_ids``, ``create_dataset``): Ensembl ids
  are upper-cased and mapped through the gene mapping dictionary (identity over the token
  dictionary when there is none), duplicated ids are summed, counts are divided by the
  cell's ``n_counts``, multiplied by 10,000 and divided by the gene's median, and the
  non-zero genes are ranked with ``np.argsort(-values)`` (NumPy's default sort, applied to
  the same array in the same gene order, so ties break as upstream). V1 truncates to the
  model input size; V2 truncates to input size − 2 and adds ``<cls>`` first and ``<eos>``
  last. Batches are padded with ``<pad>`` as ``perturber_utils.pad_tensor_list`` does.
* The cell embedding is the mean over non-padding tokens without ``<cls>`` / ``<eos>``,
  as ``emb_extractor.get_embs(emb_mode="cell")`` with ``perturber_utils.mean_nonpadding_embs``.
* ``perturb`` reproduces ``in_silico_perturber.isp_perturb_set`` with
  ``perturber_utils.delete_indices`` / ``overexpress_tokens``.

Deliberate deviations (documented on the functions): ``n_counts`` is computed from the
counts when ``obs`` has no such column (upstream requires it); genes that are in the token
dictionary but lack a median are skipped with a warning (upstream raises ``KeyError``);
cells with zero total counts give an empty gene sequence (upstream divides by zero);
Ensembl version suffixes (``ENSG….12``) are stripped when the bare id is known; duplicated
ids are always summed (upstream sums them only when its set-size test detects them).
"""

from scfm_audit.models.geneformer._adapter import GeneformerAdapter
from scfm_audit.models.geneformer._build import build_geneformer_checkpoint

__all__ = ["GeneformerAdapter", "build_geneformer_checkpoint"]
