"""On-disk artifact cache keyed by a hash of inputs and parameters.

Each artifact lives in ``<root>/<kind>/<hash>/``. It is computed into a temporary
folder and renamed into place only when complete, so a run killed midway leaves no
half-written artifact: the next run recomputes exactly what is missing and reuses the
rest (the kill-and-resume guarantee).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from scfm_audit import __version__

CODECS = ("edges", "frame", "pickle", "anndata")


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serialisable description (keys sorted, paths and numbers as text)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identity of an input file: resolved path, size and modification time."""
    p = Path(path).resolve()
    if not p.exists():
        return {"path": str(p), "missing": True}
    if p.is_dir():
        return {
            "path": str(p),
            "files": [file_fingerprint(c) for c in sorted(p.iterdir()) if c.is_file()],
        }
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ArtifactCache:
    """``get_or_compute(kind, key, compute, codec=...)``: the cached artifact for ``key``,
    computing and storing it on a miss. ``root=None`` disables caching."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)
        self.hits: list[str] = []
        self.misses: list[str] = []
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*/.tmp-*"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)

    def path_for(self, kind: str, key: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        return self.root / kind / stable_hash({"key": key, "version": __version__})

    def get_or_compute(
        self, kind: str, key: dict[str, Any], compute: Callable[[], Any], *, codec: str
    ) -> Any:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; known: {CODECS}")
        final = self.path_for(kind, key)
        if final is None:
            return compute()
        if (final / "DONE").exists():
            self.hits.append(f"{kind}/{final.name}")
            return _read(final, codec)
        obj = compute()
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            _write(tmp, obj, codec)
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, default=str, indent=1))
            (tmp / "DONE").write_text("")
        except OSError as e:  # e.g. a full disk: no half-written entry stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            from scfm_audit.pipeline._output import no_space

            full = no_space(e, tmp)
            if full is not None:
                raise full from None
            raise
        if final.exists():  # an incomplete folder from an older layout: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.misses.append(f"{kind}/{final.name}")
        return obj


def _write(folder: Path, obj: Any, codec: str) -> None:
    if codec == "edges":
        names = []
        for i, scores in enumerate(obj):
            name = f"{i:05d}.npz"
            scores.save(folder / name)
            names.append(name)
        (folder / "manifest.json").write_text(json.dumps(names))
    elif codec == "frame":
        obj.to_parquet(folder / "table.parquet", index=True)
    elif codec == "anndata":
        obj.write_h5ad(folder / "data.h5ad")
    else:
        with open(folder / "object.pkl", "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _read(folder: Path, codec: str) -> Any:
    if codec == "edges":
        from scfm_audit.edges._scores import EdgeScores

        names = json.loads((folder / "manifest.json").read_text())
        return [EdgeScores.load(folder / n) for n in names]
    if codec == "frame":
        return pd.read_parquet(folder / "table.parquet")
    if codec == "anndata":
        import anndata as ad

        return ad.read_h5ad(folder / "data.h5ad")
    with open(folder / "object.pkl", "rb") as fh:
        return pickle.load(fh)
