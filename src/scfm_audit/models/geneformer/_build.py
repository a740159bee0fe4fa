"""Tiny random Geneformer checkpoints in the released folder layout (tests, demo)."""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from scfm_audit.models.geneformer._checkpoint import (
    DICT_FILES,
    INPUT_SIZE,
    atomic_replace,
    quiet_transformers,
)


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
        with quiet_transformers():
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
        atomic_replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
