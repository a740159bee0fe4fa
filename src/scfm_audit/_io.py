"""Atomic file writes: a killed run never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; outputs are meant to be shared like any other file
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_table(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``df`` as ``stem.parquet`` and ``stem.csv`` (atomically); return both paths."""
    stem = Path(stem)
    out = []
    pq = stem.with_suffix(".parquet")
    with atomic_path(pq) as tmp:
        df.to_parquet(tmp, index=False)
    out.append(pq)
    csv = stem.with_suffix(".csv")
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False)
    out.append(csv)
    return out
