"""Pure helpers of the operator console: admin API JSON in, table rows, texts and plot frames out.

Nothing here talks to the network or imports gradio; pandas is imported inside the functions
that build DataFrames.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from dynalign.conversation import last_user_turn
from dynalign.conversation_ids import by_conversation
from dynalign.gate import CAPABILITY_KEYS
from dynalign.rounds import step_text

FIGURES_DIR = Path(__file__).resolve().parent.parent / "data" / "figures"
ADAPTER_COLUMNS = ["version", "name", "status", "created", "parent", "source", "steps",
                   "reward", "win rate", "IFEval", "vs base", "users' approval",
                   "note (why rejected)"]
EXCHANGE_COLUMNS = ["conversation", "id", "created", "user", "opt-out", "version",
                    "last user message", "answer start"]
# without widths Gradio squeezes short columns until their headers wrap letter by letter
ADAPTER_WIDTHS = ["80px", "120px", "90px", "170px", "75px", "85px", "65px", "110px", "85px", "75px",
                  "120px", "150px", "420px"]
REVIEW_COLUMNS = ["id", "round or version", "status", "judges (preference for A)", "prompt",
                  "A: the candidate's (the version's)", "B: the active's (the base's)"]
REVIEW_WIDTHS = ["55px", "65px", "150px", "220px", "260px", "330px", "330px"]
EXCHANGE_WIDTHS = ["150px", "60px", "170px", "100px", "80px", "130px", "340px", "280px"]
ANSWER_START = 80
OPEN_ROUND = ("queued", "running", "evaluating")


def _dig(data, *keys):
    """data[k1][k2]... or None where a level is missing."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def round_metrics(round_: dict) -> dict:
    """A round's candidate as its gate measured it: win rate vs the active version, and each
    capability score (IFEval prompt_strict, math and mc accuracy); None where not measured."""
    gate_eval = _dig(round_, "summary", "gate_eval")
    scores = {"win_rate": _dig(gate_eval, "pairwise", "win_rate")}
    for name, key in CAPABILITY_KEYS.items():
        scores[name] = _dig(gate_eval, "capabilities", name, "candidate", key)
    return scores


def reward_text(summary: dict) -> str:
    """A round's mean reward at its first and last step, e.g. "0.37 → 1.25"."""
    first, last = summary.get("reward_first"), summary.get("reward_last")
    return "" if first is None or last is None else f"{first:.2f} → {last:.2f}"


def rounds_by_version(rounds: list[dict]) -> dict[int, dict]:
    """Each adapter version's round (the newest one, when several name it)."""
    by_version: dict[int, dict] = {}
    for round_ in sorted(rounds, key=lambda r: r.get("id") or 0):
        if round_.get("adapter_version") is not None:
            by_version[round_["adapter_version"]] = round_
    return by_version


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


def adapter_rows(adapters: list[dict], rounds: list[dict],
                 scoreboards: list[dict] | None = None) -> list[list]:
    """The adapters table: one row per version, newest first, with its round's win rate and
    IFEval, and its newest scoreboard's pointwise win rate against the base ("vs base")."""
    by_version, boards = rounds_by_version(rounds), latest_scoreboards(scoreboards or [])
    rows = []
    for a in sorted(adapters, key=lambda a: a["version"], reverse=True):
        round_ = by_version.get(a["version"], {})
        metrics, summary = round_metrics(round_), round_.get("summary") or {}
        vs_base = rate_text(_dig(boards.get(a["version"]), "summary", "pointwise"))
        rows.append([a["version"], a.get("name", ""), a.get("status", ""), _time(a.get("created")),
                     "" if a.get("parent") is None else a["parent"], a.get("source") or "",
                     summary.get("steps", ""), reward_text(summary), _fmt(metrics["win_rate"]),
                     _fmt(metrics["ifeval"]), vs_base, approval_text(a.get("approval")),
                     a.get("note") or ""])
    return rows


def latest_scoreboards(rows: list[dict]) -> dict[int, dict]:
    """Each version's newest scoreboard row (GET /admin/scoreboard), whichever judge measured."""
    latest: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: r.get("id") or 0):
        latest[row["version"]] = row
    return latest


def rate_text(rate: dict | None) -> str:
    """A scoreboard reading as "62 % [52, 71]" (win rate, its 95 % interval, in percent); "62 %"
    without an interval; "-" when nothing was judged (or not measured)."""
    if not rate or rate.get("win_rate") is None:
        return "-"
    ci = rate.get("ci")
    bounds = f" [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}]" if ci else ""
    return f"{rate['win_rate'] * 100:.0f} %{bounds}"


def approval_text(approval: dict | None) -> str:
    """Users' thumbs on a version: "67 % [21-94] of 3" (share up, its 95 % interval, ratings)."""
    if not approval or not approval.get("ratings"):
        return ""
    low, high = approval["interval"]
    return (f"{approval['approval']:.0%} [{low * 100:.0f}-{high * 100:.0f}] of "
            f"{approval['ratings']}").replace("%", " %", 1)


def _time(stamp) -> str:
    """An ISO time as "2026-11-22 20:38:34 UTC", to the second; "" for none."""
    if not stamp:
        return ""
    when = datetime.fromisoformat(stamp)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f" {when.tzname()}" if when.tzinfo else "")


def active_text(listing: dict) -> str:
    """The active version, prominently, the swap mode and users' approval of that version."""
    active = listing.get("active")
    rows = [a for a in listing.get("data", []) if a.get("name") == active]
    approval = rows[0].get("approval") if rows else listing.get("base_approval")
    return (f"## Active: `{active}`\nswap mode: {listing.get('swap', '?')}; users' approval: "
            f"{approval_text(approval) or 'no ratings yet'}")


CANARY_ROWS = (("requests", "requests"), ("errors", "errors"),
               ("mean answer tokens", "mean_answer_tokens"), ("p50 latency (ms)", "p50_latency_ms"))


def canary_text(view: dict) -> str:
    """The running (else the last) canary: its state, then both arms side by side."""
    canary, arms = view.get("canary"), view.get("arms")
    if not canary:
        return "no canary yet"
    head = (f"**Canary {canary['id']}: {canary['status']}**: {arms['canary']['name']} to "
            f"{canary['share']:.0%} of users, {arms['active']['name']} to the rest; decides at "
            f"{canary['min_feedback']} ratings per arm, or after {canary['max_hours']:g} h")
    if canary.get("reason"):
        head += f"\n\nended: {canary['reason']}"
    lines = [f"| | active: {arms['active']['name']} | canary: {arms['canary']['name']} |",
             "|---|---|---|"]
    for label, key in CANARY_ROWS:
        lines.append(f"| {label} | {_number(arms['active'][key])} | "
                     f"{_number(arms['canary'][key])} |")
    lines.append(f"| approval | {approval_text(arms['active']['feedback']) or 'no ratings'} | "
                 f"{approval_text(arms['canary']['feedback']) or 'no ratings'} |")
    return head + "\n\n" + "\n".join(lines)


def _number(value) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, int) else f"{value:.1f}"


def canary_body(version: str, share: str, min_feedback: str) -> dict:
    """POST /admin/canary's body from the panel's fields (empty ones: the server's defaults);
    ValueError saying which field is not a number."""
    fields = {"version": (version, int), "share": (share, float),
              "min_feedback": (min_feedback, int)}
    if not str(version or "").strip():
        raise ValueError("give the version to try")
    body = {}
    for key, (text, kind) in fields.items():
        text = str(text or "").strip()
        if text:
            try:
                body[key] = kind(text)
            except ValueError:
                raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {text!r}") from None
    return body


def _eta(seconds) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def progress_text(rounds: list[dict]) -> str:
    """The newest round: id, status, phase, step i of N, reward, ETA (or its result, once over)."""
    if not rounds:
        return "no rounds yet"
    r = max(rounds, key=lambda r: r.get("id") or 0)
    p = r.get("progress") or {}
    head = f"round {r['id']}: status {r.get('status')}"
    if r.get("status") not in OPEN_ROUND:
        version = r.get("adapter_version")
        error = f"; {r['error']}" if r.get("error") else ""
        memory = f"; {step_text(r)}" if step_text(r) else ""
        adapter = f"; adapter version {version}" if version is not None else ""
        return head + adapter + memory + error
    if not p.get("phase"):
        return f"{head}; starting"
    reward = p.get("reward")
    inside = f" ({step_text(r)})" if step_text(r) else ""
    reward = "?" if reward is None else f"{reward:.3f}"
    return (f"{head}; phase {p.get('phase', '?')}; step {p.get('step', 0)} of "
            f"{p.get('max_steps', '?')}{inside}; reward {reward}; ETA {_eta(p.get('eta_s'))}")


def open_round_id(rounds: list[dict]) -> int | None:
    """The id of a queued or running round, if any."""
    ids = [r["id"] for r in rounds if r.get("status") in OPEN_ROUND]
    return max(ids) if ids else None


def spec_text(spec) -> str:
    """A schedule spec in words: "every 6 h", "cron `0 3 * * *` (Europe/Paris)", "off"."""
    if not spec:
        return "off"
    if "cron" not in spec:
        return f"every {spec['interval_hours']:g} h"  # an interval is the same in every timezone
    tz = f" ({spec['timezone']})" if spec.get("timezone") else ""
    return f"cron `{spec['cron']}`{tz}"


SOURCES = {"operator": "set here (kept across restarts)", "config": "from the config file"}


def schedule_text(info: dict) -> str:
    """The schedule as the operator reads it: what, where from, next run, last firing."""
    last = info.get("last_fire")
    fired = f"{_time(last)}: {info.get('last_result')}" if last else "never"
    lines = [f"**Refresh schedule:** {spec_text(info.get('spec'))}, "
             f"{SOURCES.get(info.get('source'), info.get('source'))}",
             f"- next run: {_time(info.get('next_run')) or 'none'}", f"- last firing: {fired}"]
    if info.get("source") == "operator":
        lines.append(f"- the config file says: {spec_text(info.get('config'))}")
    return "\n".join(lines)


def schedule_body(mode: str, hours, cron: str, timezone: str) -> dict:
    """The PUT /admin/schedule body for the form's values (the timezone only when given)."""
    body = {"cron": cron.strip()} if mode == "cron" else {"interval_hours": float(hours)}
    return {**body, "timezone": timezone.strip()} if timezone.strip() else body


def parse_overrides(text: str) -> dict:
    """The overrides textbox as a JSON object; ValueError with a readable message otherwise."""
    value = json.loads(text.strip() or "{}")
    if not isinstance(value, dict):
        raise ValueError("the overrides must be a JSON object, e.g. {\"max_steps\": 2}")
    return value


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _loads(text):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def last_user_message(messages) -> str:
    """The exchange's last user turn (dynalign.conversation.last_user_turn), as shown."""
    messages = _loads(messages)
    return (last_user_turn(messages) or "") if isinstance(messages, list) else ""


def answer_start(response) -> str:
    choices = _loads(response) or []
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    return _content_text(choices[0].get("content"))[:ANSWER_START]


def exchange_rows(exchanges: list[dict]) -> list[list]:
    """The logged prompts table, a conversation's turns together (oldest first), the
    conversation with the newest turn first; "-": logged before conversations were recorded."""
    return [[e.get("conversation") or "-", e["id"], _time(e.get("created")), e.get("user") or "",
             "yes" if e.get("opt_out") else "no", e.get("model_served") or "",
             last_user_message(e.get("messages")), answer_start(e.get("response"))]
            for turns in by_conversation(exchanges) for e in turns]


def reward_series(rounds_with_steps: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Each round's (step, mean reward) points, oldest round first, labelled "round N"."""
    series = {}
    for r in sorted(rounds_with_steps, key=lambda r: r["id"]):
        points = [(s["step"], s["reward"]) for s in r.get("steps") or []
                  if s.get("step") is not None and s.get("reward") is not None]
        if points:
            series[f"round {r['id']}"] = points
    return series


def _side_scores(gate_eval: dict, side: str) -> dict:
    return {name: _dig(gate_eval, "capabilities", name, side, key)
            for name, key in CAPABILITY_KEYS.items()}


def version_scores(rounds: list[dict], adapters: list[dict]) -> list[dict]:
    """Per version, oldest first: its status and the gate's scores of it (win rate and capability
    scores as a candidate; a parent measured only as the active side, e.g. the base model, gets
    its capability scores). Versions the gate never measured are left out."""
    status = {a["version"]: a.get("status", "") for a in adapters}
    scores: dict = {}
    for version, round_ in sorted(rounds_by_version(rounds).items()):
        gate_eval = _dig(round_, "summary", "gate_eval")
        if not gate_eval:  # a round the gate did not measure says nothing of either side
            continue
        parent = _dig(round_, "summary", "parent")
        scores.setdefault(parent, {"version": parent, **_side_scores(gate_eval, "active")})
        scores[version] = {"version": version, **round_metrics(round_)}
    rows = [{**row, "status": status.get(row["version"], "base" if row["version"] is None else "")}
            for row in scores.values() if any(v is not None for k, v in row.items() if k != "version")]
    return sorted(rows, key=lambda row: -1 if row["version"] is None else row["version"])


SCOREBOARD_READINGS = (("pointwise", "pointwise"), ("balanced", "pairwise (balanced)"))


def scoreboard_series(rows: list[dict]) -> dict:
    """The scoreboard chart's data from GET /admin/scoreboard's rows: {"versions": every version
    measured, oldest first, "series": [{"label", "reading", "group", "points"}]}: per judge and
    prompt set (`group`, numbered in order of appearance), its pointwise reading and, when the
    judge weighs, its balanced pairwise one, each as (version, win rate, CI low, CI high) points
    (low = high = None without an interval). A version whose reading judged nothing has no point
    there but stays on the axis. Labels name the judge (and the prompt set) only when several
    measured."""
    groups: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: (r["version"], r.get("id") or 0)):
        groups.setdefault((row.get("judge"), row.get("prompts")), {})[row["version"]] = row
    judges, prompt_sets = {j for j, _ in groups}, {p for _, p in groups}
    series = []
    for group, ((judge, prompts), by_version) in enumerate(groups.items()):
        whose = [str(judge)] if len(judges) > 1 else []
        whose += [Path(str(prompts)).name] if len(prompt_sets) > 1 else []
        for reading, name in SCOREBOARD_READINGS:
            points = []
            for version, row in sorted(by_version.items()):
                rate = _dig(row, "summary", reading)
                if rate and rate.get("win_rate") is not None:
                    low, high = rate.get("ci") or (None, None)
                    points.append((version, rate["win_rate"], low, high))
            if points:
                label = f"{name}: {', '.join(whose)}" if whose else name
                series.append({"label": label, "reading": reading, "group": group,
                               "points": points})
    return {"versions": sorted({row["version"] for row in rows}), "series": series}


def figures(folder: Path = FIGURES_DIR) -> list[Path]:
    """The seed set's diversity figures (PNGs)."""
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def review_rows(items: list[dict]) -> list[list]:
    """The review queue's table: each item's judges' preferences for A (1 = A, 0 = B; "-":
    no readable verdict), the prompt's last user turn, both answers."""
    rows = []
    for row in items:
        item = row["item"]
        prompt = item["prompt"] if isinstance(item["prompt"], str) else \
            (last_user_turn(item["prompt"]) or "")
        judges = "; ".join(f"{m['judge']}: " + ("-" if m["preference"] is None else
                                                 f"{m['preference']:.2f}")
                           for m in item.get("members", [])) or _score_changes(item)
        status = (f"{row['verdict'] or row['score']} by {row['decided_by']}"
                  if row["status"] == "decided" else "open")
        where = row["round_id"] if row["round_id"] is not None else \
            f"v{row.get('version')} scoreboard"
        rows.append([row["id"], where, status, judges, prompt, item.get("a", ""),
                     item.get("b", "")])
    return rows


def _score_changes(item: dict) -> str:
    """A sign-conflict item's scores, A's minus B's: "holistic +0.80; knowledge -1.00; ..."."""
    scores = item.get("scores") or {}
    a, b = scores.get("candidate", {}), scores.get("active", {})
    return "; ".join(f"{k} {a[k] - b[k]:+.2f}" for k in a
                     if a.get(k) is not None and b.get(k) is not None)


def aspect_series(rows: list[dict]) -> dict:
    """The aspect chart's data from GET /admin/scoreboard's rows: {"versions": the versions with
    aspect scores, oldest first, "aspects": {aspect: [(version, mean 0-5)]}, "base": {aspect:
    the base's mean}}, from the first judge and prompt set that scored aspects (one scale)."""
    scored = [r for r in sorted(rows, key=lambda r: (r["version"], r.get("id") or 0))
              if _dig(r, "summary", "aspects")]
    if not scored:
        return {"versions": [], "aspects": {}, "base": {}}
    first = (scored[0].get("judge"), scored[0].get("prompts"))
    latest = {r["version"]: r for r in scored if (r.get("judge"), r.get("prompts")) == first}
    aspects, base = {}, {}
    for version, row in sorted(latest.items()):
        for name, sides in row["summary"]["aspects"].items():
            if sides.get("version") is not None:
                aspects.setdefault(name, []).append((version, sides["version"]))
            if sides.get("base") is not None:
                base[name] = sides["base"]
    return {"versions": sorted(latest), "aspects": aspects, "base": base}
