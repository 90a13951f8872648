"""Every analysis writes `<name>.json` (the numbers) and `<name>.png` (their plot) side by side in one folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


def write_numbers(rows: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """`<out_dir>/<name>.json` of the dataclass rows (the folder is created); returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({k: asdict(v) for k, v in rows.items()}, indent=2))
    return out_dir


def new_figure(*grid: int, **subplots_kwargs: Any) -> tuple[Any, Any]:
    """`plt.subplots` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, **subplots_kwargs)


def save_figure(fig: Any, out_dir: Path, name: str) -> Path:
    """`<out_dir>/<name>.png`, then the figure is closed; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
