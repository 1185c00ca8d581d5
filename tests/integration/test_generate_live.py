"""`dynalign generate` end to end, run as a user runs it: `python -m dynalign.cli --config <toml>
generate ...` in a subprocess, against a real `dynalign serve --no-ui` (vLLM CPU engine + gateway,
the embedded SmolLM2-135M) as goal writer and prompt writer.

What is real: the CLI, the config file, the generation loop, the openai client and its retry
policy, HTTP to the gateway, the engine's sampling with per-request seeds, the gateway's SQLite log.

What is faked, and why: the evaluator. The 135M model never ends a critique with the verdict
sentence ("In conclusion, this task prompt is: ..."), so no prompt would ever be accepted; a
capable judge model cannot run here. `FakeJudge` stands in for it: a stdlib OpenAI-compatible
endpoint (POST /v1/chat/completions) on a free port, in a thread of this process. It records every
request, and answers "Inappropriate" the first time it sees a goal (read from the criteria's
"The task’s goal is to ..." line) and "Appropriate" the second time, so every accepted prompt has
been revised exactly once. With `status=401` it refuses every request, as an endpoint with a wrong key.

The 135M writes garbage, so the config turns off `check_rules` (its prompts break the length
rules) and keeps `max_tokens` small (a few minutes for the module). The runs share one server and
build on each other's outputs: the first run's files are copied for the dedup and auth runs.
Last, bench/traffic.py's simulated users chat over the generated prompts and the seed set on the
same server (it reuses the module's engine start; it runs after every test that counts rows).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dynalign.generate import clean_goal, clean_prompt
from dynalign.prompts import CA_DEFINITION, CRITERIA, FEEDBACK, GOAL, fill, goal_clause

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600
SEED = 7  # generate.seed in the config file
VERDICT = "In conclusion, this task prompt is: {}."
GOAL_LINE = re.compile(r"^- The task’s goal is to (.*)$", re.MULTILINE)  # curly apostrophe


# the fake judge
class FakeJudge:
    """An OpenAI-compatible evaluator on 127.0.0.1:<free port>; `url` is its base URL (…/v1)."""

    def __init__(self, status: int = 200, model: str = "fake-judge"):
        self.status, self.model = status, model
        self.requests: list[dict] = []  # {"path", "headers" (lowercase keys), "body", "answer"}
        self.judged: Counter[str] = Counter()  # critiques given per goal
        self.lock = threading.Lock()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True,
                                       name="fake-judge")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)

    def forget(self) -> None:
        """Treat every goal as new again (a fresh judge, for runs that must repeat each other)."""
        with self.lock:
            self.judged.clear()

    def critique(self, body: dict) -> str:
        """A critique of the prompt in the feedback message: Inappropriate on a goal's first
        sight, Appropriate on the second (then again Inappropriate, Appropriate: an attempt with
        check_rules off makes exactly two calls, and a later attempt may repeat a goal). It names the goal, so it can be found where it travels,
        and depends on nothing else, so runs with the same seed send the writer the same text."""
        content = body["messages"][-1]["content"]
        found = GOAL_LINE.search(content)
        goal = found.group(1).strip() if found else ""
        with self.lock:
            first = self.judged[goal] % 2 == 0  # a goal can come back in a later attempt
            self.judged[goal] += 1
        verdict = "Inappropriate" if first else "Appropriate"
        return (f"The scenario for '{goal}' needs more concrete detail. "
                + VERDICT.format(verdict))

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = {"path": self.path, "headers": headers, "body": body, "answer": None}
                with judge.lock:
                    judge.requests.append(request)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}",
                                                      "type": "not_found_error"}})
                if judge.status != 200:
                    return self._send(judge.status, {"error": {
                        "message": "Incorrect API key provided", "type": "invalid_request_error",
                        "code": "invalid_api_key"}})
                request["answer"] = judge.critique(body)
                self._send(200, completion(body, request["answer"]))

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest's output clean
                pass

        return Handler


def completion(body: dict, text: str) -> dict:
    """An OpenAI chat.completion body answering `text`."""
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake-judge"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


# running `dynalign generate`
@dataclass
class Run:
    """One `dynalign generate` run and what it left: files (as bytes, right after the run) and
    the requests the judge received during it."""

    result: subprocess.CompletedProcess
    out: Path
    out_bytes: bytes
    trace_bytes: bytes
    judged: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return parse_jsonl(self.out_bytes)

    @property
    def trace(self) -> list[dict]:
        return parse_jsonl(self.trace_bytes)

    def describe(self) -> str:
        return (f"exit {self.result.returncode}\n--- stdout ---\n{self.result.stdout}"
                f"\n--- stderr ---\n{self.result.stderr}")


def trace_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".trace.jsonl")


def parse_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def read_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def write_config(path: Path, writers_url: str, judge: FakeJudge, **generate) -> Path:
    """A config file: the goal and prompt writers are the dynalign server, the evaluator the
    judge; `generate` adds keys to [generate]."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in generate.items())
    path.write_text(
        f"[generate]\ncheck_rules = false\nseed = {SEED}\n{extra}\n"
        f'[generate.goal_writer]\nurl = "{writers_url}"\nmax_tokens = 24\n\n'
        f'[generate.prompt_writer]\nurl = "{writers_url}"\nmax_tokens = 64\n\n'
        f'[generate.evaluator]\nurl = "{judge.url}"\nmodel = "{judge.model}"\n'
        f'api_key_env = "FAKE_JUDGE_KEY"\n')
    return path


def generate(config: Path, out: Path, judge: FakeJudge | None, *args: str,
             env: dict | None = None) -> Run:
    """`python -m dynalign.cli --config CONFIG generate --out OUT --no-progress ARGS`."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DYNALIGN_HOME", "DYNALIGN_API_KEY", "DYNALIGN_ADMIN_KEY")}
    environ |= {"DYNALIGN_HOME": str(out.parent / "state"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))}
    environ |= env or {}
    start = len(judge.requests) if judge else 0
    result = subprocess.run(
        [sys.executable, "-m", "dynalign.cli", "--config", str(config), "generate",
         "--out", str(out), "--no-progress", *args],
        cwd=out.parent, env=environ, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return Run(result, out, read_bytes(out), read_bytes(trace_path(out)),
               judge.requests[start:] if judge else [])


def copy_outputs(run: Run, out: Path) -> Path:
    """The run's output and trace, as they were right after it, under a new output name."""
    out.write_bytes(run.out_bytes)
    trace_path(out).write_bytes(run.trace_bytes)
    return out


def feedback_for(goal: str, prompt: str) -> str:
    """The paper's feedback prompt (Table 4) for a goal and a prompt, as the judge must get it."""
    return fill(FEEDBACK, definition=CA_DEFINITION, response="", generated_prompt=prompt,
                criteria=fill(CRITERIA, goal=goal_clause(goal)))


def logged(server) -> list[dict]:
    """The server's exchange rows, messages and response parsed."""
    rows = server.query("select id, opt_out, messages, response from exchanges order by id")
    return [row | {"messages": json.loads(row["messages"]),
                   "answer": json.loads(row["response"])[0]["content"] or ""} for row in rows]


def accepted(trace: list[dict]) -> list[dict]:
    return [attempt for attempt in trace if attempt["outcome"] == "accepted"]


# fixtures: one judge and a first run (2 prompts) and its resumption (3), shared by the module
@pytest.fixture(scope="module")
def judge():
    judge = FakeJudge()
    yield judge
    judge.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generate")


@pytest.fixture(scope="module")
def config(workdir, merged, judge) -> Path:
    return write_config(workdir / "generate.toml", f"{merged.url}/v1", judge)


@pytest.fixture(scope="module")
def first_run(workdir, config, judge) -> Run:
    run = generate(config, workdir / "prompts.jsonl", judge, "--count", "2")
    assert run.result.returncode == 0, run.describe()
    return run


@pytest.fixture(scope="module")
def resumed_run(first_run, config, judge) -> Run:
    run = generate(config, first_run.out, judge, "--count", "3")
    assert run.result.returncode == 0, run.describe()
    return run


# 1. mechanics
def test_accepted_prompts_were_revised_once_after_the_judges_critique(first_run, judge):
    rows, trace = first_run.rows, first_run.trace
    assert "2 prompts in" in first_run.result.stdout, first_run.describe()
    assert [r["id"] for r in rows] == ["gen-00001", "gen-00002"]
    for row in rows:
        assert {"id", "goal", "prompt", "split", "source"} <= set(row)
        assert row["goal"] and row["prompt"] and row["split"] == "train"
        assert f"critiques by {judge.model}" in row["source"]
        assert row["revisions"] == 1, row

    kept = accepted(trace)
    assert [a["id"] for a in kept] == ["gen-00001", "gen-00002"], trace
    for attempt, row in zip(kept, rows):
        assert (attempt["goal"], attempt["attempt"]) == (row["goal"], row["attempt"])
        first, second = attempt["rounds"]
        assert [first["verdict"], second["verdict"]] == [False, True]
        assert first["critique"].endswith(VERDICT.format("Inappropriate"))
        assert second["critique"].endswith(VERDICT.format("Appropriate"))
        assert second["prompt"] == row["prompt"]  # the revision is what was kept


def test_the_judge_got_the_papers_feedback_prompt_with_the_opt_out_header(first_run):
    judged = first_run.judged
    rounds = [r for attempt in first_run.trace for r in attempt["rounds"]]
    goals = [attempt["goal"] for attempt in first_run.trace for _ in attempt["rounds"]]
    assert len(judged) == len(rounds), "one evaluator request per critique round in the trace"
    for request, goal, round_ in zip(judged, goals, rounds):
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"].get("x-dynalign-opt-out") == "1"
        body = request["body"]
        assert body["model"] == "fake-judge"
        assert isinstance(body["seed"], int)
        [message] = body["messages"]
        assert message["role"] == "user"
        content = message["content"]
        assert "#Task Prompt#:" in content and "#Critique#:" in content
        assert CA_DEFINITION in content
        assert f"The task’s goal is to {goal_clause(goal)}" in content
        assert content == feedback_for(goal, round_["prompt"])
        assert round_["critique"] == request["answer"]  # the trace keeps the judge's critique
    seeds = [request["body"]["seed"] for request in judged]
    assert len(set(seeds)) == len(seeds), f"every evaluator request has a seed of its own: {seeds}"


def test_the_evaluator_keeps_its_default_temperature_when_its_url_is_set(first_run):
    assert {request["body"]["temperature"] for request in first_run.judged} == {0.0}


# 2. resume
def test_a_second_run_resumes_after_the_first(first_run, resumed_run, merged):
    assert resumed_run.out_bytes.startswith(first_run.out_bytes)  # byte for byte
    rows = resumed_run.rows
    assert rows[:2] == first_run.rows
    assert [r["id"] for r in rows] == ["gen-00001", "gen-00002", "gen-00003"]
    assert resumed_run.trace_bytes.startswith(first_run.trace_bytes)
    new = resumed_run.trace[len(first_run.trace):]
    last = max(a["attempt"] for a in first_run.trace)
    assert [a["attempt"] for a in new] == list(range(last + 1, last + 1 + len(new)))
    assert rows[2]["attempt"] == new[-1]["attempt"] and rows[2]["revisions"] == 1

    # the goal writer's conversation went on with the first run's goals
    first_goals = [a["goal"] for a in first_run.trace if a["goal"]]
    conversations = [[m["content"] for m in row["messages"] if m["role"] == "assistant"]
                     for row in merged.wait_for(lambda: goal_rows(merged, len(resumed_run.trace)),
                                                60, "the goal writer's logged requests")]
    assert first_goals in conversations, "no goal request carried the first run's goals"


def goal_rows(server, n: int) -> list[dict] | None:
    """The logged goal-writer requests, once there are at least `n` (the log is asynchronous)."""
    rows = [row for row in logged(server) if row["messages"][0]["content"] == GOAL]
    return rows if len(rows) >= n else None


# 3. dedup
def test_near_duplicates_are_rejected_until_max_attempts(first_run, workdir, merged, judge):
    out = copy_outputs(first_run, workdir / "dedup.jsonl")
    config = write_config(workdir / "dedup.toml", f"{merged.url}/v1", judge,
                          dedup_threshold=0.01, max_attempts=2)
    run = generate(config, out, judge, "--count", "5")
    assert run.result.returncode == 1, run.describe()
    assert "gave up after 2 attempts" in run.result.stderr, run.describe()
    assert run.out_bytes == first_run.out_bytes
    new = run.trace[len(first_run.trace):]
    assert len(new) == 2 and all(a["outcome"] == "rejected" for a in new), new
    assert all(a["reason"].startswith("near-duplicate of gen-") for a in new), new


# 4. seeds
def test_the_same_seed_gives_the_same_goal_and_prompt(first_run, workdir, config, judge):
    runs = []
    for name in ("seed-a.jsonl", "seed-b.jsonl"):
        judge.forget()  # each run meets a judge that has seen no goal, as the first one did
        runs.append(generate(config, workdir / name, judge, "--count", "1", "--seed", "11"))
        assert runs[-1].result.returncode == 0, runs[-1].describe()
    a, b = (run.rows for run in runs)
    assert len(a) == len(b) == 1
    assert (a[0]["goal"], a[0]["prompt"]) == (b[0]["goal"], b[0]["prompt"])
    assert [r["prompt"] for t in runs[0].trace for r in t["rounds"]] == \
        [r["prompt"] for t in runs[1].trace for r in t["rounds"]]
    # and the seed matters: seed 7 (the first run) wrote something else
    first = first_run.rows[0]
    assert (a[0]["goal"], a[0]["prompt"]) != (first["goal"], first["prompt"])


# 5. opt-out
def test_generation_requests_are_logged_opted_out_only(first_run, resumed_run, merged):
    """The gateway logs opted-out exchanges flagged opt_out = 1 (README: "never used for
    training"): every request of the runs is such a row, and no row is one to train on (the
    server is this module's own: every row in its log comes from a generation run)."""
    goals = [a["goal"] for a in resumed_run.trace]
    rows = merged.wait_for(lambda: goal_rows(merged, len(goals)), 60,
                           "the goal writer's logged requests")
    assert all(clean_goal(row["answer"]) in goals for row in rows[:len(goals)])
    every = logged(merged)
    assert every and all(row["opt_out"] == 1 for row in every), \
        f"{sum(row['opt_out'] == 0 for row in every)} generation requests logged as trainable"
    answers = {clean_prompt(row["answer"]) for row in every}
    assert all(row["prompt"] in answers for row in resumed_run.rows)
    critiques = [a["rounds"][0]["critique"] for a in accepted(resumed_run.trace)]
    requests = "\n".join(row["messages"][-1]["content"] for row in every)
    assert all(f"#Critique#:\n\n{critique}" in requests for critique in critiques), \
        "the prompt writer did not get the judge's critique"


# 6. auth
def test_a_refused_key_stops_the_run_at_once_naming_the_role(first_run, workdir, merged):
    out = copy_outputs(first_run, workdir / "auth.jsonl")
    refusing = FakeJudge(status=401)
    try:
        config = write_config(workdir / "auth.toml", f"{merged.url}/v1", refusing)
        run = generate(config, out, refusing, "--count", "5", env={"FAKE_JUDGE_KEY": "wrong"})
    finally:
        refusing.close()
    assert run.result.returncode == 1, run.describe()
    stderr = run.result.stderr
    assert "authentication failed" in stderr and "evaluator" in stderr, stderr
    assert "FAKE_JUDGE_KEY" in stderr, "the message says which variable holds the key"
    assert "Traceback" not in stderr
    assert len(refusing.requests) == 1, "a 401 is not retried"
    assert refusing.requests[0]["headers"].get("authorization") == "Bearer wrong"
    assert (run.out_bytes, run.trace_bytes) == (first_run.out_bytes, first_run.trace_bytes)


# 7. all three roles on the embedded model, default prompts and rules: plumbing only
def test_all_roles_on_the_embedded_model_run_and_reject_what_it_writes(workdir, merged):
    """The 135M cannot judge: its critiques never reach a verdict, so the attempt is rejected
    after its revision. What this shows is that the default config runs end to end."""
    config = workdir / "embedded.toml"
    url = f"{merged.url}/v1"
    config.write_text("[generate]\nmax_revisions = 1\nmax_attempts = 1\n"
                      + "".join(f'[generate.{role}]\nurl = "{url}"\nmax_tokens = 48\n'
                                for role in ("goal_writer", "prompt_writer", "evaluator")))
    run = generate(config, workdir / "embedded.jsonl", None, "--count", "1")
    [attempt] = run.trace
    if attempt["outcome"] == "accepted":  # a verdict by chance is possible, never required
        assert run.result.returncode == 0 and len(run.rows) == 1
        return
    assert run.result.returncode == 1 and "gave up after 1 attempts" in run.result.stderr
    assert attempt["reason"] in ("not appropriate after 1 revisions", "empty revision", "empty")
    for round_ in attempt["rounds"]:
        assert round_["critique"] and round_["verdict"] in (None, False, True)
        assert isinstance(round_["flags"], list)


# 8. simulated traffic (bench/traffic.py) over these generated prompts and the seed set
def test_simulated_traffic_fails_nothing_and_is_logged_as_it_was_received(first_run, workdir,
                                                                          merged):
    """Three simulated users for 25 s (multi-turn, streamed and rated chats) through the real
    gateway, with this module's generated file and one more whose row repeats a held-out prompt:
    no request fails, each answer is logged with the history its client sent (the earlier
    answers as it received them), only simulated users, no held-out prompt. Last in the module:
    the tests above count this server's rows."""
    from dynalign.dataset import SEED_FILE, read_rows
    from dynalign.redact import redact_messages

    heldout = {" ".join(r["prompt"].lower().split()) for r in read_rows(SEED_FILE)
               if r["split"] == "heldout"}
    repeat = workdir / "traffic-heldout.jsonl"
    repeat.write_text(json.dumps({"prompt": sorted(heldout)[0].upper()}) + "\n")
    out = workdir / "traffic.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "traffic.py"), "--url", f"{merged.url}/v1",
         "--users", "3", "--rate", "40", "--concurrency", "3", "--max-tokens", "24",
         "--duration", "25", "--multi-turn-share", "0.6", "--feedback-share", "0.4",
         "--seed", "3", "--progress", "0", "--generated", str(first_run.out),
         "--generated", str(repeat), "--out", str(out)],
        cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    result = json.loads(out.read_text())
    counts = result["requests"]
    assert counts["failed"] == counts["cancelled"] == 0 and counts["ok"] == counts["sent"] >= 5
    assert 0 < counts["streamed"] < counts["sent"] and counts["multi_turn"] >= 1, counts
    assert result["by_version"] == {merged.base_name: counts["ok"]}

    rows = {row["completion_id"]: row for row in merged.query(
        "select * from exchanges where user like 'sim-user-%'")}
    assert len(rows) == counts["ok"] and {r["status"] for r in rows.values()} == {"ok"}
    assert {r["user"] for r in rows.values()} <= {"sim-user-00", "sim-user-01", "sim-user-02"}
    for t in result["transcripts"]:
        for k, completion_id in enumerate(t["completion_ids"]):
            row = rows[completion_id]  # turn k: the messages sent, then the answer received
            sent = t["messages"][:2 * k + 1]
            assert json.loads(row["messages"]) == redact_messages(sent), (t, row)
            assert json.loads(row["response"])[0]["content"] == \
                redact_messages(t["messages"][2 * k + 1:2 * k + 2])[0]["content"]
            assert row["user"] == t["user"]
        assert " ".join(t["messages"][0]["content"].lower().split()) not in heldout
    assert any(len(t["completion_ids"]) >= 2 for t in result["transcripts"])
    rated = merged.query("select count(*) as n from feedback f join exchanges e "
                         "on e.id = f.exchange_id where e.user like 'sim-user-%'")[0]["n"]
    assert rated == result["feedback"]["ok"] and result["feedback"]["failed"] == 0
