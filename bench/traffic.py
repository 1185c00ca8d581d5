"""Live traffic, simulated: N users chatting through the real dynalign API at a set rate.

They chat with the official openai client until --duration elapses or SIGTERM/SIGINT arrives
(imported: until a threading.Event is set); every request sent is counted exactly once, as ok,
failed or cancelled.

What it sends. Conversations of simulated users ("sim-user-00", ...: the chat body's `user` and
X-Dynalign-User), each with an X-Conversation-Id header. A conversation opens with a train prompt
of the seed set, or of `dynalign generate` files (--generated, repeatable), never a held-out one:
rows whose split is "heldout" are dropped, and so is any prompt equal to a held-out prompt of any
file (case and spacing aside, as rounds compare them), and the pool is checked for it. A share of
conversations (--multi-turn-share) run 2 or 3 turns: each follow-up (FOLLOW_UPS) is sent after the
assistant's actual answer, so the history alternates as a real one does. Requests arrive as a
Poisson process at --rate a minute overall (a waiting follow-up takes the next arrival before a new
conversation opens), at most --concurrency at once (an arrival waits for a slot: the lag is
reported); a share are streamed (--stream-share). A share of answers (--feedback-share) are rated
+1 or -1 through POST /v1/feedback by the client that received them, paced to
server.feedback_per_minute (one key: one budget for all users); a 429 is waited out (Retry-After)
and tried again. Ratings are counted apart and never fail a chat.

What it counts. The clients never retry (max_retries 0), so no failure is hidden. A chat failed on
any openai.APIError or httpx.HTTPError (a non-2xx answer, a refused connection, a timeout, a
stream's error event, which the client raises) or on an answer without finish_reason, or a stream
without its usage chunk (the last one before [DONE]: it was cut short). Requests still running
when the --grace after the stop runs out are cancelled, counted apart. Per version that answered
(X-Dynalign-Version, else the answer's model): answers; latency p50/p95 and tokens; the first
failures in full. Printed, and with --out written as JSON with every conversation's transcript.
Exit code 1 when a chat failed (or none was answered), or on bad input (a --generated row that is
not JSON, has no prompt, or has an unknown split: the message names the file and line).

What it simplifies. All users share one key (--api-key, else the first of DYNALIGN_API_KEY, else
none); the choices (user, prompt, turns, follow-ups, streaming, ratings, sampling seeds) are drawn
per conversation from --seed, so a seed gives the same conversations whatever the timing; answers
use the server's default sampling with those seeds.

Usage: .venv/bin/python bench/traffic.py [--url URL] [--users 8] [--rate 30] [--duration S]
           [--concurrency 4] [--max-tokens 64] [--generated FILE ...] [--seed 0] [--out FILE]
Imported (bench/ on sys.path): traffic.run(traffic.Settings(...), prompts, stop) -> dict, with
prompts = traffic.load_prompts(seed_file, generated_files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

# the standard library only, so that --help stays fast: openai and httpx are imported where used
from _load_util import Outcome, failure_digest, percentile, summarize
from _results import preamble, write_results

FOLLOW_UPS = (
    "Can you make that shorter?", "What if I only have an hour?", "Why?",
    "Can you give me an example?", "What would you do first?", "Is there a cheaper way?",
    "What could go wrong with that?", "Can you explain that more simply?",
    "What if other people disagree?", "How would I know it worked?",
    "What should I avoid?", "Can you put that in three steps?", "What if I have no help?",
    "Which part matters most?", "Thanks. Anything else I should know?")
USER_NAME = "sim-user-{:02d}"
UP_SHARE = 0.7  # a rated answer gets +1 with this probability, else -1
VERSION_HEADER = "x-dynalign-version"
FEEDBACK_TRIES = 5  # a rating refused with 429 is tried again up to this many times in all
FAILURES_KEPT = 10
LATE_S = 1.0  # an arrival that waited longer than this for a slot counts as late
POLL_S = 0.2  # how often a sleeping dispatcher looks at the stop event


@dataclass
class Settings:
    """What one run sends; check() says what is out of range."""

    url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "none"
    users: int = 8
    rate: float = 30.0  # requests a minute, overall (follow-ups included)
    concurrency: int = 4
    max_tokens: int = 64
    duration: float | None = None  # seconds; None: until stopped
    multi_turn_share: float = 0.3
    stream_share: float = 0.5
    feedback_share: float = 0.2
    feedback_per_minute: int = 60  # the server's server.feedback_per_minute (0: unlimited)
    seed: int = 0
    timeout: float = 300.0  # seconds per request
    grace: float = 120.0  # seconds for the requests in flight to finish after the stop
    progress: float = 0.0  # seconds between progress lines (0: none)

    def check(self) -> None:
        problems = [f"{name} must be {what}" for name, bad, what in (
            ("users", self.users < 1, "1 or more"), ("rate", not self.rate > 0, "above 0"),
            ("concurrency", self.concurrency < 1, "1 or more"),
            ("max_tokens", self.max_tokens < 1, "1 or more"),
            ("duration", self.duration is not None and not self.duration > 0, "above 0"),
            ("timeout", not self.timeout > 0, "above 0"), ("grace", self.grace < 0, "0 or more"))
            if bad]
        problems += [f"{name} must be within [0, 1]" for name in
                     ("multi_turn_share", "stream_share", "feedback_share")
                     if not 0 <= getattr(self, name) <= 1]
        if problems:
            raise ValueError("; ".join(problems))

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "api_key"}


# --- prompts ---------------------------------------------------------------------------------

def prompt_key(text: str) -> str:
    """Prompts compare case and spacing aside (dynalign/rounds.py compares them so too)."""
    return " ".join(text.lower().split())


def read_generated(path: str | Path) -> list[dict]:
    """The rows of a `dynalign generate` output (JSONL, "prompt" required, "split" optional);
    DataError naming the file and line for a row that is not JSON, has no or an empty prompt, or
    an unknown split."""
    from dynalign.dataset import SPLITS, read_rows
    from dynalign.errors import DataError

    rows = read_rows(path, strict=False)
    lines = [n for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    for row, number in zip(rows, lines):
        if not row["prompt"].strip():
            raise DataError(f"{path}:{number}: the prompt is empty")
        if row.get("split", "train") not in SPLITS:
            raise DataError(f"{path}:{number}: split must be one of {SPLITS}, got "
                            f"{row['split']!r}")
    return rows


def load_prompts(seed_file: str | Path, generated=()) -> list[str]:
    """The train prompts of the seed set and of the generated files, in file order, each once;
    none of them held out (see the module docstring), which is checked before they are used."""
    from dynalign.dataset import read_rows
    from dynalign.errors import DataError

    rows = read_rows(seed_file) + [row for path in generated for row in read_generated(path)]
    heldout = {prompt_key(r["prompt"]) for r in rows if r.get("split") == "heldout"}
    prompts, seen = [], set()
    for row in rows:
        key = prompt_key(row["prompt"])
        if row.get("split", "train") == "train" and key not in heldout | seen:
            prompts.append(row["prompt"])
            seen.add(key)
    leaked = [p for p in prompts if prompt_key(p) in heldout]
    if leaked:
        raise AssertionError(f"held-out prompts in the traffic: {leaked[:3]}")
    if not prompts:
        raise DataError(f"no train prompts in {seed_file} or {list(generated)}")
    return prompts


# --- what each conversation will say -----------------------------------------------------------

@dataclass
class Plan:
    """One conversation's choices, drawn from (seed, index) alone."""

    index: int
    id: str  # X-Conversation-Id
    user: str
    turns: list[str]  # the user's messages: a prompt, then follow-ups
    stream: list[bool]  # per turn
    ratings: list[int | None]  # per turn: the rating to send for its answer, None: not rated
    seeds: list[int]  # per turn: the request's sampling seed


def plan(index: int, prompts: list[str], s: Settings, run_id: str = "") -> Plan:
    rng = random.Random(f"{s.seed}:{index}")
    n = rng.choice((2, 3)) if rng.random() < s.multi_turn_share else 1
    turns = [rng.choice(prompts)] + rng.sample(FOLLOW_UPS, n - 1)
    ratings = [(1 if rng.random() < UP_SHARE else -1) if rng.random() < s.feedback_share else None
               for _ in turns]
    return Plan(index, f"sim-{run_id or s.seed}-{index:05d}",
                USER_NAME.format(rng.randrange(s.users)), turns,
                [rng.random() < s.stream_share for _ in turns], ratings,
                [rng.randrange(2**31) for _ in turns])


def arrival_gaps(s: Settings):
    """Seconds between arrivals: a Poisson process at s.rate a minute (its own generator, so the
    conversations' choices do not depend on how many arrivals there were)."""
    rng = random.Random(f"{s.seed}:arrivals")
    while True:
        yield rng.expovariate(s.rate / 60)


# --- one request -------------------------------------------------------------------------------

class IncompleteAnswer(Exception):
    """A 200 answer that did not finish: no finish_reason, or a stream without its usage chunk."""


@dataclass
class Request(Outcome):
    """One chat request as its client saw it (Outcome: start_s, seconds, stream, model: the
    version that answered, tokens: completion tokens, error)."""

    user: str = ""
    conversation: str = ""
    turn: int = 0
    completion_id: str = ""
    prompt_tokens: int = 0
    ttft_s: float | None = None
    empty: bool = False  # answered, with no text (the conversation ends there)
    cancelled: bool = False  # still running when the grace after the stop ran out


@dataclass
class Conversation:
    plan: Plan
    messages: list[dict] = field(default_factory=list)
    completion_ids: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    ended: str = "running"  # done, failed, empty answer, cut short by the stop

    def transcript(self) -> dict:
        return {"id": self.plan.id, "user": self.plan.user, "turns_planned": len(self.plan.turns),
                "messages": self.messages, "completion_ids": self.completion_ids,
                "versions": self.versions, "ended": self.ended}


async def plain(client, kwargs: dict, req: Request, start: float) -> str:
    raw = await client.chat.completions.with_raw_response.create(**kwargs)
    completion = raw.parse()
    choice = completion.choices[0]
    if not choice.finish_reason or completion.usage is None:
        raise IncompleteAnswer(f"no finish_reason or usage: {str(completion)[:200]}")
    req.model = raw.headers.get(VERSION_HEADER) or completion.model
    req.completion_id = completion.id
    req.tokens, req.prompt_tokens = (completion.usage.completion_tokens,
                                     completion.usage.prompt_tokens)
    return choice.message.content or ""


async def streamed(client, kwargs: dict, req: Request, start: float) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        stream=True, stream_options={"include_usage": True}, **kwargs)
    req.model = raw.headers.get(VERSION_HEADER, "")
    parts, finish, usage = [], None, None
    async for chunk in raw.parse():
        req.completion_id = req.completion_id or chunk.id
        req.model = req.model or chunk.model
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content and req.ttft_s is None:
                req.ttft_s = time.perf_counter() - start
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    if not finish or usage is None:
        raise IncompleteAnswer(f"the stream ended without finish_reason ({finish}) or usage "
                               f"chunk ({'got' if usage else 'none'}) after {len(parts)} deltas")
    req.tokens, req.prompt_tokens = usage.completion_tokens, usage.prompt_tokens
    return "".join(parts)


async def ask(client, conv: Conversation, req: Request, s: Settings) -> str | None:
    """Send the conversation so far; the answer's text, or None with req.error set."""
    import httpx
    import openai

    p = conv.plan
    kwargs = dict(model="dynalign", messages=list(conv.messages), max_tokens=s.max_tokens,
                  user=p.user, seed=p.seeds[req.turn], extra_headers={"X-Conversation-Id": p.id})
    start = time.perf_counter()
    try:
        return await (streamed if req.stream else plain)(client, kwargs, req, start)
    except (openai.APIError, httpx.HTTPError, IncompleteAnswer) as e:  # counted: a failed chat
        req.error = f"{type(e).__name__}: {e}"[:300]
        return None
    finally:
        req.seconds = time.perf_counter() - start


# --- ratings -----------------------------------------------------------------------------------

class Pace:
    """Ratings spaced at least 60 / per_minute seconds apart (all users share one key's budget)."""

    def __init__(self, per_minute: int):
        self.gap = 60 / per_minute if per_minute > 0 else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        at = max(now, self.next)
        self.next = at + self.gap
        await asyncio.sleep(at - now)


def retry_after(error) -> float:
    try:
        return min(60.0, max(0.5, float(error.response.headers.get("retry-after", 1))))
    except ValueError:
        return 1.0


async def rate(client, user: str, completion_id: str, rating: int, pace: Pace,
               counts: Counter, errors: list) -> None:
    """POST /v1/feedback; counted in `counts` (sent, ok, rate_limited, failed, cancelled)."""
    import openai

    counts["sent"] += 1
    try:
        for _ in range(FEEDBACK_TRIES):
            await pace.wait()
            try:
                await client.post("/feedback", cast_to=object,
                                  body={"id": completion_id, "rating": rating, "user": user})
                counts["ok"] += 1
                return
            except openai.RateLimitError as e:  # 429: waited out, then tried again
                counts["rate_limited"] += 1
                await asyncio.sleep(retry_after(e))
            except openai.APIError as e:  # counted apart: a rating never fails a chat
                counts["failed"] += 1
                errors.append(f"{type(e).__name__}: {e}"[:300])
                return
        counts["failed"] += 1
        errors.append(f"still 429 after {FEEDBACK_TRIES} tries")
    except asyncio.CancelledError:
        counts["cancelled"] += 1
        raise


# --- the run -----------------------------------------------------------------------------------

class Traffic:
    """One run: the dispatcher opens conversations and sends turns at the arrival times; each turn
    is a task holding one of the --concurrency slots."""

    def __init__(self, s: Settings, prompts: list[str], stop: threading.Event):
        self.s, self.prompts, self.stop = s, prompts, stop
        self.run_id = uuid.uuid4().hex[:8]
        self.requests: list[Request] = []
        self.conversations: list[Conversation] = []
        self.ready: deque[Conversation] = deque()  # waiting to send their next turn
        self.tasks: set[asyncio.Task] = set()
        self.crashed: list[BaseException] = []
        self.feedback, self.feedback_errors = Counter(), []
        self.lags: list[float] = []
        self.pace = Pace(s.feedback_per_minute)

    def stopping(self) -> bool:
        return self.stop.is_set() or (self.s.duration is not None
                                      and time.perf_counter() >= self.t0 + self.s.duration)

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.crashed.append(task.exception())  # a bug here, not a failed request: raised

    async def run(self) -> dict:
        import openai

        self.clients = {USER_NAME.format(u): openai.AsyncOpenAI(
            base_url=self.s.url, api_key=self.s.api_key, max_retries=0, timeout=self.s.timeout,
            default_headers={"X-Dynalign-User": USER_NAME.format(u)}) for u in range(self.s.users)}
        self.t0 = time.perf_counter()
        if self.s.progress:
            self.spawn(self.report_progress())
        try:
            await self.dispatch()
            await self.drain()
        finally:
            for client in self.clients.values():
                await client.close()
        if self.crashed:
            raise self.crashed[0]
        return summarize_run(self, time.perf_counter() - self.t0)

    async def sleep_until(self, at: float) -> bool:
        """Sleep until `at` (perf_counter); False as soon as the run is stopping."""
        while not self.stopping():
            left = at - time.perf_counter()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, POLL_S))
        return False

    async def take_slot(self) -> bool:
        while not self.stopping():
            try:
                await asyncio.wait_for(self.slots.acquire(), POLL_S)
                return True
            except asyncio.TimeoutError:
                pass
        return False

    async def dispatch(self) -> None:
        self.slots = asyncio.Semaphore(self.s.concurrency)
        at = self.t0
        for gap in arrival_gaps(self.s):
            at += gap
            if not await self.sleep_until(at) or not await self.take_slot():
                return
            now = time.perf_counter()
            self.lags.append(now - at)
            at = max(at, now)  # a late arrival moves the schedule on: no burst to catch up
            conv = self.ready.popleft() if self.ready else self.open()
            conv.messages.append({"role": "user", "content": conv.plan.turns[len(conv.versions)]})
            self.spawn(self.turn(conv))

    def open(self) -> Conversation:
        conv = Conversation(plan(len(self.conversations), self.prompts, self.s, self.run_id))
        self.conversations.append(conv)
        return conv

    async def turn(self, conv: Conversation) -> None:
        p, turn = conv.plan, len(conv.versions)
        req = Request(time.perf_counter() - self.t0, 0.0, p.stream[turn], user=p.user,
                      conversation=p.id, turn=turn)
        self.requests.append(req)
        try:
            text = await ask(self.clients[p.user], conv, req, self.s)
        except asyncio.CancelledError:
            req.cancelled, req.error = True, "cancelled at the stop"
            conv.ended = "cut short by the stop"
            raise
        finally:
            self.slots.release()
        self.answered(conv, req, text)

    def answered(self, conv: Conversation, req: Request, text: str | None) -> None:
        """Record the answer in the conversation; rate it, queue the next turn or end it."""
        p = conv.plan
        if text is None:
            conv.ended = "failed"
            return
        conv.messages.append({"role": "assistant", "content": text})
        conv.completion_ids.append(req.completion_id)
        conv.versions.append(req.model)
        if p.ratings[req.turn] is not None:
            self.spawn(rate(self.clients[p.user], p.user, req.completion_id, p.ratings[req.turn],
                            self.pace, self.feedback, self.feedback_errors))
        if not text:
            req.empty, conv.ended = True, "empty answer"
        elif len(conv.versions) < len(p.turns):
            self.ready.append(conv)
        else:
            conv.ended = "done"

    async def drain(self) -> None:
        """After the stop: the requests and ratings in flight get the grace to finish, then are
        cancelled; conversations still waiting for a turn are cut short."""
        deadline = time.perf_counter() + self.s.grace
        while self.tasks and (left := deadline - time.perf_counter()) > 0:
            await asyncio.wait(set(self.tasks), timeout=left)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*list(self.tasks), return_exceptions=True)
        for conv in self.conversations:
            if conv.ended == "running":
                conv.ended = "cut short by the stop"

    async def report_progress(self) -> None:
        while not self.stopping():
            await self.sleep_until(time.perf_counter() + self.s.progress)
            done = [r for r in self.requests if r.seconds]
            print(f"  {time.perf_counter() - self.t0:6.0f} s: {len(self.requests)} sent, "
                  f"{sum(r.error is None for r in done)} ok, "
                  f"{sum(r.error is not None for r in done)} failed", flush=True)


# --- what a run reports ------------------------------------------------------------------------

def _clean(value):
    """NaN (no values) as null, floats rounded: the JSON stays strict."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def request_counts(requests: list[Request], wall_s: float) -> tuple[dict, dict]:
    """(counts, latency and tokens) of the requests: sent = ok + failed + cancelled."""
    finished = [r for r in requests if not r.cancelled]
    s = summarize(finished, wall_s)
    done = [r for r in finished if r.error is None]
    counts = {"sent": len(requests), "ok": s["completed"], "failed": s["failed"],
              "cancelled": len(requests) - len(finished), "streamed": sum(r.stream for r in done),
              "empty": sum(r.empty for r in done), "multi_turn": sum(r.turn > 0 for r in done)}
    assert counts["sent"] == counts["ok"] + counts["failed"] + counts["cancelled"]
    ms = [r.seconds * 1000 for r in done]
    ttft = [r.ttft_s * 1000 for r in done if r.ttft_s is not None]
    timing = {"latency_ms": {"p50": s["p50_ms"], "p95": percentile(ms, 95), "max": s["max_ms"]},
              "ttft_ms_p50": percentile(ttft, 50), "req_per_min": s["req_s"] * 60,
              "tokens": {"prompt": sum(r.prompt_tokens for r in done),
                         "completion": sum(r.tokens for r in done)},
              "completion_tok_s": s["tok_s"]}
    return counts, _clean(timing) | {"by_version": s["models"]}


def summarize_run(t: Traffic, wall_s: float) -> dict:
    counts, timing = request_counts(t.requests, wall_s)
    failed = [r for r in t.requests if r.error is not None and not r.cancelled]
    convs = t.conversations
    return {"ok": counts["failed"] == 0 and counts["ok"] > 0, "settings": t.s.public(),
            "run_id": t.run_id, "wall_s": round(wall_s, 2), "requests": counts, **timing,
            "conversations": {"opened": len(convs),
                              "multi_turn_planned": sum(len(c.plan.turns) > 1 for c in convs),
                              "ended": dict(Counter(c.ended for c in convs)),
                              "users": len({c.plan.user for c in convs})},
            "arrivals": _clean({"late": sum(lag > LATE_S for lag in t.lags),
                                "max_lag_s": max(t.lags, default=0.0)}),
            "feedback": {**{k: t.feedback[k] for k in
                            ("sent", "ok", "rate_limited", "failed", "cancelled")},
                         "errors": t.feedback_errors[:FAILURES_KEPT]},
            "failure_digest": failure_digest(failed),
            "failures": [asdict(r) for r in failed[:FAILURES_KEPT]],
            "transcripts": [c.transcript() for c in convs],
            "request_log": [asdict(r) for r in t.requests]}


def report(result: dict) -> str:
    """The summary a person reads."""
    r, lat = result["requests"], result["latency_ms"]

    def ms(value):
        return "n/a" if value is None else f"{value:.0f} ms"
    lines = [f"{r['sent']} requests in {result['wall_s']:.0f} s: {r['ok']} ok, {r['failed']} "
             f"failed, {r['cancelled']} cancelled ({r['streamed']} streamed, {r['multi_turn']} "
             f"follow-ups, {r['empty']} empty answers)",
             f"latency p50 {ms(lat['p50'])}, p95 {ms(lat['p95'])}, max {ms(lat['max'])}; "
             f"tokens in {result['tokens']['prompt']}, out {result['tokens']['completion']}",
             "by version: " + (", ".join(f"{v} {n}" for v, n in result["by_version"].items())
                               or "none"),
             f"conversations: {result['conversations']['opened']} opened by "
             f"{result['conversations']['users']} users, {result['conversations']['ended']}",
             f"ratings: {({k: v for k, v in result['feedback'].items() if k != 'errors'})}",
             f"arrivals late for a slot: {result['arrivals']['late']} "
             f"(max {result['arrivals']['max_lag_s']} s)"]
    lines += [f"FAILED: {line}" for line in result["failure_digest"]]
    lines += [f"rating failed: {e}" for e in result["feedback"]["errors"]]
    return "\n".join(lines)


def run(settings: Settings, prompts: list[str], stop: threading.Event | None = None) -> dict:
    """Send traffic until settings.duration elapses or `stop` is set; the result (see summary)."""
    settings.check()
    return asyncio.run(Traffic(settings, prompts, stop or threading.Event()).run())


# --- the command line --------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="the gateway's /v1 (default: the config's, "
                   "http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="chat key (default: the first of $DYNALIGN_API_KEY)")
    p.add_argument("--config", help="dynalign config: the gateway, the seed set, "
                   "server.feedback_per_minute (default ./dynalign.toml if there)")
    p.add_argument("--generated", action="append", default=[], metavar="FILE",
                   help="`dynalign generate` output whose train prompts are used too (repeatable)")
    for name, kind, what in (
            ("users", int, "simulated users"), ("rate", float, "requests a minute, overall"),
            ("concurrency", int, "requests at once, at most"),
            ("max-tokens", int, "tokens per answer"),
            ("multi-turn-share", float, "share of conversations of 2-3 turns"),
            ("stream-share", float, "share of requests streamed"),
            ("feedback-share", float, "share of answers rated"),
            ("seed", int, "seed of every choice"), ("timeout", float, "seconds per request"),
            ("grace", float, "seconds for requests in flight after the stop")):
        default = getattr(d, name.replace("-", "_"))
        p.add_argument(f"--{name}", type=kind, default=default, help=f"{what} (default {default})")
    p.add_argument("--feedback-per-minute", type=int,
                   help="ratings a minute (default: the config's server.feedback_per_minute)")
    p.add_argument("--duration", type=float, help="seconds (default: until SIGTERM or Ctrl-C)")
    p.add_argument("--progress", type=float, default=60.0,
                   help="seconds between progress lines, 0: none (default 60)")
    p.add_argument("--out", help="write the result as JSON here")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace, cfg) -> Settings:
    from dynalign.keys import first_key

    skip = ("url", "api_key", "config", "generated", "out", "feedback_per_minute")
    return Settings(url=args.url or cfg.gateway_url,
                    api_key=args.api_key or first_key(os.environ.get(cfg.server.api_keys_env))
                    or "none",
                    feedback_per_minute=(cfg.server.feedback_per_minute
                                         if args.feedback_per_minute is None
                                         else args.feedback_per_minute),
                    **{k: v for k, v in vars(args).items() if k not in skip})


@contextlib.contextmanager
def stopped_by_signals(stop: threading.Event):
    """Inside: SIGTERM and SIGINT set `stop` (the run ends cleanly and reports); then the
    handlers that were there before."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def command(args: argparse.Namespace, stop: threading.Event) -> int:
    preamble()
    from dynalign.config import load_config
    from dynalign.dataset import seed_path
    from dynalign.errors import DynalignError

    try:
        cfg = load_config(args.config)
        settings = settings_from(args, cfg)
        settings.check()
        prompts = load_prompts(seed_path(cfg), args.generated)
    except (DynalignError, ValueError) as e:  # bad input: a message, not a traceback
        print(f"traffic: {e}", file=sys.stderr)
        return 1
    print(f"traffic: {settings.users} users, {settings.rate:g} requests/min to {settings.url}, "
          f"{len(prompts)} prompts, until " + (f"{settings.duration:g} s" if settings.duration
                                                 else "SIGTERM/Ctrl-C"), flush=True)
    result = run(settings, prompts, stop)
    print(report(result), flush=True)
    write_results(result, args.out)
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    with stopped_by_signals(stop):  # from the first moment: a stop while loading still reports
        return command(args, stop)


if __name__ == "__main__":
    sys.exit(main())
