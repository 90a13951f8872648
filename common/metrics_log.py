"""``metrics.jsonl``: one JSON object per logged step, continued exactly across resumes; the results table a
finished run prints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSON-lines log. On resume from step ``s`` the lines of steps >= ``s`` are dropped,
    because the resumed run logs them again: the file then equals an uninterrupted run's."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0):
        self.path = Path(output_dir) / METRICS_FILE
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) < resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # a line cut by a crash: dropped, so the file stays readable


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def print_results(results: dict, output_dir: Path) -> None:
    width = max(len(k) for k in results) if results else 0
    print(f"\nresults ({output_dir / 'results.json'}):")
    for key, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
