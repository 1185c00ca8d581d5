"""`dynalign reviews`: the judgements a judge panel disagreed on, and a person's verdicts.

It talks to the running server's admin API (server/reviews.py), like `dynalign rounds`, so a
verdict given here is the same record the console shows. `list` prints one line per item;
`show ID` the item as JSON; `decide ID --verdict better|worse|tie --by NAME` (is A, the
candidate's answer, better?) or `--score 0-5` for a single answer.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from dynalign.admin_client import admin_request
from dynalign.reviews import VERDICTS


def add_parser(sub) -> None:
    reviews = sub.add_parser("reviews", help="the review queue: judgements a judge panel "
                             "disagreed on, for a person to decide")
    actions = reviews.add_subparsers(dest="action")
    listing = actions.add_parser("list", help="items, newest first (the default action)")
    listing.add_argument("--open", action="store_true", help="undecided items only")
    listing.add_argument("--round", type=int, help="one round's items")
    listing.add_argument("--limit", type=int, default=50)
    show = actions.add_parser("show", help="one item as JSON: what was judged, each judge's numbers")
    show.add_argument("id", type=int)
    decide = actions.add_parser("decide", help="give an open item its verdict (once)")
    decide.add_argument("id", type=int)
    verdict = decide.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--verdict", choices=VERDICTS, help="a pair: is A's answer better?")
    verdict.add_argument("--score", type=float, help="one answer: its 0-5 score")
    decide.add_argument("--by", required=True, help="who gives the verdict")


def reviews_command(cfg, args) -> int:
    if args.action == "show":
        print(json.dumps(admin_request(cfg, "GET", f"/reviews/{args.id}"), indent=2))
    elif args.action == "decide":
        body = {"by": args.by, **({"verdict": args.verdict} if args.verdict else
                                  {"score": args.score})}
        print(line(admin_request(cfg, "POST", f"/reviews/{args.id}", body)))
    else:
        query = {"status": "open" if getattr(args, "open", False) else "",
                 "limit": getattr(args, "limit", 50)}
        if getattr(args, "round", None) is not None:
            query["round"] = args.round
        for row in admin_request(cfg, "GET", f"/reviews?{urlencode(query)}")["data"]:
            print(line(row))
    return 0


def line(row: dict) -> str:
    """One item: id, round, status or verdict, each judge's preference for A, the prompt."""
    item = row["item"]
    prompt = item["prompt"] if isinstance(item["prompt"], str) else item["prompt"][-1]["content"]
    judges = ", ".join(f"{m['judge']} {_pref(m['preference'])}" for m in item.get("members", []))
    state = (f"{row['verdict'] or row['score']} by {row['decided_by']}"
             if row["status"] == "decided" else "open")
    where = (f"round {row['round_id']}" if row["round_id"] is not None
             else f"v{row.get('version')} scoreboard")
    return f"#{row['id']} {where} [{state}] ({judges}) {prompt[:60]!r}"


def _pref(value) -> str:
    return "-" if value is None else f"A {value:.2f}"
