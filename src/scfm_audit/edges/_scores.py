"""EdgeScores: the one gene × gene score type that every scorer produces and every
analysis consumes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm_audit._typing import is_sparse


@dataclass(frozen=True, eq=False)
class EdgeScores:
    """Gene × gene edge scores (rows = source / regulator, columns = target).

    Attributes
    ----------
    scores
        ``(n_genes, n_genes)`` float array (dense ``np.ndarray`` or ``scipy.sparse``);
        ``scores[i, j]`` is the score of the edge ``genes[i] → genes[j]``. NaN = no score
        (e.g. the pair never co-occurred). The diagonal is meaningless and ignored.
    genes
        Gene symbols indexing both axes.
    method
        Scorer name (``"spearman"``, ``"attention"``, ...).
    layer, head
        Transformer layer / head for attention scores; ``None`` when pooled or not
        applicable.
    n_cells
        Number of cells the scores were computed from.
    coverage
        Optional ``(n_genes, n_genes)`` integer array: cells in which both genes were
        present (expressed / tokenised). ``None`` when every cell covers every pair.
    directed
        False when ``scores`` is symmetric by construction (correlation).
    model, dataset
        Provenance; ``None`` for model-free scorers.
    params
        The parameters that produced the scores (provenance, scanpy-style).
    """

    scores: np.ndarray | sp.spmatrix
    genes: pd.Index
    method: str
    layer: int | None = None
    head: int | None = None
    n_cells: int = 0
    coverage: np.ndarray | None = None
    directed: bool = True
    model: str | None = None
    dataset: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        genes = pd.Index(self.genes).astype(str)
        object.__setattr__(self, "genes", genes)
        n = len(genes)
        if self.scores.shape != (n, n):
            raise ValueError(
                f"EdgeScores: scores have shape {self.scores.shape} but there are {n} genes; "
                "scores must be a square genes × genes matrix."
            )
        if self.coverage is not None and self.coverage.shape != (n, n):
            raise ValueError(
                f"EdgeScores: coverage has shape {self.coverage.shape}, expected {(n, n)}."
            )
        if genes.has_duplicates:
            dup = genes[genes.duplicated()].unique()[:5].tolist()
            raise ValueError(f"EdgeScores: duplicated gene names {dup}; make them unique.")

    # -- identity ----------------------------------------------------------------
    @property
    def label(self) -> str:
        """Short name: ``method`` plus model / layer / head when present, e.g.
        ``attention[scgpt]/L3/H5``."""
        s = self.method
        if self.model:
            s += f"[{self.model}]"
        if self.layer is not None:
            s += f"/L{self.layer}"
        if self.head is not None:
            s += f"/H{self.head}"
        return s

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def dense(self) -> np.ndarray:
        return self.scores.toarray() if is_sparse(self.scores) else np.asarray(self.scores)

    # -- lookups -------------------------------------------------------------------
    def positions(self, genes: pd.Index | np.ndarray | list[str]) -> np.ndarray:
        """Integer positions of ``genes`` in :attr:`genes` (-1 where absent)."""
        return self.genes.get_indexer(pd.Index(genes).astype(str))

    def lookup(self, sources, targets) -> np.ndarray:
        """Scores for the pairs ``sources[k] → targets[k]`` (vectorised; NaN when a gene
        is absent or the pair has no score)."""
        i = self.positions(sources)
        j = self.positions(targets)
        out = np.full(len(i), np.nan)
        ok = (i >= 0) & (j >= 0)
        if is_sparse(self.scores):
            vals = np.asarray(self.scores.tocsr()[i[ok], j[ok]]).ravel()
        else:
            vals = np.asarray(self.scores)[i[ok], j[ok]]
        out[ok] = vals
        return out

    def lookup_coverage(self, sources, targets) -> np.ndarray:
        """Coverage counts for pairs (``n_cells`` everywhere when coverage is None)."""
        i = self.positions(sources)
        j = self.positions(targets)
        out = np.zeros(len(i), dtype=np.int64)
        ok = (i >= 0) & (j >= 0)
        out[ok] = self.n_cells if self.coverage is None else self.coverage[i[ok], j[ok]]
        return out

    def subset(self, genes) -> EdgeScores:
        """Scores restricted (and reordered) to ``genes``; all must be present."""
        pos = self.positions(genes)
        if (pos < 0).any():
            missing = pd.Index(genes)[pos < 0][:5].tolist()
            raise ValueError(f"EdgeScores.subset: genes not scored: {missing} ...")
        s = (
            self.scores.tocsr()[pos][:, pos]
            if is_sparse(self.scores)
            else self.dense()[np.ix_(pos, pos)]
        )
        cov = None if self.coverage is None else self.coverage[np.ix_(pos, pos)]
        return replace(self, scores=s, genes=pd.Index(genes), coverage=cov)

    def symmetrised(self) -> EdgeScores:
        """(S + Sᵀ) / 2, ignoring NaN on one side."""
        d = self.dense()
        s = np.nanmean(np.stack([d, d.T]), axis=0)
        return replace(self, scores=s, directed=False, params={**self.params, "symmetrised": True})

    def to_long(self, *, drop_diagonal: bool = True, dropna: bool = True) -> pd.DataFrame:
        """Long table ``source, target, weight`` + provenance columns (decoupler format)."""
        d = self.dense()
        n = self.n_genes
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        keep = np.ones((n, n), bool)
        if drop_diagonal:
            np.fill_diagonal(keep, False)
        if dropna:
            keep &= ~np.isnan(d)
        df = pd.DataFrame(
            {
                "source": self.genes.to_numpy()[ii[keep]],
                "target": self.genes.to_numpy()[jj[keep]],
                "weight": d[keep],
            }
        )
        if self.coverage is not None:
            df["coverage"] = self.coverage[keep]
        return df.assign(method=self.method, model=self.model, layer=self.layer, head=self.head)

    def meta(self) -> dict[str, Any]:
        """Provenance as a flat dict (for tables and the test registry)."""
        return {
            "method": self.method,
            "model": self.model,
            "dataset": self.dataset,
            "layer": self.layer,
            "head": self.head,
            "n_cells": self.n_cells,
            "label": self.label,
        }

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to one ``.npz`` file (atomically)."""
        from scfm_audit._io import atomic_path

        meta = {
            "method": self.method,
            "layer": self.layer,
            "head": self.head,
            "n_cells": self.n_cells,
            "directed": self.directed,
            "model": self.model,
            "dataset": self.dataset,
            "params": self.params,
        }
        arrays = {
            "scores": self.dense(),
            "genes": self.genes.to_numpy(dtype=str),
            "meta": np.array(json.dumps(meta, default=str)),
        }
        if self.coverage is not None:
            arrays["coverage"] = self.coverage
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> EdgeScores:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                scores=z["scores"],
                genes=pd.Index(z["genes"]),
                coverage=z["coverage"] if "coverage" in z else None,
                **meta,
            )

    def __repr__(self) -> str:
        return f"EdgeScores({self.label}, {self.n_genes} genes, n_cells={self.n_cells})"
