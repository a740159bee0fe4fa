"""Geneformer checkpoint folders: a Hugging Face BERT folder (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``, possibly sharded) with the dictionary
pickles under their released names. Reading goes in named steps, each raising a
:class:`CheckpointError` that says what to fix: the folder and its files, the BERT config,
the dictionaries, the version (V1 / V2), the vocabulary size, the weight shapes and the
weights themselves. Writing is atomic (a temporary folder renamed into place)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from scfm_audit.models._base import (
    CheckpointError,
    unreadable_weights,
)

#: Model input size per version (``TranscriptomeTokenizer`` ``model_input_size``).
INPUT_SIZE = {"V1": 2048, "V2": 4096}

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

DictLike = str | os.PathLike | Mapping


@dataclass
class Dictionaries:
    """The dictionary pickles of a checkpoint and the file names they were read from."""

    token_dictionary: dict  # Ensembl id → token id
    gene_medians: dict  # Ensembl id → non-zero median expression
    gene_mapping: dict | None = None  # Ensembl id → collapsed id (None: identity)
    gene_name_id: dict | None = None  # symbol → Ensembl id
    files: dict[str, str] = field(default_factory=dict)  # kind → file name read


def read_checkpoint(
    folder: Path,
    *,
    version: Literal["V1", "V2"] | None = None,
    token_dictionary: DictLike | None = None,
    gene_median_dictionary: DictLike | None = None,
    gene_mapping: DictLike | Literal[False] | None = None,
):
    """The module, dictionaries and version of the checkpoint ``folder`` (arguments as
    :meth:`GeneformerAdapter.load`)."""
    weight_files = _check_folder(folder, version)
    config = _read_config(folder)
    dicts = _read_dictionaries(
        folder,
        config,
        version,
        token_dictionary=token_dictionary,
        gene_median_dictionary=gene_median_dictionary,
        gene_mapping=gene_mapping,
    )
    version = _version(dicts, version)
    _check_vocabulary(config, dicts)
    module = _load_weights(folder, config, weight_files)
    return module, dicts, version


def _check_folder(folder: Path, version: str | None) -> list[Path]:
    """The weight files of ``folder``, after checking it holds a config and weights."""
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
    return weight_files


def _read_config(folder: Path):
    """``config.json`` as a ``BertConfig``; only absolute position embeddings."""
    cfg_file = folder / "config.json"
    from transformers import BertConfig

    with quiet_transformers():
        try:
            config = BertConfig.from_pretrained(folder)
        except Exception as err:
            raise CheckpointError(
                f"Could not read {str(cfg_file)!r} as a BERT config ({type(err).__name__}: {err})."
            ) from err
    pos_type = getattr(config, "position_embedding_type", "absolute")
    if pos_type not in (None, "absolute"):
        raise CheckpointError(
            f"position_embedding_type={pos_type!r} in {str(cfg_file)!r}; Geneformer uses "
            "absolute position embeddings and only those are supported."
        )
    return config


def _read_dictionaries(
    folder: Path,
    config,
    version: str | None,
    *,
    token_dictionary: DictLike | None,
    gene_median_dictionary: DictLike | None,
    gene_mapping: DictLike | Literal[False] | None,
) -> Dictionaries:
    """The dictionaries given or found in ``folder``, looking first under the names of the
    version the config suggests (input size 4096: V2)."""
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
    if tok is None or meds is None:  # required=True raised already
        raise CheckpointError("the token and gene median dictionaries are required")
    if "<pad>" not in tok:
        raise CheckpointError(
            f"The token dictionary ({tok_file or 'given'}) has no '<pad>' token; it is not "
            "a Geneformer token dictionary (pass token_dictionary=...)."
        )
    return Dictionaries(tok, meds, mapping, names, dict_files)


def _version(dicts: Dictionaries, version: Literal["V1", "V2"] | None) -> Literal["V1", "V2"]:
    """The version asked for, checked against the token dictionary, else inferred: V2
    when it holds ``<cls>`` and ``<eos>``."""
    tok, tok_file = dicts.token_dictionary, dicts.files.get("token_dictionary")
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
            stacklevel=4,  # the caller of GeneformerAdapter.load
        )
    return version


def _check_vocabulary(config, dicts: Dictionaries) -> None:
    """The config's ``vocab_size`` must be the token dictionary's size."""
    tok, tok_file = dicts.token_dictionary, dicts.files.get("token_dictionary")
    ids = [int(v) for v in tok.values()]
    if config.vocab_size != len(tok) or max(ids) >= config.vocab_size:
        raise CheckpointError(
            f"config.json says vocab_size={config.vocab_size} but the token dictionary "
            f"({tok_file or 'given'}) has {len(tok)} tokens (largest id {max(ids)}); "
            "this dictionary does not belong to this model. Use the dictionary the "
            "model was trained with (V1: token_dictionary.pkl, V2: "
            "token_dictionary_gc104M.pkl) via token_dictionary=."
        )


def _load_weights(folder: Path, config, weight_files: list[Path]):
    """The Hugging Face model, after checking the weight shapes against the config; eager
    attention (hooks need the attention pattern); only the pooler may be missing."""
    shapes = _checkpoint_shapes(weight_files)
    model_cls = _model_class(config, shapes)
    _check_shapes(model_cls, config, shapes, folder)
    with quiet_transformers():
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
    return module


def write_checkpoint(module, dicts: Dictionaries, version: str, target: Path) -> None:
    """Write ``module`` and ``dicts`` as a Geneformer checkpoint folder, dictionaries
    under the names they were read from, else their released names."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with quiet_transformers():
            module.save_pretrained(tmp)
        names = DICT_FILES[version]
        payload = {
            "token_dictionary": dicts.token_dictionary,
            "gene_median_dictionary": dicts.gene_medians,
            "gene_mapping": dicts.gene_mapping,
            "gene_name_id": dicts.gene_name_id,
        }
        for key, obj in payload.items():
            if obj is None:
                continue
            fname = dicts.files.get(key, names[key][0])
            with open(tmp / fname, "wb") as fh:
                pickle.dump(obj, fh)
        atomic_replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
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


def atomic_replace(tmp: Path, target: Path) -> None:
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
        file = Path(given)
        if not file.is_file():
            raise CheckpointError(f"{kind} file {str(file)!r} does not exist.")
        return _read_pickle(file, kind), file.name
    candidates = [n for v in order for n in DICT_FILES[v][kind]]
    for fname in candidates:
        file = folder / fname
        if file.is_file():
            return _read_pickle(file, kind), fname
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
        file = folder / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):
            index = json.loads(file.read_text())
            return sorted({folder / f for f in index.get("weight_map", {}).values()})
        return [file]
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
