"""The one reference-network type: decoupler's long edge table plus a directed flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EDGE_COLUMNS = ("source", "target", "weight", "sign", "evidence")


@dataclass(frozen=True)
class ReferenceNetwork:
    """Reference edges in long format.

    ``edges`` has columns ``source, target, weight, sign, evidence``: gene symbols,
    a non-negative confidence weight, ``sign`` in {+1, -1, 0} (0 = unknown) and a free-text
    evidence field. ``directed=False`` marks undirected networks (PPI); evaluation then
    treats (a, b) and (b, a) as the same pair. Duplicate pairs are merged on construction
    (max weight; sign kept when all records agree, else 0).
    """

    edges: pd.DataFrame
    name: str = "reference"
    directed: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", _normalise_edges(self.edges, self.directed))

    # -- views -----------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def sources(self) -> pd.Index:
        return pd.Index(self.edges["source"].unique())

    @property
    def targets(self) -> pd.Index:
        return pd.Index(self.edges["target"].unique())

    @property
    def genes(self) -> pd.Index:
        return pd.Index(pd.unique(self.edges[["source", "target"]].to_numpy().ravel()))

    def out_degree(self) -> pd.Series:
        """Number of targets per source (for undirected nets, degree of each node)."""
        if self.directed:
            return self.edges.groupby("source").size()
        both = pd.concat([self.edges["source"], self.edges["target"]])
        return both.value_counts()

    def restrict(self, genes: pd.Index | list[str] | np.ndarray) -> ReferenceNetwork:
        """Edges whose both endpoints are in ``genes``."""
        g = set(genes)
        keep = self.edges["source"].isin(g) & self.edges["target"].isin(g)
        return ReferenceNetwork(
            self.edges.loc[keep].reset_index(drop=True),
            name=self.name,
            directed=self.directed,
            params={**self.params, "restricted_to": len(g)},
        )

    def __len__(self) -> int:
        return self.n_edges

    def __repr__(self) -> str:
        kind = "directed" if self.directed else "undirected"
        return (
            f"ReferenceNetwork({self.name!r}, {kind}, {self.n_edges} edges, "
            f"{len(self.sources)} sources, {len(self.genes)} genes)"
        )

    def to_tsv(self, path: str | Path) -> None:
        """Write the long table (with a ``directed`` column) as TSV, atomically."""
        from scfm_audit._io import atomic_write_text

        df = self.edges.assign(directed=self.directed)
        atomic_write_text(path, df.to_csv(sep="\t", index=False))


def _normalise_edges(edges: pd.DataFrame, directed: bool) -> pd.DataFrame:
    """Validated, canonical edge table: the five columns, no self-loops, undirected pairs
    oriented (a < b), duplicate pairs merged — max weight; sign kept only when all records
    agree, else 0; evidence = sorted union of non-empty entries, ``;``-joined.
    Vectorised throughout: a STRING file has ~10⁶ duplicated pairs."""
    missing = [c for c in ("source", "target") if c not in edges.columns]
    if missing:
        raise ValueError(
            f"Reference edge table lacks column(s) {missing}; it needs at least "
            "'source' and 'target' (gene symbols)."
        )
    df = edges.reset_index(drop=True)
    df = pd.DataFrame(
        {
            "source": df["source"].astype(str).str.strip(),
            "target": df["target"].astype(str).str.strip(),
            "weight": pd.to_numeric(df["weight"], errors="coerce").fillna(1.0).astype(float)
            if "weight" in df
            else 1.0,
            "sign": pd.to_numeric(df["sign"], errors="coerce").fillna(0).astype(int)
            if "sign" in df
            else 0,
            "evidence": df["evidence"].fillna("").astype(str) if "evidence" in df else "",
        }
    )
    df = df[df["source"] != df["target"]]
    if not directed:
        a, b = df["source"].to_numpy(), df["target"].to_numpy()
        swap = a > b
        df = df.assign(source=np.where(swap, b, a), target=np.where(swap, a, b))
    keys = ["source", "target"]
    dup = df.duplicated(keys, keep=False).to_numpy()
    if dup.any():
        d = df.loc[dup]
        g = d.groupby(keys, sort=False)
        merged = g.agg(weight=("weight", "max"), smin=("sign", "min"), smax=("sign", "max"))
        merged["sign"] = np.where(merged["smin"] == merged["smax"], merged["smin"], 0)
        ev = d.loc[d["evidence"] != "", [*keys, "evidence"]].drop_duplicates()
        ev = ev.sort_values("evidence").groupby(keys, sort=False)["evidence"].agg(";".join)
        merged["evidence"] = ev.reindex(merged.index).fillna("")
        merged = merged.drop(columns=["smin", "smax"]).reset_index()
        df = pd.concat([df.loc[~dup], merged[list(EDGE_COLUMNS)]], ignore_index=True)
    return df.reset_index(drop=True)
