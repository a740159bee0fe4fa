"""Reference networks with hub structure placed on genes independently of the data: the
null configurations of the calibration harness.

A recovery test is only trustworthy if it keeps its level when the reference has the
heavy-tailed degrees of real networks (a few TFs with hundreds of targets, a few targets
of dozens of TFs) and the data have co-expression of their own: edges that share a hub
are dependent, so a null that treats them as exchangeable over-rejects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scfm_audit.data._network import ReferenceNetwork

__all__ = ["hub_reference", "place_reference", "top_degree_subnetwork"]


def hub_reference(
    n_genes: int,
    *,
    seed: int,
    directed: bool = True,
    source_fraction: float = 0.2,
    mean_degree: float = 3.0,
    tail: float = 1.3,
    name: str = "hub_reference",
) -> ReferenceNetwork:
    """A heavy-tailed random network on genes ``g0 … g{n-1}`` (Chung–Lu model).

    Directed: ``source_fraction · n_genes`` sources; source ``s`` links to target ``t``
    (``s ≠ t``) with probability ``min(1, c · a_s · b_t)``, where the out-weights ``a`` and
    in-weights ``b`` are Pareto with shape ``tail`` (smaller = heavier tail; TRRUST's
    out-degrees look like ``tail`` ≈ 1.2) and ``c`` gives ``mean_degree · n_genes`` edges
    in expectation. Undirected: the same on all unordered pairs with one weight per gene.
    Output: :class:`ReferenceNetwork` (weights 1, sign 0).
    """
    if n_genes < 3:
        raise ValueError(f"n_genes must be at least 3, got {n_genes}")
    rng = np.random.default_rng(seed)
    genes = np.array([f"g{i}" for i in range(n_genes)])
    n_edges = mean_degree * n_genes
    if directed:
        n_src = max(2, round(source_fraction * n_genes))
        src = rng.choice(n_genes, n_src, replace=False)
        a = rng.pareto(tail, n_src) + 1
        b = rng.pareto(tail + 0.5, n_genes) + 1
        prob = np.outer(a, b)
        prob[np.arange(n_src), src] = 0  # no self-loops
        prob = np.minimum(1.0, prob * n_edges / prob.sum())
        hit = rng.random(prob.shape) < prob
        si, ti = np.nonzero(hit)
        s, t = genes[src[si]], genes[ti]
    else:
        w = rng.pareto(tail, n_genes) + 1
        iu, ju = np.triu_indices(n_genes, k=1)
        prob = w[iu] * w[ju]
        prob = np.minimum(1.0, prob * (n_edges / 2) / prob.sum())
        hit = rng.random(len(prob)) < prob
        s, t = genes[iu[hit]], genes[ju[hit]]
    edges = pd.DataFrame({"source": s, "target": t, "weight": 1.0, "sign": 0})
    return ReferenceNetwork(edges, name=name, directed=directed, params={"seed": seed})


def top_degree_subnetwork(ref: ReferenceNetwork, k: int) -> ReferenceNetwork:
    """The ``k`` genes of highest total degree in ``ref`` and the edges among them (how the
    calibration uses a real network's hub structure, e.g. TRRUST's)."""
    e = ref.edges
    deg = pd.concat([e["source"], e["target"]]).value_counts()
    keep = set(deg.index[:k])
    sub = e[e["source"].isin(keep) & e["target"].isin(keep)]
    return ReferenceNetwork(sub, name=f"{ref.name}_top{k}", directed=ref.directed)


def place_reference(
    template: ReferenceNetwork, genes: pd.Index | list[str], *, seed: int
) -> ReferenceNetwork:
    """``template`` with its genes mapped at random (injectively) onto ``genes``: the same
    graph, placed on the data independently of it. ``len(genes)`` must be at least the
    number of genes of the template."""
    t_genes = pd.Index(template.genes)
    genes = pd.Index(genes)
    if len(genes) < len(t_genes):
        raise ValueError(
            f"the template has {len(t_genes)} genes but only {len(genes)} genes to place it on"
        )
    rng = np.random.default_rng(seed)
    mapping = pd.Series(np.asarray(genes)[rng.permutation(len(genes))[: len(t_genes)]], t_genes)
    e = template.edges.copy()
    e["source"] = mapping[e["source"]].to_numpy()
    e["target"] = mapping[e["target"]].to_numpy()
    return ReferenceNetwork(e, name=template.name, directed=template.directed)
