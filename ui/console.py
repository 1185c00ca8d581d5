"""The operator console (the "Operator" tab of ui/app.py): log in with the admin key, see and
switch adapter versions, run a canary between two, start and watch refresh rounds, edit the
schedule, plot rounds and versions, decide the judge panel's disagreements, search and delete
logged prompts. It talks only HTTP to the
gateway's admin API.

The key lives in a per-session gr.State; it is never logged nor shown. Layout here, the
work in ui/console_actions.py.
"""

from __future__ import annotations

from ui import console_views as views
from dynalign.admin_client import Admin

DEFAULT_OVERRIDES = "{}"
POLL_S = 2.0


def _login_section(gr):
    with gr.Row(equal_height=True):
        key = gr.Textbox(label="Admin key", type="password", elem_id="admin-key", scale=4)
        login = gr.Button("Log in", variant="primary", elem_id="login", scale=1)
    message = gr.Markdown(elem_id="login-message")
    return key, login, message


def _adapters_section(gr, c: dict) -> None:
    gr.Markdown("### Adapters")
    c["active"] = gr.Markdown(elem_id="active-version")
    c["adapters"] = gr.Dataframe(headers=views.ADAPTER_COLUMNS, interactive=False,
                                 elem_id="adapters-table", wrap=True,
                                 column_widths=views.ADAPTER_WIDTHS)
    with gr.Row(equal_height=True):
        c["version"] = gr.Textbox(label="Version (number or base)", elem_id="activate-version")
        c["force"] = gr.Checkbox(label="Force (override the gate)", elem_id="activate-force")
        c["activate"] = gr.Button("Activate", elem_id="activate")
        c["rollback"] = gr.Button("Roll back", elem_id="rollback")
        c["reload"] = gr.Button("Reload", elem_id="reload-adapters")
    c["adapters_msg"] = gr.Markdown(elem_id="adapters-message")


def _canary_section(gr, c: dict) -> None:
    gr.Markdown("### Canary\nA version tried on a share of users next to the active one "
                "(LoRA swap mode); it ends by itself on users' ratings or errors.")
    with gr.Row(equal_height=True):
        c["canary_version"] = gr.Textbox(label="Version", elem_id="canary-version")
        c["canary_share"] = gr.Textbox(label="Share of users (0-1)", elem_id="canary-share",
                                       placeholder="empty: the server's [canary] share")
        c["canary_min"] = gr.Textbox(label="Ratings per arm to decide",
                                     elem_id="canary-min-feedback",
                                     placeholder="empty: the server's min_feedback")
        c["canary_start"] = gr.Button("Start canary", elem_id="canary-start")
        c["canary_promote"] = gr.Button("Promote", elem_id="canary-promote")
        c["canary_stop"] = gr.Button("Stop", variant="stop", elem_id="canary-stop")
    c["canary_msg"] = gr.Markdown(elem_id="canary-message")
    c["canary"] = gr.Markdown("no canary yet", elem_id="canary-status")


def _refresh_section(gr, c: dict) -> None:
    gr.Markdown("### Refresh rounds")
    with gr.Row(equal_height=True):
        c["overrides"] = gr.Textbox(label="Overrides (JSON, this round only)", value=DEFAULT_OVERRIDES,
                                    elem_id="refresh-overrides", scale=4)
        c["refresh"] = gr.Button("Refresh now", variant="primary", elem_id="refresh-now", scale=1)
        c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel-round", scale=1)
    c["refresh_msg"] = gr.Markdown(elem_id="refresh-message")
    c["progress"] = gr.Markdown("no rounds yet", elem_id="round-progress")


def _schedule_section(gr, c: dict) -> None:
    gr.Markdown("### Schedule")
    c["schedule"] = gr.Markdown(elem_id="schedule-info")
    with gr.Row(equal_height=True):
        c["mode"] = gr.Radio(["interval", "cron"], value="interval", label="Kind", elem_id="schedule-kind")
        c["hours"] = gr.Number(label="Interval (hours)", value=24, elem_id="schedule-interval")
        c["cron"] = gr.Textbox(label="Cron (m h dom mon dow)", elem_id="schedule-cron")
        c["tz"] = gr.Textbox(label="Timezone", placeholder="UTC", elem_id="schedule-timezone")
    with gr.Row():
        c["save_schedule"] = gr.Button("Save schedule", elem_id="save-schedule")
        c["schedule_off"] = gr.Button("Schedule off", elem_id="schedule-off")
        c["schedule_reset"] = gr.Button("Back to config", elem_id="schedule-reset")


def _plots_section(gr, c: dict) -> None:
    gr.Markdown("### Plots\nRedrawn when a round takes a step, a version changes or a "
                "scoreboard is added.")
    with gr.Row():
        c["reward_plot"] = gr.Plot(label="Reward per step", show_label=False, format="png",
                                   elem_id="reward-plot")
        c["eval_plot"] = gr.Plot(label="Evaluation gate: scores per version", show_label=False,
                                 format="png", elem_id="eval-plot")
    with gr.Row():
        c["scoreboard_plot"] = gr.Plot(label="Win rate vs base (scoreboard)", show_label=False,
                                       format="png", elem_id="scoreboard-plot")
        c["aspect_plot"] = gr.Plot(label="Aspects of CA per version (scoreboard)",
                                   show_label=False, format="png", elem_id="aspect-plot")
    with gr.Row():
        for path in views.figures():
            gr.Image(str(path), label=f"seed set: {path.stem}", elem_id=f"figure-{path.stem}",
                     interactive=False)


def _exchanges_section(gr, c: dict) -> None:
    gr.Markdown("### Recent logged prompts, by conversation")
    with gr.Row(equal_height=True):
        c["q"] = gr.Textbox(label="Text contains", elem_id="exchanges-filter")
        c["user"] = gr.Textbox(label="User", elem_id="exchanges-user")
        c["conversation"] = gr.Textbox(label="Conversation", elem_id="exchanges-conversation")
        c["opt_out"] = gr.Dropdown([("any", "any"), ("opted out", "true"), ("kept", "false")],
                                   value="any", label="Opt-out", elem_id="exchanges-opt-out")
        c["search"] = gr.Button("Search", elem_id="exchanges-search")
    c["exchanges"] = gr.Dataframe(headers=views.EXCHANGE_COLUMNS, interactive=False,
                                  elem_id="exchanges-table", wrap=True,
                                  column_widths=views.EXCHANGE_WIDTHS)
    with gr.Row(equal_height=True):
        c["exchange_id"] = gr.Number(label="Exchange id", precision=0, elem_id="exchange-id")
        c["delete"] = gr.Button("Delete", variant="stop", elem_id="delete-exchange")
    c["exchanges_msg"] = gr.Markdown(elem_id="exchanges-message")


def _reviews_section(gr, c: dict) -> None:
    gr.Markdown("### Review queue\nPairs a judge panel split on (one judge preferred each "
                "answer), or whose holistic and aspect scores disagreed: is A better than B? "
                "A gate's: A the candidate's answer, B the active version's. A scoreboard's: "
                "A the version's, B the base's.")
    c["reviews"] = gr.Dataframe(headers=views.REVIEW_COLUMNS, interactive=False,
                                elem_id="reviews-table", wrap=True,
                                column_widths=views.REVIEW_WIDTHS)
    with gr.Row(equal_height=True):
        c["review_id"] = gr.Number(label="Review id", precision=0, elem_id="review-id")
        c["reviewer"] = gr.Textbox(label="Your name", elem_id="reviewer")
        c["review_better"] = gr.Button("A is better", elem_id="review-better")
        c["review_worse"] = gr.Button("B is better", elem_id="review-worse")
        c["review_tie"] = gr.Button("Tie", elem_id="review-tie")
        c["reviews_reload"] = gr.Button("Reload", elem_id="reviews-reload")
    c["reviews_msg"] = gr.Markdown(elem_id="reviews-message")


def build_console(gr, api_url: str) -> dict:
    """The console's components and events, inside the caller's Blocks (and tab); returns the
    components by name (ui/app.py pauses the console's timer while its tab is hidden)."""
    from ui.console_wire import wire

    key_state = gr.State("")
    seen = gr.State("")  # the adapters table last drawn (the timer redraws only on change)
    key, login, login_msg = _login_section(gr)
    c: dict = {"key_state": key_state, "seen": seen, "key": key, "login": login,
               "login_msg": login_msg, "timer": gr.Timer(POLL_S, active=False)}
    with gr.Column(visible=False, elem_id="console") as console:
        for section in (_adapters_section, _canary_section, _refresh_section, _schedule_section,
                        _plots_section, _reviews_section, _exchanges_section):
            section(gr, c)
    c["console"] = console
    wire(gr, lambda k: Admin(api_url, k), c)
    return c
