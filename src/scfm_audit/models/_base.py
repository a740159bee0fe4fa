"""The model-adapter protocol: load a real checkpoint, tokenize cells faithfully, run a
hooked forward pass, map token positions back to the dataset's genes.

The rest of the framework speaks only this protocol and the canonical hook-site names of
``_hooks.py``; nothing outside ``models/`` knows a family's module names.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import pandas as pd
import torch

from scfm_audit._registry import Registry
from scfm_audit.models._device import (
    LOW_PRECISION,
    BatchSize,
    ForwardDtype,
    check_dtype_on_device,
    resolve_device,
    resolve_dtype,
)
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

    def value_tensor(self) -> torch.Tensor:
        """``values``, for the families whose tokens carry them (scGPT)."""
        if self.values is None:
            raise ValueError("this batch has no input values (a rank-value tokenization)")
        return self.values

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
class ResidualCache:
    """One batch's baseline forward pass with the hidden states entering chosen layers
    (the residual stream), so that a condition intervening only at layer ``L`` or later
    can run layers ``L``.. from ``hidden_in[L]`` instead of the whole model
    (:meth:`ModelAdapter.forward_cached`). ``output`` is the baseline output, computed
    once and reused by every condition."""

    batch: TokenizedBatch
    output: ModelOutput
    hidden_in: dict[int, torch.Tensor]
    return_logits: bool = False

    @property
    def layers(self) -> list[int]:
        return sorted(self.hidden_in)


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

    ``dtype`` is the forward dtype (float32 unless the adapter was loaded with
    ``dtype="bfloat16"`` / ``"float16"``, see :meth:`_set_numerics`); ``batch_size`` the
    cells per batch attention extraction uses when the caller gives none (an integer,
    ``"auto"`` = from free device memory, or None = the extraction default).
    """

    family: ClassVar[str]
    name: str
    n_layers: int
    n_heads: int
    d_model: int
    device: torch.device
    hook_points: dict[str, HookPoint]
    dtype: torch.dtype = torch.float32
    batch_size: BatchSize | None = None

    # -- construction ----------------------------------------------------------------
    def _init_hooks(self) -> None:
        self.hook_points = make_hook_points(self.n_layers)

    def _set_numerics(
        self,
        dtype: ForwardDtype | torch.dtype | None = None,
        batch_size: BatchSize | None = None,
    ) -> None:
        """Set the forward dtype (casting the floating weights and buffers of
        ``self.module`` to it once, on its device) and the default batch size. Call after
        :attr:`device` is set and the module moved there. A cast to bfloat16 / float16
        cannot be undone in place: load the checkpoint again for float32."""
        dt = resolve_dtype(dtype)
        check_dtype_on_device(dt, self.device)
        if batch_size is not None and batch_size != "auto":
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(
                    f"batch_size must be a positive integer or 'auto', got {batch_size!r}."
                )
        self.batch_size = batch_size
        if dt != torch.float32:
            module = getattr(self, "module", None)
            if not isinstance(module, torch.nn.Module):
                raise ValueError(
                    f"{type(self).__name__} has no torch module to cast to {dt}; "
                    "it runs in float32 only."
                )
            module.to(dtype=dt)
        self.dtype = dt

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
        plan: Sequence[np.ndarray] | None = None,
    ) -> Iterator[TokenizedBatch]:
        """Tokenized batches of ``batch_size`` cells, on :attr:`device`; or, when ``plan``
        is given, one batch per entry (obs positions; ``batch_size`` and ``cells`` are then
        ignored), e.g. length-bucketed batches from :func:`~scfm_audit.models._device.plan_batches`."""
        if plan is not None:
            for part in plan:
                yield self.tokenize(adata, np.asarray(part), counts=counts).to(self.device)
            return
        idx = np.arange(adata.n_obs) if cells is None else np.asarray(cells)
        for start in range(0, len(idx), batch_size):
            yield self.tokenize(adata, idx[start : start + batch_size], counts=counts).to(
                self.device
            )

    def token_counts(self, adata, cells: np.ndarray, *, counts: str = "X") -> np.ndarray:
        """Number of real tokens (specials included) each cell of ``cells`` gets from
        :meth:`tokenize`: what a batch pads to. This default tokenizes the cells in
        chunks; families override it with a count that does not build the tokens."""
        idx = np.asarray(cells, dtype=np.int64)
        out = np.zeros(idx.size, dtype=np.int64)
        for start in range(0, idx.size, 256):
            batch = self.tokenize(adata, idx[start : start + 256], counts=counts)
            out[start : start + len(batch)] = batch.attention_mask.sum(1).numpy()
        return out

    # -- model -----------------------------------------------------------------------------
    @abstractmethod
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
        """The forward pass. ``start_layer`` > 0: run layers ``start_layer``.. from
        ``hidden`` (the state entering that layer); ``states`` holds states entering
        earlier layers that the family's outputs read (Geneformer's embedding layer).
        ``capture``: its keys are layers whose entering state is written into it."""

    def forward(self, batch: TokenizedBatch, *, return_logits: bool = False) -> ModelOutput:
        """Evaluation-mode forward pass (no dropout, no gradients); hooks attached with
        :meth:`hooks` see every site."""
        with torch.inference_mode():
            out = self._forward(batch.to(self.device), return_logits=return_logits)
        return self._float_output(out)

    def _float_output(self, out: ModelOutput) -> ModelOutput:
        """Outputs of a bfloat16 / float16 forward cast up to float32 (what every consumer
        of :class:`ModelOutput` expects, numpy included); float32 outputs as they are."""
        if self.dtype not in LOW_PRECISION:
            return out
        up = {
            f.name: v.float()
            for f in fields(out)
            if isinstance(v := getattr(out, f.name), torch.Tensor) and v.dtype in LOW_PRECISION
        }
        return replace(out, **up)

    # -- residual-stream caching -------------------------------------------------------
    def _state_layers(self) -> set[int]:
        """Layers whose entering state the outputs read besides the last hidden state
        (Geneformer's ``emb_layer``); a :class:`ResidualCache` always keeps them."""
        return set()

    def residual_cache(
        self, batch: TokenizedBatch, layers, *, return_logits: bool = False
    ) -> ResidualCache:
        """The baseline forward pass of ``batch`` (hooks attached now apply) keeping the
        hidden state entering each of ``layers`` (0 = the embedding output)."""
        n = self.n_layers
        wanted = {int(L) for L in ([layers] if isinstance(layers, int) else layers)}
        bad = sorted(L for L in wanted if not 0 <= L < n)
        if bad:
            raise ValueError(f"residual_cache: layers {bad} out of range (0 … {n - 1}).")
        # placeholders (None) that _forward fills; checked below
        capture = cast("dict[int, torch.Tensor]", dict.fromkeys(wanted | self._state_layers()))
        batch = batch.to(self.device)
        with torch.inference_mode():
            out = self._float_output(
                self._forward(batch, return_logits=return_logits, capture=capture)
            )
        missing = [L for L, v in capture.items() if v is None]
        if missing:  # an adapter that does not fill ``capture``
            raise NotImplementedError(f"{type(self).__name__} does not capture layer states.")
        return ResidualCache(batch, out, capture, return_logits)

    def forward_from(
        self,
        batch: TokenizedBatch,
        layer: int,
        hidden: torch.Tensor,
        *,
        return_logits: bool = False,
        states: Mapping[int, torch.Tensor] | None = None,
    ) -> ModelOutput:
        """Evaluation-mode forward pass of layers ``layer``.. from ``hidden`` (the state
        entering ``layer``): equal to :meth:`forward` when ``hidden`` is the unmodified
        state and every active hook sits at ``layer`` or later. A hook attached below
        ``layer`` would silently not run, so it is an error."""
        n = self.n_layers
        if not 0 <= int(layer) < n:
            raise ValueError(f"forward_from: layer {layer} out of range (0 … {n - 1}).")
        below = sorted(
            name
            for name, hp in self.hook_points.items()
            if hp.active and int(name.split(".")[1]) < int(layer)
        )
        if below:
            raise ValueError(
                f"forward_from(layer={layer}) skips layers below {layer}, but hooks are "
                f"attached there ({', '.join(below[:4])}); start at layer "
                f"{min(int(b.split('.')[1]) for b in below)} or lower."
            )
        with torch.inference_mode():
            out = self._forward(
                batch.to(self.device),
                return_logits=return_logits,
                start_layer=int(layer),
                hidden=hidden.to(self.device),
                states=states,
            )
        return self._float_output(out)

    def forward_cached(self, cache: ResidualCache, layer: int) -> ModelOutput:
        """:meth:`forward_from` ``layer`` using the state cached in ``cache`` (the
        interventions active now must all sit at ``layer`` or later)."""
        if layer not in cache.hidden_in:
            raise ValueError(
                f"the residual cache holds layers {cache.layers}, not {layer}; build it with "
                f"residual_cache(batch, layers=[..., {layer}])."
            )
        if not any(hp.active for hp in self.hook_points.values()):
            return cache.output  # nothing changes: the baseline itself
        return self.forward_from(
            cache.batch,
            layer,
            cache.hidden_in[layer],
            return_logits=cache.return_logits,
            states=cache.hidden_in,
        )

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
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (checked: a one-line error when CUDA is requested and absent),
    else CUDA when available, else CPU (:func:`~scfm_audit.models._device.resolve_device`)."""
    return resolve_device(device)


MODEL_FAMILIES: Registry[type[ModelAdapter]] = Registry(
    "model family", modules=("scfm_audit.models.scgpt", "scfm_audit.models.geneformer")
)


def load_model(family: str, path: str | Path, **kwargs: Any) -> ModelAdapter:
    """Load a checkpoint of a registered family (``scgpt``, ``geneformer``, ...), after
    checking its declared layers and heads against its weights (``models/_verify.py``)."""
    from scfm_audit.models._verify import verify_checkpoint

    cls = MODEL_FAMILIES.get(family)
    verify_checkpoint(family, path)
    return cls.load(path, **kwargs)


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
