"""Types shared across layers (for annotations only; nothing here runs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressFn(Protocol):
    """``progress(iterable, description=..., total=...)``: wraps an iterable in a progress
    display and yields the same items (e.g. :meth:`RunContext.progress`)."""

    def __call__(
        self, iterable: Iterable[T], /, *, description: str, total: int | None = None
    ) -> Iterable[T]: ...
