"""What the operator console's buttons do: admin API calls (dynalign/admin_client.py) turned into the
values its components show (ui/console_views.py). No gradio here: each action returns plain
values, messages included; an API error becomes a message, never a traceback.
"""

from __future__ import annotations

import json

from ui import console_views as views
from dynalign.admin_client import Admin, AdminError

REJECTED_HINT = " Tick \"Force\" to activate it anyway."
PLOT_ROUNDS = 10  # rounds in the reward plot
ROUNDS_SEEN = 100  # rounds read for the adapters table and the scores plot


def attempt(call, *args):
    """(result, "") or (None, the error as a message)."""
    try:
        return call(*args), ""
    except AdminError as exc:
        return None, f"⚠️ {exc.message}"


def adapters_frame(rows: list[list]):
    import pandas as pd

    return pd.DataFrame(rows, columns=views.ADAPTER_COLUMNS)


def exchanges_frame(rows: list[list]):
    import pandas as pd

    return pd.DataFrame(rows, columns=views.EXCHANGE_COLUMNS)


def snapshot(admin: Admin) -> dict:
    """What the console shows of the server, in three calls: the adapters listing, the rounds and
    the scoreboards. On an API error: {"error": message} (the console shows it where the table
    would be); scoreboards that cannot be read (a gateway without them) are shown as none."""
    listing, error = attempt(admin.adapters)
    rounds, _ = (None, "") if error else attempt(admin.rounds, ROUNDS_SEEN)
    boards, _ = (None, "") if error else attempt(admin.scoreboard)
    return {"error": error, "adapters": (listing or {}).get("data", []), "listing": listing or {},
            "rounds": (rounds or {}).get("data", []),
            "scoreboards": (boards or {}).get("data", []) if isinstance(boards, dict) else []}


def adapters_view(snap: dict) -> tuple[str, list[list]]:
    """(the active-version text, the adapters table's rows)."""
    if snap["error"]:
        return snap["error"], []
    return views.active_text(snap["listing"]), views.adapter_rows(
        snap["adapters"], snap["rounds"], snap.get("scoreboards"))


def login(snap: dict) -> tuple[bool, str]:
    """(whether the key opened the admin API for this snapshot, the message to show)."""
    return (False, snap["error"]) if snap["error"] else (True, "logged in")


def activate(admin: Admin, version: str, force: bool) -> str:
    version = str(version or "").strip().lower()
    if not version:
        return "⚠️ give a version number (or base)"
    try:
        result = admin.activate(version, force)
    except AdminError as exc:
        hint = REJECTED_HINT if exc.code == "adapter_rejected" else ""
        return f"⚠️ {exc.message}{hint}"
    return f"active: {result['active']} (swapped in {result['seconds']} s)"


def rollback(admin: Admin) -> str:
    result, error = attempt(admin.rollback)
    return error or f"rolled back: {result['active']} is active ({result['seconds']} s)"


def refresh(admin: Admin, overrides_text: str) -> str:
    try:
        overrides = views.parse_overrides(overrides_text)
    except ValueError as exc:
        return f"⚠️ overrides: {exc}"
    result, error = attempt(admin.refresh, overrides)
    return error or f"round {result['id']} started ({result['status']})"


def progress(snap: dict) -> str:
    return snap["error"] or views.progress_text(snap["rounds"])


def cancel(admin: Admin) -> str:
    listing, error = attempt(admin.rounds, 20)
    round_id = None if error else views.open_round_id(listing["data"])
    if error or round_id is None:
        return error or "no round is running"
    result, error = attempt(admin.cancel, round_id)
    return error or f"round {round_id}: {result['status']}"


def schedule(admin: Admin) -> str:
    info, error = attempt(admin.schedule)
    return error or views.schedule_text(info)


def set_schedule(admin: Admin, mode: str, hours, cron: str, timezone: str) -> str:
    try:
        body = views.schedule_body(mode, hours, cron or "", timezone or "")
    except (TypeError, ValueError) as exc:
        return f"⚠️ schedule: {exc}"
    info, error = attempt(admin.set_schedule, body)
    return f"{error}\n\n{schedule(admin)}" if error else views.schedule_text(info)


def schedule_call(admin: Admin, call) -> str:
    info, error = attempt(call)
    return error or views.schedule_text(info)


def plots(admin: Admin, snap: dict):
    """(the reward-per-step figure of the recent rounds, the gate's scores per version figure,
    the scoreboard's win rate vs the base per version figure, its aspects per version figure)."""
    from ui import console_plots

    detailed, _ = attempt(admin.rounds, PLOT_ROUNDS, True)
    series = views.reward_series((detailed or {}).get("data", []))
    scores = views.version_scores(snap["rounds"], snap["adapters"])
    boards = views.scoreboard_series(snap.get("scoreboards") or [])
    aspects = views.aspect_series(snap.get("scoreboards") or [])
    return (console_plots.reward_figure(series), console_plots.eval_figure(scores),
            console_plots.scoreboard_figure(boards), console_plots.aspect_figure(aspects))


def exchanges(admin: Admin, q: str, user: str, opt_out: str,
              conversation: str = "") -> tuple[list[list], str]:
    listing, error = attempt(admin.exchanges, q or "", user or "", opt_out or "any",
                             (conversation or "").strip())
    if error:
        return [], error
    return views.exchange_rows(listing["data"]), f"{len(listing['data'])} exchange(s)"


def delete_exchange(admin: Admin, exchange_id) -> str:
    if exchange_id is None:
        return "⚠️ give an exchange id"
    result, error = attempt(admin.delete_exchange, int(exchange_id))
    if error:
        return error
    left = result.get("copies_remain")
    return f"deleted exchange {result['deleted']}" + (f"; ⚠️ {left}" if left else "")


def reviews_frame(rows: list[list]):
    import pandas as pd

    return pd.DataFrame(rows, columns=views.REVIEW_COLUMNS)


def reviews(admin: Admin) -> tuple[list[list], str]:
    """The review queue, open items first, then the latest decided ones."""
    listing, error = attempt(admin.reviews)
    if error:
        return [], error
    items = sorted(listing["data"], key=lambda r: (r["status"] != "open", -r["id"]))
    waiting = sum(r["status"] == "open" for r in items)
    return views.review_rows(items), f"{waiting} waiting for a verdict"


def decide(admin: Admin, review_id, verdict: str, by: str) -> str:
    if review_id is None:
        return "⚠️ give a review id"
    if not (by or "").strip():
        return "⚠️ give your name: a verdict is recorded with who gave it"
    row, error = attempt(admin.decide_review, int(review_id), {"verdict": verdict, "by": by})
    return error or f"review {row['id']}: {row['verdict']} (by {row['decided_by']})"


def canary(admin: Admin) -> str:
    view, error = attempt(admin.canary)
    return error or views.canary_text(view)


def start_canary(admin: Admin, version, share, min_feedback) -> str:
    """What happened, as a message (the canary itself is shown by `canary`)."""
    try:
        body = views.canary_body(version, share, min_feedback)
    except ValueError as exc:
        return f"⚠️ canary: {exc}"
    view, error = attempt(admin.start_canary, body)
    return error or f"canary {view['canary']['id']} started: version {body['version']}"


def end_canary(admin: Admin, call) -> str:
    """Promote or stop (`call`): how it ended, or why not."""
    view, error = attempt(call)
    return error or f"canary {view['canary']['id']}: {view['canary']['status']}"


def signature(snap: dict) -> str:
    """What the console last drew, as one string: the timer redraws the table and the plots only
    when it changes (a version, a status, a round's step, a new scoreboard)."""
    rounds = [(r["id"], r.get("status"), (r.get("progress") or {}).get("step")) for r in snap["rounds"]]
    boards = [r.get("id") for r in snap.get("scoreboards") or []]
    return json.dumps([snap["error"], snap["listing"], rounds, boards], default=str)
