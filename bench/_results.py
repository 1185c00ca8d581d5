"""Where a benchmark's results go: printed, and with --out, a JSON file (its folder made)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2))
        print(f"JSON: {path}")
