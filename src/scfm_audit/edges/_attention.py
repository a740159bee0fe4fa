"""Streaming attention-edge extraction.

Cells are streamed through the model in batches. A hook on the chosen site of every
requested layer folds that layer's (B, H, T, T) tensor into a gene × gene accumulator on
the model's device the moment it is computed and returns ``None``: nothing per cell is
kept, no list of all layers' attention ever exists, and the memory is
``n_layers × (n_heads or 1) × G²`` sums plus one ``G²`` coverage count — independent of
the number of cells. Accumulators are sums and counts, so shards of cells processed on
different machines merge by addition (:meth:`AttentionAccumulator.merge`).

Accumulation method
-------------------
A batch's token pairs are mapped once per batch (not per layer) to linear indices
``slot(query gene) · G + slot(key gene)`` of the flattened G × G matrix, dropping every
pair that involves a special token, padding or a gene outside ``genes`` (slot −1). Each
layer's tensor is then folded with one ``index_add_`` per head (or one for the head sum
when ``per_head=False``): O(B·H·T²) work, the same order as computing the attention
itself, and no O(T·G) one-hot matrices. The alternative, one-hot P (T × G) and
Pᵀ·A·P, costs O(T²·G + T·G²) per cell and head — for G = 2,000 genes and T = 512 tokens
about 4,000× more arithmetic — so index arithmetic wins by construction. The pair index
is built once per batch and shared by all layers and heads; the coverage count depends
only on the tokens, so it is one G × G matrix for all layers. On CPU, ``index_add_``
adds the pairs in index order, so every sum runs over the cells in the order they were
streamed and the same batches give bitwise the same sums. Other batches (another size,
length buckets) change the order of the additions and the padded length each cell's
forward sees (BLAS may block a longer matrix differently), so they agree within float
rounding, not bitwise. On CUDA, ``index_add_`` sums in a non-deterministic order
(float-rounding-level differences between runs).

Forward dtype, batches and devices
----------------------------------
The model may run in bfloat16 or float16 (the adapter's ``dtype``, config
``models.<name>.dtype``); the sums stay float32 (or float64): every value is cast up
*before* it is added — the head sum of the pooled accumulator is taken in float32, a
per-head value is cast after its gather — so the accumulators carry only the rounding of
the forward pass itself, never a low-precision running sum. ``length_buckets`` sorts the
cells by token count (longest first) so that a batch pads little; it changes the order
in which cells are added and each cell's batch, hence the sums within float rounding
(not bitwise). It
is on by default on CUDA and off on CPU, where the stored results are bitwise those of
the unsorted stream. ``batch_size="auto"`` sizes each batch from the free device memory
and a memory model per (batch, tokens, heads) (``models/_device.py``); on CPU it is 16.

Scores and orientation
----------------------
``sum[L, h, i, j]`` adds, over cells, the score of the *query* token of ``genes[i]``
attending to the *key* token of ``genes[j]`` (row = query, column = key), so
``EdgeScores.scores[i, j]`` reads "i attends to j". scGPT's GRN tutorial reads the
influence of a TF on its targets from the TF's *column* (targets attending to the TF):
use ``scores.T`` (or :meth:`EdgeScores.symmetrised`) for TF → target orientation.

Score kinds (``score=``):

``"softmax"`` (default)
    attention probabilities, hook site ``layers.L.attn.pattern``.
``"softmax_relative"``
    attention probabilities times the number of real tokens of the cell (the keys the
    query's softmax ran over), i.e. attention relative to uniform attention (1 =
    uniform). Softmax probabilities scale as 1/T with the cell's length T, so their mean
    over the cells where two genes are co-present partly measures which cells those are:
    on the 40-gene test benchmark the mean 1/T over co-present cells alone has Spearman
    +0.22 with |co-expression|, and a random-initialised Geneformer (nearly uniform
    attention) scores +0.21. The factor T removes that length effect and nothing else
    (per cell it is a constant of each row).
``"qk"`` (alias ``"raw"``)
    pre-softmax, unscaled q·kᵀ: the ``layers.L.attn.scores`` site (q·kᵀ/√d_head) times
    √d_head (applied once, when the edges are read out).
``"qk_scaled"``
    q·kᵀ/√d_head exactly as the ``attn.scores`` site sees it (the softmax logits).
``"scgpt_grn"``
    scGPT's published attention-GRN recipe (``tutorials/Tutorial_Attention_GRN.ipynb``):
    per cell and head, the q·kᵀ matrix is rank-normalised along each row (rank / M), the
    result along each column (rank / M), and the heads are averaged; the cells are then
    averaged. See :func:`scgpt_rank_normalise` for the deviations.

Average product correction (``correction="apc"``)
-------------------------------------------------
Applied to each gene × gene matrix after normalisation (and symmetrisation):
``F_ij − F_i· F_·j / F_··`` with row, column and grand means over the off-diagonal
finite entries (Dunn et al. 2008, *Bioinformatics* 24:333; used on symmetrised attention
maps by Rao et al. 2021, "Transformer protein language models are unsupervised structure
learners"). It removes each gene's background — genes that attend broadly, or that every
query attends to (e.g. Geneformer's top-ranked genes, which sit at the positions
attention favours) — and keeps the pair-specific part.

Duplicated genes
----------------
If a gene is tokenised twice in one cell, every token pair is one observation: both
occurrences add their scores to ``sum`` and both add to ``count``, so "present"
normalisation gives the mean over token pairs and the coverage of that cell counts
twice. Neither scGPT nor Geneformer tokenizers emit duplicates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from scfm_audit.edges._scores import EdgeScores
from scfm_audit.models._device import (
    CPU_BATCH_SIZE,
    LOW_PRECISION,
    BatchSize,
    auto_batch_size,
    plan_batches,
)

__all__ = [
    "SCORE_KINDS",
    "AttentionAccumulator",
    "GroupedAttentionAccumulator",
    "GroupingsIndex",
    "MultiGroupedAttentionAccumulator",
    "PairIndex",
    "average_product_correction",
    "extract_attention_accumulator",
    "extract_attention_edges",
    "relative_to_uniform",
    "scgpt_rank_normalise",
]

#: score kind → hook site kind it reads
SCORE_KINDS: dict[str, str] = {
    "softmax": "attn.pattern",
    "softmax_relative": "attn.pattern",
    "qk": "attn.scores",
    "qk_scaled": "attn.scores",
    "scgpt_grn": "attn.scores",
}
_SCORE_ALIASES = {"raw": "qk", "pattern": "softmax"}
_STATE_FORMAT = "scfm_audit.AttentionAccumulator"
_STATE_VERSION = 1

Normalisation = Literal["present", "all"]
Correction = Literal["apc"] | None


def average_product_correction(scores: np.ndarray) -> np.ndarray:
    """``F − F_i· F_·j / F_··`` (row, column and grand means over the off-diagonal finite
    entries; NaN stays NaN). A copy; see the module docstring."""
    F = np.asarray(scores, dtype=np.float64)
    off = F.copy()
    np.fill_diagonal(off, np.nan)
    with warnings.catch_warnings():  # a gene never co-present with another: NaN means
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        row = np.nanmean(off, axis=1, keepdims=True)
        col = np.nanmean(off, axis=0, keepdims=True)
        grand = np.nanmean(off)
    if not np.isfinite(grand) or grand == 0:
        raise ValueError("average product correction needs a finite, non-zero mean score")
    return (F - row * col / grand).astype(scores.dtype, copy=False)


def _resolve_score(score: str) -> str:
    kind = _SCORE_ALIASES.get(score, score)
    if kind not in SCORE_KINDS:
        raise ValueError(
            f"unknown attention score kind {score!r}; choose one of "
            f"{', '.join(repr(k) for k in SCORE_KINDS)} ('raw' is an alias of 'qk')."
        )
    return kind


# -- the accumulator ------------------------------------------------------------------------
@dataclass(frozen=True)
class PairIndex:
    """The token pairs of one batch that fold into the accumulator.

    ``lin`` (N,) linear index ``i·G + j`` of each kept (query gene i, key gene j) pair;
    ``sel`` (N,) flat position of the pair in a (B, T, T) tensor, or None when every pair
    is kept; ``shape`` the batch's (B, T). Indices are int32 when they fit, else int64.
    """

    lin: torch.Tensor
    sel: torch.Tensor | None
    shape: tuple[int, int]


@dataclass(frozen=True)
class GroupingsIndex(PairIndex):
    """A batch's pairs for several groupings: ``lin`` / ``sel`` as in :class:`PairIndex`
    (no group offset), and per grouping ``(lin, keep)``: the pairs' linear indices into
    the grouped buffer and which of the ``N`` pairs belong to it (None: all)."""

    parts: tuple[tuple[torch.Tensor, torch.Tensor | None], ...] = ()


class AttentionAccumulator:
    """Running gene × gene sums and coverage counts of per-cell attention scores.

    Parameters
    ----------
    genes
        Gene names indexing both axes (slot ``k`` = ``genes[k]``).
    layers
        Transformer layers accumulated (model layer numbers).
    n_heads
        Heads per layer.
    per_head
        Keep one sum per head (memory × ``n_heads``); otherwise the sum over heads.
    dtype
        Floating type of the sums (float64 by default; float32 halves the memory).
    device
        Where the tensors live (the model's device).
    scale
        Factor applied when the edges are read out (√d_head for ``score="qk"``).
    params
        Provenance (score kind, hook site, batch size, ...): saved with the state, copied
        into every EdgeScores, and required to be equal when merging.

    Attributes
    ----------
    sum
        ``(n_layers, n_heads or 1, G, G)``: Σ over cells of the score of gene i's query
        token attending to gene j's key token.
    count
        ``(G, G)`` int32: cells in which both genes were tokenised (shared by all layers
        and heads, which see the same tokens).
    n_cells
        Cells folded in.
    """

    def __init__(
        self,
        genes: Sequence[str] | pd.Index,
        *,
        layers: Sequence[int],
        n_heads: int,
        per_head: bool = False,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        scale: float = 1.0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.genes = pd.Index(genes).astype(str)
        if self.genes.has_duplicates:
            dup = self.genes[self.genes.duplicated()].unique()[:5].tolist()
            raise ValueError(f"AttentionAccumulator: duplicated gene names {dup}.")
        self.layers = tuple(int(L) for L in layers)
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"AttentionAccumulator: need distinct layers, got {self.layers}.")
        if not dtype.is_floating_point:
            raise ValueError(f"AttentionAccumulator: dtype must be floating, got {dtype}.")
        if dtype in LOW_PRECISION:
            raise ValueError(
                f"AttentionAccumulator: sums in {dtype} lose the signal; use float32 or "
                "float64 (a bfloat16 / float16 forward is the model's dtype, not this one)."
            )
        self.n_heads = int(n_heads)
        self.per_head = bool(per_head)
        self.scale = float(scale)
        self.params = dict(params or {})
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        hs = self.n_heads if self.per_head else 1
        self._pos = {L: i for i, L in enumerate(self.layers)}
        self.sum = torch.zeros(
            (len(self.layers), hs, *self._cell_shape()), dtype=dtype, device=self.device
        )
        self.count = torch.zeros(self._cell_shape(), dtype=torch.int32, device=self.device)
        self.n_cells = 0

    def _cell_shape(self) -> tuple[int, ...]:
        """Shape of one head's sums (and of the coverage count): (G, G)."""
        return (self.n_genes, self.n_genes)

    # -- introspection ------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def dtype(self) -> torch.dtype:
        return self.sum.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator's tensors (independent of :attr:`n_cells`)."""
        return self.sum.numel() * self.sum.element_size() + (
            self.count.numel() * self.count.element_size()
        )

    def __repr__(self) -> str:
        return (
            f"AttentionAccumulator({self.n_genes} genes, layers={list(self.layers)}, "
            f"heads={self.n_heads}{' per head' if self.per_head else ' pooled'}, "
            f"n_cells={self.n_cells}, {self.nbytes / 2**20:.1f} MiB)"
        )

    # -- folding ------------------------------------------------------------------------
    def prepare(self, gene_slot: torch.Tensor) -> PairIndex:
        """Index the token pairs of a batch: ``gene_slot`` (B, T) is each token's gene slot
        in :attr:`genes`, −1 for special tokens, padding and genes not accumulated."""
        slot, small = self._checked_slots(gene_slot)
        G = self.n_genes
        B, T = slot.shape
        if small:
            slot = slot.to(torch.int32)
        valid = slot >= 0
        lin = (slot[:, :, None] * G + slot[:, None, :]).reshape(-1)
        if bool(valid.all()):
            return PairIndex(lin=lin, sel=None, shape=(B, T))
        pair = (valid[:, :, None] & valid[:, None, :]).reshape(-1)
        sel = pair.nonzero().squeeze(1)
        if small:
            sel = sel.to(torch.int32)
        return PairIndex(lin=lin[sel], sel=sel, shape=(B, T))

    def _checked_slots(
        self, gene_slot: torch.Tensor, groups: torch.Tensor | None = None, n_groups: int = 1
    ) -> tuple[torch.Tensor, bool]:
        """``gene_slot`` (B, T) as int64 on the device, checked (and ``groups``' length
        against B), and whether every pair index of ``n_groups`` stacked (G, G) sums fits
        in int32 (half the memory; ``index_add_`` accepts both)."""
        if gene_slot.ndim != 2:
            raise ValueError(f"gene_slot must be (B, T), got shape {tuple(gene_slot.shape)}.")
        if groups is not None and groups.shape[0] != gene_slot.shape[0]:
            raise ValueError(f"{groups.shape[0]} groups for a batch of {gene_slot.shape[0]} cells.")
        slot = gene_slot.to(self.device, torch.int64)
        G = self.n_genes
        if slot.numel() and int(slot.max()) >= G:
            raise ValueError(f"gene_slot has values ≥ n_genes ({G}).")
        B, T = slot.shape
        return slot, n_groups * G * G < 2**31 and B * T * T < 2**31

    def add_cells(self, gene_slot: torch.Tensor | PairIndex) -> PairIndex:
        """Count a batch of cells (coverage and :attr:`n_cells`); return its
        :class:`PairIndex` for :meth:`fold`. Call once per batch, then :meth:`fold` every
        layer of the accumulator with that batch."""
        index = gene_slot if isinstance(gene_slot, PairIndex) else self.prepare(gene_slot)
        ones = torch.ones(index.lin.shape[0], dtype=self.count.dtype, device=self.device)
        self.count.view(-1).index_add_(0, index.lin, ones)
        self.n_cells += index.shape[0]
        return index

    def fold(self, layer: int, values: torch.Tensor, index: PairIndex) -> None:
        """Add one layer's per-cell scores ``values`` (B, H, T, T) (rows = queries) for the
        batch described by ``index`` (from :meth:`add_cells`)."""
        if layer not in self._pos:
            raise ValueError(f"layer {layer} is not accumulated (layers {list(self.layers)}).")
        B, T = index.shape
        if tuple(values.shape) != (B, self.n_heads, T, T):
            raise ValueError(
                f"scores of layer {layer} have shape {tuple(values.shape)}, expected "
                f"{(B, self.n_heads, T, T)} (batch, heads, tokens, tokens)."
            )
        buf = self.sum[self._pos[layer]].view(self.sum.shape[1], -1)  # (Hs, G·G)
        if not self.per_head:
            # (B, T, T): sum over heads (mean taken at read-out), in float32 at least
            up = values.dtype in LOW_PRECISION
            srcs = [values.sum(1, dtype=torch.float32) if up else values.sum(1)]
        else:  # a low-precision value is cast up after its gather, before index_add_
            srcs = [values[:, h] for h in range(self.n_heads)]
        for h, src in enumerate(srcs):
            v = src.reshape(-1)
            if index.sel is not None:
                v = v[index.sel]
            self._add(buf[h], index, v.to(device=self.device, dtype=buf.dtype))

    def _add(self, buf: torch.Tensor, index: PairIndex, v: torch.Tensor) -> None:
        """Fold the kept pairs' values ``v`` into one head's flat sums (an accumulator of
        several groupings folds them once per grouping)."""
        buf.index_add_(0, index.lin, v)

    def update(
        self,
        pattern: torch.Tensor | Mapping[int, torch.Tensor],
        gene_slot: torch.Tensor,
    ) -> None:
        """Fold one batch: ``pattern`` (B, H, T, T) for a one-layer accumulator, or a
        mapping layer → (B, H, T, T) covering every accumulated layer; ``gene_slot`` (B, T)
        as in :meth:`prepare`."""
        if isinstance(pattern, Mapping):
            patterns = {int(k): v for k, v in pattern.items()}
            if set(patterns) != set(self.layers):
                raise ValueError(
                    f"update needs a pattern for every accumulated layer {list(self.layers)}, "
                    f"got {sorted(patterns)}; use add_cells() + fold() to stream layers."
                )
        else:
            if len(self.layers) != 1:
                raise ValueError(
                    "this accumulator has several layers: pass {layer: pattern} for all of "
                    "them, or call add_cells() once per batch and fold() per layer."
                )
            patterns = {self.layers[0]: pattern}
        index = self.add_cells(gene_slot)
        for layer, p in patterns.items():
            self.fold(layer, p, index)

    # -- combining and caching ----------------------------------------------------------
    def _check_compatible(self, other: AttentionAccumulator) -> None:
        mine: tuple[Any, ...] = (
            list(self.genes),
            self.layers,
            self.n_heads,
            self.per_head,
            self.scale,
        )
        theirs: tuple[Any, ...] = (
            list(other.genes),
            other.layers,
            other.n_heads,
            other.per_head,
            other.scale,
        )
        names: tuple[str, ...] = ("genes", "layers", "n_heads", "per_head", "scale")
        keys = ("score", "site", "counts", "model")  # what makes the sums comparable
        mine += tuple(self.params.get(k) for k in keys)
        theirs += tuple(other.params.get(k) for k in keys)
        names += tuple(f"params[{k!r}]" for k in keys)
        for name, a, b in zip(names, mine, theirs):
            if a != b:
                raise ValueError(f"cannot merge accumulators with different {name}.")

    def merge(self, other: AttentionAccumulator) -> AttentionAccumulator:
        """Add ``other`` (a shard of other cells) into this accumulator; returns self."""
        self._check_compatible(other)
        self.sum += other.sum.to(self.device, self.sum.dtype)
        self.count += other.count.to(self.device)
        self.n_cells += other.n_cells
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the accumulator (CPU tensor copies)."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "genes": list(self.genes),
            "layers": list(self.layers),
            "n_heads": self.n_heads,
            "per_head": self.per_head,
            "scale": self.scale,
            "params": dict(self.params),
            "n_cells": self.n_cells,
            "sum": self.sum.to("cpu", copy=True),
            "count": self.count.to("cpu", copy=True),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, device: str | torch.device | None = None
    ) -> AttentionAccumulator:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError("not an AttentionAccumulator state dict.")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"AttentionAccumulator state version {state.get('version')} is not "
                f"{_STATE_VERSION}; recompute it."
            )
        acc = cls(
            state["genes"],
            layers=state["layers"],
            n_heads=state["n_heads"],
            per_head=state["per_head"],
            dtype=state["sum"].dtype,
            device=device,
            scale=state["scale"],
            params=state.get("params"),
        )
        if tuple(state["sum"].shape) != tuple(acc.sum.shape):
            raise ValueError("AttentionAccumulator state: sum has the wrong shape.")
        acc.sum.copy_(state["sum"])
        acc.count.copy_(state["count"])
        acc.n_cells = int(state["n_cells"])
        return acc

    # -- read-out -----------------------------------------------------------------------
    def to_edge_scores(
        self,
        *,
        normalisation: Normalisation = "present",
        model: str | None = None,
        dataset: str | None = None,
        params: Mapping[str, Any] | None = None,
        symmetrise: bool = False,
        correction: Correction = None,
    ) -> list[EdgeScores]:
        """Edge scores per layer: the head-pooled mean first (``head=None``), then, when
        :attr:`per_head`, one per head.

        ``normalisation="present"`` divides the sum by the coverage (mean over the cells
        in which both genes were tokenised; NaN where they never were); ``"all"`` divides
        by :attr:`n_cells` (an absent pair contributes 0). The pooled score is the mean
        over heads of the per-head scores. ``symmetrise`` returns (S + Sᵀ)/2.
        ``correction="apc"`` then applies :func:`average_product_correction`.
        """
        if normalisation not in ("present", "all"):
            raise ValueError(f"normalisation must be 'present' or 'all', got {normalisation!r}.")
        if correction not in (None, "apc"):
            raise ValueError(f"correction must be None or 'apc', got {correction!r}.")
        count = self.count.to(self.sum.dtype)
        if normalisation == "present":
            denom = count
        else:
            denom = torch.full_like(count, float(self.n_cells))
        absent = denom == 0
        coverage = self.count.cpu().numpy().copy()  # shared by this call's EdgeScores
        coverage.setflags(write=False)
        base = {
            "normalisation": normalisation,
            "per_head": self.per_head,
            "n_heads": self.n_heads,
            "n_layers_accumulated": len(self.layers),
            "layers": list(self.layers),
            "accumulator_dtype": str(self.sum.dtype).removeprefix("torch."),
            "scale": self.scale,
            "orientation": "scores[i, j]: query token of genes[i] attends to key token of genes[j]",
            **self.params,
            **(dict(params) if params else {}),
            "correction": correction,
        }

        def make(mat: torch.Tensor, layer: int, head: int | None) -> EdgeScores:
            m = mat * self.scale / denom
            arr = m.masked_fill(absent, float("nan")).cpu().numpy()
            edge_scores = EdgeScores(
                scores=arr,
                genes=self.genes,
                method="attention",
                layer=layer,
                head=head,
                n_cells=self.n_cells,
                coverage=coverage,
                directed=True,
                model=model,
                dataset=dataset,
                params={**base, "pooling": "mean over heads" if head is None else "head"},
            )
            if symmetrise:
                with warnings.catch_warnings():  # pairs never seen stay NaN
                    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                    edge_scores = edge_scores.symmetrised()
            if correction == "apc":
                edge_scores = replace(
                    edge_scores, scores=average_product_correction(edge_scores.dense())
                )
            return edge_scores

        out: list[EdgeScores] = []
        for i, layer in enumerate(self.layers):
            s = self.sum[i]
            out.append(make(s.sum(0) / self.n_heads, layer, None))
            if self.per_head:
                out.extend(make(s[h], layer, h) for h in range(self.n_heads))
        return out


class GroupedAttentionAccumulator(AttentionAccumulator):
    """Per-group attention accumulators filled in one pass over the cells.

    Every cell carries an integer group (a stratum of CSSI, or the smallest grid bucket of
    a nested subsample for ``scaling``) and its token pairs are folded into that group's
    gene × gene sums: the batch's linear pair index is offset by ``group · G²`` into a
    ``(n_groups, G, G)`` buffer per layer and head, so a batch costs the same
    ``index_add_`` calls as a pooled pass (one per layer and head) — only the memory grows,
    × ``n_groups``. Groups are sums and counts: :meth:`group` reads one out,
    :meth:`pooled` adds them all (= the pooled accumulator of the same cells) and
    :meth:`cumulative` gives every nested union ``groups 0 … k`` by a cumulative sum.

    Attributes (besides :class:`AttentionAccumulator`'s)
    ----------------------------------------------------
    sum
        ``(n_layers, n_heads or 1, n_groups, G, G)``.
    count
        ``(n_groups, G, G)`` int32.
    group_cells
        ``(n_groups,)`` int64: cells folded into each group.
    """

    def __init__(self, genes, *, n_groups: int, **kwargs: Any) -> None:
        if int(n_groups) < 1:
            raise ValueError(f"n_groups must be ≥ 1, got {n_groups}.")
        self.n_groups = int(n_groups)
        super().__init__(genes, **kwargs)
        self.group_cells = np.zeros(self.n_groups, dtype=np.int64)

    def _cell_shape(self) -> tuple[int, ...]:
        return (self.n_groups, self.n_genes, self.n_genes)

    def __repr__(self) -> str:
        return super().__repr__().replace("(", f"({self.n_groups} groups, ", 1)

    def prepare(self, gene_slot: torch.Tensor, groups: torch.Tensor | None = None) -> PairIndex:
        """As :meth:`AttentionAccumulator.prepare`, with ``groups`` (B,) the group of each
        cell (0 … n_groups − 1): pair indices are offset by ``group · G²``."""
        if groups is None:
            raise ValueError("GroupedAttentionAccumulator needs the group of every cell.")
        g = torch.as_tensor(groups, device=self.device).to(torch.int64).reshape(-1)
        slot, small = self._checked_slots(gene_slot, g, self.n_groups)
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= self.n_groups):
            raise ValueError(f"groups must lie in 0 … {self.n_groups - 1}.")
        G = self.n_genes
        B, T = slot.shape
        valid = slot >= 0
        lin = (slot[:, :, None] * G + slot[:, None, :]) + (g * (G * G))[:, None, None]
        lin = lin.reshape(-1)
        if small:
            lin = lin.to(torch.int32)
        if bool(valid.all()):
            return PairIndex(lin=lin, sel=None, shape=(B, T))
        sel = (valid[:, :, None] & valid[:, None, :]).reshape(-1).nonzero().squeeze(1)
        if small:
            sel = sel.to(torch.int32)
        return PairIndex(lin=lin[sel], sel=sel, shape=(B, T))

    def add_cells(
        self, gene_slot: torch.Tensor | PairIndex, groups: torch.Tensor | None = None
    ) -> PairIndex:
        """Count a batch of cells of groups ``groups`` (B,); returns its PairIndex."""
        if isinstance(gene_slot, PairIndex):
            raise ValueError("pass gene_slot and groups: the groups are counted here.")
        index = self.prepare(gene_slot, groups)
        ones = torch.ones(index.lin.shape[0], dtype=self.count.dtype, device=self.device)
        self.count.view(-1).index_add_(0, index.lin, ones)
        self.n_cells += index.shape[0]
        g = np.asarray(torch.as_tensor(groups).cpu()).reshape(-1).astype(np.int64)
        self.group_cells += np.bincount(g, minlength=self.n_groups)
        return index

    def update(self, pattern, gene_slot, groups=None) -> None:
        """Fold one batch (``pattern`` as in the base class) of cells in ``groups``."""
        if not isinstance(pattern, Mapping):
            if len(self.layers) != 1:
                raise ValueError("pass {layer: pattern} for every accumulated layer.")
            pattern = {self.layers[0]: pattern}
        if {int(k) for k in pattern} != set(self.layers):
            raise ValueError(f"update needs a pattern for every layer {list(self.layers)}.")
        index = self.add_cells(gene_slot, groups)
        for layer, p in pattern.items():
            self.fold(int(layer), p, index)

    def merge(self, other: AttentionAccumulator) -> GroupedAttentionAccumulator:
        if not isinstance(other, GroupedAttentionAccumulator) or other.n_groups != self.n_groups:
            raise ValueError("cannot merge accumulators with different groups.")
        super().merge(other)
        self.group_cells += other.group_cells
        return self

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("save the groups one by one: acc.group(k).state_dict().")

    def _from_parts(
        self, s: torch.Tensor, c: torch.Tensor, n: int, **extra
    ) -> AttentionAccumulator:
        acc = AttentionAccumulator(
            self.genes,
            layers=self.layers,
            n_heads=self.n_heads,
            per_head=self.per_head,
            dtype=self.sum.dtype,
            device=self.device,
            scale=self.scale,
            params={**self.params, **extra},
        )
        acc.sum.copy_(s)
        acc.count.copy_(c)
        acc.n_cells = int(n)
        return acc

    def group(self, k: int) -> AttentionAccumulator:
        """Group ``k`` as a plain :class:`AttentionAccumulator` (a copy)."""
        if not 0 <= k < self.n_groups:
            raise IndexError(f"group {k} out of 0 … {self.n_groups - 1}.")
        return self._from_parts(self.sum[:, :, k], self.count[k], self.group_cells[k], group=int(k))

    def pooled(self) -> AttentionAccumulator:
        """All groups together (equal to a pooled pass over the same cells)."""
        return self._from_parts(self.sum.sum(2), self.count.sum(0), self.n_cells)

    def cumulative(self) -> list[AttentionAccumulator]:
        """Nested unions: element ``k`` holds groups 0 … k (cumulative sums over groups)."""
        s = torch.cumsum(self.sum, dim=2)
        c = torch.cumsum(self.count, dim=0, dtype=self.count.dtype)
        n = np.cumsum(self.group_cells)
        return [
            self._from_parts(s[:, :, k], c[k], n[k], nested_groups=int(k) + 1)
            for k in range(self.n_groups)
        ]


class MultiGroupedAttentionAccumulator(GroupedAttentionAccumulator):
    """Several groupings of the same cells filled in one pass (CSSI's strata, its random
    strata and its K scan; the repeats of a nested subsample).

    Every cell carries one group per grouping (−1: not in that grouping). Grouping ``m``'s
    group ``k`` is group ``offsets[m] + k`` of one :class:`GroupedAttentionAccumulator`
    buffer, and a batch's token pairs are folded once per grouping: ``M`` ``index_add_``
    per layer and head where a grouped pass costs one, but a single forward pass instead
    of ``M``. :meth:`grouping` reads grouping ``m`` out as the
    :class:`GroupedAttentionAccumulator` a pass over its own cells would give (same cells,
    same order of additions; their batches may differ, so equal within float rounding).

    Attributes (besides :class:`GroupedAttentionAccumulator`'s)
    ----------------------------------------------------------
    sizes
        Groups of each grouping.
    offsets
        First group of each grouping in the shared buffer.
    """

    def __init__(self, genes, *, n_groups: Sequence[int], **kwargs: Any) -> None:
        sizes = tuple(int(k) for k in n_groups)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every grouping needs ≥ 1 group, got {list(sizes)}.")
        self.sizes = sizes
        self.offsets = tuple(int(o) for o in np.cumsum((0, *sizes[:-1])))
        super().__init__(genes, n_groups=sum(sizes), **kwargs)

    def __repr__(self) -> str:
        return super().__repr__().replace("(", f"({len(self.sizes)} groupings, ", 1)

    def _global(self, groups: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, M) groups within each grouping → (B, M) groups of the shared buffer (−1
        stays −1)."""
        g = torch.as_tensor(groups, device=self.device).to(torch.int64)
        M = len(self.sizes)
        if g.ndim != 2 or g.shape[1] != M:
            raise ValueError(f"groups must be (cells, {M}) for {M} groupings.")
        size = torch.as_tensor(self.sizes, device=self.device)
        if g.numel() and (bool((g < -1).any()) or bool((g >= size).any())):
            raise ValueError(f"grouping m's groups must lie in −1 … {[k - 1 for k in self.sizes]}.")
        off = torch.as_tensor(self.offsets, device=self.device)
        return torch.where(g >= 0, g + off, -1)

    def prepare(self, gene_slot: torch.Tensor, groups: torch.Tensor | None = None) -> PairIndex:
        """The batch's pairs once (special tokens, padding and genes not accumulated
        dropped) and, per grouping, their indices offset by the cell's group in it (a cell
        outside a grouping drops out of that grouping's part)."""
        if groups is None:
            raise ValueError("MultiGroupedAttentionAccumulator needs the groups of every cell.")
        g = self._global(groups)
        slot, small = self._checked_slots(gene_slot, g, self.n_groups)
        G = self.n_genes
        B, T = slot.shape
        dt = torch.int32 if small else torch.int64
        valid = slot >= 0
        base = (slot[:, :, None] * G + slot[:, None, :]).reshape(-1)
        sel: torch.Tensor | None = None
        if bool(valid.all()):
            cell = torch.arange(B, device=self.device).repeat_interleave(T * T)
        else:
            sel = (valid[:, :, None] & valid[:, None, :]).reshape(-1).nonzero().squeeze(1)
            base, cell = base[sel], sel // (T * T)
        parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for m in range(g.shape[1]):
            gc = g[:, m][cell]
            inside = gc >= 0
            if bool(inside.all()):
                parts.append(((base + gc * (G * G)).to(dt), None))
            else:
                keep = inside.nonzero().squeeze(1)
                parts.append(((base[keep] + gc[keep] * (G * G)).to(dt), keep))
        return GroupingsIndex(
            lin=base.to(dt),
            sel=None if sel is None else sel.to(dt),
            shape=(B, T),
            parts=tuple(parts),
        )

    def add_cells(
        self, gene_slot: torch.Tensor | PairIndex, groups: torch.Tensor | None = None
    ) -> PairIndex:
        """Count a batch of cells with groups ``groups`` (B, M); returns its index."""
        if isinstance(gene_slot, PairIndex) or groups is None:
            raise ValueError("pass gene_slot and groups: the groups are counted here.")
        index = self.prepare(gene_slot, groups)
        assert isinstance(index, GroupingsIndex)  # made above
        for lin, _ in index.parts:
            ones = torch.ones(lin.shape[0], dtype=self.count.dtype, device=self.device)
            self.count.view(-1).index_add_(0, lin, ones)
        self.n_cells += index.shape[0]
        g = self._global(groups).cpu().numpy().reshape(-1)
        self.group_cells += np.bincount(g[g >= 0], minlength=self.n_groups)
        return index

    def _add(self, buf: torch.Tensor, index: PairIndex, v: torch.Tensor) -> None:
        if not isinstance(index, GroupingsIndex):
            raise ValueError("fold a batch indexed by this accumulator's add_cells.")
        for lin, keep in index.parts:  # the values gathered once, added once per grouping
            buf.index_add_(0, lin, v if keep is None else v[keep])

    def merge(self, other: AttentionAccumulator) -> MultiGroupedAttentionAccumulator:
        if not isinstance(other, MultiGroupedAttentionAccumulator) or other.sizes != self.sizes:
            raise ValueError("cannot merge accumulators with different groupings.")
        super().merge(other)
        return self

    def grouping(self, m: int) -> GroupedAttentionAccumulator:
        """Grouping ``m`` as a :class:`GroupedAttentionAccumulator` (a copy)."""
        if not 0 <= m < len(self.sizes):
            raise IndexError(f"grouping {m} out of 0 … {len(self.sizes) - 1}.")
        a, k = self.offsets[m], self.sizes[m]
        acc = GroupedAttentionAccumulator(
            self.genes,
            n_groups=k,
            layers=self.layers,
            n_heads=self.n_heads,
            per_head=self.per_head,
            dtype=self.sum.dtype,
            device=self.device,
            scale=self.scale,
            params={**self.params, "grouping": int(m)},
        )
        acc.sum.copy_(self.sum[:, :, a : a + k])
        acc.count.copy_(self.count[a : a + k])
        acc.group_cells = self.group_cells[a : a + k].copy()
        acc.n_cells = int(acc.group_cells.sum())
        return acc

    def pooled(self) -> AttentionAccumulator:
        raise NotImplementedError("pool one grouping: acc.grouping(m).pooled().")

    def cumulative(self) -> list[AttentionAccumulator]:
        raise NotImplementedError("nest one grouping: acc.grouping(m).cumulative().")


# -- scGPT's rank normalisation ---------------------------------------------------------------
def _rank(x: torch.Tensor, dim: int) -> torch.Tensor:
    """0-based ranks along ``dim`` (ties by position: stable sort)."""
    order = torch.argsort(x, dim=dim, stable=True)
    shape = [1] * x.ndim
    shape[dim] = x.shape[dim]
    ar = torch.arange(x.shape[dim], device=x.device).view(shape).expand_as(order)
    return torch.empty_like(order).scatter_(dim, order, ar)


def scgpt_rank_normalise(
    scores: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """scGPT's attention-GRN normalisation of q·kᵀ (B, H, T, T) → (B, H, T, T) float32.

    Following ``Tutorial_Attention_GRN.ipynb``: per cell and head, each row (query) of
    q·kᵀ is replaced by the ranks of its entries divided by M, then each column (key) of
    that matrix by its ranks divided by M (ranks 0 … M−1). Averaging over heads and cells
    is left to the accumulator. Ranks are invariant to the positive 1/√d_head factor, so
    the ``attn.scores`` site can be used as is.

    Deviations from the tutorial (which tokenises every HVG in every cell, so it has no
    padding): padding tokens (``attention_mask`` False) are excluded from both rankings
    and M is the number of real tokens of the cell (``<cls>`` included, as in the
    tutorial); ties are ranked by position (stable sort; the tutorial's ``argsort`` does
    not specify); scores are ranked in the model's dtype (the tutorial runs under fp16
    autocast, which creates more ties); every cell is averaged (the tutorial's loop skips
    the first cell of each condition).
    """
    B, H, T, _ = scores.shape
    if attention_mask is None:
        attention_mask = torch.ones((B, T), dtype=torch.bool, device=scores.device)
    real = attention_mask.to(scores.device, torch.bool)
    M = real.sum(1).clamp(min=1).to(torch.float32)[:, None, None]  # (B, 1, 1)
    pad_key = ~real[:, None, :]  # (B, 1, T)
    pad_query = ~real[:, :, None]  # (B, T, 1)
    out = torch.empty((B, H, T, T), dtype=torch.float32, device=scores.device)
    for h in range(H):  # one head at a time bounds the int64 sort buffers
        x = scores[:, h].masked_fill(pad_key, float("inf"))  # padding ranks last
        row = _rank(x, -1)  # (B, T, T): rank of key j in query i's row
        row = row.masked_fill(pad_query, T)  # padded queries rank last in each column
        col = _rank(row, -2)
        out[:, h] = col.to(torch.float32) / M
    return out


def relative_to_uniform(
    pattern: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention probabilities (B, H, T, T) times each cell's number of real tokens
    (``attention_mask`` True; all T when None): 1 = uniform attention over the cell.
    A bfloat16 / float16 pattern is cast up to float32 first (bfloat16 holds integers
    exactly only up to 256)."""
    if pattern.dtype in LOW_PRECISION:
        pattern = pattern.float()
    B, _, T, _ = pattern.shape
    if attention_mask is None:
        n = torch.full((B,), float(T), device=pattern.device)
    else:
        n = attention_mask.to(pattern.device, torch.bool).sum(1).to(torch.float32)
    return pattern * n.to(pattern.dtype)[:, None, None, None]


# -- the streaming engine --------------------------------------------------------------------
class _StopForward(BaseException):
    """Raised after the last requested layer: the rest of the forward pass is skipped.
    A BaseException so that no adapter's ``except Exception`` can swallow it."""


def _resolve_layers(adapter, layers: int | Sequence[int] | None) -> list[int]:
    n = adapter.n_layers
    if layers is None:
        return list(range(n))
    raw = [layers] if isinstance(layers, int | np.integer) else list(layers)
    out = []
    for L in raw:
        L = int(L)
        if not -n <= L < n:
            raise ValueError(f"layer {L} out of range: the model has {n} layers (0 … {n - 1}).")
        out.append(L % n)
    if not out:
        raise ValueError("layers is empty; pass None for all layers.")
    return sorted(set(out))


def _resolve_genes(adata, genes) -> tuple[pd.Index, np.ndarray]:
    """Accumulated gene names and the map dataset gene position → slot (−1 = not kept)."""
    var = pd.Index(adata.var_names).astype(str)
    if var.has_duplicates:
        dup = var[var.duplicated()].unique()[:5].tolist()
        raise ValueError(f"adata.var_names has duplicates {dup}; make them unique first.")
    if genes is None:
        return var, np.arange(len(var), dtype=np.int64)
    names = pd.Index(genes).astype(str)
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"genes has duplicates {dup}.")
    pos = var.get_indexer(names)
    if (pos < 0).any():
        missing = names[pos < 0]
        raise ValueError(
            f"{len(missing)} of the requested genes are not in adata.var_names "
            f"(e.g. {missing[:10].tolist()}); intersect them with adata.var_names first."
        )
    slot_map = np.full(len(var), -1, dtype=np.int64)
    slot_map[pos] = np.arange(len(names))
    return names, slot_map


def _resolve_cells(adata, cells) -> np.ndarray:
    n = adata.n_obs
    if cells is None:
        return np.arange(n)
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"boolean cells mask has length {arr.size}, adata has {n} cells.")
        return np.flatnonzero(arr)
    if arr.dtype.kind in "OUS":
        pos = pd.Index(adata.obs_names).get_indexer(arr.astype(str))
        if (pos < 0).any():
            raise ValueError(f"cells not in adata.obs_names: {arr[pos < 0][:5].tolist()}")
        return pos
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"cell positions must lie in 0 … {n - 1}.")
    return arr


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _CellsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("? cells/s" if speed is None else f"{speed:,.1f} cells/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _CellsPerSecond(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def extract_attention_accumulator(
    adapter,
    adata,
    *,
    cells=None,
    genes=None,
    layers: int | Sequence[int] | None = None,
    per_head: bool = False,
    score: str = "softmax",
    batch_size: BatchSize | None = None,
    counts: str = "X",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    groups: np.ndarray | Sequence[int] | None = None,
    n_groups: int | Sequence[int] | None = None,
    length_buckets: bool | None = None,
) -> AttentionAccumulator:
    """Stream ``cells`` of ``adata`` through ``adapter`` and accumulate attention scores.

    Same parameters as :func:`extract_attention_edges`; returns the raw
    :class:`AttentionAccumulator` (on the adapter's device), e.g. to process shards of
    cells separately and :meth:`~AttentionAccumulator.merge` them.

    ``groups``: one integer in 0 … ``n_groups`` − 1 per cell of ``cells`` (same order;
    ``n_groups`` defaults to max + 1). Then every cell is folded into its group's
    accumulator in the same single pass and a :class:`GroupedAttentionAccumulator` is
    returned (strata for CSSI; smallest grid bucket for nested subsamples).
    ``groups`` of shape (cells, M): M groupings of the same cells in one forward pass
    (−1: the cell is not in that grouping; ``n_groups`` one size per grouping), returned
    as a :class:`MultiGroupedAttentionAccumulator`.

    Inside a run with an executor (``executor:`` in the config), the cells go as shards
    to it and the merged accumulator comes back on the CPU (``edges/_attention_shards.py``).
    """
    # -- executor hook: every parameter is forwarded as is (keep this first) -------------
    call = dict(locals())
    from scfm_audit._executor import current_executor

    executor = current_executor()
    # several groupings at once (M columns) stay in this process: shards merge one grouping
    if executor is not None and not (groups is not None and np.ndim(groups) == 2):
        from scfm_audit.edges._attention_shards import has_active_hooks, sharded_accumulator

        if not has_active_hooks(adapter):  # a worker's model would not carry the hooks
            return sharded_accumulator(executor, **call)
    # -- end of executor hook --------------------------------------------------------------
    from scfm_audit.models._hooks import site_name

    kind = _resolve_score(score)
    if batch_size is None:
        batch_size = getattr(adapter, "batch_size", None) or CPU_BATCH_SIZE
    if batch_size != "auto" and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be ≥ 1 or 'auto', got {batch_size!r}.")
    layer_list = _resolve_layers(adapter, layers)
    names, slot_map = _resolve_genes(adata, genes)
    cell_idx = _resolve_cells(adata, cells)
    device = torch.device(adapter.device)
    forward_dtype = getattr(adapter, "dtype", torch.float32)
    sort = device.type == "cuda" if length_buckets is None else bool(length_buckets)
    d_head = adapter.d_model // adapter.n_heads
    group_of: np.ndarray | None = None
    extra: dict[str, Any] = {}
    cls: type[AttentionAccumulator] = AttentionAccumulator
    if groups is not None and np.ndim(groups) == 2:  # several groupings, one pass
        g2 = np.asarray(groups, dtype=np.int64)
        if g2.shape[0] != len(cell_idx):
            raise ValueError(f"groups has {g2.shape[0]} rows for {len(cell_idx)} cells.")
        if n_groups is None:
            sizes = [int(c.max(initial=-1)) + 1 for c in g2.T]
        elif isinstance(n_groups, int | np.integer):
            raise ValueError("with several groupings, n_groups gives one size per grouping.")
        else:
            sizes = [int(k) for k in n_groups]
        if len(sizes) != g2.shape[1]:
            raise ValueError(f"n_groups has {len(sizes)} sizes for {g2.shape[1]} groupings.")
        if len(np.unique(cell_idx)) != len(cell_idx):
            raise ValueError("with groups, every cell may appear only once in cells.")
        group_of = np.full((adata.n_obs, g2.shape[1]), -1, dtype=np.int64)
        group_of[cell_idx] = g2
        cls, extra = MultiGroupedAttentionAccumulator, {"n_groups": sizes}
    elif groups is not None:
        g = np.asarray(groups, dtype=np.int64).reshape(-1)
        if g.shape[0] != len(cell_idx):
            raise ValueError(f"groups has {g.shape[0]} entries for {len(cell_idx)} cells.")
        if n_groups is not None and not isinstance(n_groups, int | np.integer):
            raise ValueError("with one grouping, n_groups is one number.")
        k_groups = int(n_groups) if n_groups is not None else int(g.max(initial=-1)) + 1
        if g.size and (g.min() < 0 or g.max() >= k_groups):
            raise ValueError(f"groups must lie in 0 … {k_groups - 1}.")
        if len(np.unique(cell_idx)) != len(cell_idx):
            raise ValueError("with groups, every cell may appear only once in cells.")
        group_of = np.full(adata.n_obs, -1, dtype=np.int64)
        group_of[cell_idx] = g
        cls, extra = GroupedAttentionAccumulator, {"n_groups": k_groups}
    acc = cls(
        names,
        **extra,
        layers=layer_list,
        n_heads=adapter.n_heads,
        per_head=per_head,
        dtype=dtype,
        device=device,
        scale=math.sqrt(d_head) if kind == "qk" else 1.0,
        params={
            "score": kind,
            "site": SCORE_KINDS[kind],
            "batch_size": batch_size,
            "counts": counts,
            "n_layers": adapter.n_layers,
            "model": adapter.name,
            "model_family": getattr(adapter, "family", None),
            "forward_dtype": str(forward_dtype).removeprefix("torch."),
            "length_buckets": sort,
        },
    )
    plan = None  # the accumulator is allocated first: "auto" sees the memory left
    if sort or batch_size == "auto":
        lengths = adapter.token_counts(adata, cell_idx, counts=counts)
        size: int | Callable[[int], int]
        if batch_size == "auto":
            d_ff = int(getattr(adapter, "d_ff", 4 * adapter.d_model))

            def size(T: int) -> int:
                return auto_batch_size(
                    T,
                    n_heads=adapter.n_heads,
                    d_model=adapter.d_model,
                    d_ff=d_ff,
                    device=device,
                    dtype=forward_dtype,
                    score=kind,
                )
        else:
            size = int(batch_size)
        plan = [cell_idx[b] for b in plan_batches(lengths, batch_size=size, sort=sort)]
    slot_map_t = torch.as_tensor(slot_map, device=device)
    last = layer_list[-1]
    current: dict[str, PairIndex] = {}

    def fold_hook(x: torch.Tensor, *, site: str, ctx) -> None:
        layer = int(site.split(".")[1])
        if kind == "scgpt_grn":
            x = scgpt_rank_normalise(x, ctx.attention_mask)
        elif kind == "softmax_relative":
            x = relative_to_uniform(x, ctx.attention_mask)
        acc.fold(layer, x, current["index"])
        if layer == last:
            raise _StopForward
        return None

    site_kind = SCORE_KINDS[kind]
    fns = [(site_name(L, site_kind), fold_hook) for L in layer_list]
    tokens, slots = 0, 0
    with _progress(progress) as bar, adapter.hooks(fns):
        task = bar.add_task(f"attention {adapter.name}", total=len(cell_idx))
        if plan is not None:
            batches = adapter.iter_batches(adata, plan=plan, counts=counts)
        else:
            batches = adapter.iter_batches(
                adata, batch_size=int(batch_size), cells=cell_idx, counts=counts
            )
        for batch in batches:
            tokens += int(batch.attention_mask.sum())
            slots += batch.attention_mask.numel()
            gidx = batch.gene_index.to(device)
            slot = torch.where(gidx >= 0, slot_map_t[gidx.clamp(min=0)], -1)
            if group_of is None:
                current["index"] = acc.add_cells(slot)
            else:
                bg = torch.as_tensor(group_of[np.asarray(batch.cell_index)], device=device)
                assert isinstance(acc, GroupedAttentionAccumulator)  # made with the groups
                current["index"] = acc.add_cells(slot, bg)
            try:
                adapter.forward(batch)
            except _StopForward:
                pass
            bar.advance(task, len(batch))
    acc.params["padding_fraction"] = 1.0 - tokens / slots if slots else 0.0
    return acc


def extract_attention_edges(
    adapter,
    adata,
    *,
    cells=None,
    genes=None,
    layers: int | Sequence[int] | None = None,
    per_head: bool = False,
    score: str = "softmax",
    normalisation: Normalisation = "present",
    batch_size: BatchSize | None = None,
    counts: str = "X",
    symmetrise: bool = False,
    correction: Correction = None,
    dtype: torch.dtype = torch.float32,
    dataset: str | None = None,
    progress: bool = True,
    length_buckets: bool | None = None,
) -> list[EdgeScores]:
    """Attention edges of a model over a dataset, streamed cell batch by cell batch.

    Parameters
    ----------
    adapter
        A loaded :class:`~scfm_audit.models.ModelAdapter`; runs on its device.
    adata
        Cells to tokenise (raw counts in ``X`` or the layer ``counts``).
    cells
        Obs positions, a boolean mask or obs names (all cells when None).
    genes
        Genes to accumulate (e.g. HVGs, TFs and targets), all in ``adata.var_names``;
        other genes are still tokenised (the model sees the whole cell) but their pairs
        are not accumulated. All genes when None — memory grows as G².
    layers
        Layers to read (negative numbers count from the end); all when None. The forward
        pass stops after the last requested layer.
    per_head
        Also return one EdgeScores per head (memory × n_heads).
    score
        ``"softmax"``, ``"softmax_relative"``, ``"qk"`` (alias ``"raw"``),
        ``"qk_scaled"`` or ``"scgpt_grn"``
        (see the module docstring).
    normalisation
        ``"present"``: mean over the cells where both genes were tokenised (NaN if
        never); ``"all"``: sum divided by the number of cells.
    batch_size
        Cells per forward pass: an integer, ``"auto"`` (from free device memory on CUDA,
        16 on CPU) or None (the adapter's ``batch_size``, else 16).
    counts
        The count matrix used by the tokenizer.
    symmetrise
        Return (S + Sᵀ)/2 (undirected).
    correction
        ``"apc"``: average product correction of each matrix (after ``symmetrise``;
        see the module docstring); None: none.
    dtype
        Floating type of the accumulator (float32 by default; float64 for very many cells).
        The forward pass runs in the adapter's own dtype (bfloat16 / float16 allowed);
        its values are cast up to this one before they are added.
    dataset
        Dataset name recorded in the provenance.
    progress
        Show a progress bar with cells/s.
    length_buckets
        Sort the cells by token count so that batches pad little (None: on CUDA only; the
        sums then agree with the unsorted stream within float rounding).

    Returns
    -------
    list[EdgeScores]
        Per layer: the head-pooled mean (``head=None``), then each head when
        ``per_head``. ``method="attention"``, coverage = cells with both genes tokenised,
        ``params`` records the score kind, normalisation, batch size and layers.
    """
    kind = _resolve_score(score)
    acc = extract_attention_accumulator(
        adapter,
        adata,
        cells=cells,
        genes=genes,
        layers=layers,
        per_head=per_head,
        score=kind,
        batch_size=batch_size,
        counts=counts,
        dtype=dtype,
        progress=progress,
        length_buckets=length_buckets,
    )
    return acc.to_edge_scores(
        normalisation=normalisation,
        model=adapter.name,
        dataset=dataset,
        symmetrise=symmetrise,
        correction=correction,
    )


# -- registration as an edge scorer ------------------------------------------------------------
def _attention_scorer(adata, *, genes=None, seed: int = 0, model=None, **params):
    """Edge scorer ``"attention"``: :func:`extract_attention_edges` with ``model=`` the
    adapter (``seed`` is unused: the extraction is deterministic)."""
    if model is None:
        raise ValueError("the 'attention' scorer needs model=<a loaded ModelAdapter>.")
    return extract_attention_edges(model, adata, genes=genes, **params)


try:
    from scfm_audit.edges._registry import register_scorer
except ImportError:  # the registry module is optional at import time
    pass
else:
    register_scorer("attention")(_attention_scorer)
