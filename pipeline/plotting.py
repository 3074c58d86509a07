"""matplotlib (Agg) for the PNG plots of the report and of the families' own report_plots hooks.

matplotlib is imported on first use only: the host side of a family imports without it."""
from __future__ import annotations

from pathlib import Path

from .atomic import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Write the figure to `path` atomically (temp file, then rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)
    return path
