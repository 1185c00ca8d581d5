"""The paper's dataset generation loop (Section 2.2, Tables 3-4), against any endpoints.

For each attempt: the goal writer proposes one goal, in a conversation that keeps its previous
goals (so they stay diverse); the prompt writer turns the goal into a task prompt under the
predefined criteria; the evaluator critiques it and ends with "Appropriate" or "Inappropriate";
an inappropriate prompt goes back to the writer with the critique, up to `max_revisions` times.
An appropriate prompt is accepted unless it is a near-duplicate (ROUGE-L) of one already kept.

What dynalign adds: with `check_rules`, a prompt the evaluator passes but `dynalign data check`
would flag goes back for revision with the rule broken as its critique. Every attempt is appended
to `<out>.trace.jsonl` and every accepted prompt to `<out>` as it happens, so a stopped run
resumes where it was: same goal history, same per-request seeds, same ids.

`generate.concurrency` attempts run at once (threads; each attempt's calls stay in order). A
served model decodes a batch almost as fast as one sequence, so this multiplies throughput on a
slow endpoint; goals then see the goals of the attempts finished so far. Once the wanted count
is reached (or on Ctrl-C), attempts still running stop before their next request, untraced; one
accepted after the count was reached is traced as surplus, not kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from dynalign.dataset import json_object, near_duplicate, rule_flags
from dynalign.endpoint import Endpoint
from dynalign.errors import DynalignError
from dynalign.prompts import RESPONSE_IN_FEEDBACK, fill, goal_clause
from dynalign.rouge import RougeIndex

_VERDICT = re.compile(r"task prompt is\W*(inappropriate|appropriate)", re.IGNORECASE)
_LABEL = re.compile(r"^\s*[#*]*\s*(revised\s+)?task\s+prompt\s*[#*]*\s*(:|\n)\s*[#*]*\s*",
                    re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def parse_verdict(critique: str) -> bool | None:
    """True for "Appropriate", False for "Inappropriate" (the last conclusion counts), None if
    the critique never concludes."""
    found = _VERDICT.findall(critique)
    if not found:
        return None
    return found[-1].lower() == "appropriate"


def clean_prompt(text: str) -> str:
    """The task prompt alone: without a '#Task Prompt#:' label (or one on a line of its own),
    wrapping quotes, wrapping bold marks or blank edges."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) > 4 and text.startswith("**") and text.endswith("**"):
        text = text[2:-2].strip()
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def clean_goal(text: str) -> str:
    """The first non-empty line, without list marks, labels or quotes."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(?:[-*•]|\d+[.)])?\s*(?:(?:task|goal)\s*:\s*)?", "", line,
                  flags=re.IGNORECASE)
    return line.strip().strip(_QUOTES).strip()


@dataclass
class Tally:
    accepted: int = 0
    rejected: int = 0
    revised: int = 0

    def postfix(self) -> dict:
        return {"accepted": self.accepted, "rejected": self.rejected, "revised": self.revised}


class Generator:
    """One output file and its trace; `run(count)` adds attempts until `count` are accepted."""

    def __init__(self, cfg, out: Path, writers: dict[str, Endpoint]):
        self.cfg, self.gen, self.out = cfg, cfg.generate, out
        self.trace = out.with_name(out.name.removesuffix(".jsonl") + ".trace.jsonl")
        self.goal_writer, self.prompt_writer, self.evaluator = (
            writers["goal_writer"], writers["prompt_writer"], writers["evaluator"])
        self.rows = _read_jsonl(out)
        attempts = _read_jsonl(self.trace)
        self.goals = [a["goal"] for a in attempts if a.get("goal")]
        self.next_attempt = 1 + max([a["attempt"] for a in attempts + self.rows], default=-1)
        self.index = RougeIndex(row["prompt"] for row in self.rows)
        self.tally = Tally()
        self.lock = threading.Lock()
        self.wanted = float("inf")  # set by run(); an attempt accepted beyond it is surplus
        self.stopping = threading.Event()  # set: running attempts end before their next call

    def run(self, count: int, progress: bool = True) -> Tally:
        from tqdm import tqdm

        budget = self.gen.max_attempts or 5 * max(count - len(self.rows), 0)
        self.wanted = count
        with tqdm(total=count, initial=min(len(self.rows), count), unit="prompt",
                  desc="generate", disable=not progress) as bar, \
                ThreadPoolExecutor(self.gen.concurrency) as pool:
            try:
                self._attempts(pool, budget, bar)
            finally:
                self.stopping.set()  # done, failed or interrupted: no new request starts
        if len(self.rows) < count:
            raise DynalignError(
                f"gave up after {budget} attempts (generate.max_attempts): {len(self.rows)} of "
                f"{count} prompts in {self.out}; see why in {self.trace}")
        return self.tally

    def _attempts(self, pool, budget: int, bar) -> None:
        running: set = set()
        for _ in range(budget):
            while len(running) >= self.gen.concurrency:
                running = self._collect(running, bar)
            if len(self.rows) >= self.wanted:
                break
            running.add(pool.submit(self.attempt))
        while running:
            running = self._collect(running, bar)

    def _collect(self, running: set, bar) -> set:
        """Wait for one attempt to finish (re-raising its error) and show it; the rest."""
        done, rest = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            bar.update(int(future.result()))
            bar.set_postfix(self.tally.postfix())
        return rest

    def attempt(self) -> bool:
        with self.lock:
            number = self.next_attempt
            self.next_attempt += 1
            messages = self._goal_messages()
        try:
            goal = clean_goal(self._ask(self.goal_writer, messages, self._seed(number, 0)))
            record = {"attempt": number, "goal": goal, "rounds": []}
            prompt = self._write(number, goal) if goal else ""
            prompt, reason = self._review(number, goal, prompt, record) if prompt else ("", "empty")
        except _Stopped:
            return False
        with self.lock:
            self._settle(goal, prompt, reason, record)
        return record["outcome"] == "accepted"

    def _settle(self, goal: str, prompt: str, reason: str | None, record: dict) -> None:
        """Accept or reject one finished attempt and trace it (under the lock)."""
        reason = reason or near_duplicate(self.index, self.rows, prompt,
                                          self.gen.dedup_threshold)
        if reason is None and len(self.rows) >= self.wanted:
            record.update(outcome="surplus")
        elif reason is None:
            row = self._accept(record["attempt"], goal, prompt, record)
            record.update(outcome="accepted", id=row["id"])
            if len(self.rows) >= self.wanted:
                self.stopping.set()
        else:
            self.tally.rejected += 1
            record.update(outcome="rejected", reason=reason)
        if goal:
            self.goals.append(goal)
        _append(self.trace, record)

    def _goal_messages(self) -> list[dict]:
        """The paper's goal prompt, then the previous goals as the writer's own earlier answers,
        each followed by a short ask for one more (repeating the full prompt every turn would
        fill a small model's context after a dozen goals)."""
        previous = self.goals[-self.gen.goal_context:] if self.gen.goal_context > 0 else []
        messages = [{"role": "user", "content": self.cfg.prompts.goal}]
        for goal in previous:
            messages += [{"role": "assistant", "content": goal},
                         {"role": "user", "content": self.gen.goal_followup}]
        return messages

    def _write(self, number: int, goal: str) -> str:
        ask = fill(self.cfg.prompts.instruction, criteria=self._criteria(goal))
        return clean_prompt(self._ask(self.prompt_writer, _user(ask), self._seed(number, 1)))

    def _review(self, number: int, goal: str, prompt: str, record: dict):
        """(final prompt, None) once a version is appropriate; else (last version, why not)."""
        p = self.cfg.prompts
        for revision in range(self.gen.max_revisions + 1):
            ask = fill(p.feedback, definition=p.ca_definition, criteria=self._criteria(goal),
                       response=RESPONSE_IN_FEEDBACK, generated_prompt=prompt)
            critique = self._ask(self.evaluator, _user(ask), self._seed(number, 2 + 2 * revision))
            verdict = parse_verdict(critique)
            flags = rule_flags(prompt) if self.gen.check_rules else []
            record["rounds"].append({"prompt": prompt, "critique": critique,
                                     "verdict": verdict, "flags": flags})
            if verdict and not flags:
                return prompt, None
            if revision == self.gen.max_revisions:
                return prompt, f"not appropriate after {revision} revisions"
            prompt = self._revise(number, goal, prompt, critique, flags, revision)
            with self.lock:
                self.tally.revised += 1
            if not prompt:
                return prompt, "empty revision"

    def _revise(self, number, goal, prompt, critique, flags, revision) -> str:
        if flags:
            critique += "\n\nAlso, it breaks these criteria: " + "; ".join(flags) + "."
        ask = fill(self.cfg.prompts.refinement, criteria=self._criteria(goal),
                   generated_prompt=prompt, critique=critique)
        seed = self._seed(number, 3 + 2 * revision)
        return clean_prompt(self._ask(self.prompt_writer, _user(ask), seed))

    def _accept(self, number: int, goal: str, prompt: str, record: dict) -> dict:
        n = len(self.rows) + 1
        every = self.gen.heldout_every
        row = {"id": f"{self.gen.id_prefix}-{n:05d}", "goal": goal, "prompt": prompt,
               "split": "heldout" if every > 0 and n % every == 0 else "train",
               "source": self._source(), "attempt": number,
               "revisions": len(record["rounds"]) - 1}
        _append(self.out, row)
        self.rows.append(row)
        self.index.add(prompt)
        self.tally.accepted += 1
        return row

    def _ask(self, endpoint, messages: list[dict], seed: int) -> str:
        if self.stopping.is_set():
            raise _Stopped
        return endpoint.chat(messages, seed)

    def _criteria(self, goal: str) -> str:
        return fill(self.cfg.prompts.criteria, goal=goal_clause(goal))

    def _source(self) -> str:
        return (f"generated: goals by {self.goal_writer.model}, prompts by "
                f"{self.prompt_writer.model}, critiques by {self.evaluator.model}")

    def _seed(self, attempt: int, call: int) -> int:
        """A distinct, reproducible seed per request: a hash of (seed, attempt, call)."""
        digest = hashlib.sha256(f"{self.gen.seed}:{attempt}:{call}".encode()).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class _Stopped(Exception):
    """An attempt ended early: the run has what it wanted, or was interrupted."""


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSONL file; a last line cut short by a crash is dropped."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
        path.write_text("".join(line + "\n" for line in lines))
    return [json_object(path, number, line) for number, line in enumerate(lines, 1)
            if line.strip()]


def open_generator(cfg, out: str | None = None) -> Generator:
    writers = {role: Endpoint.from_config(role, getattr(cfg.generate, role), cfg.generate,
                                          cfg.gateway_url)
               for role in ("goal_writer", "prompt_writer", "evaluator")}
    path = Path(out or cfg.generate.out or cfg.home / "generated" / "prompts.jsonl")
    return Generator(cfg, path, writers)
