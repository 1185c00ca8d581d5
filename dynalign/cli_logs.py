"""`dynalign logs export | delete`: one user's logged exchanges, straight from the state dir's SQLite.

These work on <state>/dynalign.db directly, so they need no running server, and they are safe
while one runs: the file is in WAL mode, a delete is one short transaction (the gateway's writer
waits for it, and keeps what it could not write in memory meanwhile). The user is the `user`
field of a chat request, or its `X-Dynalign-User` header.

  dynalign logs export --user ID [--out FILE]   JSONL, oldest first: the rows as stored (already
                                                redacted), messages/response/params as JSON, and
                                                `feedback`: the ratings given to each answer
  dynalign logs delete --user ID                every exchange of that user
  dynalign logs delete --older-than DAYS        retention by hand ([privacy] retention_days)
"""

from __future__ import annotations

import json
import sqlite3
import sys
from contextlib import closing

from dynalign.erasure import forget
from dynalign.errors import DynalignError

JSON_COLUMNS = ("messages", "response", "params")


def add_parser(sub) -> None:
    logs = sub.add_parser("logs", help="export or delete logged chat exchanges (a user's, or "
                          "older ones)").add_subparsers(dest="action", required=True)
    export = logs.add_parser("export", help="a user's exchanges as JSONL, oldest first")
    export.add_argument("--user", required=True, help="the user id (`user` / X-Dynalign-User)")
    export.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    delete = logs.add_parser("delete", help="delete a user's exchanges, or those older than N days")
    delete.add_argument("--user", help="the user id (`user` / X-Dynalign-User)")
    delete.add_argument("--older-than", type=float, metavar="DAYS",
                        help="only exchanges logged more than DAYS days ago")


def logs_command(cfg, args) -> int:
    if not cfg.db_path.exists():
        raise DynalignError(f"no exchange log at {cfg.db_path} (nothing has been served there)")
    return export_command(cfg, args) if args.action == "export" else delete_command(cfg, args)


def export_command(cfg, args) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    count = 0
    try:
        with closing(_open(cfg)) as store:
            for row in _read(store.user_exchanges(args.user)):
                row["feedback"] = store.feedback(row["id"])  # every rating given, oldest first
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    finally:
        if args.out:
            out.close()
    print(f"{count} exchange(s) of user {args.user!r}" + (f" in {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


def delete_command(cfg, args) -> int:
    """Delete a user's exchanges and/or those older than --older-than days (one transaction)."""
    if args.user is None and args.older_than is None:
        raise DynalignError("dynalign logs delete needs --user ID and/or --older-than DAYS")
    if args.older_than is not None and args.older_than < 0:
        raise DynalignError(f"--older-than must be 0 or more days, got {args.older_than}")
    with closing(_open(cfg)) as store:
        try:
            count = len(forget(cfg, store, user=args.user, older_than=args.older_than))
        except sqlite3.OperationalError as e:  # locked for too long, read-only, disk full
            raise DynalignError(f"cannot delete from {cfg.db_path}: {e}") from None
    who = f" of user {args.user!r}" if args.user is not None else ""
    age = f" older than {args.older_than:g} days" if args.older_than is not None else ""
    print(f"deleted {count} exchange(s){who}{age}")
    return 0


def _open(cfg):
    from dynalign.store import Store  # sqlite-utils: not imported for `dynalign --help`

    try:
        return Store(cfg.db_path)
    except sqlite3.DatabaseError as e:  # unreadable, not a database, locked
        raise DynalignError(f"cannot open {cfg.db_path}: {e}") from None


def _read(rows):
    for row in rows:
        yield {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v
               for k, v in row.items()}
