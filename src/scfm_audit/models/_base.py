"""The model-adapter protocol: load a real checkpoint, tokenize cells faithfully, run a
hooked forward pass, map token positions back to the dataset's genes.

The rest of the framework speaks only this protocol and the canonical hook-site names of
``_hooks.py``; nothing outside ``models/`` knows a family's module names.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from scfm_audit._registry import Registry
from scfm_audit.models._hooks import HookFn, HookPoint, hooks, make_hook_points


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded (missing file, wrong sizes, bad keys)."""


def unreadable_weights(path: str | Path, err: BaseException) -> CheckpointError:
    """The error for a weights file torch cannot load with ``weights_only=True``: says
    whether the file is corrupt / not a checkpoint or holds pickled objects besides
    tensors. Never relays torch's advice to retry with ``weights_only=False`` (that runs
    arbitrary code from the file)."""
    import zipfile

    p = Path(path)
    size = p.stat().st_size if p.exists() else 0
    if size and zipfile.is_zipfile(p) and "Weights only load failed" in str(err):
        return CheckpointError(
            f"{p} is a PyTorch file but holds Python objects besides tensors (e.g. a whole "
            "pickled model or an optimizer), which scfm-audit does not unpickle; save the "
            "weights alone with torch.save(model.state_dict(), path)."
        )
    what = "is empty" if size == 0 else "is corrupt or not a PyTorch checkpoint"
    return CheckpointError(
        f"{p} {what} (torch cannot read it: {type(err).__name__}); replace it with the "
        "checkpoint's original file."
    )


@dataclass
class TokenizedBatch:
    """A batch of tokenized cells.

    ``input_ids`` (B, T) token ids; ``values`` (B, T) float input values (scGPT's binned
    expression; None for rank-value models); ``attention_mask`` (B, T) bool, True for real
    tokens including special tokens, False for padding; ``gene_index`` (B, T) position of
    each token's gene in the dataset's ``var_names`` (-1 for special and pad tokens);
    ``cell_index`` (B,) obs positions of the cells.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    gene_index: torch.Tensor
    cell_index: np.ndarray
    values: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TokenizedBatch:
        return TokenizedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            gene_index=self.gene_index.to(device),
            cell_index=self.cell_index,
            values=None if self.values is None else self.values.to(device),
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]


@dataclass
class ModelOutput:
    """Outputs of one forward pass.

    ``hidden`` (B, T, D) last-layer hidden states; ``cell_embedding`` (B, D) the family's
    own cell embedding (scGPT: the ``<cls>`` position; Geneformer: mean over gene tokens,
    as its embedding extractor does); ``gene_predictions`` (B, T) scGPT's reconstructed
    expression values (None for Geneformer); ``logits`` (B, T, V) masked-gene logits when
    requested (Geneformer).
    """

    hidden: torch.Tensor
    cell_embedding: torch.Tensor
    attention_mask: torch.Tensor
    gene_predictions: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class VocabularyReport:
    """How much of a dataset a model can see: genes in the vocabulary and the share of
    counts they carry. Genes outside the vocabulary are never silently dropped: they are
    listed here and logged by the runner."""

    model: str
    n_genes: int
    n_in_vocab: int
    fraction_genes: float
    fraction_counts: float
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["missing"] = d["missing"][:50]
        return d


class ModelAdapter(ABC):
    """Base class of model adapters.

    Subclasses set ``family`` and implement :meth:`load`, :meth:`tokenize`,
    :meth:`_forward`, :meth:`perturb`, :meth:`vocabulary_report` and
    :meth:`save_pretrained`, and call :meth:`_init_hooks` once the layer count is known.
    """

    family: ClassVar[str]
    name: str
    n_layers: int
    n_heads: int
    d_model: int
    device: torch.device
    hook_points: dict[str, HookPoint]

    # -- construction ----------------------------------------------------------------
    def _init_hooks(self) -> None:
        self.hook_points = make_hook_points(self.n_layers)

    @classmethod
    @abstractmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device | None = None, name: str | None = None
    ) -> ModelAdapter:
        """Load a checkpoint folder in the family's real layout."""

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write the model in the family's real checkpoint layout (atomically)."""

    # -- data ----------------------------------------------------------------------------
    @abstractmethod
    def vocabulary_report(self, adata) -> VocabularyReport: ...

    @abstractmethod
    def tokenize(
        self, adata, cells: np.ndarray | None = None, *, counts: str = "X"
    ) -> TokenizedBatch:
        """Tokenize the cells at obs positions ``cells`` (all when None) exactly as the
        family's own tokenizer does."""

    def iter_batches(
        self,
        adata,
        *,
        batch_size: int = 32,
        cells: np.ndarray | None = None,
        counts: str = "X",
    ) -> Iterator[TokenizedBatch]:
        """Tokenized batches of ``batch_size`` cells, on :attr:`device`."""
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
        for start in range(0, len(idx), batch_size):
            yield self.tokenize(adata, idx[start : start + batch_size], counts=counts).to(
                self.device
            )

    # -- model -----------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, batch: TokenizedBatch, *, return_logits: bool = False) -> ModelOutput: ...

    def forward(self, batch: TokenizedBatch, *, return_logits: bool = False) -> ModelOutput:
        """Evaluation-mode forward pass (no dropout, no gradients); hooks attached with
        :meth:`hooks` see every site."""
        with torch.inference_mode():
            return self._forward(batch.to(self.device), return_logits=return_logits)

    def hooks(self, fns: Mapping[str, HookFn] | list[tuple[str, HookFn]]):
        """Context manager attaching ``fns`` (site name or glob → hook) to this model."""
        return hooks(self.hook_points, fns)

    @abstractmethod
    def perturb(
        self,
        batch: TokenizedBatch,
        gene: str | int,
        *,
        mode: Literal["delete", "overexpress"],
    ) -> TokenizedBatch:
        """In-silico perturbation of ``gene`` (symbol or dataset gene index) in every cell
        of ``batch``: ``delete`` removes its token (knock-down); ``overexpress`` sets its
        value to the maximum (scGPT) or moves it to the top rank (Geneformer)."""

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "name": self.name,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": self.d_model,
            "device": str(self.device),
        }


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


MODEL_FAMILIES: Registry[type[ModelAdapter]] = Registry(
    "model family", modules=("scfm_audit.models._scgpt", "scfm_audit.models._geneformer")
)


def load_model(family: str, path: str | Path, **kwargs: Any) -> ModelAdapter:
    """Load a checkpoint of a registered family (``scgpt``, ``geneformer``, ...)."""
    return MODEL_FAMILIES.get(family).load(path, **kwargs)


def obs_gene_positions(adata, genes: list[str] | pd.Index) -> np.ndarray:
    """Positions of ``genes`` in ``adata.var_names`` (-1 where absent)."""
    return pd.Index(adata.var_names).get_indexer(pd.Index(genes))


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)
