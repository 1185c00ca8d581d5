"""The SQLite store: chat exchanges, users' feedback on them, adapter versions, refresh rounds.

sqlite-utils over one file in WAL mode. The schema grows only through the append-only list of named
migrations below; each runs once and is recorded in `_migrations`. Never edit a migration that has
shipped: add a new one.

Adapter lifecycle: candidate -> active -> retired (after a newer promotion); candidate -> rejected;
a retired version can be activated again (rollback). At most one version is active; none = base.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import sqlite_utils

from dynalign.errors import RoundBusyError, UnknownRoundError, UnknownVersionError

OPEN_ROUND = ("queued", "running", "evaluating")  # a round in one of these blocks a new one
ROUND_END = ("promoted", "rejected", "failed", "cancelled")
CHECKPOINT_TRIES = 30  # after a delete: 30 tries of up to 100 ms while readers hold the WAL
CHECKPOINT_WAIT_MS = 100

MIGRATIONS = []


def migration(fn):
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_exchanges(db):
    db["exchanges"].create(
        {
            "id": int, "created": str, "client_id": str, "user": str, "model_requested": str,
            "model_served": str, "version": int, "mixed_versions": int, "messages": str,
            "response": str, "finish_reason": str, "params": str, "stream": int,
            "prompt_tokens": int, "completion_tokens": int, "latency_ms": float, "ttft_ms": float,
            "opt_out": int, "status": str,
        },
        pk="id",
    )
    db["exchanges"].create_index(["created"])


@migration
def m002_adapters(db):
    db["adapters"].create(
        {
            "version": int, "path": str, "parent": int, "status": str, "created": str,
            "activated": str, "base_model": str, "rank": int, "source": str, "metrics": str,
            "note": str,
        },
        pk="version",
    )


@migration
def m003_rounds(db):
    db["rounds"].create(
        {
            "id": int, "status": str, "trigger": str, "created": str, "started": str,
            "finished": str, "config": str, "progress": str, "metrics": str,
            "adapter_version": int, "error": str,
        },
        pk="id",
    )


@migration
def m004_round_owner(db):
    """Who runs a round (pid of the managing process and of the learner child), which logged
    exchanges it consumed, where its candidate adapter is, and whether a cancel was asked."""
    table = db["rounds"]
    for name, kind in [("owner_pid", int), ("pid", int), ("exchanges_upto", int),
                       ("candidate", str), ("cancel_requested", int)]:
        table.add_column(name, kind)


@migration
def m005_schedule(db):
    """The refresh schedule's memory across restarts: its spec, phase anchor and last firing."""
    db["schedule"].create({"name": str, "spec": str, "anchor": str, "last_fire": str,
                           "last_result": str}, pk="name")


@migration
def m006_schedule_source(db):
    """Who set the schedule: "config" (the file) or "operator" (the console / admin API; kept
    across restarts until reset to the config's)."""
    db["schedule"].add_column("source", str)


@migration
def m007_exchanges_user_index(db):
    """`dynalign logs export|delete --user` look exchanges up by user."""
    db["exchanges"].create_index(["user"])


@migration
def m008_feedback(db):
    """Ratings of answers (POST /v1/feedback): every rating is kept, the latest one per exchange
    counts. An exchange is found by the completion id its client received."""
    db["exchanges"].add_column("completion_id", str)
    db["exchanges"].create_index(["completion_id"])
    db["feedback"].create(
        {"id": int, "exchange_id": int, "created": str, "rating": int, "comment": str,
         "user": str},
        pk="id", foreign_keys=[("exchange_id", "exchanges", "id")])
    db["feedback"].create_index(["exchange_id"])


@migration
def m009_canary(db):
    """Canary rollouts (POST /admin/canary): which arm of which canary answered each exchange."""
    db["exchanges"].add_column("canary", int)
    db["exchanges"].add_column("arm", str)
    db["exchanges"].create_index(["canary"])
    db["canaries"].create(
        {"id": int, "version": int, "active": int, "share": float, "min_feedback": int,
         "max_hours": float, "margin": float, "confidence": float, "on_timeout": str,
         "started": str, "ended": str, "status": str, "reason": str},
        pk="id")


@migration
def m010_feedback_once(db):
    """A rating counts once per exchange: the latest replaces the earlier ones (so rows stay
    bounded, one per rated answer); the rater and the canary's arms are indexed for the sums
    that the canary's review and /metrics read; each exchange records which chat key sent it
    (`key_id`, a digest prefix: only that client may rate the answer when keys identify
    clients)."""
    db.execute("delete from feedback where id not in "
               "(select max(id) from feedback group by exchange_id)")
    db["feedback"].create_index(["exchange_id"], unique=True, index_name="feedback_once")
    db["feedback"].create_index(["user"])
    # covering: a review's counts read the index alone; the median latency walks the second
    db["exchanges"].create_index(["canary", "arm", "status", "completion_tokens"])
    db["exchanges"].create_index(["canary", "arm", "latency_ms"])
    db["exchanges"].add_column("key_id", str)
    db["canaries"].add_column("min_raters", int)


@migration
def m011_scoreboard(db):
    """The scoreboard (dynalign/scoreboard.py): each measurement of a version against the base
    model, and the cache of the answers and judgements behind them, each under a digest of what
    determines it (so the base is answered and judged once per judge)."""
    db["eval_cache"].create({"key": str, "kind": str, "value": str, "created": str}, pk="key")
    db["scoreboards"].create(
        {"id": int, "version": int, "judge": str, "prompts": str, "settings": str,
         "summary": str, "result": str, "created": str}, pk="id")
    db["scoreboards"].create_index(["version"])


@migration
def m012_conversations(db):
    """Which conversation each exchange belongs to (dynalign/conversation_ids.py): its id, and
    the key a follow-up turn finds it by (a digest of who sent it, its messages and its answer).
    Exchanges logged before this migration keep NULL in both: they belong to no conversation."""
    db["exchanges"].add_column("conversation", str)
    db["exchanges"].add_column("continuation_key", str)
    db["exchanges"].create_index(["conversation"])
    db["exchanges"].create_index(["continuation_key"])


@migration
def m013_reviews(db):
    """The review queue (dynalign/reviews.py): judgements a judge panel disagreed on, for a
    person to decide. `item` holds what was judged and each judge's numbers (JSON)."""
    db["reviews"].create(
        {"id": int, "created": str, "source": str, "round_id": int, "reason": str, "item": str,
         "status": str, "verdict": str, "score": float, "decided_by": str, "decided_at": str},
        pk="id")
    db["reviews"].create_index(["status"])
    db["reviews"].create_index(["round_id"])


@migration
def m014_review_version(db):
    """The version a review item's answer A came from, where it is known when the item is queued
    (the scoreboard's; a gate's candidate has no version yet: its round says)."""
    db["reviews"].add_column("version", int)
    db["reviews"].create_index(["version"])


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def migrate(db: sqlite_utils.Database) -> list[str]:
    db["_migrations"].create({"name": str, "applied": str}, pk="name", if_not_exists=True)
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ not in done:
            with db.conn:
                fn(db)
                db["_migrations"].insert({"name": fn.__name__, "applied": now()})
            applied.append(fn.__name__)
    return applied


class Store:
    """One connection to the SQLite file. Open one per thread."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        migrate(self.db)

    def close(self) -> None:
        self.db.conn.close()

    # exchanges
    def log_exchange(self, row: dict) -> int:
        row = {k: _jsonable(v) for k, v in row.items()}
        return self.db["exchanges"].insert({"created": now(), **row}).last_pk

    def exchanges(self, limit: int = 100, search: str = "", user: str = "",
                  opt_out: bool | None = None, before: int | None = None,
                  conversation: str = "") -> list[dict]:
        """Newest first; `search` matches the messages or the response (case-insensitive)."""
        where, params = [], []
        if search:
            where.append("(messages like ? or response like ?)")
            params += [f"%{search}%"] * 2
        for column, value in (("user", user), ("conversation", conversation)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if opt_out is not None:
            where.append("opt_out = ?")
            params.append(int(opt_out))
        if before is not None:
            where.append("id < ?")
            params.append(before)
        return list(self.db["exchanges"].rows_where(" and ".join(where) or None, params,
                                                    order_by="id desc", limit=limit))

    def exchange_by_completion(self, completion_id: str) -> dict | None:
        """The exchange whose response carried this chat completion id (the newest, if several)."""
        rows = list(self.db["exchanges"].rows_where(
            "completion_id = ?", [completion_id], order_by="id desc", limit=1))
        return rows[0] if rows else None

    def continued_conversation(self, continuation_key: str) -> str | None:
        """The conversation of the newest exchange a follow-up with this key continues."""
        row = self.db.execute("select conversation from exchanges where continuation_key = ? "
                              "order by id desc limit 1", [continuation_key]).fetchone()
        return row[0] if row else None

    # feedback
    def add_feedback(self, exchange_id: int, rating: int, comment: str | None = None,
                     user: str | None = None) -> dict:
        """Rate an exchange's answer: one row per exchange, a later rating replaces the earlier
        one (the latest counts, and a client cannot pile up rows)."""
        row = {"exchange_id": exchange_id, "created": now(), "rating": rating,
               "comment": comment, "user": user}
        with self.db.conn:
            row["id"] = self.db.execute(
                "insert into feedback (exchange_id, created, rating, comment, user) "
                "values (:exchange_id, :created, :rating, :comment, :user) "
                "on conflict (exchange_id) do update set created = excluded.created, "
                "rating = excluded.rating, comment = excluded.comment, user = excluded.user "
                "returning id", row).fetchone()[0]
        return row

    def feedback(self, exchange_id: int) -> list[dict]:
        """The rating given to an exchange ([] or one row: the latest replaced earlier ones)."""
        return list(self.db["feedback"].rows_where("exchange_id = ?", [exchange_id],
                                                   order_by="id"))

    def ratings_by_version(self) -> dict[int | None, tuple[int, int]]:
        """{version that answered (None: base): (thumbs up, thumbs down)}, summed in SQL."""
        return {version: (up, down) for version, up, down in self.db.execute(
            "select e.version, sum(f.rating > 0), sum(f.rating < 0) from feedback f "
            "join exchanges e on e.id = f.exchange_id group by e.version")}

    def delete_exchange(self, exchange_id: int) -> bool:
        return bool(self.delete_exchanges(ids=[exchange_id]))

    def existing_exchange_ids(self, ids: list[int]) -> list[int]:
        """Those of `ids` still in the log."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return [row[0] for row in self.db.execute(
            f"select id from exchanges where id in ({marks})", [int(i) for i in ids])]

    def log_exchanges(self, rows: list[dict]) -> None:
        """Several exchanges in one transaction: all of them are written, or none is."""
        with self.db.atomic():  # one transaction (insert_all alone makes one per chunk)
            self.db["exchanges"].insert_all(
                {"created": now(), **{k: _jsonable(v) for k, v in r.items()}} for r in rows)

    def user_exchanges(self, user: str):
        """Every exchange logged for `user`, oldest first (an iterator: exports may be large)."""
        return self.db["exchanges"].rows_where("user = ?", [user], order_by="id")

    def feedback_given(self, user: str) -> list[dict]:
        """Every rating `user` gave (feedback.user is the rater), on any exchange, oldest first."""
        return list(self.db["feedback"].rows_where("user = ?", [user], order_by="id"))

    def delete_exchanges(self, user: str | None = None, before: str | None = None,
                         ids: list[int] | None = None,
                         conversation: str | None = None) -> list[int]:
        """`erase`, returning only the ids of the exchanges deleted."""
        return self.erase(user, before, ids, conversation)[0]

    def erase(self, user: str | None = None, before: str | None = None,
              ids: list[int] | None = None,
              conversation: str | None = None) -> tuple[list[int], int]:
        """In one transaction, delete the exchanges of `user`, created before the ISO time
        `before`, with these `ids` and/or of `conversation` (every turn of it), every rating of
        them (comments are user text too), and the ratings `user` gave on other exchanges
        (feedback.user is the rater; `before` and `ids` apply to those as well; a user and a
        conversation together are refused: which of the user's ratings would go is unclear).
        Returns (the exchange ids, how many ratings). Deleted text is overwritten in the file
        (secure_delete); old copies stay in the WAL until `checkpoint` succeeds. Rounds' prompt
        lists are dynalign/erasure.py's job."""
        if user is not None and conversation is not None:
            raise ValueError("erase takes a user or a conversation, not both")
        where, params = _delete_filter(user, before, ids, conversation=conversation)
        self.db.execute("pragma secure_delete = on")
        with self.db.conn:
            deleted = [row[0] for row in self.db.execute(
                f"delete from exchanges where {where} returning id", params).fetchall()]
            ratings = self.db.execute("delete from feedback where exchange_id not in "
                                      "(select id from exchanges)").rowcount if deleted else 0
            if user is not None:
                where, params = _delete_filter(user, before, ids, id_column="exchange_id")
                ratings += self.db.execute(f"delete from feedback where {where}", params).rowcount
        return sorted(deleted), ratings

    def checkpoint(self, tries: int = CHECKPOINT_TRIES) -> bool:
        """Fold the WAL into the file and truncate it, so no copy of deleted text stays there.
        A reader holding an older snapshot blocks that: each try waits up to
        CHECKPOINT_WAIT_MS for readers (SQLite's busy handler), `tries` at most. True when
        the WAL is empty; False when readers still held it after the last try."""
        busy_ms = self.db.execute("pragma busy_timeout").fetchone()[0]
        self.db.execute(f"pragma busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            return any(self.db.execute("pragma wal_checkpoint(truncate)").fetchone()[0] == 0
                       for _ in range(tries))
        finally:
            self.db.execute(f"pragma busy_timeout = {busy_ms}")

    # adapters
    def add_adapter(self, path: str, *, base_model: str, rank: int, version: int | None = None,
                    parent: int | None = None, source: str = "registered",
                    metrics: dict | None = None, note: str = "") -> int:
        version = self.next_version() if version is None else version
        row = {"version": version, "path": path, "parent": parent, "status": "candidate", "created": now(),
               "base_model": base_model, "rank": rank, "source": source,
               "metrics": json.dumps(metrics or {}), "note": note}
        return self.db["adapters"].insert(row).last_pk

    def next_version(self) -> int:
        return (self.db.execute("select max(version) from adapters").fetchone()[0] or 0) + 1

    def adapter(self, version: int) -> dict:
        try:
            return self.db["adapters"].get(version)
        except sqlite_utils.db.NotFoundError:
            raise UnknownVersionError(f"unknown adapter version: {version}") from None

    def adapters(self) -> list[dict]:
        return list(self.db["adapters"].rows_where(order_by="version"))

    def active_version(self) -> int | None:
        row = self.db.execute("select version from adapters where status = 'active'").fetchone()
        return row[0] if row else None

    def set_active(self, version: int | None) -> None:
        """Make `version` the only active one (None: serve the base model)."""
        if version is not None:
            self.adapter(version)
        with self.db.conn:
            self.db.execute("update adapters set status = 'retired' where status = 'active'")
            if version is not None:
                self.db["adapters"].update(version, {"status": "active", "activated": now()})

    def set_adapter_status(self, version: int, status: str, note: str | None = None) -> None:
        fields = {"status": status} if note is None else {"status": status, "note": note}
        self.db["adapters"].update(version, fields)

    # the scoreboard and its cache
    def cached(self, keys: list[str]) -> dict[str, object]:
        """The cached values of those keys that have one."""
        out = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = self.db.execute("select key, value from eval_cache where key in "
                                   f"({','.join('?' * len(part))})", part)
            out |= {key: json.loads(value) for key, value in rows}
        return out

    def cache(self, kind: str, values: dict[str, object]) -> None:
        rows = [{"key": key, "kind": kind, "value": json.dumps(value), "created": now()}
                for key, value in values.items()]
        if rows:
            with self.db.conn:
                self.db["eval_cache"].upsert_all(rows, pk="key")

    def add_scoreboard(self, version: int, judge: str, prompts: str, settings: dict,
                       summary: dict, result: dict) -> dict:
        """`summary`: the headline numbers (what lists, plots and /metrics read); `result`: all,
        with every item."""
        row = {"version": version, "judge": judge, "prompts": prompts,
               "settings": json.dumps(settings), "summary": json.dumps(summary),
               "result": json.dumps(result), "created": now()}
        with self.db.conn:
            row_id = self.db["scoreboards"].insert(row).last_pk
        return self.scoreboard(row_id)

    def scoreboard(self, row_id: int) -> dict:
        return _scoreboard_row(self.db["scoreboards"].get(row_id))

    def scoreboards(self, version: int | None = None, latest: bool = True) -> list[dict]:
        """Scoreboard rows without their items, oldest version first; `latest`: only each
        (version, judge, prompts)'s newest measurement."""
        where, args = ("where version = ?", [version]) if version is not None else ("", [])
        cursor = self.db.execute("select id, version, judge, prompts, settings, summary, created "
                                 f"from scoreboards {where} order by version, id", args)
        names = [d[0] for d in cursor.description]
        rows = [_scoreboard_row(dict(zip(names, r))) for r in cursor.fetchall()]
        if latest:
            rows = list({(r["version"], r["judge"], r["prompts"]): r for r in rows}.values())
        return rows

    # refresh rounds: queued -> running -> evaluating -> promoted | rejected | failed | cancelled
    def open_round(self, trigger: str, config: str, owner_pid: int) -> int:
        """Insert a queued round, unless one is open already (checked in the same write
        transaction, so two processes can never both start one)."""
        with self.db.conn:
            self.db.execute("begin immediate")
            row = self.db.execute("select id, status from rounds where status in (?, ?, ?)",
                                  OPEN_ROUND).fetchone()
            if row:
                raise RoundBusyError(f"round {row[0]} is {row[1]}; rounds never overlap", row[0])
            return self.db["rounds"].insert({
                "status": "queued", "trigger": trigger, "created": now(), "config": config,
                "owner_pid": owner_pid, "progress": "{}", "metrics": "{}"}).last_pk

    def round(self, round_id: int) -> dict:
        try:
            return self.db["rounds"].get(round_id)
        except sqlite_utils.db.NotFoundError:
            raise UnknownRoundError(f"unknown round: {round_id}") from None

    def rounds(self, limit: int = 50) -> list[dict]:
        return list(self.db["rounds"].rows_where(order_by="id desc", limit=limit))

    def update_round(self, round_id: int, **fields) -> None:
        fields = {k: _jsonable(v) for k, v in fields.items()}
        if fields.get("status") in ROUND_END:
            fields.setdefault("finished", now())
        with self.db.conn:
            self.db["rounds"].update(round_id, fields)

    def round_of_version(self, version: int) -> dict | None:
        rows = list(self.db["rounds"].rows_where("adapter_version = ?", [version], limit=1))
        return rows[0] if rows else None

    def round_counts(self) -> dict[str, int]:
        """How many rounds are in each status."""
        return dict(self.db.execute("select status, count(*) from rounds group by status"))

    def open_rounds(self) -> list[dict]:
        return list(self.db["rounds"].rows_where("status in (?, ?, ?)", OPEN_ROUND))

    def consumed_upto(self) -> int:
        """The last exchange id a finished round trained on: later ones are new."""
        row = self.db.execute("select max(exchanges_upto) from rounds where status in "
                              "('evaluating', 'promoted', 'rejected')").fetchone()
        return row[0] or 0

    def training_exchanges(self, after: int) -> list[dict]:
        """Logged exchanges after id `after` that may be trained on: answered, not opted out;
        with `rating`, the rating of the answer (None: not rated), and `who`, the user that
        sent it (else the client: X-Client-Id or its address)."""
        return list(self.db["exchanges"].rows_where(
            "id > ? and opt_out = 0 and status = 'ok'", [after], order_by="id",
            select="id, messages, coalesce(user, client_id) as who, (select rating from "
                   "feedback where exchange_id = exchanges.id) as rating"))

    # canaries
    def start_canary(self, **fields) -> dict:
        row = {**fields, "started": now(), "status": "running"}
        row["id"] = self.db["canaries"].insert(row).last_pk
        return self.db["canaries"].get(row["id"])

    def running_canary(self) -> dict | None:
        rows = list(self.db["canaries"].rows_where("status = 'running'", order_by="id desc",
                                                   limit=1))
        return rows[0] if rows else None

    def last_canary(self) -> dict | None:
        rows = list(self.db["canaries"].rows_where(order_by="id desc", limit=1))
        return rows[0] if rows else None

    def end_canary(self, canary_id: int, status: str, reason: str) -> bool:
        """End a running canary; False when it had already ended (someone else decided)."""
        with self.db.conn:
            cursor = self.db.execute(
                "update canaries set status = ?, reason = ?, ended = ? where id = ? and "
                "status = 'running'", [status, reason, now(), canary_id])
        return cursor.rowcount == 1

    def canary_arms(self, canary_id: int, latency: bool = False) -> dict[str, dict]:
        """Each arm's sums for a canary, in SQL over the (canary, arm) index: requests, errors,
        answer tokens (sum and count), ratings up and down and distinct raters (the rating's
        user, else the exchange's client); with `latency`, the median latency as well."""
        arms = {arm: {"requests": n, "errors": errors, "tokens": tokens or 0,
                      "answers": answers} for arm, n, errors, tokens, answers in self.db.execute(
            "select arm, count(*), sum(status not in ('ok', 'aborted')), "
            "sum(completion_tokens), count(completion_tokens) from exchanges "
            "where canary = ? group by arm", [canary_id])}
        for arm, up, down, raters in self.db.execute(  # from the ratings (far fewer) outward
                "select e.arm, sum(f.rating > 0), sum(f.rating < 0), "
                "count(distinct coalesce(f.user, e.client_id)) from feedback f "
                "cross join exchanges e on e.id = f.exchange_id where e.canary = ? "
                "group by e.arm", [canary_id]):
            arms.setdefault(arm, {}).update(up=up, down=down, raters=raters)
        for arm, numbers in arms.items() if latency else ():
            numbers["p50_latency_ms"] = self._median_latency(canary_id, arm)
        return arms

    def _median_latency(self, canary_id: int, arm: str) -> float | None:
        where = "canary = ? and arm = ? and latency_ms is not null"
        n = self.db.execute(f"select count(*) from exchanges where {where}",
                            [canary_id, arm]).fetchone()[0]
        if not n:
            return None
        middle = [row[0] for row in self.db.execute(
            f"select latency_ms from exchanges where {where} order by latency_ms "
            "limit ? offset ?", [canary_id, arm, 2 - n % 2, (n - 1) // 2])]
        return sum(middle) / len(middle)

    # the refresh schedule's state
    def schedule_state(self, name: str = "refresh") -> dict | None:
        rows = list(self.db["schedule"].rows_where("name = ?", [name]))
        return rows[0] if rows else None

    def save_schedule_state(self, name: str = "refresh", **fields) -> None:
        self.db["schedule"].upsert({"name": name, **fields}, pk="name")


def _delete_filter(user: str | None, before: str | None, ids: list[int] | None,
                   id_column: str = "id", conversation: str | None = None) -> tuple[str, list]:
    """The where clause of a delete (`id_column`: where the exchange's id is)."""
    if user is None and before is None and ids is None and conversation is None:
        raise ValueError("delete_exchanges needs a user, a time, ids or a conversation: it "
                         "never deletes everything")
    given = [(w, v) for w, v in (("user = ?", user), ("created < ?", before),
                                 ("conversation = ?", conversation)) if v is not None]
    where, params = [w for w, _ in given], [v for _, v in given]
    if ids is not None:
        where.append(f"{id_column} in ({', '.join('?' * len(ids))})" if ids else "0")
        params += [int(i) for i in ids]
    return " and ".join(where), params


def _scoreboard_row(row: dict) -> dict:
    return {**row, **{k: json.loads(row[k]) for k in ("settings", "summary", "result") if k in row}}


def _jsonable(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value
