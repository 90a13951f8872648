"""Every analysis writes `<name>.json` (the numbers) beside `<name>.png` (their plot, `common.plots`)."""

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
