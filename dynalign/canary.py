"""A canary rollout's arithmetic, pure: which arm a user falls in, each arm's numbers, and when
the rollout ends.

- Sticky split: a user's key (the `user` field, else X-Dynalign-User, else X-Client-Id, else the
  conversation's first message) and the canary's id are hashed to a number in [0, 1); below
  `share` is the canary arm. The same person stays in one arm for the whole canary, and a new
  canary draws the split anew.
- Arms: requests, errors, mean answer length, p50 latency, and users' approval (one rating per
  answer, the latest) with Wilson's 95 % interval and how many distinct users gave them, summed
  in SQL from the exchange log (Store.canary_arms), so a gateway restart resumes with its counts.
- Ending: at once when the canary's error rate is clearly above the active arm's (Wilson
  intervals apart, at least MIN_REQUESTS requests); once both arms have `min_feedback` ratings
  from at least `min_raters` distinct users each (one client inventing users to steer it must
  also get past the per-key rate limit and the one-rating-per-answer rule),
  roll back when the canary's approval is worse than the active arm's by more than `margin` at
  `confidence` (the one-sided upper bound of canary - active, normal approximation, is below
  -margin), else promote: a canary is promoted unless the ratings show it worse, as canary
  analysis does for errors and latency; after `max_hours`, decide on what there is
  (`on_timeout = "decide"`) or keep the active version (`"keep"`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from statistics import NormalDist

from dynalign.evaluate import approval, wilson

ARMS = ("active", "canary")
MIN_REQUESTS = 20  # requests in the canary arm before its error rate can end it
ON_TIMEOUT = ("decide", "keep")
FIELDS = ("share", "min_feedback", "min_raters", "max_hours", "margin", "confidence",
          "on_timeout")
RANGES = {  # field: (low, high, low open, high open)
    "share": (0, 1, True, True), "max_hours": (0, 1e6, True, False),
    "margin": (0, 1, False, True), "confidence": (0.5, 1, True, True)}


def problems(settings: dict) -> list[tuple[str, str]]:
    """(field, what is wrong) for each out-of-range canary setting: the same rules for
    POST /admin/canary and for the [canary] config section. Types are the caller's."""
    out = []
    for key, (low, high, low_open, high_open) in RANGES.items():
        value = settings[key]
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            out.append((key, f"must be in {'(' if low_open else '['}{low:g}, {high:g}"
                             f"{')' if high_open else ']'}, got {value}"))
    for key in ("min_feedback", "min_raters"):
        if settings[key] < 1:
            out.append((key, "must be 1 or more"))
    if settings["on_timeout"] not in ON_TIMEOUT:
        out.append(("on_timeout", f"must be one of {', '.join(ON_TIMEOUT)}"))
    return out


def arm_of(key: str, canary_id: int, share: float) -> str:
    digest = hashlib.sha256(f"{canary_id}:{key}".encode("utf-8", "surrogateescape")).digest()
    return "canary" if int.from_bytes(digest[:8], "big") / 2**64 < share else "active"


def routing_key(body: dict, headers) -> str:
    """Who is asking, as stably as the request tells: the split is sticky on it."""
    for value in (body.get("user"), headers.get("x-dynalign-user"), headers.get("x-client-id")):
        if isinstance(value, str) and value:
            return value
    first = next((m.get("content") for m in body.get("messages") or []
                  if isinstance(m, dict) and m.get("role") == "user"), "")
    return first if isinstance(first, str) else repr(first)


def arm_stats(sums: dict) -> dict:
    """Each arm's numbers from its sums in SQL (dynalign/store.py: canary_arms)."""
    return {arm: _one_arm(sums.get(arm, {})) for arm in ARMS}


def _one_arm(sums: dict) -> dict:
    n, errors, answers = sums.get("requests", 0), sums.get("errors", 0), sums.get("answers", 0)
    interval = wilson(errors, n)
    return {"requests": n, "errors": errors, "error_rate": errors / n if n else None,
            "error_interval": list(interval) if interval else None,
            "mean_answer_tokens": sums["tokens"] / answers if answers else None,
            "p50_latency_ms": sums.get("p50_latency_ms"),
            "feedback": {**approval(sums.get("up", 0), sums.get("down", 0)),
                         "raters": sums.get("raters", 0)}}


def decide(canary: dict, arms: dict, now: dt.datetime | None = None) -> tuple[str, str] | None:
    """("promote" | "rollback" | "keep", why with the numbers), or None to go on."""
    active, cand = arms["active"], arms["canary"]
    if cand["requests"] >= MIN_REQUESTS and active["error_interval"] and \
            cand["error_interval"][0] > active["error_interval"][1]:
        return "rollback", (f"error rate {cand['error_rate']:.2f} vs {active['error_rate']:.2f} "
                            "on the active version: clearly higher")
    enough = min(active["feedback"]["ratings"], cand["feedback"]["ratings"])
    raters = min(active["feedback"]["raters"], cand["feedback"]["raters"])
    min_raters = canary.get("min_raters") or 1  # canaries started before the setting: 1
    if enough >= canary["min_feedback"] and raters >= min_raters:
        return _by_approval(canary, active["feedback"], cand["feedback"])
    if _hours(canary, now) < canary["max_hours"]:
        return None
    wanted = (f"after {canary['max_hours']:g} h without {canary['min_feedback']} ratings from "
              f"{min_raters} users per arm")
    if canary["on_timeout"] == "decide" and enough > 0 and raters >= min_raters:
        action, why = _by_approval(canary, active["feedback"], cand["feedback"])
        return action, f"{wanted}: {why}"
    return "keep", f"{wanted}: the active version stays"


def _by_approval(canary: dict, active: dict, cand: dict) -> tuple[str, str]:
    pa, pc = active["approval"], cand["approval"]
    se = (pa * (1 - pa) / active["ratings"] + pc * (1 - pc) / cand["ratings"]) ** 0.5
    upper = pc - pa + NormalDist().inv_cdf(canary["confidence"]) * se
    numbers = (f"approval {pc:.2f} (n {cand['ratings']}) vs {pa:.2f} (n {active['ratings']}) on "
               f"the active version; the difference is at most {upper:+.3f} at "
               f"{canary['confidence']:.0%} confidence, margin {canary['margin']:g}")
    if upper < -canary["margin"]:
        return "rollback", f"worse: {numbers}"
    return "promote", f"not worse by more than the margin: {numbers}"


def _hours(canary: dict, now: dt.datetime | None) -> float:
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - dt.datetime.fromisoformat(canary["started"])).total_seconds() / 3600
