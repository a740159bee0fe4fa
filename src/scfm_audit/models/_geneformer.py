"""Geneformer adapter: real Hugging Face BERT checkpoints (V1 ``gf-6L-30M-i2048`` style,
V2 ``gf-12L-95M-i4096`` / ``gf-18L-316M-i4096`` style), Geneformer's rank-value
tokenization and in-silico perturbation, and a hooked forward pass.

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

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scfm_audit.models._base import (
    MODEL_FAMILIES,
    CheckpointError,
    ModelAdapter,
    ModelOutput,
    TokenizedBatch,
    VocabularyReport,
    default_device,
    unreadable_weights,
)
from scfm_audit.models._hooks import HookContext
from scfm_audit.models._transformer import LayerWeights, encoder_layer

__all__ = ["GeneformerAdapter", "build_geneformer_checkpoint"]

#: Normalisation target of ``TranscriptomeTokenizer.tokenize_anndata`` (``target_sum``).
TARGET_SUM = 10_000
#: Model input size per version (``TranscriptomeTokenizer`` ``model_input_size``).
INPUT_SIZE = {"V1": 2048, "V2": 4096}
#: Cells per counts block (upstream ``chunk_size``); bounds the dense working memory.
CHUNK_SIZE = 512
#: ``var`` columns tried, in order, for Ensembl ids.
GENE_ID_COLUMNS = ("ensembl_id", "gene_ids", "feature_id")

#: Dictionary file names as shipped with Geneformer, per version, most specific first.
#: V1: the original release (``token_dictionary.pkl``) and its later ``gene_dictionaries_30m``
#: names; V2: the 104M-cell corpus (and the interim ``gc95M`` names).
DICT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "V1": {
        "token_dictionary": ("token_dictionary.pkl", "token_dictionary_gc30M.pkl"),
        "gene_median_dictionary": (
            "gene_median_dictionary.pkl",
            "gene_median_dictionary_gc30M.pkl",
        ),
        "gene_mapping": ("ensembl_mapping_dict_gc30M.pkl",),
        "gene_name_id": ("gene_name_id_dict.pkl", "gene_name_id_dict_gc30M.pkl"),
    },
    "V2": {
        "token_dictionary": ("token_dictionary_gc104M.pkl", "token_dictionary_gc95M.pkl"),
        "gene_median_dictionary": (
            "gene_median_dictionary_gc104M.pkl",
            "gene_median_dictionary_gc95M.pkl",
        ),
        "gene_mapping": ("ensembl_mapping_dict_gc104M.pkl", "ensembl_mapping_dict_gc95M.pkl"),
        "gene_name_id": ("gene_name_id_dict_gc104M.pkl", "gene_name_id_dict_gc95M.pkl"),
    },
}
_DICT_ARGS = {
    "token_dictionary": "token_dictionary",
    "gene_median_dictionary": "gene_median_dictionary",
    "gene_mapping": "gene_mapping",
    "gene_name_id": "gene_name_id",
}
_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
_HEAD_CLASSES = ("BertForSequenceClassification", "BertForTokenClassification")
_VERSION_SUFFIX = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$")

DictLike = str | os.PathLike | Mapping


# ---------------------------------------------------------------------------------------
# gene plan: how the dataset's var maps onto the model's token columns


@dataclass
class _GenePlan:
    """Column layout of one dataset for Geneformer (cached per dataset).

    Columns are, as in upstream ``sum_ensembl_ids`` + ``tokenize_anndata``: the genes whose
    collapsed id occurs once (in ``var`` order), then the summed duplicated ids (in order of
    first appearance).
    """

    key: tuple
    ids: np.ndarray  # raw var ids (for cache validation)
    single_pos: np.ndarray  # var positions of non-duplicated columns
    groups: list[np.ndarray]  # var positions summed into one column each
    tokens: np.ndarray  # (n_columns,) token id per column
    norm: np.ndarray  # (n_columns,) gene medians, dtype as np.array(upstream values)
    gene_pos: np.ndarray  # (n_columns,) representative var position per column
    var_token: np.ndarray  # (n_vars,) token id per var gene, -1 when the model cannot see it
    var_names: pd.Index
    missing: list[str]  # var genes not in the vocabulary (or without median)
    no_median: list[str]


def _strip_version(ids: pd.Series, known: Mapping) -> pd.Series:
    """``ENSG….12`` → ``ENSG…`` where the raw id is unknown and the bare id is known."""
    bare = ids.str.extract(_VERSION_SUFFIX, expand=False)
    use = ids.map(lambda s: s not in known) & bare.notna()
    use &= bare.map(lambda s: isinstance(s, str) and s in known)
    return ids.where(~use, bare)


# ---------------------------------------------------------------------------------------


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
    ) -> None:
        if version not in ("V1", "V2"):
            raise ValueError(f"version must be 'V1' or 'V2', got {version!r}.")
        self.module = module
        self._bert = module.bert if hasattr(module, "bert") else module
        self._mlm_head = getattr(module, "cls", None) if hasattr(module, "bert") else None
        if self._mlm_head is not None and not hasattr(self._mlm_head, "predictions"):
            self._mlm_head = None
        cfg = module.config
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
        self._plan: _GenePlan | None = None
        self.device = default_device(device)
        self.module.to(self.device)
        self.module.eval()
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

        Raises
        ------
        CheckpointError
            Missing config or weights, missing dictionaries, vocabulary size of the config
            disagreeing with the token dictionary, weight shapes disagreeing with the config.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(
                f"Geneformer checkpoint folder {str(folder)!r} does not exist or is not a "
                "folder; pass the folder holding config.json and model.safetensors."
            )
        if version is not None and version not in ("V1", "V2"):
            raise CheckpointError(f"version must be 'V1' or 'V2', got {version!r}.")
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(
                f"No config.json in {str(folder)!r}; a Geneformer checkpoint is a Hugging "
                "Face BERT folder with config.json and model.safetensors (or "
                "pytorch_model.bin)."
            )
        weight_files = _weight_files(folder)
        if not weight_files:
            raise CheckpointError(
                f"No weights in {str(folder)!r}: expected one of {', '.join(_WEIGHT_FILES)}."
            )
        from transformers import BertConfig

        with _quiet_transformers():
            try:
                config = BertConfig.from_pretrained(folder)
            except Exception as err:
                raise CheckpointError(
                    f"Could not read {str(cfg_file)!r} as a BERT config "
                    f"({type(err).__name__}: {err})."
                ) from err
        pos_type = getattr(config, "position_embedding_type", "absolute")
        if pos_type not in (None, "absolute"):
            raise CheckpointError(
                f"position_embedding_type={pos_type!r} in {str(cfg_file)!r}; Geneformer uses "
                "absolute position embeddings and only those are supported."
            )
        # dictionaries
        guess = version or ("V2" if config.max_position_embeddings >= INPUT_SIZE["V2"] else "V1")
        order = (guess, "V1" if guess == "V2" else "V2")
        dict_files: dict[str, str] = {}
        tok, tok_file = _resolve_dict(
            token_dictionary, folder, "token_dictionary", order, required=True
        )
        meds, med_file = _resolve_dict(
            gene_median_dictionary, folder, "gene_median_dictionary", order, required=True
        )
        mapping, map_file = (
            (None, None)
            if gene_mapping is False
            else _resolve_dict(gene_mapping, folder, "gene_mapping", order, required=False)
        )
        names, names_file = _resolve_dict(None, folder, "gene_name_id", order, required=False)
        for key, fname in (
            ("token_dictionary", tok_file),
            ("gene_median_dictionary", med_file),
            ("gene_mapping", map_file),
            ("gene_name_id", names_file),
        ):
            if fname is not None:
                dict_files[key] = fname
        if "<pad>" not in tok:
            raise CheckpointError(
                f"The token dictionary ({tok_file or 'given'}) has no '<pad>' token; it is not "
                "a Geneformer token dictionary (pass token_dictionary=...)."
            )
        has_special = "<cls>" in tok and "<eos>" in tok
        if version is None:
            version = "V2" if has_special else "V1"
        elif version == "V2" and not has_special:
            raise CheckpointError(
                "version='V2' needs '<cls>' and '<eos>' in the token dictionary "
                f"({tok_file or 'given'}); pass the V2 dictionary "
                "(token_dictionary_gc104M.pkl) or version='V1'."
            )
        elif version == "V1" and has_special:
            warnings.warn(
                "<cls> and <eos> are in the token dictionary but version='V1': cells are "
                "tokenized without special tokens (as Geneformer's special_token=False).",
                UserWarning,
                stacklevel=2,
            )
        # vocabulary and shapes
        ids = [int(v) for v in tok.values()]
        if config.vocab_size != len(tok) or max(ids) >= config.vocab_size:
            raise CheckpointError(
                f"config.json says vocab_size={config.vocab_size} but the token dictionary "
                f"({tok_file or 'given'}) has {len(tok)} tokens (largest id {max(ids)}); "
                "this dictionary does not belong to this model. Use the dictionary the "
                "model was trained with (V1: token_dictionary.pkl, V2: "
                "token_dictionary_gc104M.pkl) via token_dictionary=."
            )
        shapes = _checkpoint_shapes(weight_files)
        model_cls = _model_class(config, shapes)
        _check_shapes(model_cls, config, shapes, folder)
        with _quiet_transformers():
            try:
                module, info = model_cls.from_pretrained(
                    folder, attn_implementation="eager", output_loading_info=True
                )
            except Exception as err:
                raise CheckpointError(
                    f"Could not load the weights in {str(folder)!r} ({type(err).__name__}: {err})."
                ) from err
        missing = sorted(
            k for k in info.get("missing_keys", ()) if not k.startswith(("pooler.", "bert.pooler."))
        )
        if missing:
            raise CheckpointError(
                f"Weights missing from {str(folder)!r}: {missing[:8]}"
                f"{' …' if len(missing) > 8 else ''}; the checkpoint is incomplete."
            )
        return cls(
            module,
            token_dictionary=tok,
            gene_medians=meds,
            version=version,
            gene_mapping=mapping,
            gene_name_id=names,
            device=device,
            name=name or folder.name,
            dict_files=dict_files,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the model as a Geneformer checkpoint folder: ``config.json``,
        ``model.safetensors`` and the dictionary pickles under their real names. Atomic:
        written to a temporary folder next to ``path``, then renamed into place (an
        existing ``path`` is replaced)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with _quiet_transformers():
                self.module.save_pretrained(tmp)
            names = DICT_FILES[self.version]
            payload = {
                "token_dictionary": self.token_dictionary,
                "gene_median_dictionary": self.gene_medians,
                "gene_mapping": self.gene_mapping,
                "gene_name_id": self.gene_name_id,
            }
            for key, obj in payload.items():
                if obj is None:
                    continue
                fname = self._dict_files.get(key, names[key][0])
                with open(tmp / fname, "wb") as fh:
                    pickle.dump(obj, fh)
            _atomic_replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- data ----------------------------------------------------------------------------
    def _gene_plan(self, adata, gene_id_column: str | None = None) -> _GenePlan:
        column = gene_id_column or self.gene_id_column or _spec_gene_column(adata)
        raw, column = _var_ids(adata, column)
        key = (id(adata), column, adata.n_vars)
        plan = self._plan
        if (
            plan is not None
            and plan.key == key
            and np.array_equal(plan.ids, raw)
            and plan.var_names.equals(pd.Index(adata.var_names.astype(str)))
        ):
            return plan
        ids = pd.Series(raw, dtype=object).astype(str).str.strip().str.upper()
        ids = _strip_version(ids, self._mapping)
        collapsed = ids.map(self._mapping)  # NaN when not in the vocabulary
        var_names = pd.Index(adata.var_names.astype(str))
        no_median_mask = collapsed.notna() & ~collapsed.map(
            lambda g: isinstance(g, str) and g in self.gene_medians
        )
        no_median = var_names[no_median_mask.to_numpy()].tolist()
        if no_median:
            warnings.warn(
                f"{len(no_median)} gene(s) are in the token dictionary but have no median in "
                f"the gene median dictionary (e.g. {', '.join(no_median[:5])}); they are not "
                "tokenized (Geneformer's tokenizer would fail on them).",
                UserWarning,
                stacklevel=3,
            )
        usable = collapsed.where(~no_median_mask)
        keep = np.flatnonzero(usable.notna().to_numpy())
        kept_ids = usable.iloc[keep].to_numpy()
        counts = pd.Series(kept_ids).value_counts(sort=False)
        dup = set(counts.index[counts.to_numpy() > 1])
        single_pos = np.array([p for p, g in zip(keep, kept_ids) if g not in dup], dtype=np.int64)
        group_ids: dict[str, list[int]] = {}
        for p, g in zip(keep, kept_ids):
            if g in dup:
                group_ids.setdefault(g, []).append(int(p))
        groups = [np.array(v, dtype=np.int64) for v in group_ids.values()]
        col_ids = [*usable.to_numpy()[single_pos].tolist(), *group_ids]
        tokens = np.array([int(self.token_dictionary[g]) for g in col_ids], dtype=np.int64)
        # np.array over the dictionary's own values, as tokenize_anndata builds
        # norm_factor_vector: the dtype (float64 / float32) follows the pickle.
        norm = np.array([self.gene_medians[g] for g in col_ids])
        if norm.size == 0:
            norm = np.zeros(0, dtype=np.float64)
        gene_pos = np.concatenate(
            [single_pos, np.array([g[0] for g in groups], dtype=np.int64)]
        ).astype(np.int64)
        var_token = np.full(adata.n_vars, -1, dtype=np.int64)
        var_token[keep] = [int(self.token_dictionary[g]) for g in kept_ids]
        missing = var_names[var_token < 0].tolist()
        plan = _GenePlan(
            key=key,
            ids=np.asarray(raw),
            single_pos=single_pos,
            groups=groups,
            tokens=tokens,
            norm=norm,
            gene_pos=gene_pos,
            var_token=var_token,
            var_names=var_names,
            missing=missing,
            no_median=no_median,
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
            counts = _spec_counts(adata)
        seen = plan.var_token >= 0
        col_sums = np.zeros(adata.n_vars, dtype=np.float64)
        for start in range(0, adata.n_obs, 8192):
            block = _counts_block(adata, np.arange(start, min(start + 8192, adata.n_obs)), counts)
            col_sums += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
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
        obs_counts = adata.obs["n_counts"].to_numpy() if "n_counts" in adata.obs.columns else None
        special = self.version == "V2"
        limit = self.model_input_size - 2 if special else self.model_input_size
        seqs: list[np.ndarray] = []
        poss: list[np.ndarray] = []
        n_bad: list[int] = []
        for start in range(0, len(idx), CHUNK_SIZE):  # upstream chunk_size=512
            chunk = idx[start : start + CHUNK_SIZE]
            block = _counts_block(adata, chunk, counts)
            if obs_counts is not None:
                n_counts = np.asarray(obs_counts[chunk])
            else:
                n_counts = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
            nc = n_counts.astype(np.float64)
            bad = ~np.isfinite(nc) | (nc <= 0)
            n_bad += chunk[bad].tolist()
            x_norm = _normalise(block, n_counts, plan)
            for i in range(len(chunk)):
                if bad[i]:
                    toks = np.zeros(0, dtype=np.int64)
                    pos = np.zeros(0, dtype=np.int64)
                else:
                    # rank_genes(X_norm[i].data, tokens[X_norm[i].indices]): np.argsort(-x)
                    # with NumPy's default kind, on the same array as upstream
                    lo, hi = x_norm.indptr[i], x_norm.indptr[i + 1]
                    cols = x_norm.indices[lo:hi]
                    order = np.argsort(-x_norm.data[lo:hi])
                    toks = plan.tokens[cols][order][:limit]
                    pos = plan.gene_pos[cols][order][:limit]
                if special:
                    toks = np.concatenate([[self.cls_token_id], toks, [self.eos_token_id]])
                    pos = np.concatenate([[-1], pos, [-1]])
                seqs.append(toks.astype(np.int64))
                poss.append(pos.astype(np.int64))
        if n_bad:
            warnings.warn(
                f"{len(n_bad)} cell(s) have zero or non-finite n_counts (obs positions "
                f"{n_bad[:5]}); they are tokenized without gene tokens.",
                UserWarning,
                stacklevel=2,
            )
        bad_set = set(n_bad)
        empty = [int(c) for c, p in zip(idx, poss) if not (p >= 0).any() and int(c) not in bad_set]
        if empty:
            warnings.warn(
                f"{len(empty)} cell(s) express no gene of the vocabulary (obs positions "
                f"{empty[:5]}); their sequences hold no gene tokens.",
                UserWarning,
                stacklevel=2,
            )
        return self._pad(seqs, poss, idx)

    def _pad(
        self, seqs: Sequence[np.ndarray], poss: Sequence[np.ndarray], cell_index: np.ndarray
    ) -> TokenizedBatch:
        """Right-pad with ``<pad>`` to the longest sequence (``pad_tensor_list``)."""
        T = max((len(s) for s in seqs), default=0)
        B = len(seqs)
        ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        gidx = np.full((B, T), -1, dtype=np.int64)
        mask = np.zeros((B, T), dtype=bool)
        for b, (s, p) in enumerate(zip(seqs, poss)):
            ids[b, : len(s)] = s
            gidx[b, : len(p)] = p
            mask[b, : len(s)] = True
        return TokenizedBatch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            gene_index=torch.from_numpy(gidx),
            cell_index=np.asarray(cell_index),
            values=None,
        )

    # -- model -----------------------------------------------------------------------------
    def _layer_weights(self) -> Iterator[LayerWeights]:
        eps = float(self.config.layer_norm_eps)
        for layer in self._bert.encoder.layer:
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
                n_heads=self.n_heads,
                activation=self._activation,
                ln_eps=eps,
                norm_first=False,
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
        cell = (emb_source * g).sum(1) / g.sum(1).clamp(min=1.0)
        logits = self._mlm_head(x) if return_logits else None
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
        special = self.version == "V2"
        seqs, poss = [], []
        for b in range(ids.shape[0]):
            s = ids[b][mask[b]].tolist()
            p = gidx[b][mask[b]].tolist()
            if token in s:
                k = s.index(token)
                del s[k]
                del p[k]
            if mode == "overexpress":
                at = 1 if special else 0
                s.insert(at, token)
                p.insert(at, pos)
                n = self.model_input_size
                if len(s) > n:
                    if special:
                        s, p = [*s[: n - 1], s[-1]], [*p[: n - 1], p[-1]]
                    else:
                        s, p = s[:n], p[:n]
            seqs.append(np.asarray(s, dtype=np.int64))
            poss.append(np.asarray(p, dtype=np.int64))
        out = self._pad(seqs, poss, batch.cell_index)
        return out.to(batch.input_ids.device)

    def _resolve_gene(self, gene: str | int) -> tuple[int, int]:
        """(token id, var position or -1) of ``gene``."""
        plan = self._plan
        if isinstance(gene, int | np.integer):
            if plan is None:
                raise ValueError(
                    "gene given as a var position, but no dataset was tokenized yet; "
                    "tokenize first or pass an Ensembl id."
                )
            if not 0 <= int(gene) < len(plan.var_token):
                raise ValueError(f"gene position {gene} outside 0..{len(plan.var_token) - 1}.")
            tok = int(plan.var_token[int(gene)])
            if tok < 0:
                raise ValueError(
                    f"gene {plan.var_names[int(gene)]!r} (position {gene}) is not in the "
                    f"vocabulary of {self.name}; it cannot be perturbed."
                )
            return tok, int(gene)
        g = str(gene)
        if plan is not None and g in plan.var_names:
            p = (
                int(plan.var_names.get_loc(g))
                if plan.var_names.is_unique
                else int(np.flatnonzero(plan.var_names == g)[0])
            )
            tok = int(plan.var_token[p])
            if tok < 0:
                raise ValueError(
                    f"gene {g!r} is not in the vocabulary of {self.name}; it cannot be perturbed."
                )
            return tok, p
        ens = g.upper()
        ens = self._mapping.get(ens, ens)
        if ens not in self.token_dictionary and self.gene_name_id is not None:
            mapped = self.gene_name_id.get(g)
            ens = self._mapping.get(str(mapped).upper(), mapped) if mapped is not None else ens
        if isinstance(ens, str) and ens in self.token_dictionary and not ens.startswith("<"):
            tok = int(self.token_dictionary[ens])
            pos = -1
            if plan is not None:
                hits = np.flatnonzero(plan.var_token == tok)
                pos = int(hits[0]) if hits.size else -1
            return tok, pos
        raise ValueError(
            f"gene {g!r} is neither a var name of the tokenized dataset nor an Ensembl id "
            f"of {self.name}'s token dictionary."
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


# ---------------------------------------------------------------------------------------
# checkpoint building (tests, demo)


def build_geneformer_checkpoint(
    path: str | Path,
    ensembl_ids: Sequence[str],
    gene_medians: Mapping[str, float] | Sequence[float] | None = None,
    *,
    version: Literal["V1", "V2"] = "V1",
    hidden_size: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    intermediate_size: int = 64,
    max_input_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny random Geneformer checkpoint in the real folder layout.

    Parameters
    ----------
    path
        Output folder (created; replaced atomically if it exists).
    ensembl_ids
        Gene ids of the vocabulary, in token order.
    gene_medians
        Ensembl id → median (genes left out get no median), or one value per id; default
        seeded random values in [0.5, 5).
    version
        ``"V1"``: tokens ``<pad>``=0, ``<mask>``=1, genes from 2, input 2048, files
        ``token_dictionary.pkl`` / ``gene_median_dictionary.pkl``. ``"V2"``: ``<pad>``,
        ``<mask>``, ``<cls>``, ``<eos>`` = 0..3, genes from 4, input 4096, files
        ``*_gc104M.pkl`` (with an identity ``ensembl_mapping_dict_gc104M.pkl``).
    hidden_size, n_layers, n_heads, intermediate_size
        Architecture (Geneformer's BERT: ReLU, LayerNorm eps 1e-12, absolute positions).
    max_input_size
        ``max_position_embeddings``; default 2048 (V1) / 4096 (V2).
    seed
        Seed of the random weights and default medians.

    Returns
    -------
    The folder path.
    """
    if version not in ("V1", "V2"):
        raise ValueError(f"version must be 'V1' or 'V2', got {version!r}.")
    ids = [str(g) for g in ensembl_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ensembl_ids contains duplicates.")
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if version == "V2" else [])
    clash = set(specials) & set(ids)
    if clash:
        raise ValueError(f"ensembl_ids may not contain special tokens {sorted(clash)}.")
    token_dict = {t: i for i, t in enumerate([*specials, *ids])}
    rng = np.random.default_rng(seed)
    if gene_medians is None:
        medians = {g: float(v) for g, v in zip(ids, rng.uniform(0.5, 5.0, len(ids)))}
    elif isinstance(gene_medians, Mapping):
        unknown = sorted(set(gene_medians) - set(ids))
        if unknown:
            raise ValueError(f"gene_medians has genes not in ensembl_ids: {unknown[:5]}.")
        medians = {str(g): float(v) for g, v in gene_medians.items()}
    else:
        vals = list(gene_medians)
        if len(vals) != len(ids):
            raise ValueError(f"gene_medians has {len(vals)} values for {len(ids)} ensembl_ids.")
        medians = {g: float(v) for g, v in zip(ids, vals)}
    if any(not np.isfinite(v) or v <= 0 for v in medians.values()):
        raise ValueError("gene medians must be positive and finite.")
    n_pos = max_input_size or INPUT_SIZE[version]
    if hidden_size % n_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}.")
    import transformers
    from transformers import BertConfig, BertForMaskedLM

    dropout = 0.02 if version == "V1" else 0.1
    cfg_dict: dict[str, Any] = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": dropout,
        "hidden_act": "relu",
        "hidden_dropout_prob": dropout,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": n_pos,
        "model_type": "bert",
        "num_attention_heads": n_heads,
        "num_hidden_layers": n_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": len(token_dict),
    }
    if version == "V1":
        cfg_dict["gradient_checkpointing"] = False
    else:
        cfg_dict.update({"classifier_dropout": None, "torch_dtype": "float32"})
    cfg_dict["transformers_version"] = transformers.__version__
    kw = {k: v for k, v in cfg_dict.items() if k not in ("model_type", "transformers_version")}
    config = BertConfig(**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
    model.eval()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)
        # config.json with exactly the fields of Geneformer's released configs
        (tmp / "config.json").write_text(json.dumps(dict(sorted(cfg_dict.items())), indent=2))
        names = DICT_FILES[version]
        files = {
            names["token_dictionary"][0]: token_dict,
            names["gene_median_dictionary"][0]: medians,
        }
        if version == "V2":
            files[names["gene_mapping"][0]] = {g: g for g in ids}
        for fname, obj in files.items():
            with open(tmp / fname, "wb") as fh:
                pickle.dump(obj, fh)
        _atomic_replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars; restore them afterwards."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _atomic_replace(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` (replacing it) by renames only."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _resolve_dict(
    given: DictLike | None,
    folder: Path,
    kind: str,
    order: Sequence[str],
    *,
    required: bool,
) -> tuple[dict | None, str | None]:
    """A dictionary from ``given`` (path or mapping) or the first real file name found."""
    if isinstance(given, Mapping):
        return dict(given), None
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise CheckpointError(f"{kind} file {str(p)!r} does not exist.")
        return _read_pickle(p, kind), p.name
    candidates = [n for v in order for n in DICT_FILES[v][kind]]
    for fname in candidates:
        p = folder / fname
        if p.is_file():
            return _read_pickle(p, kind), fname
    if required:
        arg = _DICT_ARGS[kind]
        raise CheckpointError(
            f"Geneformer {kind.replace('_', ' ')} not found in {str(folder)!r} (looked for "
            f"{', '.join(candidates)}). Copy it there from the Geneformer repository "
            f"(geneformer/{candidates[0]}) or pass {arg}='/path/to/{candidates[0]}' to "
            "GeneformerAdapter.load."
        )
    return None, None


def _read_pickle(p: Path, kind: str) -> dict:
    try:
        with open(p, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as err:
        raise CheckpointError(
            f"Could not read {kind} {str(p)!r} as a pickle ({type(err).__name__}: {err})."
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{kind} {str(p)!r} holds a {type(obj).__name__}, expected a dict.")
    return dict(obj)


def _weight_files(folder: Path) -> list[Path]:
    for name in _WEIGHT_FILES:
        p = folder / name
        if not p.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(p.read_text())
            return sorted({folder / f for f in index.get("weight_map", {}).values()})
        return [p]
    return []


def _checkpoint_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a checkpoint, without loading the safetensors data."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"Weight shard {str(f)!r} listed in the index is missing.")
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), "pt") as fh:
                    for k in fh.keys():
                        shapes[k] = tuple(fh.get_slice(k).get_shape())
            else:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                shapes.update({k: tuple(v.shape) for k, v in sd.items()})
        except CheckpointError:
            raise
        except Exception as err:
            raise unreadable_weights(f, err) from None
    return shapes


def _norm_key(k: str) -> str:
    k = k.removeprefix("bert.")
    return k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


def _model_class(config, shapes: Mapping[str, tuple[int, ...]]):
    """BertForMaskedLM when the weights hold its head; else the classifier named in the
    config when its head is there; else BertModel."""
    import transformers

    if any(k.startswith("cls.predictions.") for k in shapes):
        return transformers.BertForMaskedLM
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch in _HEAD_CLASSES and any(k.startswith("classifier.") for k in shapes):
        return getattr(transformers, arch)
    return transformers.BertModel


def _check_shapes(model_cls, config, shapes: Mapping[str, tuple[int, ...]], folder: Path) -> None:
    with torch.device("meta"):
        ref = model_cls(config)
    expected = {_norm_key(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {_norm_key(k): v for k, v in shapes.items()}
    bad = [
        f"{k}: checkpoint {got[k]} vs config {expected[k]}"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    if bad:
        raise CheckpointError(
            f"Weight shapes in {str(folder)!r} disagree with its config.json "
            f"(hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
            f"intermediate_size={config.intermediate_size}, vocab_size={config.vocab_size}, "
            f"max_position_embeddings={config.max_position_embeddings}): "
            f"{'; '.join(bad[:5])}{' …' if len(bad) > 5 else ''}."
        )
    core = [
        k
        for k in expected
        if k.startswith(("embeddings.", "encoder."))
        and not k.endswith(("position_ids", "token_type_ids"))
        and k not in got
    ]
    if core:
        raise CheckpointError(
            f"Weights missing from {str(folder)!r}: {core[:5]}"
            f"{' …' if len(core) > 5 else ''}; the checkpoint is incomplete or not a BERT model."
        )


def _spec_gene_column(adata) -> str | None:
    stored = adata.uns.get("scfm_audit", {}) if hasattr(adata, "uns") else {}
    spec = stored.get("spec") if isinstance(stored, Mapping) else None
    if isinstance(spec, Mapping) and spec.get("gene_id_column"):
        return str(spec["gene_id_column"])
    return None


def _spec_counts(adata) -> str:
    stored = adata.uns.get("scfm_audit", {})
    spec = stored.get("spec") if isinstance(stored, Mapping) else None
    if isinstance(spec, Mapping) and spec.get("counts"):
        return str(spec["counts"])
    return "X"


def _var_ids(adata, column: str | None) -> tuple[np.ndarray, str | None]:
    """Raw Ensembl ids of ``var`` and the column they came from (None = ``var_names``)."""
    if column is not None:
        if column not in adata.var.columns:
            raise ValueError(
                f"Gene id column {column!r} not found in var (columns: "
                f"{list(map(str, adata.var.columns)) or '(none)'}); pass gene_id_column= "
                "naming the var column with Ensembl ids."
            )
        return adata.var[column].astype(object).to_numpy(), column
    for c in GENE_ID_COLUMNS:
        if c in adata.var.columns:
            return adata.var[c].astype(object).to_numpy(), c
    names = pd.Series(adata.var_names.astype(str))
    if len(names) and names.str.match(r"^ENS[A-Z]*\d{6,}").mean() >= 0.5:
        return names.to_numpy(dtype=object), None
    raise ValueError(
        "Geneformer needs Ensembl gene ids, but var has none of the columns "
        f"{', '.join(GENE_ID_COLUMNS)} (columns: {list(map(str, adata.var.columns)) or '(none)'}) "
        "and var_names are not Ensembl ids. Add a var column 'ensembl_id' (e.g. with "
        "scfm_audit.data.to_ensembl or Ensembl BioMart) or pass gene_id_column= naming the "
        "column that holds them."
    )


def _normalise(block, n_counts: np.ndarray, plan: _GenePlan) -> sp.csr_matrix:
    """``tokenize_anndata``'s ``X_view / n_counts * target_sum / norm_factor_vector`` over
    the vocabulary columns, then ``csr_matrix``. The expression is evaluated on the same
    kind of object as upstream (scipy sparse for sparse counts, ndarray for dense ones)
    with the same dtypes, so every value carries the same rounding as Geneformer's own
    tokenizer under the same NumPy/SciPy (recent SciPy computes ``sparse / dense`` as
    ``multiply(1 / dense)``, older SciPy densifies; the rounding, and hence the order of
    tied genes, follows the installed version exactly as it would upstream)."""
    sub = block[:, plan.single_pos]
    if plan.groups:
        summed = [
            np.asarray(block[:, g].sum(axis=1)).reshape(-1, 1).astype(block.dtype)
            for g in plan.groups
        ]
        sub = (
            sp.hstack([sub, *(sp.csr_matrix(c) for c in summed)], format="csr")
            if sp.issparse(sub)
            else np.hstack([np.asarray(sub), *summed])
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        x_norm = sub / n_counts[:, None] * TARGET_SUM / plan.norm
    return sp.csr_matrix(x_norm)


def _counts_block(adata, idx: np.ndarray, counts: str):
    """Counts of the cells ``idx`` (all genes): csr_matrix or ndarray, dtype kept."""
    from scfm_audit.data._dataset import DatasetSpec, counts_matrix

    return counts_matrix(adata, DatasetSpec(counts=counts), obs=idx)
