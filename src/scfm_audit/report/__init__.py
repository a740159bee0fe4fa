"""Report layer: the self-contained HTML run report (scorecard first). The figure helpers
live in :mod:`scfm_audit.plotting` and are re-exported here for convenience."""

from scfm_audit.plotting import *  # noqa: F403
from scfm_audit.plotting import __all__ as _plotting_all
from scfm_audit.report._html import render_report

__all__ = [*_plotting_all, "render_report"]
