"""Types shared across layers (for annotations only; nothing here runs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, TypeGuard, TypeVar

if TYPE_CHECKING:
    from scipy.sparse import spmatrix

T = TypeVar("T")


class ProgressFn(Protocol):
    """``progress(iterable, description=..., total=...)``: wraps an iterable in a progress
    display and yields the same items (e.g. :meth:`RunContext.progress`)."""

    def __call__(
        self, iterable: Iterable[T], /, *, description: str, total: int | None = None
    ) -> Iterable[T]: ...


def is_sparse(x: object) -> TypeGuard[spmatrix]:
    """``scipy.sparse.issparse`` that narrows the type for the checker."""
    from scipy import sparse

    return bool(sparse.issparse(x))
