"""Shared plumbing of the analyses that re-score an edge source on subsets of its cells
(``cssi``: strata; ``scaling``: nested subsamples): the source's scorer, model, options
and cells, as the runner computed its pooled scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scfm_audit.analyses._contract import AnalysisContext


def edge_setup(
    ctx: AnalysisContext, en: str, ds: str
) -> tuple[str, str | None, dict[str, Any], np.ndarray]:
    """The edge source's scorer, model, options and cells (those the pooled scores used)."""
    e = ctx.edge_source(en)
    return e.scorer, e.model, dict(e.options()), ctx.edge_cells(en, ds)


_READOUT = ("normalisation", "symmetrise", "correction")

#: memory of the per-group sums that one multi-grouping attention pass may hold (a
#: grouping larger than this still gets its own pass, as before)
GROUPED_PASS_BYTES = 1 << 30


def grouping_passes(
    sizes: Sequence[int], *, n_genes: int, n_layers: int, budget: int = GROUPED_PASS_BYTES
) -> list[list[int]]:
    """Groupings (by position) cut into consecutive batches, one attention pass each: a
    batch holds as many groupings as fit ``budget`` bytes of float32 sums and int32 counts
    (one G × G sum per layer and group, heads pooled), and at least one."""
    per_group = 4 * n_genes * n_genes * (n_layers + 1)
    out: list[list[int]] = []
    used = 0
    for m, k in enumerate(sizes):
        need = int(k) * per_group
        if out and used + need <= budget:
            out[-1].append(m)
            used += need
        else:
            out.append([m])
            used = need
    return out


def attention_options(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An attention source's options split into those of the extraction pass
    (``extract_attention_accumulator``) and those of the read-out
    (``AttentionAccumulator.to_edge_scores``: normalisation, symmetrise, correction);
    ``per_head`` and ``layers`` are dropped (the caller chooses them)."""
    o = {k: v for k, v in opts.items() if k not in ("per_head", "layers")}
    readout = {k: o.pop(k) for k in _READOUT if k in o}
    return o, readout


class SubsetScores:
    """An edge source re-scored on unions of groups of its cells (split halves and their
    nested prefixes for ``stability``, contexts for ``cross_context_consistency``).

    ``labels``: one group per cell of the source (−1: not used), in the order of
    ``edge_setup``'s cells; ``pooled``: the source's head-pooled scores on all its cells
    (their genes, methods and layers are re-scored). Attention is extracted in **one
    pass** over the used cells with per-group accumulators (sums and counts), and a union
    of groups is the sum of their accumulators — shards of one extraction pass, never a
    second forward pass; any other scorer is recomputed on the union's cells.
    :meth:`scores` returns ``{(method, layer): EdgeScores}`` of a union of groups.
    """

    def __init__(
        self, ctx: AnalysisContext, en: str, ds: str, labels: np.ndarray, *, pooled: list
    ) -> None:
        self.scorer, model_name, self.opts, cells = edge_setup(ctx, en, ds)
        self._provenance = {"dataset": ds, "edges": en}
        sub = ctx.dataset(ds)[cells]
        self.adata = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
        spec = ctx.dataset_spec(ds) if hasattr(ctx, "dataset_spec") else None
        self.opts.setdefault("counts", getattr(spec, "counts", "X") or "X")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (self.adata.n_obs,):
            raise ValueError(f"{len(self.labels)} labels for {self.adata.n_obs} cells.")
        self.genes = list(pooled[0].genes)
        self.keys = [(es.method, es.layer) for es in pooled]
        self.layers = sorted({L for _, L in self.keys if L is not None})
        self.seed = ctx.seed
        self.model = ctx.model(model_name) if model_name else None
        self._acc = None
        if self.scorer == "attention":
            from scfm_audit.edges._attention import extract_attention_accumulator

            o, self._readout = attention_options(self.opts)
            keep = np.flatnonzero(self.labels >= 0)
            self._acc = extract_attention_accumulator(
                self.model,
                self.adata,
                cells=keep,
                genes=self.genes,
                groups=self.labels[keep],
                n_groups=int(self.labels.max()) + 1,
                layers=self.layers,
                progress=False,
                **o,
            )

    def covariates(self, groups) -> np.ndarray:
        """Expression covariates (log mean, log variance) of the genes over the cells in
        ``groups`` (:func:`~scfm_audit.evaluate._agreement.expression_covariates`)."""
        from scfm_audit.evaluate._agreement import expression_covariates

        cells = np.isin(self.labels, [int(g) for g in groups])
        return expression_covariates(
            self.adata[cells], genes=self.genes, counts=self.opts["counts"]
        )

    def n_cells(self, groups) -> int:
        return int(np.isin(self.labels, list(groups)).sum())

    def scores(self, groups) -> dict:
        """{(method, layer): EdgeScores} of the cells in ``groups`` (head-pooled)."""
        groups = [int(g) for g in groups]
        out = {}
        if self._acc is not None:
            from scfm_audit.edges._attention import GroupedAttentionAccumulator

            grouped = self._acc
            assert isinstance(grouped, GroupedAttentionAccumulator)  # built with the strata
            acc = grouped.group(groups[0])
            for g in groups[1:]:
                acc.merge(grouped.group(g))
            model_name = self.model.name if self.model is not None else None
            for es in acc.to_edge_scores(model=model_name, **self._readout):
                if es.head is None and (es.method, es.layer) in self.keys:
                    out[(es.method, es.layer)] = self._label(es)
            return out
        from scfm_audit.edges._registry import EDGE_SCORERS

        fn = EDGE_SCORERS.get(self.scorer)
        cells = np.isin(self.labels, groups)
        kw = dict(self.opts)
        if self.model is not None:
            kw["model"] = self.model
        for es in fn(self.adata[cells], genes=self.genes, seed=self.seed, **kw):
            if es.head is None and (es.method, es.layer) in self.keys:
                out[(es.method, es.layer)] = self._label(es)
        return out

    def _label(self, es):
        """Provenance as the runner gives pooled scores (the source's config name)."""
        from dataclasses import replace

        return replace(
            es,
            dataset=self._provenance["dataset"],
            params={**es.params, "edges": self._provenance["edges"]},
        )
