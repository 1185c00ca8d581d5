"""Deleting exchanges deletes every copy of their text that the state dir holds.

User text lives in two places only: the exchange log (SQLite, where the store overwrites
deleted rows and checkpoints the WAL) and each round's `prompts.jsonl`, the list of prompts it
trained on, where a logged prompt is the row with id `exchange-<id>`. Everything else a round
writes holds numbers, seed or held-out prompts, and the model's answers to those. So one
function deletes rows and then drops those ids from every round's list; the CLI, the admin API
and the retention job all call it. What it cannot undo: an adapter trained on a prompt keeps
what it learned (weights hold no text; see docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path


def forget(cfg, store, *, user: str | None = None, older_than: float | None = None,
           ids: list[int] | None = None) -> list[int]:
    """Delete the exchanges of `user`, older than `older_than` days and/or with these `ids`
    (all given filters apply), and every round's copy of their prompts; returns the ids."""
    before = None if older_than is None else cutoff(older_than)
    deleted = store.delete_exchanges(user=user, before=before, ids=ids)
    scrub_rounds(cfg.rounds_dir, deleted)
    return deleted


def cutoff(days: float, at: dt.datetime | None = None) -> str:
    """Retention's boundary: the ISO time `days` days before `at` (default: now), as stored."""
    at = at or dt.datetime.now(dt.timezone.utc)
    return (at - dt.timedelta(days=days)).isoformat(timespec="milliseconds")


def scrub_rounds(rounds_dir: Path, ids: list[int]) -> int:
    """Drop the prompts of exchanges `ids` from every round's prompts.jsonl; returns how many
    files were rewritten (each replaced whole, so no reader sees half a file)."""
    gone = {f"exchange-{i}" for i in ids}
    if not gone or not rounds_dir.is_dir():
        return 0
    return sum(_drop_rows(path, gone) for path in sorted(rounds_dir.glob("*/prompts.jsonl")))


def drop_missing(path: Path, store) -> int:
    """A round's prompt list written while exchanges in it were being deleted: drop those no
    longer in the log; returns how many."""
    logged = {int(r["id"].removeprefix("exchange-")) for r in _rows(path)
              if r.get("source") == "logged"}
    missing = logged - set(store.existing_exchange_ids(sorted(logged)))
    _drop_rows(path, {f"exchange-{i}" for i in missing})
    return len(missing)


def _drop_rows(path: Path, gone: set[str]) -> bool:
    rows = _rows(path)
    keep = [r for r in rows if r.get("id") not in gone]
    if len(keep) == len(rows):
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    os.replace(tmp, path)
    return True


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
