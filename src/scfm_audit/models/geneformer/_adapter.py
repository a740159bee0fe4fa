"""Geneformer behind the shared adapter protocol: rank-value tokenization, a hooked
forward over Hugging Face's BERT weights, in-silico perturbation as
``in_silico_perturber.isp_perturb_set``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from scfm_audit.models._base import (
    MODEL_FAMILIES,
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
)
from scfm_audit.models._device import BatchSize, ForwardDtype
from scfm_audit.models._hooks import HookContext
from scfm_audit.models._transformer import LayerWeights, encoder_layer
from scfm_audit.models.geneformer._checkpoint import (
    Dictionaries,
    DictLike,
    read_checkpoint,
    write_checkpoint,
)
from scfm_audit.models.geneformer._modules import bert_layer_weights
from scfm_audit.models.geneformer._tokenize import (
    GenePlan,
    build_gene_plan,
    gene_count_sums,
    pad_sequences,
    perturbed_sequences,
    rank_value_sequences,
    resolve_gene,
    spec_counts,
    spec_gene_column,
    var_ids,
    warn_untokenized,
)


@MODEL_FAMILIES.register("geneformer")
class GeneformerAdapter(ModelAdapter):
    """A Geneformer checkpoint behind the :class:`ModelAdapter` protocol.

    Attributes
    ----------
    module
        The Hugging Face model (``BertForMaskedLM``; ``BertModel`` or a Bert classifier when
        the checkpoint has no masked-LM head).
    token_dictionary, gene_medians
        Ensembl id → token id; Ensembl id → non-zero median expression.
    gene_mapping
        Ensembl id → collapsed Ensembl id (``ensembl_mapping_dict``), or None (identity).
    version
        ``"V1"`` (no special tokens, input 2048) or ``"V2"`` (``<cls>``/``<eos>``, 4096).
    model_input_size
        Maximum sequence length (``config.max_position_embeddings``, as
        ``perturber_utils.get_model_input_size``); tokenization truncates to it.
    emb_layer
        Layer of the cell embedding in Geneformer's convention: 0 = last layer (default,
        consistent with :attr:`ModelOutput.hidden`), -1 = second-to-last (the default of
        upstream ``EmbExtractor`` / ``InSilicoPerturber``).
    gene_id_column
        ``var`` column with Ensembl ids; None = the dataset spec's ``gene_id_column``, else
        the first of ``ensembl_id``, ``gene_ids``, ``feature_id``, else ``var_names`` when
        they are Ensembl ids.
    dtype, batch_size
        Forward dtype (``torch.float32`` unless loaded with ``dtype="bfloat16"`` /
        ``"float16"``) and default cells per attention-extraction batch (see
        :class:`~scfm_audit.models.ModelAdapter`).
    """

    family: ClassVar[str] = "geneformer"

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        token_dictionary: Mapping[str, int],
        gene_medians: Mapping[str, float],
        version: Literal["V1", "V2"],
        gene_mapping: Mapping[str, str] | None = None,
        gene_name_id: Mapping[str, str] | None = None,
        device: str | torch.device | None = None,
        name: str | None = None,
        dict_files: Mapping[str, str] | None = None,
        dtype: ForwardDtype = "float32",
        batch_size: BatchSize | None = None,
    ) -> None:
        if version not in ("V1", "V2"):
            raise ValueError(f"version must be 'V1' or 'V2', got {version!r}.")
        self.module = module
        # a Hugging Face BertModel (or BertForMaskedLM's): its submodules and config are
        # attributes that torch's stubs type as Tensor | Module
        self._bert: Any = module.bert if hasattr(module, "bert") else module
        self._mlm_head = getattr(module, "cls", None) if hasattr(module, "bert") else None
        if self._mlm_head is not None and not hasattr(self._mlm_head, "predictions"):
            self._mlm_head = None
        cfg: Any = module.config
        self.config = cfg
        self.token_dictionary = dict(token_dictionary)
        self.gene_medians = dict(gene_medians)
        self.gene_mapping = None if gene_mapping is None else dict(gene_mapping)
        self.gene_name_id = None if gene_name_id is None else dict(gene_name_id)
        self.version = version
        self.name = name or f"geneformer-{version}"
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.d_model = int(cfg.hidden_size)
        self.d_ff = int(cfg.intermediate_size)
        self.model_input_size = int(cfg.max_position_embeddings)
        self.emb_layer = 0
        self.gene_id_column: str | None = None
        self.pad_token_id = int(self.token_dictionary["<pad>"])
        self.mask_token_id = self.token_dictionary.get("<mask>")
        self.cls_token_id = self.token_dictionary.get("<cls>") if version == "V2" else None
        self.eos_token_id = self.token_dictionary.get("<eos>") if version == "V2" else None
        self._dict_files = dict(dict_files or {})
        from transformers.activations import ACT2FN

        act = cfg.hidden_act
        self._activation = ACT2FN[act] if isinstance(act, str) else act
        # upstream filters the mapping to targets in the token dictionary (tokenizer __init__)
        mapping = (
            self.gene_mapping
            if self.gene_mapping is not None
            else {k: k for k in self.token_dictionary}
        )
        self._mapping = {
            k: v
            for k, v in mapping.items()
            if v in self.token_dictionary and not str(v).startswith("<")
        }
        self._plan: GenePlan | None = None
        self.device = default_device(device)
        self.module.to(self.device)
        self.module.eval()
        self._set_numerics(dtype, batch_size)
        self._init_hooks()

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        name: str | None = None,
        token_dictionary: DictLike | None = None,
        gene_median_dictionary: DictLike | None = None,
        gene_mapping: DictLike | Literal[False] | None = None,
        version: Literal["V1", "V2"] | None = None,
        dtype: ForwardDtype = "float32",
        batch_size: BatchSize | None = None,
    ) -> GeneformerAdapter:
        """Load a Geneformer checkpoint folder.

        Parameters
        ----------
        path
            Folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
            (as on Hugging Face ``ctheodoris/Geneformer``).
        device
            Torch device; default CUDA when available.
        name
            Name for reports; default the folder name.
        token_dictionary, gene_median_dictionary
            Pickle paths (or dicts). Default: found in ``path`` under their real names
            (V1 ``token_dictionary.pkl`` / ``gene_median_dictionary.pkl`` or the
            ``_gc30M`` names; V2 ``token_dictionary_gc104M.pkl`` /
            ``gene_median_dictionary_gc104M.pkl``).
        gene_mapping
            ``ensembl_mapping_dict`` pickle (or dict) used to collapse gene ids; default
            found in ``path`` (``ensembl_mapping_dict_gc104M.pkl``), else the identity.
            ``False`` disables it.
        version
            ``"V1"`` or ``"V2"``; default inferred: V2 when the token dictionary holds
            ``<cls>`` and ``<eos>``.
        dtype
            Forward dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` (the
            weights are cast once; every forward pass runs in it).
        batch_size
            Default cells per attention-extraction batch: an integer, ``"auto"`` (from
            free device memory) or None (the extraction's default).

        Raises
        ------
        CheckpointError
            Missing config or weights, missing dictionaries, vocabulary size of the config
            disagreeing with the token dictionary, weight shapes disagreeing with the config.
        """
        folder = Path(path)
        module, dicts, version = read_checkpoint(
            folder,
            version=version,
            token_dictionary=token_dictionary,
            gene_median_dictionary=gene_median_dictionary,
            gene_mapping=gene_mapping,
        )
        return cls(
            module,
            token_dictionary=dicts.token_dictionary,
            gene_medians=dicts.gene_medians,
            version=version,
            gene_mapping=dicts.gene_mapping,
            gene_name_id=dicts.gene_name_id,
            device=device,
            name=name or folder.name,
            dict_files=dicts.files,
            dtype=dtype,
            batch_size=batch_size,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the model as a Geneformer checkpoint folder: ``config.json``,
        ``model.safetensors`` and the dictionary pickles under their real names. Atomic:
        written to a temporary folder next to ``path``, then renamed into place (an
        existing ``path`` is replaced)."""
        dicts = Dictionaries(
            token_dictionary=self.token_dictionary,
            gene_medians=self.gene_medians,
            gene_mapping=self.gene_mapping,
            gene_name_id=self.gene_name_id,
            files=self._dict_files,
        )
        write_checkpoint(self.module, dicts, self.version, Path(path))

    # -- data ----------------------------------------------------------------------------
    def _gene_plan(self, adata, gene_id_column: str | None = None) -> GenePlan:
        column = gene_id_column or self.gene_id_column or spec_gene_column(adata)
        raw, column = var_ids(adata, column)
        key = (id(adata), column, adata.n_vars)
        if self._plan is not None and self._plan.fits(adata, raw, key):
            return self._plan
        plan = build_gene_plan(
            adata,
            raw,
            key=key,
            mapping=self._mapping,
            token_dictionary=self.token_dictionary,
            gene_medians=self.gene_medians,
        )
        self._plan = plan
        return plan

    def vocabulary_report(
        self, adata, *, counts: str | None = None, gene_id_column: str | None = None
    ) -> VocabularyReport:
        """Genes of ``adata`` the model can see (mapped Ensembl id in the token dictionary
        with a median) and their share of all counts (``counts``: ``"X"`` or a layer;
        default the dataset spec's, else ``X``)."""
        plan = self._gene_plan(adata, gene_id_column)
        if counts is None:
            counts = spec_counts(adata)
        seen = plan.var_token >= 0
        col_sums = gene_count_sums(adata, counts)
        total = float(col_sums.sum())
        return VocabularyReport(
            model=self.name,
            n_genes=int(adata.n_vars),
            n_in_vocab=int(seen.sum()),
            fraction_genes=float(seen.mean()) if adata.n_vars else 0.0,
            fraction_counts=float(col_sums[seen].sum() / total) if total > 0 else 0.0,
            missing=list(plan.missing),
        )

    def tokenize(
        self,
        adata,
        cells: np.ndarray | None = None,
        *,
        counts: str = "X",
        gene_id_column: str | None = None,
    ) -> TokenizedBatch:
        """Rank-value encode cells exactly as Geneformer's ``TranscriptomeTokenizer``.

        Parameters
        ----------
        adata
            Raw counts; ``var`` holds Ensembl ids (see ``gene_id_column``).
        cells
            Obs positions (default all). Upstream's ``filter_pass`` column is not applied:
            the caller chooses the cells.
        counts
            ``"X"`` or a layer with raw counts.
        gene_id_column
            ``var`` column with Ensembl ids (default: :attr:`gene_id_column`, the dataset
            spec's, then ``ensembl_id``, ``gene_ids``, ``feature_id``, then ``var_names``).

        Returns
        -------
        TokenizedBatch, padded with ``<pad>`` to the longest cell; ``gene_index`` is the
        ``var`` position of each gene token (the first one for collapsed duplicates).

        Notes
        -----
        Per cell: ``x / n_counts * 10_000 / median`` over the vocabulary genes (same dtype
        promotion as upstream), the non-zero entries ranked by ``np.argsort(-x)``, cut to
        ``model_input_size`` (V2: ``model_input_size - 2`` plus ``<cls>`` … ``<eos>``).
        ``n_counts`` is ``obs["n_counts"]`` when present (as upstream requires), otherwise
        the cell's total counts over all genes, computed in float64. Cells with zero or
        non-finite ``n_counts`` get no gene tokens (with a warning).
        """
        plan = self._gene_plan(adata, gene_id_column)
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells, dtype=np.int64)
        special = self.version == "V2"
        seqs, poss, n_bad = rank_value_sequences(
            adata,
            idx,
            plan,
            counts=counts,
            limit=self.model_input_size - 2 if special else self.model_input_size,
            specials=self._specials() if special else None,
        )
        warn_untokenized(idx, poss, n_bad, stacklevel=3)
        return self._pad(seqs, poss, idx)

    def _specials(self) -> tuple[int, int]:
        """V2's ``<cls>`` and ``<eos>`` ids (the checkpoint reader makes sure of both)."""
        if self.cls_token_id is None or self.eos_token_id is None:
            raise ValueError(f"{self.name}: a V2 token dictionary needs '<cls>' and '<eos>'")
        return self.cls_token_id, self.eos_token_id

    def token_counts(
        self,
        adata,
        cells: np.ndarray,
        *,
        counts: str = "X",
        gene_id_column: str | None = None,
    ) -> np.ndarray:
        """Tokens :meth:`tokenize` gives each cell (V2: ``<cls>`` and ``<eos>``
        included): the rank-value sequences' lengths, without padding or tensors."""
        plan = self._gene_plan(adata, gene_id_column)
        special = self.version == "V2"
        with warnings.catch_warnings():  # tokenize() warns about these cells
            warnings.simplefilter("ignore", UserWarning)
            seqs, _, _ = rank_value_sequences(
                adata,
                np.asarray(cells, dtype=np.int64),
                plan,
                counts=counts,
                limit=self.model_input_size - 2 if special else self.model_input_size,
                specials=self._specials() if special else None,
            )
        return np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))

    def _pad(
        self, seqs: Sequence[np.ndarray], poss: Sequence[np.ndarray], cell_index: np.ndarray
    ) -> TokenizedBatch:
        return pad_sequences(seqs, poss, cell_index, self.pad_token_id)

    # -- model -----------------------------------------------------------------------------
    def _layer_weights(self) -> Iterator[LayerWeights]:
        return bert_layer_weights(
            self._bert, self.n_heads, self._activation, float(self.config.layer_norm_eps)
        )

    def _state_layers(self) -> set[int]:
        target = self.n_layers + self.emb_layer
        return {target} if 0 <= target < self.n_layers else set()

    def _forward(
        self,
        batch: TokenizedBatch,
        *,
        return_logits: bool = False,
        start_layer: int = 0,
        hidden: torch.Tensor | None = None,
        states: Mapping[int, torch.Tensor] | None = None,
        capture: dict[int, torch.Tensor] | None = None,
    ) -> ModelOutput:
        """Embeddings (Hugging Face's module), then every layer through the shared
        :func:`encoder_layer` (hook sites), then the masked-LM head when ``return_logits``.
        Differentiable (no ``inference_mode`` here); the encoder layers apply no dropout.
        ``start_layer`` > 0 runs layers ``start_layer``.. from ``hidden``; the cell
        embedding then reads the state entering ``emb_layer`` from ``states`` when that
        layer lies below ``start_layer``."""
        if return_logits and self._mlm_head is None:
            raise ValueError(
                f"{self.name} has no masked-LM head ({type(self.module).__name__}); logits "
                "need a BertForMaskedLM checkpoint."
            )
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device).bool()
        if ids.shape[1] > self.model_input_size:
            raise ValueError(
                f"sequence length {ids.shape[1]} exceeds the model input size "
                f"{self.model_input_size}."
            )
        ctx = HookContext(attention_mask=mask)
        target = self.n_layers + self.emb_layer  # index into (embeddings, layer 0, ...)
        if not 0 <= target <= self.n_layers:
            raise ValueError(f"emb_layer={self.emb_layer} outside [-{self.n_layers}, 0].")
        if start_layer:
            if hidden is None:
                raise ValueError("start_layer > 0 needs the hidden state entering it")
            x = hidden
        else:
            x = self._bert.embeddings(input_ids=ids) if hidden is None else hidden
        emb_source = x if target == start_layer else None
        if target < start_layer:
            emb_source = None if states is None else states.get(target)
            if emb_source is None:
                raise ValueError(
                    f"starting at layer {start_layer}, the cell embedding (emb_layer "
                    f"{self.emb_layer}) needs the state entering layer {target} in states."
                )
        for L, w in enumerate(self._layer_weights()):
            if L < start_layer:
                continue
            if capture is not None and L in capture:
                capture[L] = x
            x = encoder_layer(x, w, self.hook_points, L, ctx)
            if L + 1 == target:
                emb_source = x
        gene = mask.clone()
        for tid in (self.cls_token_id, self.eos_token_id):
            if tid is not None:
                gene &= ids != tid
        g = gene.unsqueeze(-1).to(x.dtype)
        # mean_nonpadding_embs: masked sum / number of gene tokens
        assert emb_source is not None  # set at layer `target` (checked above when skipped)
        cell = (emb_source * g).sum(1) / g.sum(1).clamp(min=1.0)
        head = self._mlm_head
        logits = head(x) if return_logits and head is not None else None
        return ModelOutput(hidden=x, cell_embedding=cell, attention_mask=mask, logits=logits)

    def perturb(
        self,
        batch: TokenizedBatch,
        gene: str | int,
        *,
        mode: Literal["delete", "overexpress"],
    ) -> TokenizedBatch:
        """In-silico perturbation as Geneformer's ``InSilicoPerturber`` with one gene in
        ``genes_to_perturb``.

        ``delete``: the gene's token is removed (``perturber_utils.delete_indices``); cells
        without it are returned unchanged (upstream filters them out beforehand).
        ``overexpress``: the token is removed where present and inserted first (V1) or
        right after ``<cls>`` (V2), also in cells that did not express it; sequences longer
        than the input size are cut, keeping ``<eos>`` last in V2
        (``perturber_utils.overexpress_tokens``).

        ``gene`` is a ``var`` name or position of the last tokenized dataset, an Ensembl
        id of the token dictionary, or a symbol of the ``gene_name_id`` dictionary.
        """
        if mode not in ("delete", "overexpress"):
            raise ValueError(f"mode must be 'delete' or 'overexpress', got {mode!r}.")
        token, pos = self._resolve_gene(gene)
        ids = batch.input_ids.detach().cpu().numpy()
        gidx = batch.gene_index.detach().cpu().numpy()
        mask = batch.attention_mask.detach().cpu().numpy().astype(bool)
        if pos < 0:  # a gene the batch already carries gives its var position
            hit = gidx[(ids == token) & mask]
            if hit.size:
                pos = int(hit[0])
        seqs, poss = perturbed_sequences(
            ids,
            gidx,
            mask,
            token,
            pos,
            mode=mode,
            special=self.version == "V2",
            limit=self.model_input_size,
        )
        out = self._pad(seqs, poss, batch.cell_index)
        return out.to(batch.input_ids.device)

    def _resolve_gene(self, gene: str | int) -> tuple[int, int]:
        """(token id, var position or -1) of ``gene``."""
        return resolve_gene(
            gene,
            self._plan,
            mapping=self._mapping,
            token_dictionary=self.token_dictionary,
            gene_name_id=self.gene_name_id,
            model=self.name,
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            {
                "version": self.version,
                "model_input_size": self.model_input_size,
                "vocab_size": len(self.token_dictionary),
                "emb_layer": self.emb_layer,
            }
        )
        return d
