"""How every figure of a run becomes a PNG: one place for the settings, so that a figure
drawn by the runner, beside the run or by the report is the same file."""

from __future__ import annotations

import io
import pickle
from typing import Any

#: resolution of every PNG a run writes
FIGURE_DPI = 110


def render_png(figure: Any) -> bytes:
    """``figure`` (a matplotlib Figure) as PNG bytes: :data:`FIGURE_DPI`, tight box."""
    buf = io.BytesIO()
    figure.savefig(buf, dpi=FIGURE_DPI, bbox_inches="tight", format="png")
    return buf.getvalue()


def render_pickled(blob: bytes) -> bytes:
    """:func:`render_png` of a pickled figure (how a figure travels to another process)."""
    import matplotlib

    matplotlib.use("Agg")
    return render_png(pickle.loads(blob))
