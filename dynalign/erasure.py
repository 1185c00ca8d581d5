"""Deleting exchanges deletes every copy of their text that the state dir holds.

User text lives in three places only: the exchange log (SQLite: the exchanges and the ratings'
comments), each round's `prompts.jsonl`, the list of prompts it trained on, where a logged
prompt is the row with id `exchange-<id>`, and each round's `rollouts.jsonl`, a batch's first
prompt as the model was shown it, under the same id. Everything else a round writes holds numbers, seed or
held-out prompts, and the model's answers to those. So one function, `forget`, deletes the rows
(a user's or a conversation's exchanges with every rating of them, and every rating that user
gave on anyone's exchange), drops those ids from every round's list, and checkpoints the WAL,
retried while readers hold it; the CLI, the admin API and the retention job all call it. When
readers still hold the WAL after the last try, the deletion is committed but copies remain in
`dynalign.db-wal`: `Erased.copies_remain` says so and how to finish (`dynalign logs
checkpoint`), and each caller reports it. What it cannot undo: an adapter trained on a prompt
keeps what it learned (weights hold no text; see docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Erased:
    exchanges: list[int]  # the ids of the exchanges deleted
    ratings: int  # ratings deleted: of those exchanges, and the user's on others
    copies_remain: str | None = None  # None: no copy left; else what remains, how to finish


def forget(cfg, store, *, user: str | None = None, older_than: float | None = None,
           ids: list[int] | None = None, conversation: str | None = None) -> Erased:
    """Delete the exchanges of `user`, older than `older_than` days, with these `ids` and/or
    of `conversation` (all given filters apply; a user and a conversation are not taken
    together), their ratings and the ratings `user` gave; then every round's copy of their
    prompts, and the WAL's copies (Store.checkpoint, retried while readers hold it). The
    deletion is committed even when copies remain in the WAL."""
    before = None if older_than is None else cutoff(older_than)
    exchanges, ratings = store.erase(user=user, before=before, ids=ids,
                                     conversation=conversation)
    scrub_rounds(cfg.rounds_dir, exchanges)
    clean = store.checkpoint()
    return Erased(exchanges, ratings, None if clean else copies_remain(cfg.db_path))


def copies_remain(db_path: Path) -> str:
    """What a checkpoint that readers blocked leaves behind, and how to finish."""
    from dynalign.store import CHECKPOINT_TRIES, CHECKPOINT_WAIT_MS  # no sqlite-utils for --help

    seconds = CHECKPOINT_TRIES * CHECKPOINT_WAIT_MS / 1000
    return (f"the deletion is committed, but copies of the deleted text remain in {db_path}-wal "
            f"(and in {db_path} until the WAL is folded in): another connection kept a read "
            f"snapshot of the log open for {seconds:g} s. Finish with `dynalign logs checkpoint` "
            "once nothing is reading the log (an export, a backup, a sqlite3 shell; if it still "
            "cannot, stop `dynalign serve` first)")


def cutoff(days: float, at: dt.datetime | None = None) -> str:
    """Retention's boundary: the ISO time `days` days before `at` (default: now), as stored."""
    at = at or dt.datetime.now(dt.timezone.utc)
    return (at - dt.timedelta(days=days)).isoformat(timespec="milliseconds")


def scrub_rounds(rounds_dir: Path, ids: list[int]) -> int:
    """Drop the prompts of exchanges `ids` from every round's prompts.jsonl and rollouts.jsonl;
    returns how many files were rewritten (each replaced whole, so no reader sees half a file)."""
    gone = {f"exchange-{i}" for i in ids}
    if not gone or not rounds_dir.is_dir():
        return 0
    files = [*rounds_dir.glob("*/prompts.jsonl"), *rounds_dir.glob("*/rollouts.jsonl")]
    return sum(_drop_rows(path, gone) for path in sorted(files))


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
