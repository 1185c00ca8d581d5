"""The review queue: judgements a judge panel disagreed on (dynalign/panel.py), for a person.

A round's gate queues each pair its panel split on: the prompt, the candidate's answer (A) and
the active version's (B), each judge's preference for A; and each pair whose holistic score and
aspect scores moved in opposite directions from B to A, with those scores. An operator decides
it in the console, over `POST /admin/reviews/{id}` or with `dynalign reviews decide`: "better" (A is), "worse" or
"tie" for a pair, or a 0-5 score for a single answer. A verdict is given once, with who gave it.
The verdicts of a round's items are shown with its gate report, apart from the judges' numbers
(`tally`), never mixed into them; so are a scoreboard's: the pairs (A the version's answer, B
the base's) its panel split on, with the version's scoreboard.

What is queued comes from the gate's held-out prompts and probes, never from users' logged
chats, so erasure has nothing to find here.
"""

from __future__ import annotations

import json

from dynalign.errors import DataError, ReviewDecidedError, UnknownReviewError
from dynalign.store import now

VERDICTS = ("better", "worse", "tie")
STATUSES = ("open", "decided")


PANEL_SPLIT = "the panel's judges preferred different answers"
SIGN_CONFLICT = "the holistic score and the aspects moved in opposite directions"


def queue_gate(store, round_id: int, report: dict) -> list[int]:
    """Queue what a round's gate report (learner/gate_eval.py) leaves for a person: the pairs its
    panel split on (`review`), and the items whose holistic and aspect scores disagreed."""
    split = [i for i in report["pairwise"].get("items", []) if i.get("review")]
    conflicts = (report.get("aspects") or {}).get("conflicts", [])
    return queue(store, round_id, split, PANEL_SPLIT) + queue(store, round_id, conflicts,
                                                              SIGN_CONFLICT)


def queue_scoreboard(store, version: int, items: list[dict]) -> list[int]:
    """Queue the scoreboard's pairs (A the version's answer, B the base's) its panel split on;
    a pair queued by an earlier run of the same scoreboard is not queued again."""
    split = [i for i in items if i.get("review")]
    return queue(store, None, split, PANEL_SPLIT, source="scoreboard", version=version)


def queue(store, round_id: int | None, items: list[dict], reason: str, source: str = "gate",
          version: int | None = None) -> list[int]:
    """Queue pairs (prompt, answers A and B, the judges' numbers); the ids of those queued now."""
    ids = []
    with store.db.conn:
        for item in items:
            body = json.dumps({k: item[k] for k in ("prompt", "a", "b", "outcome", "members",
                                                    "scores") if k in item})
            if version is not None and _queued(store, source, version, body):
                continue
            row = {"created": now(), "source": source, "round_id": round_id, "reason": reason,
                   "item": body, "status": "open", "version": version}
            ids.append(store.db["reviews"].insert(row).last_pk)
    return ids


def _queued(store, source: str, version: int, body: str) -> bool:
    return bool(list(store.db.query("select 1 from reviews where source = ? and version = ? and "
                                    "item = ? limit 1", [source, version, body])))


def listing(store, status: str = "", round_id: int | None = None, limit: int = 50,
            version: int | None = None) -> list[dict]:
    """Review items, newest first; `status` "open" or "decided" ("" = both); one round's, or
    one version's (the scoreboard's items)."""
    where, args = [], []
    if version is not None:
        where.append("version = ?")
        args.append(version)
    if status:
        where.append("status = ?")
        args.append(status)
    if round_id is not None:
        where.append("round_id = ?")
        args.append(round_id)
    clause = f"where {' and '.join(where)} " if where else ""
    rows = store.db.query(f"select * from reviews {clause}order by id desc limit ?", [*args, limit])
    return [_view(r) for r in rows]


def get(store, review_id: int) -> dict:
    rows = list(store.db.query("select * from reviews where id = ?", [review_id]))
    if not rows:
        raise UnknownReviewError(f"no review item with id {review_id}")
    return _view(rows[0])


def decide(store, review_id: int, by: str, verdict: str | None = None,
           score: float | None = None) -> dict:
    """Record a person's verdict on an open item (once); the item as it now stands."""
    item = get(store, review_id)
    pair = "b" in item["item"]
    if pair and verdict not in VERDICTS:
        raise DataError(f"review {review_id} is a pair: its verdict is one of "
                        f"{', '.join(VERDICTS)} (is A's answer better?); got {verdict!r}")
    if not pair and (score is None or not 0 <= score <= 5):
        raise DataError(f"review {review_id} is one answer: its verdict is a score 0-5; "
                        f"got {score!r}")
    if not by.strip():
        raise DataError("a verdict needs who gave it ('by')")
    with store.db.conn:
        changed = store.db.execute(
            "update reviews set status = 'decided', verdict = ?, score = ?, decided_by = ?, "
            "decided_at = ? where id = ? and status = 'open'",
            [verdict if pair else None, None if pair else score, by.strip(), now(), review_id])
    if changed.rowcount == 0:
        raise ReviewDecidedError(f"review {review_id} was decided already, by "
                                 f"{item['decided_by']} ({item['verdict'] or item['score']})")
    return get(store, review_id)


def tally(store, round_id: int | None = None, version: int | None = None) -> dict:
    """A round's (or a version's scoreboard's) queued items and the people's verdicts on them:
    how many are open, and of the decided pairs, how often A's answer was better (its human win
    rate)."""
    rows = listing(store, round_id=round_id, version=version, limit=10_000)
    decided = [r for r in rows if r["status"] == "decided" and r["verdict"]]
    counts = {v: sum(r["verdict"] == v for r in decided) for v in VERDICTS}
    return {"queued": len(rows), "open": sum(r["status"] == "open" for r in rows), **counts,
            "win_rate": counts["better"] / len(decided) if decided else None,
            "ids": [r["id"] for r in rows]}


def _view(row: dict) -> dict:
    return {**row, "item": json.loads(row["item"])}
