"""What a refresh round trains on, and how far along it is. Pure: no torch here.

A round's prompts are the conversations logged since the last finished round (never opted-out
ones, never failed requests; each up to its last user turn, earlier turns kept as context
(dynalign/conversation.py); de-duplicated; over-long ones cut at turn boundaries, or left out
and counted), topped up with a replay sample of the seed set's train split. The
held-out split is never trained on: evaluation uses it. Within the logged share, prompts whose
answer a user rated down come first: that is where the served model is weakest. No one user (the
request's `user`, else its client) fills more than `learn.max_user_share` of the logged share,
rated down or not: ratings and prompts cannot steer a round to one person's taste.
"""

from __future__ import annotations

import functools
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from dynalign import conversation
from dynalign import prompts as paper
from dynalign.config import LearnConfig, PromptsConfig
from dynalign.conversation import Counter, token_counter



@dataclass
class Selection:
    prompts: list[dict] = field(default_factory=list)  # {"prompt", "source", "id"[, "messages"]}
    logged: int = 0
    seed: int = 0
    too_long: int = 0  # conversations whose last user turn alone exceeds max_prompt_tokens
    duplicates: int = 0
    heldout_excluded: int = 0  # logged or seed-train prompts equal to a held-out one
    rated_down: int = 0  # logged prompts taken first because a user rated their answer down
    user_capped: int = 0  # logged prompts left out: their user had their share already
    exchanges_upto: int = 0

    def summary(self) -> dict:
        return {"prompts": len(self.prompts), "logged": self.logged, "seed": self.seed,
                "too_long": self.too_long, "duplicates": self.duplicates,
                "heldout_excluded": self.heldout_excluded, "rated_down": self.rated_down,
                "user_capped": self.user_capped, "exchanges_upto": self.exchanges_upto}


def system_prompt(prompts: PromptsConfig) -> str:
    """The CA system prompt candidates are sampled with, its [Definition of CA] filled in."""
    return paper.fill(prompts.system, definition=prompts.ca_definition)


def select_prompts(exchanges: list[dict], seed_rows: list[dict], learn: LearnConfig,
                   salt: int = 0, count: Counter | None = None) -> Selection:
    """`exchanges`: rows with id, messages and (optionally) rating, oldest first (already
    filtered for opt-out and status by the store). Each becomes its conversation up to its last
    user turn (dynalign/conversation.py), fitted to learn.max_prompt_tokens by `count` (default:
    the characters estimate). When there are more than the share, those rated down win, then the
    newest; a row's rating is kept in its prompt (`rating`). No conversation with a user turn
    equal to a held-out prompt (case and spacing aside) is trained on, nor a seed prompt equal
    to one: the gate and `dynalign eval` measure on those."""
    sel = Selection(exchanges_upto=max((row["id"] for row in exchanges), default=0))
    heldout = heldout_keys(seed_rows)
    seen: set[str] = set()
    logged = []
    for row in reversed(exchanges):
        prompt = _logged_prompt(row, learn, count or token_counter(None), heldout, seen, sel)
        if prompt:
            logged.append(prompt)
    logged.sort(key=lambda p: p.get("rating") != -1)  # stable: newest first within each
    logged = _per_user(logged, int(learn.prompts * learn.logged_share), learn.max_user_share, sel)
    sel.rated_down = sum(p.get("rating") == -1 for p in logged)
    train = [r for r in seed_rows if r.get("split") == "train"
             and conversation.key(_user(r["prompt"])) not in seen]
    sel.heldout_excluded += sum(_key(r["prompt"]) in heldout for r in train)
    train = [r for r in train if _key(r["prompt"]) not in heldout]
    rng = random.Random(f"{learn.seed}-{salt}")
    replay = rng.sample(train, min(len(train), learn.prompts - len(logged)))
    sel.prompts = logged + [{"prompt": r["prompt"], "source": "seed", "id": r["id"]} for r in replay]
    rng.shuffle(sel.prompts)
    sel.logged, sel.seed = len(logged), len(replay)
    return sel


def _logged_prompt(row: dict, learn: LearnConfig, count: Counter, heldout: set[str],
                   seen: set[str], sel: Selection) -> dict | None:
    """One exchange's training prompt, or None (counted in `sel` where it is left out)."""
    messages = conversation.training_messages(row["messages"], learn.client_system)
    if messages is None:
        return None
    fitted = conversation.fit(messages, learn.max_prompt_tokens, count)
    if any(_key(turn) in heldout for turn in conversation.user_turns(messages)):
        sel.heldout_excluded += 1
    elif fitted is None:
        sel.too_long += 1
    elif conversation.key(fitted) in seen:
        sel.duplicates += 1
    else:
        seen.add(conversation.key(fitted))
        rating = {"rating": row["rating"]} if row.get("rating") is not None else {}
        return {"prompt": fitted[-1]["content"], "messages": fitted, "source": "logged",
                "id": f"exchange-{row['id']}", "who": row.get("who"), **rating}
    return None


def heldout_keys(seed_rows: list[dict]) -> set[str]:
    """What a round never trains on: the seed set's held-out prompts, and the opening turn of
    each of the gate's multi-turn probes (dynalign/conversation.py: load_probes)."""
    probes = {_key(p["messages"][0]["content"]) for p in _probes()}
    return probes | {_key(r["prompt"]) for r in seed_rows if r.get("split") == "heldout"}


@functools.lru_cache(maxsize=1)
def _probes() -> tuple[dict, ...]:
    return tuple(conversation.load_probes())


def prompt_messages(prompt: dict) -> list[dict]:
    """A selected prompt as the messages a round trains on (a seed prompt: one user turn)."""
    return prompt.get("messages") or _user(prompt["prompt"])


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _per_user(logged: list[dict], room: int, share: float, sel: Selection) -> list[dict]:
    """The first `room` of `logged` (in order) with at most max(1, share x room) per user; the
    user (`who`) is not kept in the prompt list. A row that names no one (no user and no
    client: not from the gateway, which always knows the client) is attributed to nobody."""
    cap, taken, counts = max(1, int(share * room)), [], {}
    for prompt in logged:
        who = prompt.pop("who", None)
        if len(taken) == room:
            continue
        if who is not None and counts.get(who, 0) >= cap:
            sel.user_capped += 1
            continue
        counts[who] = counts.get(who, 0) + 1
        taken.append(prompt)
    return taken


def longest_prompt(exchanges: list[dict], seed_rows: list[dict], learn: LearnConfig,
                   count: Counter | None = None) -> int:
    """Tokens (by `count`) of the longest prompt `select_prompts` could take from these: a
    memory bound."""
    count = count or token_counter(None)
    logged = [] if learn.logged_share <= 0 else [
        count(fitted) for row in exchanges
        if (messages := conversation.training_messages(row["messages"], learn.client_system))
        and (fitted := conversation.fit(messages, learn.max_prompt_tokens, count))]
    seed = [count(_user(r["prompt"])) for r in seed_rows if r.get("split") == "train"]
    return max(logged + seed, default=0)


def _key(text: str) -> str:
    return " ".join(text.lower().split())


# The phases of one GRPO step, in TRL's order (learner/progress.py), and each one's share of a
# step as bench/learn_memory.py measured it (2026-12-03, CPU, 2 prompts x 8 x 256 tokens,
# micro_batch 2, fp32). Before the first step ends, the ETA projects the phases still to come
# from these shares.
PHASES = ("generation", "reference", "scoring", "update")
PHASE_SHARE = {"generation": 0.46, "reference": 0.09, "scoring": 0.18, "update": 0.27}


def scored_batches(learn) -> int:
    """Batches a round of `learn` generates and scores at most: one per learn.iterations
    optimiser steps (TRL's num_iterations), each of prompts_per_step prompts x G candidates."""
    return -(-learn.max_steps // learn.iterations)


def generates(step: int, iterations: int) -> bool:
    """Does optimiser step `step` (1-based) generate and score a batch? TRL does at steps 1,
    1 + mu, 1 + 2 mu, ...; the steps between reuse that batch (an update phase only)."""
    return (step - 1) % iterations == 0


def phase_shares(iterations: int = 1) -> dict[str, float]:
    """Each phase's share of a step that generates. With iterations > 1 the reference phase
    holds two passes of the same size (the policy's old log-probs, then the reference's)."""
    if iterations <= 1:
        return PHASE_SHARE
    shares = {**PHASE_SHARE, "reference": 2 * PHASE_SHARE["reference"]}
    return {phase: share / sum(shares.values()) for phase, share in shares.items()}


def progress(step: int, max_steps: int, seconds: list[float], reward: float | None,
             current: dict | None = None, finished: dict | None = None,
             step_elapsed: float = 0.0, iterations: int = 1) -> dict:
    """Live progress of a running round: steps done of N, the running phase (`current`: phase,
    done, total, unit, elapsed) and an ETA: the mean step time once a step has ended, else the
    running step projected from the phases `finished` (seconds) and the running one's pace.
    With `iterations` (learn.iterations) > 1 the steps to come are of two kinds, timed apart:
    those that generate (the mean of those done, or the projection) and those that reuse a
    batch (the mean of those done, or the generating step's update share)."""
    per_step = sum(seconds) / len(seconds) if seconds else None
    shares = phase_shares(iterations)
    generating = [s for i, s in enumerate(seconds) if generates(i + 1, iterations)]
    reusing = [s for i, s in enumerate(seconds) if not generates(i + 1, iterations)]
    full = statistics.fmean(generating) if generating else None
    if full is None and current is not None:
        full = _projected_step(current, finished or {}, shares)
    per_step = full if per_step is None else per_step
    eta = None
    if full is not None:
        update = statistics.fmean(reusing) if reusing else full * shares["update"]
        to_come = range(step + 1, max_steps + 1)
        full_steps = sum(generates(i, iterations) for i in to_come)
        eta = max(0.0, full * full_steps + update * (len(to_come) - full_steps)
                  - (step_elapsed if current else 0.0))
    out = {"step": step, "max_steps": max_steps, "reward": reward,
           "seconds_per_step": _round(per_step), "eta_s": _round(eta)}
    if current is not None:
        out.update({"step_phase": current["phase"], "done": current["done"],
                    "total": current["total"], "unit": current["unit"]})
    return out


def step_text(row: dict) -> str:
    """What a round is doing inside its step, and its peak memory, for a person: "generation
    1,024/8,192 tokens; peak RSS 2,310 MB" ("" when there is nothing to say)."""
    p, parts = row.get("progress") or {}, []
    if row.get("status") == "running" and p.get("step_phase") and p.get("total"):
        parts.append(f"{p['step_phase']} {p['done']:,}/{p['total']:,} {p['unit']}")
    peak = p.get("peak_rss_mb") or (row.get("summary") or {}).get("peak_rss_mb")
    if peak:
        parts.append(f"peak RSS {peak:,.0f} MB")
    return "; ".join(parts)


def _projected_step(current: dict, finished: dict, shares: dict) -> float | None:
    """Seconds of a whole step, from the phases seen so far and their `shares` of a step."""
    fraction = current["done"] / current["total"] if current["total"] else 0.0
    if fraction <= 0:
        return None
    seen = sum(finished.values()) + current["elapsed"] / fraction
    share = sum(shares[p] for p in finished) + shares[current["phase"]]
    return seen / share


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def round_view(row: dict, folder: Path | None = None) -> dict:
    """A round as the API shows it; with its `folder`, also the per-step metrics and config."""
    view = {k: v for k, v in row.items() if k not in ("config", "progress", "metrics")}
    view["progress"] = json.loads(row["progress"] or "{}")
    view["summary"] = json.loads(row["metrics"] or "{}")
    if folder is not None:
        view["config"] = row["config"]
        view["steps"] = _read_steps(folder / "metrics.jsonl")
    return view


def _read_steps(path: Path) -> list[dict]:
    """Per-step metrics; a last line cut short while the learner writes it is left out."""
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line))
        except ValueError:
            break
    return steps
