"""`dynalign logs list | export | delete | checkpoint`: the logged exchanges by conversation, and
one user's (or one conversation's) exchanges and ratings, straight from the state dir's SQLite.

These work on <state>/dynalign.db directly, so they need no running server, and they are safe
while one runs: the file is in WAL mode, a delete is one short transaction (the gateway's writer
waits for it, and keeps what it could not write in memory meanwhile). The user is the `user`
field of a chat request, or its `X-Dynalign-User` header; a rating's user is whoever gave it.
A conversation is the id the gateway gave each exchange (dynalign/conversation_ids.py).

  dynalign logs list [--conversation ID] [--user ID] [--limit N]
                                                the newest N exchanges (default 50) grouped by
                                                conversation: a line per conversation (its id,
                                                user, how many exchanges), then its turns oldest
                                                first (id, time, version, last user message)
  dynalign logs export --user ID [--out FILE]   JSONL (FILE is created 0600, never through a
                                                symlink): first one line per exchange of that
                                                user, oldest first, {"record": "exchange", the
                                                row as stored (already redacted), messages/
                                                response/params as JSON, "feedback": the ratings
                                                THIS user gave it}; then one line per rating the
                                                user gave on an exchange not logged under them,
                                                oldest first, {"record": "rating", the rating
                                                row}. Other people's ratings are never listed.
  dynalign logs delete --user ID                every exchange of that user with all its ratings,
                                                and every rating that user gave on any exchange
  dynalign logs delete --older-than DAYS        retention by hand ([privacy] retention_days)
  dynalign logs delete --conversation ID        every exchange of that conversation with all
                                                their ratings (taken alone)
  dynalign logs checkpoint                      finish a delete whose WAL readers held: exit 1
                                                while copies still remain in dynalign.db-wal

A delete whose WAL checkpoint readers blocked has still deleted: it prints what it deleted, says
that copies remain in dynalign.db-wal and how to finish, and exits 1.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from contextlib import closing

from dynalign.conversation_ids import by_conversation
from dynalign.erasure import forget
from dynalign.errors import CopiesRemainError, DynalignError
from dynalign.nofollow import open_no_link

JSON_COLUMNS = ("messages", "response", "params")
SHOWN_CHARS = 70  # of the last user message, in `logs list`


def add_parser(sub) -> None:
    logs = sub.add_parser("logs", help="list, export or delete logged chat exchanges (a "
                          "user's, a conversation's, or older ones)").add_subparsers(
                              dest="action", required=True)
    listing = logs.add_parser("list", help="the newest exchanges, grouped by conversation")
    listing.add_argument("--conversation", metavar="ID", help="only this conversation's")
    listing.add_argument("--user", help="only this user's (`user` / X-Dynalign-User)")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="the newest N exchanges (default 50)")
    export = logs.add_parser("export", help="a user's exchanges as JSONL, oldest first")
    export.add_argument("--user", required=True, help="the user id (`user` / X-Dynalign-User)")
    export.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    delete = logs.add_parser("delete", help="delete a user's exchanges, or those older than N days")
    delete.add_argument("--user", help="the user id (`user` / X-Dynalign-User)")
    delete.add_argument("--older-than", type=float, metavar="DAYS",
                        help="only exchanges logged more than DAYS days ago")
    delete.add_argument("--conversation", metavar="ID",
                        help="every exchange of this conversation (`dynalign logs list` shows "
                        "the ids); taken alone")
    logs.add_parser("checkpoint", help="fold the WAL into dynalign.db (finishes a delete that "
                    "readers kept from doing it)")


def logs_command(cfg, args) -> int:
    if not cfg.db_path.exists():
        raise DynalignError(f"no exchange log at {cfg.db_path} (nothing has been served there)")
    commands = {"list": list_command, "export": export_command, "delete": delete_command,
                "checkpoint": checkpoint_command}
    return commands[args.action](cfg, args)


def list_command(cfg, args) -> int:
    """The newest exchanges, a conversation's turns together (dynalign/conversation_ids.py)."""
    if args.limit < 1:
        raise DynalignError(f"--limit must be 1 or more, got {args.limit}")
    with closing(_open(cfg)) as store:
        rows = store.exchanges(limit=args.limit, user=args.user or "",
                               conversation=args.conversation or "")
    if not rows:
        print("no logged exchange matches", file=sys.stderr)
    for turns in by_conversation(rows):
        print(_conversation_line(turns))
        for row in turns:
            print(_turn_line(row))
    return 0


def _conversation_line(turns: list[dict]) -> str:
    conversation = turns[0].get("conversation")
    name = f"conversation {conversation}" if conversation else "no conversation id (logged before)"
    users = sorted({row.get("user") or "-" for row in turns})
    return f"{name}  user {', '.join(users)}  {len(turns)} exchange(s)"


def _turn_line(row: dict) -> str:
    from dynalign.conversation import last_user_turn  # the turn this exchange answered

    text = " ".join((last_user_turn(row.get("messages") or "[]") or "").split())
    text = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"
    return (f"  {row['id']:>6}  {(row.get('created') or '')[:19].replace('T', ' ')}  "
            f"{row.get('model_served') or '-'}  {row.get('status') or '-'}  {text}")


def export_command(cfg, args) -> int:
    with closing(_open(cfg)) as store:
        out = _private_file(args.out) if args.out else sys.stdout
        try:
            exchanges, ratings = _export(store, args.user, out)
        finally:
            if args.out:
                out.close()
    print(f"{exchanges} exchange(s) of user {args.user!r} and {ratings} rating(s) they gave on "
          "other exchanges" + (f" in {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _export(store, user: str, out) -> tuple[int, int]:
    """`user`'s exchanges, each with the ratings `user` gave it, then `user`'s ratings of other
    exchanges; returns how many of each."""
    given: dict[int, list[dict]] = {}
    for rating in store.feedback_given(user):
        given.setdefault(rating["exchange_id"], []).append(rating)
    count = 0
    for row in _read(store.user_exchanges(user)):
        _write(out, {"record": "exchange", **row, "feedback": given.pop(row["id"], [])})
        count += 1
    others = [rating for ratings in given.values() for rating in ratings]
    for rating in others:
        _write(out, {"record": "rating", **rating})
    return count, len(others)


def _write(out, record: dict) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _private_file(path: str):
    """`path` opened for writing, readable by its owner only (0600, also when it existed): an
    export holds a user's text. A symlink there is refused, not followed."""
    fd = open_no_link(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, DynalignError,
                      "an export is not written through one; give the path of a file",
                      f"cannot write {path}")
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    except OSError as e:
        os.close(fd)
        raise DynalignError(f"cannot make {path} private (0600): {e.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def delete_command(cfg, args) -> int:
    """Delete a user's exchanges and ratings, a conversation's, and/or the exchanges older than
    --older-than days (one transaction); exit 1 when copies remain in the WAL (the deletion
    stands)."""
    _check_delete(args)
    with closing(_open(cfg)) as store:
        try:
            erased = forget(cfg, store, user=args.user, older_than=args.older_than,
                            conversation=args.conversation)
        except sqlite3.OperationalError as e:  # locked for too long, read-only, disk full
            raise DynalignError(f"cannot delete from {cfg.db_path}: {e}") from None
    who = f" of user {args.user!r}" if args.user is not None else ""
    which = f" of conversation {args.conversation!r}" if args.conversation is not None else ""
    age = f" older than {args.older_than:g} days" if args.older_than is not None else ""
    print(f"deleted {len(erased.exchanges)} exchange(s){who}{which}{age} and {erased.ratings} "
          "rating(s)")
    if erased.copies_remain:
        raise CopiesRemainError(erased.copies_remain)
    return 0


def _check_delete(args) -> None:
    if args.conversation is not None and (args.user is not None or args.older_than is not None):
        raise DynalignError("dynalign logs delete --conversation ID deletes the whole "
                            "conversation: give it without --user or --older-than")
    if args.user is None and args.older_than is None and args.conversation is None:
        raise DynalignError("dynalign logs delete needs --user ID, --conversation ID and/or "
                            "--older-than DAYS")
    if args.older_than is not None and args.older_than < 0:
        raise DynalignError(f"--older-than must be 0 or more days, got {args.older_than}")


def checkpoint_command(cfg, args) -> int:
    """Fold the WAL into the file (what a delete does last, and readers can keep it from)."""
    with closing(_open(cfg)) as store:
        try:
            done = store.checkpoint()
        except sqlite3.OperationalError as e:
            raise DynalignError(f"cannot checkpoint {cfg.db_path}: {e}") from None
    if not done:
        raise CopiesRemainError(
            f"{cfg.db_path}-wal still cannot be folded into {cfg.db_path}: another connection "
            "keeps a read snapshot of the log open (an export, a backup, a sqlite3 shell, or "
            "`dynalign serve`); end it and run `dynalign logs checkpoint` again")
    print(f"checkpointed: {cfg.db_path}-wal is empty, and deleted text is overwritten in "
          f"{cfg.db_path}")
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
