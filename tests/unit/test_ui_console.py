"""The operator console's pure parts without a server: table rows, texts and plot frames from the
admin API's JSON, and the admin client against a mock transport."""

import json

import httpx
import pytest

from ui import console_actions as act
from ui import console_views as views
from dynalign.admin_client import WRONG_KEY, Admin, AdminError, admin_url

ROUNDS = [
    {"id": 1, "status": "promoted", "adapter_version": 1, "progress": {},
     "summary": {"steps": 3, "reward_first": 0.5, "reward_last": 1.25, "parent": None,
                 "gate_eval": {"pairwise": {"win_rate": 0.6},
                               "capabilities": {"ifeval": {"candidate": {"prompt_strict": 0.25},
                                                           "active": {"prompt_strict": 0.3}}}}}},
    {"id": 2, "status": "running", "adapter_version": None,
     "progress": {"phase": "training", "step": 2, "max_steps": 5, "reward": 0.5, "eta_s": 75},
     "summary": {}},
]
ADAPTERS = [
    {"version": 1, "name": "dynalign-v1", "status": "active", "created": "2026-11-22T20:38:34.6+00:00",
     "parent": None, "source": "round", "note": "gate off",
     "approval": {"ratings": 3, "up": 2, "down": 1, "approval": 2 / 3, "interval": [0.208, 0.939]}},
    {"version": 2, "name": "dynalign-v2", "status": "rejected", "created": None, "parent": 1,
     "source": "round", "note": "win rate 0.20 < 0.5"},
]


def test_admin_url_is_the_gateway_host_under_admin():
    assert admin_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/admin"


def test_adapter_rows_newest_first_with_round_metrics():
    rows = views.adapter_rows(ADAPTERS, ROUNDS)
    assert rows[0] == [2, "dynalign-v2", "rejected", "", 1, "round", "", "", "", "", "-", "",
                       "win rate 0.20 < 0.5"]
    assert rows[1] == [1, "dynalign-v1", "active", "2026-11-22 20:38:34 UTC", "", "round", 3,
                       "0.50 → 1.25", "0.60", "0.25", "-", "67 % [21-94] of 3", "gate off"]
    assert len(views.ADAPTER_COLUMNS) == len(rows[0])


def rate(win_rate, ci=None, judged=10):
    return {"win_rate": win_rate, "ci": ci, "judged": judged, "n": 10}


def board(row_id, version, judge="qwen (local, float32)", pointwise=None, balanced=None,
          prompts="seed held-out split"):
    """A GET /admin/scoreboard row: the summary is dynalign/scoreboard.headline()'s."""
    summary = {"pointwise": pointwise or rate(None, judged=0), "pairwise": rate(0.5),
               "length_controlled": rate(None), "scores": {"base": 2.0, "version": 2.5},
               "tokens": {"base": 90.0, "version": 80.0}, "kl": 0.01, "ifeval": None}
    if balanced is not None:
        summary["balanced"] = balanced
    return {"id": row_id, "version": version, "judge": judge, "prompts": prompts,
            "settings": {}, "summary": summary, "created": "2026-11-23T10:00:00+00:00",
            "name": f"dynalign-v{version}"}


QWEN, LLAMA = "qwen (local, float32)", "llama (http://judge:8001/v1)"
BOARDS = [
    board(1, 1, QWEN, rate(0.62, [0.52, 0.71]), rate(0.6, [0.5, 0.7])),
    board(2, 1, LLAMA, rate(0.55, [0.45, 0.65])),  # this judge does not weigh: no balanced
    board(3, 2, QWEN, rate(0.7)),  # an interval could not be drawn: the point without one
    board(4, 3, QWEN, balanced=rate(None, judged=0)),  # nothing judged: no point, still a tick
    board(5, 3, LLAMA, rate(0.4, [0.3, 0.5])),
]


def test_scoreboard_series_one_per_judge_and_reading():
    data = views.scoreboard_series(BOARDS)
    assert data["versions"] == [1, 2, 3]
    assert [(s["label"], s["reading"], s["group"], s["points"]) for s in data["series"]] == [
        (f"pointwise: {QWEN}", "pointwise", 0, [(1, 0.62, 0.52, 0.71), (2, 0.7, None, None)]),
        (f"pairwise (balanced): {QWEN}", "balanced", 0, [(1, 0.6, 0.5, 0.7)]),
        (f"pointwise: {LLAMA}", "pointwise", 1, [(1, 0.55, 0.45, 0.65), (3, 0.4, 0.3, 0.5)])]
    # one judge: the labels need not name it; the newest row of a version is the one drawn
    again = board(6, 2, QWEN, rate(0.8, [0.7, 0.9]))
    one = views.scoreboard_series([b for b in BOARDS if b["judge"] == QWEN] + [again])
    assert [s["label"] for s in one["series"]] == ["pointwise", "pairwise (balanced)"]
    assert one["series"][0]["points"][1] == (2, 0.8, 0.7, 0.9)
    # two prompt sets, one judge: the label names the prompt file
    own = board(7, 1, QWEN, rate(0.5), prompts="/data/mine.jsonl")
    labels = [s["label"] for s in views.scoreboard_series([BOARDS[0], own])["series"]]
    assert labels == ["pointwise: seed held-out split", "pairwise (balanced): seed held-out split",
                      "pointwise: mine.jsonl"]
    assert views.scoreboard_series([]) == {"versions": [], "series": []}


def test_the_vs_base_column_shows_the_newest_scoreboard():
    assert views.rate_text(rate(0.62, [0.52, 0.714])) == "62 % [52, 71]"
    assert views.rate_text(rate(0.7)) == "70 %"
    assert views.rate_text(rate(None, judged=0)) == "-" and views.rate_text(None) == "-"
    adapters = ADAPTERS + [{"version": 3, "name": "dynalign-v3", "status": "rejected"}]
    column = views.ADAPTER_COLUMNS.index("vs base")
    rows = views.adapter_rows(adapters, ROUNDS, BOARDS)
    # v3: its newest row (the second judge's); v2: no interval; v1: the second judge's too
    assert [row[column] for row in rows] == ["40 % [30, 50]", "70 %", "55 % [45, 65]"]
    assert [row[column] for row in views.adapter_rows(adapters, ROUNDS, [BOARDS[3]])] == [
        "-", "-", "-"]
    assert len(views.ADAPTER_WIDTHS) == len(views.ADAPTER_COLUMNS)


def test_scoreboard_figure_draws_a_series_per_judge_and_reading():
    from matplotlib.container import ErrorbarContainer

    from ui import console_plots as plots

    fig = plots.scoreboard_figure(views.scoreboard_series(BOARDS))
    ax = fig.axes[0]
    assert ax.get_title() == "Win rate vs base (scoreboard)" and ax.get_ylim() == (0, 1)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["v1", "v2", "v3"]
    _, labels = ax.get_legend_handles_labels()
    assert labels == ["even with the base", f"pointwise: {QWEN}", f"pairwise (balanced): {QWEN}",
                      f"pointwise: {LLAMA}"]
    even = [line for line in ax.lines if line.get_label() == "even with the base"]
    assert list(even[0].get_ydata()) == [0.5, 0.5]
    qwen = [line for line in ax.lines if line.get_label() == f"pointwise: {QWEN}"][0]
    assert list(qwen.get_ydata()) == [0.62, 0.7] and qwen.get_marker() == "o"
    # an error bar per point with an interval: qwen's v1 (pointwise, balanced), llama's v1 and v3
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [len(c.lines[2][0].get_segments()) for c in bars] == [1, 1, 2]
    assert len(ax.collections) == 3
    assert not [t for t in ax.texts if t.get_text() == "n/a"]  # v3 has llama's point
    qwen_only = plots.scoreboard_figure(views.scoreboard_series([BOARDS[0], BOARDS[3]]))
    assert [t.get_text() for t in qwen_only.axes[0].texts] == ["n/a"]  # v3: nothing judged
    empty = plots.scoreboard_figure(views.scoreboard_series([]))
    assert [t.get_text() for t in empty.axes[0].texts] == [plots.SCOREBOARD_EMPTY]
    assert not empty.axes[0].lines


def test_the_snapshot_reads_the_scoreboards_and_a_new_one_redraws():
    seen: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        body = {"/admin/adapters": {"active": "dynalign-v1", "data": ADAPTERS},
                "/admin/rounds": {"data": ROUNDS}, "/admin/scoreboard": {"data": BOARDS[:1]}}
        return httpx.Response(200, json=body[path]) if path in body else httpx.Response(
            404, json={"error": {"message": "not found"}})

    admin = Admin("http://gw.test/v1", "k", transport=httpx.MockTransport(handler))
    snap = act.snapshot(admin)
    assert snap["scoreboards"] == BOARDS[:1]
    assert "62 % [52, 71]" in act.adapters_view(snap)[1][1]
    assert act.signature(snap) != act.signature({**snap, "scoreboards": BOARDS[:2]})
    figures = act.plots(admin, snap)
    assert len(figures) == 4 and figures[2].axes[0].get_title() == "Win rate vs base (scoreboard)"
    assert figures[3].axes[0].get_title() == "Aspects of CA per version (scoreboard)"
    admin.scoreboard(3)
    assert str(seen[-1].url) == "http://gw.test/admin/scoreboard?version=3"
    # a gateway without scoreboards: none shown, nothing else lost
    older = Admin("http://gw.test/v1", "k", transport=httpx.MockTransport(
        lambda request: handler(request) if "scoreboard" not in request.url.path
        else httpx.Response(404, json={"error": {"message": "Not Found"}})))
    snap = act.snapshot(older)
    assert snap["scoreboards"] == [] and snap["error"] == "" and snap["rounds"] == ROUNDS


def test_progress_text_of_running_and_finished_rounds():
    assert views.progress_text(ROUNDS) == (
        "round 2: status running; phase training; step 2 of 5; reward 0.500; ETA 1 min 15 s")
    assert views.progress_text(ROUNDS[:1]) == "round 1: status promoted; adapter version 1"
    inside = {**ROUNDS[1], "progress": {**ROUNDS[1]["progress"], "step_phase": "generation",
                                        "done": 1024, "total": 8192, "unit": "tokens"}}
    assert views.progress_text([inside]) == (
        "round 2: status running; phase training; step 2 of 5 (generation 1,024/8,192 tokens); "
        "reward 0.500; ETA 1 min 15 s")
    finished = {**ROUNDS[0], "summary": {"peak_rss_mb": 2400.0}}
    assert views.progress_text([finished]) == (
        "round 1: status promoted; adapter version 1; peak RSS 2,400 MB")
    assert views.progress_text([]) == "no rounds yet"
    assert views.progress_text([{"id": 3, "status": "queued"}]) == "round 3: status queued; starting"
    assert views.open_round_id(ROUNDS) == 2 and views.open_round_id(ROUNDS[:1]) is None


def test_exchange_rows():
    row = {"id": 7, "created": "2026-11-22T22:34:37.724+00:00", "user": "u", "opt_out": 1, "version": None,
           "model_served": "SmolLM2-135M-Instruct",
           "messages": json.dumps([{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"},
                                   {"role": "user", "content": [{"type": "text", "text": "last"}]}]),
           "response": json.dumps([{"content": "x" * 200, "finish_reason": "length"}])}
    assert views.exchange_rows([row]) == [["-", 7, "2026-11-22 22:34:37 UTC", "u", "yes",
                                           "SmolLM2-135M-Instruct", "last", "x" * views.ANSWER_START]]


def test_exchange_rows_keep_a_conversations_turns_together_oldest_first():
    def row(i, conversation):
        return {"id": i, "conversation": conversation, "messages": "[]", "response": "[]"}

    newest_first = [row(6, "b"), row(5, "a"), row(4, None), row(3, "b"), row(2, "a"), row(1, "b")]
    rows = views.exchange_rows(newest_first)
    assert [(r[0], r[1]) for r in rows] == [("b", 1), ("b", 3), ("b", 6), ("a", 2), ("a", 5),
                                            ("-", 4)]
    assert views.EXCHANGE_COLUMNS[:2] == ["conversation", "id"]


def test_plot_data():
    rounds = [{**ROUNDS[0], "steps": [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.3}]},
              {"id": 2, "steps": [{"step": 1}]}]
    assert views.reward_series(rounds) == {"round 1": [(1, 0.1), (2, 0.3)]}
    # the base model measured as the active side of round 1, v1 as its candidate
    assert views.version_scores(ROUNDS, ADAPTERS) == [
        {"version": None, "ifeval": 0.3, "math": None, "mc": None, "status": "base"},
        {"version": 1, "win_rate": 0.6, "ifeval": 0.25, "math": None, "mc": None, "status": "active"}]
    assert views.version_scores(ROUNDS[1:], ADAPTERS) == []
    # a round without the gate first (its base side unmeasured) does not hide the base's scores
    ungated = {"id": 1, "status": "promoted", "adapter_version": 1, "summary": {"parent": None}}
    gated = {**ROUNDS[0], "id": 2, "adapter_version": 2}
    assert [row["version"] for row in views.version_scores([ungated, gated], ADAPTERS)] == [None, 2]


def test_figures_draw_points_bars_and_empty_states():
    from ui import console_plots as plots

    one_step = plots.reward_figure({"round 1": [(1, 3.1)]})
    line = one_step.axes[0].lines[0]
    assert line.get_marker() == "o" and one_step.axes[0].get_ylim()[1] >= 5
    scores = plots.eval_figure(views.version_scores(ROUNDS, ADAPTERS))
    assert [t.get_text() for t in scores.axes[0].get_xticklabels()] == ["base", "v1\nactive"]
    assert len(scores.axes[0].patches) == 3  # base: IFEval; v1: win rate, IFEval
    for empty in (plots.reward_figure({}), plots.eval_figure([])):
        assert empty.axes[0].texts, "an empty chart says why it is empty"


def test_signature_changes_with_a_round_step():
    snap = {"error": "", "listing": {"active": "base"}, "adapters": [], "rounds": ROUNDS}
    later = {**snap, "rounds": [ROUNDS[0], {**ROUNDS[1], "progress": {"step": 3}}]}
    assert act.signature(snap) == act.signature(dict(snap)) != act.signature(later)


def test_schedule_text():
    info = {"spec": {"cron": "0 3 * * *", "timezone": "Europe/Paris"}, "source": "operator",
            "config": None, "next_run": "2026-11-23T03:00:00+01:00", "last_fire": None}
    text = views.schedule_text(info)
    assert "cron `0 3 * * *` (Europe/Paris), set here" in text
    assert "next run: 2026-11-23 03:00:00 UTC+01:00" in text and "last firing: never" in text
    assert "the config file says: off" in text
    assert views.spec_text({"interval_hours": 6.0, "timezone": "UTC"}) == "every 6 h"


def test_schedule_body_and_overrides():
    assert views.schedule_body("interval", 6, "", "") == {"interval_hours": 6.0}
    assert views.schedule_body("cron", None, " 0 3 * * * ", "UTC") == {"cron": "0 3 * * *",
                                                                       "timezone": "UTC"}
    assert views.parse_overrides("") == {} and views.parse_overrides('{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        views.parse_overrides("[1]")


def test_figures_are_found_next_to_the_package():
    assert {p.name for p in views.figures()} >= {"lengths.png", "rouge_l.png"}


def _admin(status: int, body: dict, seen: list) -> Admin:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)
    return Admin("http://gw.test/v1", "k3y", transport=httpx.MockTransport(handler))


def test_the_key_is_a_bearer_token_and_401_reads_as_a_wrong_key():
    seen: list = []
    with pytest.raises(AdminError) as info:
        _admin(401, {"error": {"message": "invalid or missing API key"}}, seen).adapters()
    assert info.value.message == WRONG_KEY
    assert seen[0].headers["authorization"] == "Bearer k3y"
    assert str(seen[0].url) == "http://gw.test/admin/adapters"
    assert act.login(act.snapshot(_admin(403, {}, seen))) == (False, "⚠️ wrong admin key")


def test_api_errors_become_messages():
    seen: list = []
    body = {"error": {"message": "version 2 was rejected", "code": "adapter_rejected"}}
    message = act.activate(_admin(409, body, seen), "2", False)
    assert message.startswith("⚠️ version 2 was rejected") and "Force" in message
    assert seen[0].content == b""
    act.activate(_admin(200, {"active": "v2", "seconds": 1}, seen), "2", True)
    assert json.loads(seen[1].content) == {"force": True}
    busy = {"error": {"message": "a round is in progress", "code": "round_in_progress"}}
    assert act.refresh(_admin(409, busy, seen), "{}") == "⚠️ a round is in progress"
    assert act.refresh(_admin(202, {}, seen), "nope").startswith("⚠️ overrides")


def test_exchanges_filters():
    seen: list = []
    act.exchanges(_admin(200, {"data": []}, seen), "hi", "", "true", " c-1 ")
    assert dict(seen[0].url.params) == {"limit": "50", "q": "hi", "user": "",
                                        "conversation": "c-1", "opt_out": "true"}
    act.exchanges(_admin(200, {"data": []}, seen), "", "", "any")
    assert "opt_out" not in seen[1].url.params


def test_active_text_names_the_served_version_and_its_approval():
    up = {"ratings": 3, "up": 2, "down": 1, "approval": 2 / 3, "interval": [0.208, 0.939]}
    base = {"active": "SmolLM2", "swap": "merged", "base_approval": up, "data": ADAPTERS}
    assert views.active_text(base) == ("## Active: `SmolLM2`\nswap mode: merged; users' approval: "
                                       "67 % [21-94] of 3")
    v2 = {**base, "active": "dynalign-v2",
          "data": [{**ADAPTERS[1], "approval": {**up, "ratings": 0}}]}
    assert views.active_text(v2).endswith("users' approval: no ratings yet")


CANARY_VIEW = {
    "canary": {"id": 3, "status": "running", "share": 0.3, "min_feedback": 50, "max_hours": 24.0,
               "reason": None},
    "arms": {"active": {"name": "dynalign-v1", "requests": 140, "errors": 0,
                        "mean_answer_tokens": 31.5, "p50_latency_ms": 812.0,
                        "feedback": {"ratings": 3, "up": 2, "down": 1, "approval": 2 / 3,
                                     "interval": [0.208, 0.939]}},
             "canary": {"name": "dynalign-v3", "requests": 60, "errors": 2,
                        "mean_answer_tokens": None, "p50_latency_ms": None,
                        "feedback": {"ratings": 0, "up": 0, "down": 0, "approval": None,
                                     "interval": None}}}}


def test_canary_text_shows_both_arms_side_by_side():
    text = views.canary_text(CANARY_VIEW)
    assert text.startswith("**Canary 3: running**: dynalign-v3 to 30% of users, dynalign-v1")
    assert "| requests | 140 | 60 |" in text and "| errors | 0 | 2 |" in text
    assert "| mean answer tokens | 31.5 |  |" in text
    assert "| approval | 67 % [21-94] of 3 | no ratings |" in text
    ended = {**CANARY_VIEW, "canary": {**CANARY_VIEW["canary"], "status": "rolled_back",
                                       "reason": "worse by 0.40"}}
    assert "ended: worse by 0.40" in views.canary_text(ended)
    assert views.canary_text({"canary": None, "arms": None}) == "no canary yet"


@pytest.mark.parametrize("fields, body", [
    (("3", "", ""), {"version": 3}),
    ((" 3 ", "0.3", "40"), {"version": 3, "share": 0.3, "min_feedback": 40}),
])
def test_canary_body_leaves_empty_fields_to_the_server(fields, body):
    assert views.canary_body(*fields) == body


@pytest.mark.parametrize("fields, words", [
    (("", "0.3", ""), "give the version"),
    (("three", "", ""), "version must be an integer, got 'three'"),
    (("3", "half", ""), "share must be a number, got 'half'"),
    (("3", "", "4.5"), "min_feedback must be an integer, got '4.5'"),
])
def test_canary_fields_that_are_not_numbers_are_named(fields, words):
    with pytest.raises(ValueError, match=words):
        views.canary_body(*fields)


def test_a_canary_without_a_version_is_a_message_not_a_call():
    calls = []
    admin = Admin("http://gw/v1", "k", transport=httpx.MockTransport(
        lambda request: calls.append(request.method) or httpx.Response(
            200, json={"canary": None, "arms": None})))
    assert act.start_canary(admin, "", "0.3", "") == "⚠️ canary: give the version to try"
    assert calls == []


def test_the_aspect_chart_draws_each_aspect_per_version_and_the_base_dotted():
    from ui import console_plots as plots

    with_aspects = []
    for row_id, version, judge, values in ((1, 1, QWEN, (2.0, 3.0)), (2, 1, LLAMA, (4.0, 4.0)),
                                           (3, 2, QWEN, (2.5, None))):
        row = board(row_id, version, judge)
        row["summary"]["aspects"] = {"knowledge": {"version": values[0], "base": 1.5},
                                     "power": {"version": values[1], "base": 2.0}}
        with_aspects.append(row)
    data = views.aspect_series([board(9, 1, QWEN), *with_aspects])  # a row without: skipped
    assert data == {"versions": [1, 2], "aspects": {"knowledge": [(1, 2.0), (2, 2.5)],
                                                    "power": [(1, 3.0)]},  # LLAMA: another scale
                    "base": {"knowledge": 1.5, "power": 2.0}}
    fig = plots.aspect_figure(data)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] \
        == ["knowledge", "power"]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert sorted(line.get_ydata()[0] for line in dotted) == [1.5, 2.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["v1", "v2"]
    empty = plots.aspect_figure(views.aspect_series([]))
    assert "no scoreboard yet" in empty.axes[0].texts[0].get_text()
