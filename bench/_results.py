"""What every benchmark script shares: its preamble (the repository first on sys.path, library
progress bars and TRL's experimental-API warning quieted) and where its results go (printed, and
with --out, a JSON file, its folder made)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def preamble() -> None:
    """Called first by a script's main(): import dynalign from this checkout, quietly."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars


def write_results(out: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2))
        print(f"JSON: {path}")
