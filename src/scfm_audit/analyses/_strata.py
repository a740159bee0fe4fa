"""One dataset × edge source scored per stratum of its cells: the machinery CSSI and the
analyses built on it (detectability's split halves) share. Accumulators of attention
are sums, so all strata come from one grouped pass over the cells; other scorers are
recomputed per stratum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from scfm_audit.analyses._contract import AnalysisContext
from scfm_audit.analyses._edge_source import attention_options, edge_setup, grouping_passes
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.evaluate._cssi import cssi_aggregate, hvg_pca, stratify


class StrataSource:
    """One dataset × edge source: its cells, genes, representation and per-stratum
    scoring (attention: one grouped pass; other scorers: recomputed per stratum)."""

    def __init__(self, ctx: AnalysisContext, p: Any, ds: str, en: str, pooled: list[EdgeScores]):
        self.ctx, self.p, self.ds, self.en = ctx, p, ds, en
        self.scorer, self.model_name, self.opts, cells = edge_setup(ctx, en, ds)
        adata = ctx.dataset(ds)
        sub = adata[cells]
        self.adata = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
        self.pooled = pooled
        self.genes = pooled[0].genes
        self.layers = [s.layer for s in pooled]
        spec = ctx.dataset_spec(ds) if hasattr(ctx, "dataset_spec") else None
        self.counts = getattr(spec, "counts", "X") or "X"
        self.cell_state = getattr(spec, "cell_state", None)
        self.opts.setdefault("counts", self.counts)
        self._rep: np.ndarray | None = None

    @property
    def model(self):
        return self.ctx.model(self.model_name) if self.model_name else None

    def representation(self) -> tuple[np.ndarray, str]:
        if self._rep is None:
            if self.model is not None:
                from scfm_audit.models._embeddings import cell_embeddings

                cells = np.arange(self.adata.n_obs)
                if self.opts.get("length_buckets"):  # as the source's extraction batches
                    lengths = self.model.token_counts(self.adata, cells, counts=self.counts)
                    cells = np.argsort(-np.asarray(lengths), kind="stable")
                emb = cell_embeddings(
                    self.model,
                    self.adata,
                    cells=cells,
                    batch_size=self.p.batch_size,
                    counts=self.counts,
                )
                self._rep = np.empty_like(emb)
                self._rep[cells] = emb
                self._rep_name = f"{self.model_name} cell embeddings"
            else:
                self._rep = hvg_pca(
                    self.adata, counts=self.counts, n_top_genes=self.p.n_hvg, seed=self.ctx.seed
                )
                self._rep_name = "HVG PCA"
        return self._rep, self._rep_name

    def labels(self, how: str, k: int | None = None) -> tuple[np.ndarray, str]:
        p = self.p
        if how == "annotation":
            col = self.cell_state
            if col is not None and col in self.adata.obs:
                return pd.factorize(self.adata.obs[col])[0], f"annotation '{col}'"
            how = "leiden"
        X, name = self.representation()
        seed = self.ctx.seed_for(self.ds, self.en, how, k)
        if how == "leiden":
            lab = stratify(
                X, method="leiden", resolution=p.resolution, n_neighbors=p.n_neighbors, seed=seed
            )
            return lab, f"Leiden (k = {p.n_neighbors}, resolution {p.resolution}) on {name}"
        lab = stratify(X, method="kmeans", n_clusters=k or p.n_clusters, seed=seed)
        return lab, f"k-means (K = {k or p.n_clusters}) on {name}"

    def stratum_scores(self, labels: np.ndarray) -> tuple[dict, np.ndarray]:
        """{layer: [score matrix per stratum]} and the strata's sizes; ``labels`` from
        :func:`enforce_min_size` (−1 = dropped)."""
        K = int(labels.max()) + 1
        sizes = np.bincount(labels[labels >= 0], minlength=K)
        out: dict = {L: [] for L in self.layers}
        if self.scorer == "attention":
            from scfm_audit.edges._attention import (
                GroupedAttentionAccumulator,
                extract_attention_accumulator,
            )

            o, readout = attention_options(self.opts)
            keep = np.flatnonzero(labels >= 0)
            acc = extract_attention_accumulator(
                self.model,
                self.adata,
                cells=keep,
                genes=list(self.genes),
                groups=labels[keep],
                n_groups=K,
                layers=[L for L in self.layers if L is not None],
                progress=False,
                **o,
            )
            assert isinstance(acc, GroupedAttentionAccumulator)  # extracted with groups
            for k in range(K):
                for es in acc.group(k).to_edge_scores(**readout):
                    if es.head is None:
                        out[es.layer].append(es.dense())
            return out, sizes
        from scfm_audit.edges._registry import EDGE_SCORERS

        scorer = EDGE_SCORERS.get(self.scorer)
        for k in range(K):
            for es in scorer(
                self.adata[labels == k], genes=list(self.genes), seed=self.ctx.seed, **self.opts
            ):
                if es.head is None and es.layer in out:
                    out[es.layer].append(es.dense())
        return out, sizes

    def stratum_scores_many(self, labelings: Sequence[np.ndarray]) -> list[tuple[dict, np.ndarray]]:
        """:meth:`stratum_scores` of several labellings of the same cells. Attention: one
        forward pass for all of them (one grouping per labelling,
        :class:`~scfm_audit.edges._attention.MultiGroupedAttentionAccumulator`; passes cut
        by :func:`grouping_passes` so that the sums stay within its memory budget) instead
        of a pass per labelling; other scorers: one after the other."""
        if self.scorer != "attention" or len(labelings) < 2:
            return [self.stratum_scores(lab) for lab in labelings]
        from scfm_audit.edges._attention import (
            MultiGroupedAttentionAccumulator,
            extract_attention_accumulator,
        )

        o, readout = attention_options(self.opts)
        layers = [L for L in self.layers if L is not None]
        Ks = [int(lab.max()) + 1 for lab in labelings]
        out: list[tuple[dict, np.ndarray]] = []
        for batch in grouping_passes(Ks, n_genes=len(self.genes), n_layers=len(layers)):
            if len(batch) == 1:
                out.append(self.stratum_scores(labelings[batch[0]]))
                continue
            L2 = np.column_stack([labelings[m] for m in batch])
            keep = np.flatnonzero((L2 >= 0).any(axis=1))
            acc = extract_attention_accumulator(
                self.model,
                self.adata,
                cells=keep,
                genes=list(self.genes),
                groups=L2[keep],
                n_groups=[Ks[m] for m in batch],
                layers=layers,
                progress=False,
                **o,
            )
            assert isinstance(acc, MultiGroupedAttentionAccumulator)  # several groupings
            for j, m in enumerate(batch):
                lab, grouped = labelings[m], acc.grouping(j)
                per: dict = {L: [] for L in self.layers}
                for k in range(Ks[m]):
                    for es in grouped.group(k).to_edge_scores(**readout):
                        if es.head is None:
                            per[es.layer].append(es.dense())
                out.append((per, np.bincount(lab[lab >= 0], minlength=Ks[m])))
        return out

    def aggregated(self, labels: np.ndarray, variants=("mean", "max")) -> dict:
        """{(layer, variant): EdgeScores} of the CSSI aggregates."""
        return self._aggregate(*self.stratum_scores(labels), variants)

    def aggregated_many(
        self, labelings: Sequence[np.ndarray], variants: Sequence[Sequence[str]]
    ) -> list[dict]:
        """:meth:`aggregated` of several labellings (``variants``: one tuple per
        labelling), their attention extracted in one pass (:meth:`stratum_scores_many`)."""
        scored = self.stratum_scores_many(labelings)
        return [
            self._aggregate(per, sizes, v) for (per, sizes), v in zip(scored, variants, strict=True)
        ]

    def _aggregate(self, per: dict, sizes: np.ndarray, variants) -> dict:
        out = {}
        for L, mats in per.items():
            base = next(s for s in self.pooled if s.layer == L)
            for v in variants:
                m = cssi_aggregate(mats, sizes, variant=v)
                out[(L, v)] = EdgeScores(
                    m, self.genes, method=f"cssi_{v}", layer=L, directed=base.directed
                )
        return out
