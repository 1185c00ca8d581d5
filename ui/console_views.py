"""Pure helpers of the operator console: admin API JSON in, table rows, texts and plot frames out.

Nothing here talks to the network or imports gradio; pandas is imported inside the functions
that build DataFrames.
"""

from __future__ import annotations

import json
from pathlib import Path

from dynalign.rounds import last_user_turn

FIGURES_DIR = Path(__file__).resolve().parent.parent / "data" / "figures"
ADAPTER_COLUMNS = ["version", "name", "status", "created", "parent", "source", "note",
                   "win rate", "IFEval"]
EXCHANGE_COLUMNS = ["id", "created", "user", "opt-out", "version", "last user message",
                    "answer start"]
# without widths Gradio squeezes short columns until their headers wrap letter by letter
ADAPTER_WIDTHS = ["80px", "120px", "90px", "200px", "75px", "85px", "400px", "85px", "75px"]
EXCHANGE_WIDTHS = ["60px", "200px", "100px", "80px", "130px", "360px", "300px"]
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
    """The win rate and IFEval prompt_strict of a round's candidate (None when not measured)."""
    gate_eval = _dig(round_, "summary", "gate_eval")
    return {"win_rate": _dig(gate_eval, "pairwise", "win_rate"),
            "ifeval": _dig(gate_eval, "capabilities", "ifeval", "candidate", "prompt_strict")}


def rounds_by_version(rounds: list[dict]) -> dict[int, dict]:
    """Each adapter version's round (the newest one, when several name it)."""
    by_version: dict[int, dict] = {}
    for round_ in sorted(rounds, key=lambda r: r.get("id") or 0):
        if round_.get("adapter_version") is not None:
            by_version[round_["adapter_version"]] = round_
    return by_version


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


def adapter_rows(adapters: list[dict], rounds: list[dict]) -> list[list]:
    """The adapters table: one row per version, newest first, with its round's win rate and IFEval."""
    by_version = rounds_by_version(rounds)
    rows = []
    for a in sorted(adapters, key=lambda a: a["version"], reverse=True):
        metrics = round_metrics(by_version.get(a["version"], {}))
        rows.append([a["version"], a.get("name", ""), a.get("status", ""), a.get("created") or "",
                     "" if a.get("parent") is None else a["parent"], a.get("source") or "",
                     a.get("note") or "", _fmt(metrics["win_rate"]), _fmt(metrics["ifeval"])])
    return rows


def active_text(listing: dict) -> str:
    """The active version, prominently, and the swap mode."""
    return f"## Active: `{listing.get('active')}`\nswap mode: {listing.get('swap', '?')}"


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
        return head + (f"; adapter version {version}" if version is not None else "") + error
    if not p.get("phase"):
        return f"{head}; starting"
    reward = p.get("reward")
    return (f"{head}; phase {p.get('phase', '?')}; step {p.get('step', 0)} of "
            f"{p.get('max_steps', '?')}; reward {'?' if reward is None else f'{reward:.3f}'}; "
            f"ETA {_eta(p.get('eta_s'))}")


def open_round_id(rounds: list[dict]) -> int | None:
    """The id of a queued or running round, if any."""
    ids = [r["id"] for r in rounds if r.get("status") in OPEN_ROUND]
    return max(ids) if ids else None


def schedule_text(info: dict) -> str:
    keys = ("spec", "source", "next_run", "last_fire", "last_result")
    return "\n".join(f"- **{k}**: {info.get(k)}" for k in keys)


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
    """The turn a refresh round would train on (dynalign.rounds.last_user_turn), as shown."""
    messages = _loads(messages)
    return (last_user_turn(messages) or "") if isinstance(messages, list) else ""


def answer_start(response) -> str:
    choices = _loads(response) or []
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    return _content_text(choices[0].get("content"))[:ANSWER_START]


def exchange_rows(exchanges: list[dict]) -> list[list]:
    """The logged prompts table."""
    return [[e["id"], e.get("created") or "", e.get("user") or "", "yes" if e.get("opt_out") else "no",
             e.get("model_served") or "", last_user_message(e.get("messages")),
             answer_start(e.get("response"))] for e in exchanges]


def reward_frame(rounds_with_steps: list[dict]):
    """Long DataFrame (round, step, reward) of the rounds' per-step rewards."""
    import pandas as pd

    rows = [{"round": str(r["id"]), "step": s["step"], "reward": s["reward"]}
            for r in rounds_with_steps for s in r.get("steps") or []
            if s.get("step") is not None and s.get("reward") is not None]
    return pd.DataFrame(rows, columns=["round", "step", "reward"])


def eval_frame(rounds: list[dict]):
    """Long DataFrame (version, metric, value): win rate and IFEval prompt_strict per version."""
    import pandas as pd

    rows = []
    for version, round_ in sorted(rounds_by_version(rounds).items()):
        for metric, value in round_metrics(round_).items():
            if value is not None:
                rows.append({"version": f"v{version}", "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["version", "metric", "value"])


def figures(folder: Path = FIGURES_DIR) -> list[Path]:
    """The seed set's diversity figures (PNGs)."""
    return sorted(folder.glob("*.png")) if folder.is_dir() else []
