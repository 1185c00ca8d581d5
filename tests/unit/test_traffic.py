"""bench/traffic.py without a real server: the prompt pool (never a held-out prompt), bad
generated rows, the per-conversation plans and their determinism, and whole runs against a stdlib
stand-in for the gateway (JSON and SSE answers, injected failures, 429 on ratings) whose own
record of what it received is compared with the counts."""

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dynalign.dataset import SEED_FILE, read_rows
from dynalign.errors import DataError

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import traffic  # noqa: E402  (bench/ is not a package: its scripts import each other by name)


def seed_rows(tmp_path, rows) -> Path:
    path = tmp_path / "seed.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "goal": "g", "source": "t", **row}) + "\n"
                            for i, row in enumerate(rows)))
    return path


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


# --- prompts ---------------------------------------------------------------------------------

def test_the_shipped_seed_set_gives_its_train_prompts_and_no_held_out_one():
    rows = read_rows(SEED_FILE)
    prompts = traffic.load_prompts(SEED_FILE)
    heldout = {traffic.prompt_key(r["prompt"]) for r in rows if r["split"] == "heldout"}
    assert len(prompts) == sum(r["split"] == "train" for r in rows) == 900
    assert not {traffic.prompt_key(p) for p in prompts} & heldout


def test_generated_prompts_are_used_but_never_one_equal_to_a_held_out_prompt(tmp_path):
    seed = seed_rows(tmp_path, [{"prompt": "Plan a street party.", "split": "train"},
                                {"prompt": "Fix a leaking roof.", "split": "heldout"},
                                {"prompt": "Share a small garden.", "split": "train"}])
    generated = write_lines(tmp_path / "gen.jsonl", [
        {"prompt": "  fix a LEAKING   roof. ", "split": "train"},  # the held-out one, respelt
        {"prompt": "Teach a child to swim."},  # no split: a train prompt
        {"prompt": "Share a small garden.", "split": "heldout"},  # holds a seed train prompt out
        "",
        {"prompt": "Plan a street party.", "split": "train"},  # a duplicate: once
        {"prompt": "Run a repair cafe.", "split": "heldout"}])
    assert traffic.load_prompts(seed, [generated]) == ["Plan a street party.",
                                                       "Teach a child to swim."]


@pytest.mark.parametrize("line, message", [
    ("{not json", ":3: not JSON"),
    ({"id": "g3", "goal": "g"}, ":3: missing or non-string key: prompt"),
    ({"prompt": "   "}, ":3: the prompt is empty"),
    ({"prompt": "Fine.", "split": "held-out"}, ":3: split must be one of"),
])
def test_a_bad_generated_row_is_refused_naming_the_file_and_line(tmp_path, line, message):
    seed = seed_rows(tmp_path, [{"prompt": "Plan a street party.", "split": "train"}])
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "A good one."}, "", line])
    with pytest.raises(DataError, match=f"{bad}{message}"):
        traffic.load_prompts(seed, [bad])


def test_the_command_refuses_a_bad_generated_file_with_a_message(tmp_path, capsys):
    bad = write_lines(tmp_path / "bad.jsonl", [{"prompt": "A good one."}, {"goal": "none"}])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert traffic.main(["--generated", str(bad), "--duration", "1"]) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    err = capsys.readouterr().err
    assert f"{bad}:2: missing or non-string key: prompt" in err and "Traceback" not in err


def test_settings_out_of_range_are_named():
    with pytest.raises(ValueError, match="rate must be above 0; stream_share must be within"):
        traffic.Settings(rate=0, stream_share=1.5).check()


# --- plans ----------------------------------------------------------------------------------

PROMPTS = [f"Prompt number {i}." for i in range(50)]


def test_plans_are_drawn_from_the_seed_alone():
    s = traffic.Settings(users=5, multi_turn_share=0.5, feedback_share=0.5, seed=3)
    plans = [traffic.plan(i, PROMPTS, s) for i in range(40)]
    assert plans == [traffic.plan(i, PROMPTS, s) for i in reversed(range(40))][::-1]
    other = [traffic.plan(i, PROMPTS, traffic.Settings(users=5, multi_turn_share=0.5,
                                                       feedback_share=0.5, seed=4))
             for i in range(40)]
    assert [p.turns for p in plans] != [p.turns for p in other]
    assert {p.user for p in plans} <= {f"sim-user-{u:02d}" for u in range(5)}
    assert len({p.id for p in plans}) == 40
    for p in plans:
        assert len(p.turns) in (1, 2, 3) and p.turns[0] in PROMPTS
        assert len(set(p.turns[1:])) == len(p.turns) - 1
        assert set(p.turns[1:]) <= set(traffic.FOLLOW_UPS)
        assert len(p.stream) == len(p.ratings) == len(p.seeds) == len(p.turns)
        assert set(p.ratings) <= {1, -1, None}
    assert 0 < sum(len(p.turns) > 1 for p in plans) < 40  # both kinds at share 0.5


def test_shares_of_zero_and_one_are_exact():
    none = traffic.Settings(multi_turn_share=0, stream_share=0, feedback_share=0)
    every = traffic.Settings(multi_turn_share=1, stream_share=1, feedback_share=1)
    for i in range(30):
        p, q = traffic.plan(i, PROMPTS, none), traffic.plan(i, PROMPTS, every)
        assert len(p.turns) == 1 and p.stream == [False] and p.ratings == [None]
        assert len(q.turns) in (2, 3) and all(q.stream) and None not in q.ratings
    assert len(traffic.FOLLOW_UPS) == len(set(traffic.FOLLOW_UPS)) == 15


def test_arrivals_average_the_rate():
    gaps = traffic.arrival_gaps(traffic.Settings(rate=120, seed=1))
    mean = sum(next(gaps) for _ in range(4000)) / 4000
    assert mean == pytest.approx(0.5, rel=0.06)


# --- runs against a stand-in gateway -----------------------------------------------------------

class FakeGateway:
    """POST /v1/chat/completions (JSON or SSE) and /v1/feedback. Every chat it received is kept
    with the answer it gave; a last user message naming FAIL-500, FAIL-EVENT (a stream's error
    event), FAIL-CUT (a stream that stops before its usage chunk) or SLOW fails or stalls so."""

    def __init__(self, feedback_429: int = 0):
        self.chats: list[dict] = []  # {"body", "headers", "answer", "id"}
        self.ratings: list[dict] = []
        self.feedback_429 = feedback_429  # the first N ratings get 429
        self.lock = threading.Lock()
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_port}/v1"

    def close(self):
        self.http.shutdown()
        self.http.server_close()

    def chat(self, body: dict, headers: dict) -> dict:
        with self.lock:
            n = len(self.chats)
            record = {"body": body, "headers": headers, "id": f"chatcmpl-{n}",
                      "answer": f"Answer {n} to {body['messages'][-1]['content'][:20]}"}
            self.chats.append(record)
        return record

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if self.path.endswith("/feedback"):
                    return self.feedback(body)
                record = fake.chat(body, headers)
                last = body["messages"][-1]["content"]
                if "SLOW" in last:
                    time.sleep(3)
                if "FAIL-500" in last:
                    return self.send_json(500, {"error": {"message": "boom", "type": "x"}})
                if body.get("stream"):
                    return self.stream(record, last)
                return self.send_json(200, completion(record))

            def feedback(self, body):
                with fake.lock:
                    fake.ratings.append(body)
                    limited = len(fake.ratings) <= fake.feedback_429
                if limited:
                    return self.send_json(429, {"error": {"message": "slow down",
                                                          "type": "rate"}}, {"Retry-After": "0"})
                self.send_json(200, {"object": "feedback", "rating": body["rating"]})

            def stream(self, record, last):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("X-Dynalign-Version", "dynalign-v2")
                self.end_headers()
                for event in events(record, last):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                if "FAIL" not in last:
                    self.wfile.write(b"data: [DONE]\n\n")

            def send_json(self, status, payload, extra=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(extra or {}),
                                   "X-Dynalign-Version": "dynalign-v1",
                                   "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


def completion(record: dict) -> dict:
    return {"id": record["id"], "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": record["answer"]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def events(record: dict, last: str) -> list[dict]:
    def chunk(delta, finish=None):
        return {"id": record["id"], "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    words = record["answer"].split(" ")
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    if "FAIL-EVENT" in last:
        return out + [{"error": {"message": "the engine stopped", "type": "server_error",
                                 "code": "engine_restarting"}}]
    out.append(chunk({}, "stop"))
    if "FAIL-CUT" in last:
        return out
    return out + [{**chunk({}), "choices": [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": len(words),
                             "total_tokens": 7 + len(words)}}]


@pytest.fixture
def gateway():
    fakes = []

    def start(**kwargs) -> FakeGateway:
        fakes.append(FakeGateway(**kwargs))
        return fakes[-1]

    yield start
    for fake in fakes:
        fake.close()


def stop_after(fake: FakeGateway, chats: int) -> threading.Event:
    """An event set once `fake` has received `chats` chats (the run's stop)."""
    stop = threading.Event()

    def watch():
        while len(fake.chats) < chats and not stop.wait(0.02):
            pass
        stop.set()
    threading.Thread(target=watch, daemon=True).start()
    return stop


def settings(url: str, **kwargs) -> traffic.Settings:
    base = dict(url=url, users=3, rate=1200, concurrency=4, duration=30, multi_turn_share=0.6,
                stream_share=0.5, feedback_share=0.5, feedback_per_minute=0, seed=5, grace=10)
    return traffic.Settings(**{**base, **kwargs})


def test_a_run_counts_exactly_what_the_server_received(gateway):
    fake = gateway(feedback_429=2)
    result = traffic.run(settings(fake.url), PROMPTS, stop_after(fake, 20))
    r = result["requests"]
    assert result["ok"] and r["failed"] == r["cancelled"] == 0
    assert r["sent"] == r["ok"] == len(fake.chats) > 10
    assert r["streamed"] == sum(bool(c["body"].get("stream")) for c in fake.chats) > 0
    assert r["streamed"] < r["sent"]
    assert sum(result["by_version"].values()) == r["ok"]
    assert set(result["by_version"]) == {"dynalign-v1", "dynalign-v2"}  # the header's version
    assert result["tokens"]["prompt"] == 7 * r["ok"]
    f = result["feedback"]
    assert f["sent"] == f["ok"] + f["failed"] + f["cancelled"] and f["failed"] == 0
    assert f["rate_limited"] == 2 and len(fake.ratings) == f["ok"] + 2 > 0
    answered = {c["id"]: c["body"]["user"] for c in fake.chats}
    assert all(answered[rating["id"]] == rating["user"] for rating in fake.ratings)


def test_multi_turn_histories_alternate_and_hold_the_answers_received(gateway):
    fake = gateway()
    result = traffic.run(settings(fake.url), PROMPTS, stop_after(fake, 20))
    given = {}  # (conversation, the messages sent) -> the answer given
    for c in fake.chats:
        conv, messages = c["headers"]["x-conversation-id"], c["body"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + [
            "user"]
        assert c["body"]["user"] == c["headers"]["x-dynalign-user"]
        assert c["body"]["user"].startswith("sim-user-") and c["body"]["model"] == "dynalign"
        for k in range(1, len(messages), 2):  # every earlier answer is the one that was given
            assert given[conv, json.dumps(messages[:k])] == messages[k]["content"]
        given[conv, json.dumps(messages)] = c["answer"]
    followed = [c for c in fake.chats if len(c["body"]["messages"]) > 1]
    assert followed and result["requests"]["multi_turn"] == len(followed)
    assert all(c["body"]["messages"][-1]["content"] in traffic.FOLLOW_UPS for c in followed)
    assert {c["body"]["user"] for c in fake.chats} <= {"sim-user-00", "sim-user-01",
                                                       "sim-user-02"}
    done = [t for t in result["transcripts"] if t["ended"] == "done" and t["turns_planned"] > 1]
    assert done and all(len(t["messages"]) == 2 * t["turns_planned"] for t in done)


def test_the_same_seed_sends_the_same_conversations(gateway):
    def sent(seed):
        fake = gateway()
        traffic.run(settings(fake.url, seed=seed, concurrency=1, duration=30),
                    PROMPTS, stop_after(fake, 12))
        return {c["headers"]["x-conversation-id"].rsplit("-", 1)[1]:
                (c["body"]["user"], c["body"]["messages"][0]["content"], c["body"]["seed"])
                for c in fake.chats}
    first, again = sent(5), sent(5)
    common = first.keys() & again.keys()
    assert len(common) >= 5 and all(first[k] == again[k] for k in common)
    other = sent(6)
    assert any(other[k] != first[k] for k in first.keys() & other.keys())


def test_failures_are_counted_with_their_messages_and_end_the_conversation(gateway):
    fake = gateway()
    prompts = ["FAIL-500 please.", "FAIL-EVENT please.", "FAIL-CUT please.", "Fine."]
    result = traffic.run(settings(fake.url, multi_turn_share=0), prompts, stop_after(fake, 20))
    r = result["requests"]
    last = [c["body"]["messages"][-1]["content"] for c in fake.chats]
    streamed = [bool(c["body"].get("stream")) for c in fake.chats]
    expected = sum("FAIL-500" in m or (s and "FAIL-" in m) for m, s in zip(last, streamed))
    assert not result["ok"] and r["sent"] == len(fake.chats)
    assert r["failed"] == expected > 0 and r["ok"] == r["sent"] - expected
    digest = "\n".join(result["failure_digest"])
    for kind, text in (("FAIL-500", "InternalServerError"), ("FAIL-EVENT", "the engine stopped"),
                       ("FAIL-CUT", "without finish_reason (stop) or usage chunk (none)")):
        if any(kind in m and (s or kind == "FAIL-500") for m, s in zip(last, streamed)):
            assert text in digest, digest
    assert len(result["failures"]) == min(expected, traffic.FAILURES_KEPT)
    assert result["conversations"]["ended"].get("failed") == expected


def test_requests_still_running_after_the_grace_are_cancelled_not_failed(gateway):
    fake = gateway()
    result = traffic.run(settings(fake.url, duration=0.5, grace=0.5, rate=600,
                                  multi_turn_share=0), ["SLOW please."])
    r = result["requests"]
    assert r["sent"] == len(fake.chats) > 0
    assert r["cancelled"] == r["sent"] and r["failed"] == r["ok"] == 0
    assert result["conversations"]["ended"] == {"cut short by the stop": r["sent"]}


def test_the_command_stops_on_sigterm_and_writes_its_result(gateway, tmp_path):
    fake = gateway()
    out = tmp_path / "result.json"
    proc = subprocess.Popen([sys.executable, str(BENCH / "traffic.py"), "--url", fake.url,
                             "--users", "2", "--rate", "600", "--max-tokens", "8",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while len(fake.chats) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(out.read_text())
    assert result["requests"]["sent"] == result["requests"]["ok"] == len(fake.chats)
    assert f"{len(fake.chats)} requests in" in stdout and "0 failed" in stdout
    assert result["settings"]["max_tokens"] == 8 and "api_key" not in result["settings"]
    assert all(c["body"]["max_tokens"] == 8 for c in fake.chats)


def test_help_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-X", "importtime", str(BENCH / "traffic.py"), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert "--multi-turn-share" in out.stdout and "--generated FILE" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()}
    assert not imported & {"httpx", "openai", "torch", "vllm", "dynalign"}
