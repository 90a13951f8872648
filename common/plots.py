"""Figures written to files: matplotlib on its file-only Agg backend (no display), one call to open a figure
and one to lay it out, save it and close it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(*grid: int, **subplots_kwargs: Any) -> tuple[Any, Any]:
    """`plt.subplots(*grid, **subplots_kwargs)` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, **subplots_kwargs)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Tight layout, then `path` (its folder created) at `dpi`; the figure is closed. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def legend(ax: Any, **legend_kwargs: Any) -> None:
    """`ax.legend(**legend_kwargs)` when the axes hold a labelled artist: a study's report draws its figures before
    every run has finished, and a legend of nothing is a matplotlib warning."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**legend_kwargs)
