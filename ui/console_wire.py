"""The operator console's events: which action each button runs, with which inputs and outputs.
`admin_for(key)` gives the admin API client for a session's key."""

from __future__ import annotations

from ui import console_actions as act


def _view(snap: dict, message: str = ""):
    """The adapters part of the page for a snapshot: message, active text, table, signature."""
    active, rows = act.adapters_view(snap)
    return message, active, act.adapters_frame(rows), act.signature(snap)


def _wire_login(gr, admin_for, c: dict) -> None:
    def login(key: str):
        admin = admin_for(key)
        snap = act.snapshot(admin)
        ok, message = act.login(snap)
        if not ok:
            return ("", message, gr.Column(visible=False), gr.Timer(active=False),
                    *[gr.skip()] * 10)
        _, active, table, sig = _view(snap)
        return (key, message, gr.Column(visible=True), gr.Timer(active=True), active, table, sig,
                act.progress(snap), act.schedule(admin), *act.plots(admin, snap),
                act.canary(admin))

    outputs = [c["key_state"], c["login_msg"], c["console"], c["timer"], c["active"], c["adapters"],
               c["seen"], c["progress"], c["schedule"], c["reward_plot"], c["eval_plot"],
               c["scoreboard_plot"], c["aspect_plot"], c["canary"]]
    gr.on([c["login"].click, c["key"].submit], login, [c["key"]], outputs, show_progress="hidden")


def _wire_adapters(gr, admin_for, c: dict) -> None:
    outputs = [c["adapters_msg"], c["active"], c["adapters"], c["seen"]]

    def after(key, message: str = ""):
        admin = admin_for(key)
        return _view(act.snapshot(admin), message)

    c["activate"].click(lambda key, version, force: after(key, act.activate(admin_for(key), version, force)),
                        [c["key_state"], c["version"], c["force"]], outputs)
    c["rollback"].click(lambda key: after(key, act.rollback(admin_for(key))), [c["key_state"]], outputs)
    c["reload"].click(after, [c["key_state"]], outputs)


def _wire_canary(gr, admin_for, c: dict) -> None:
    """Start, promote, stop: a message, then the canary and the adapters drawn anew (a version
    may have changed); the timer keeps the canary's arms current."""
    outputs = [c["canary_msg"], c["canary"], c["adapters_msg"], c["active"], c["adapters"],
               c["seen"]]

    def then(key, message: str):
        admin = admin_for(key)
        return message, act.canary(admin), *_view(act.snapshot(admin))

    c["canary_start"].click(
        lambda key, version, share, least: then(key, act.start_canary(
            admin_for(key), version, share, least)),
        [c["key_state"], c["canary_version"], c["canary_share"], c["canary_min"]], outputs)
    c["canary_promote"].click(
        lambda key: then(key, act.end_canary(admin_for(key), admin_for(key).promote_canary)),
        [c["key_state"]], outputs)
    c["canary_stop"].click(
        lambda key: then(key, act.end_canary(admin_for(key), admin_for(key).stop_canary)),
        [c["key_state"]], outputs)


def _wire_rounds(gr, admin_for, c: dict) -> None:
    def tick(key, seen):
        """Every POLL_S: the round's progress and the canary; the table and plots only when
        something changed."""
        admin = admin_for(key)
        snap = act.snapshot(admin)
        _, active, table, sig = _view(snap)
        if sig == seen:
            return act.progress(snap), act.canary(admin), *[gr.skip()] * 7
        return act.progress(snap), act.canary(admin), active, table, sig, *act.plots(admin, snap)

    c["timer"].tick(tick, [c["key_state"], c["seen"]],
                    [c["progress"], c["canary"], c["active"], c["adapters"], c["seen"],
                     c["reward_plot"], c["eval_plot"], c["scoreboard_plot"], c["aspect_plot"]],
                    show_progress="hidden")
    c["refresh"].click(lambda key, text: (act.refresh(admin_for(key), text),
                                          act.progress(act.snapshot(admin_for(key)))),
                       [c["key_state"], c["overrides"]], [c["refresh_msg"], c["progress"]])
    c["cancel"].click(lambda key: act.cancel(admin_for(key)), [c["key_state"]], [c["refresh_msg"]])


def _wire_schedule(gr, admin_for, c: dict) -> None:
    c["save_schedule"].click(
        lambda key, mode, hours, cron, tz: act.set_schedule(admin_for(key), mode, hours, cron, tz),
        [c["key_state"], c["mode"], c["hours"], c["cron"], c["tz"]], [c["schedule"]])
    c["schedule_off"].click(
        lambda key: act.schedule_call(admin_for(key), lambda: admin_for(key).set_schedule({"off": True})),
        [c["key_state"]], [c["schedule"]])
    c["schedule_reset"].click(
        lambda key: act.schedule_call(admin_for(key), admin_for(key).reset_schedule),
        [c["key_state"]], [c["schedule"]])


def _wire_plots_and_exchanges(gr, admin_for, c: dict) -> None:
    def search(key, q, user, opt_out, conversation, message=None):
        rows, found = act.exchanges(admin_for(key), q, user, opt_out, conversation)
        return act.exchanges_frame(rows), message or found

    def delete(key, exchange_id, q, user, opt_out, conversation):
        return search(key, q, user, opt_out, conversation,
                      act.delete_exchange(admin_for(key), exchange_id))

    filters = [c["q"], c["user"], c["opt_out"], c["conversation"]]
    outputs = [c["exchanges"], c["exchanges_msg"]]
    gr.on([c["search"].click, c["q"].submit], search, [c["key_state"], *filters], outputs)
    c["delete"].click(delete, [c["key_state"], c["exchange_id"], *filters], outputs)


def _wire_reviews(gr, admin_for, c: dict) -> None:
    """Reload, and the three verdicts: each redraws the queue under its message."""
    def show(key, message: str = ""):
        rows, found = act.reviews(admin_for(key))
        return act.reviews_frame(rows), message or found

    def decide(verdict: str):
        return lambda key, review_id, by: show(key, act.decide(admin_for(key), review_id,
                                                                verdict, by))

    outputs = [c["reviews"], c["reviews_msg"]]
    c["reviews_reload"].click(show, [c["key_state"]], outputs)
    for verdict in ("better", "worse", "tie"):
        c[f"review_{verdict}"].click(decide(verdict),
                                     [c["key_state"], c["review_id"], c["reviewer"]], outputs)


def wire(gr, admin_for, c: dict) -> None:
    for part in (_wire_login, _wire_adapters, _wire_canary, _wire_rounds, _wire_schedule,
                 _wire_plots_and_exchanges, _wire_reviews):
        part(gr, admin_for, c)


def wire_tab(gr, c: dict, console_tab, other_tabs) -> None:
    """Poll only while the console's tab is shown (and someone logged in on this page)."""
    console_tab.select(lambda key: gr.Timer(active=bool(key)), [c["key_state"]], [c["timer"]])
    for tab in other_tabs:
        tab.select(lambda: gr.Timer(active=False), None, [c["timer"]])
