"""Privacy and the exchange log on the real server (gateway + vLLM CPU engine, swap "merged"):
redaction before storing, opt-out kept out of training data, a completed exchange committed before
its response ends, and a failing disk that neither stops serving nor loses what was served, and
that /health and /metrics (dynalign_log_ok, dynalign_log_pending) report until it recovers.

The failing disk is real: RLIMIT_FSIZE 0 on the gateway process (prlimit, as root or as its user)
makes every file write of that process fail with EFBIG, which SQLite reports as "disk I/O error" -
the same failure path as ENOSPC ("database or disk is full"). Lifting the limit is the disk
recovering. (chmod cannot make a file read-only for root, which these tests run as.)
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from contextlib import closing

import psutil
import pytest

from dynalign.store import Store
from helpers.live_server import metric, run_server

pytestmark = pytest.mark.slow
OLD, RECENT = "retention-40-days-old", "retention-recent"

SECRET = ("My e-mail is jo.doe@example.com, phone +44 20 7946 0958, card 4111 1111 1111 1111, "
          "server 192.168.10.20, key sk-proj-abcdEFGH1234ijklMNOP5678. Say OK.")


def tag() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def chat(server, user: str, stream: bool = False, **kwargs) -> str:
    create = server.client().chat.completions.create
    args = dict(model="dynalign", messages=[{"role": "user", "content": SECRET}], max_tokens=8,
                temperature=0, extra_headers={"X-Dynalign-User": user, **kwargs.pop("headers", {})},
                **kwargs)
    if not stream:
        return create(**args).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in create(stream=True, **args)
                   if c.choices)


@pytest.fixture(scope="module")
def merged(base_model, tmp_path_factory):
    """This module's server keeps 30 days of log (privacy.retention_days) over a state dir that
    already holds a 40-day-old exchange and a recent one: `dynalign serve` must start retention."""
    root = tmp_path_factory.mktemp("retention-server")
    (root / "state").mkdir()
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)
    with closing(Store(root / "state" / "dynalign.db")) as store:
        for user, created in ((OLD, old.isoformat(timespec="milliseconds")), (RECENT, None)):
            row = {"user": user, "messages": [{"role": "user", "content": "hi"}],
                   "response": "ok", "status": "ok", "opt_out": 0}
            store.log_exchange({**row, "created": created} if created else row)
    yield from run_server(tmp_path_factory, base_model, "merged", root=root,
                          settings="[privacy]\nretention_days = 30\n")


def test_serve_runs_retention_from_the_start_deleting_only_what_is_too_old(merged):
    merged.wait_for(lambda: not merged.rows_for(OLD), 120, "retention to delete the old row",
                    interval=0.5)
    assert len(merged.rows_for(RECENT)) == 1


def test_stored_text_is_redacted_and_nothing_raw_reaches_the_files(merged):
    user = tag()
    assert chat(merged, user) is not None
    [row] = merged.rows_for(user)  # no waiting: committed before the response ended
    assert json.loads(row["messages"])[0]["content"] == (
        "My e-mail is [EMAIL], phone [PHONE], card [CARD], server [IP], key [KEY]. Say OK.")
    assert row["client_id"] == "[IP]"  # the client's address (no X-Client-Id)
    stored = b"".join(p.read_bytes() for p in merged.home.glob("dynalign.db*"))
    for raw in (b"jo.doe@example.com", b"7946 0958", b"4111 1111", b"192.168.10.20", b"sk-proj-"):
        assert raw not in stored


@pytest.mark.parametrize("how", ["store-false", "header"])
def test_opted_out_exchanges_are_logged_but_never_training_data(merged, how):
    user, kept = tag(), tag()
    extra = ({"extra_body": {"store": False}} if how == "store-false"
             else {"headers": {"X-Dynalign-Opt-Out": "1"}})
    chat(merged, user, **extra)
    chat(merged, kept)
    [out], [normal] = merged.rows_for(user), merged.rows_for(kept)
    assert out["opt_out"] == 1 and normal["opt_out"] == 0
    with closing(Store(merged.db_path)) as store:
        training = {r["id"] for r in store.training_exchanges(0)}  # what a round may train on
    assert normal["id"] in training and out["id"] not in training


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_completed_exchange_is_in_sqlite_when_its_response_ends(merged, stream):
    for _ in range(4):
        user = tag()
        chat(merged, user, stream=stream)
        rows = merged.rows_for(user)  # read at once, from another process: no polling
        assert len(rows) == 1 and rows[0]["status"] == "ok", rows


def log_samples(scraped: dict) -> dict:
    """The exchange log's samples of a /metrics scrape, for assertion messages."""
    return {name: value for (name, _), value in scraped.items() if name.startswith("dynalign_log")}


def test_a_failing_disk_does_not_stop_serving_and_loses_nothing(merged):
    gateway = psutil.Process(merged.proc.pid)
    soft, hard = gateway.rlimit(psutil.RLIMIT_FSIZE)
    users = [tag() for _ in range(4)]
    before = merged.metrics()
    assert metric(before, "dynalign_log_ok") == 1 and metric(before, "dynalign_log_pending") == 0, \
        log_samples(before)
    gateway.rlimit(psutil.RLIMIT_FSIZE, (0, hard))  # every file write of the gateway fails now
    try:
        answers = [chat(merged, user, stream=i % 2 == 1) for i, user in enumerate(users)]
        assert all(a is not None for a in answers)  # served all the same
        health = merged.get("/health")
        assert health.status_code == 200, health.text
        log = health.json()["log"]
        assert log["ok"] is False and log["pending"] == 4 and log["failed"] >= 1, log
        assert log["error"] and log["since"], log
        assert all(merged.rows_for(user) == [] for user in users)
        failing = merged.metrics()  # Prometheus sees the failure too, read from the log writer
        shown = log_samples(failing)
        assert metric(failing, "dynalign_log_ok") == 0, shown
        assert metric(failing, "dynalign_log_pending") == 4, shown
        assert metric(failing, "dynalign_log_write_failures_total") >= 1 + metric(
            before, "dynalign_log_write_failures_total"), (shown, log_samples(before))
        answered = {"version": merged.base_name, "status": "ok"}  # counted, not on disk yet
        assert metric(failing, "dynalign_chat_exchanges_total", **answered) == 4 + (
            metric(before, "dynalign_chat_exchanges_total", **answered) or 0)
    finally:
        gateway.rlimit(psutil.RLIMIT_FSIZE, (soft, hard))  # the disk recovers
    merged.wait_for(lambda: merged.get("/health").json()["log"]["ok"], 60, "the log to recover")
    assert merged.get("/health").json()["log"]["pending"] == 0
    recovered = merged.metrics()
    assert metric(recovered, "dynalign_log_ok") == 1, log_samples(recovered)
    assert metric(recovered, "dynalign_log_pending") == 0, log_samples(recovered)
    assert metric(recovered, "dynalign_log_dropped_total") == 0, log_samples(recovered)
    for user in users:
        [row] = merged.rows_for(user)
        assert row["status"] == "ok" and "[EMAIL]" in row["messages"]
    assert merged.proc.poll() is None


def converse(server, user: str, turns: list[str], stream_turn: int | None = None,
             first_headers: dict | None = None) -> list[str]:
    """A chat of several turns through the openai client, each sent with the history and the
    answers received (turn `stream_turn` streamed; `first_headers` sent with the first turn
    only); the X-Conversation-Id header each response carried."""
    create = server.client().chat.completions.with_raw_response.create
    history, named = [], []
    for i, text in enumerate(turns):
        history.append({"role": "user", "content": text})
        raw = create(model="dynalign", messages=history, max_tokens=8, temperature=0, user=user,
                     stream=i == stream_turn, extra_headers=(first_headers or {}) if i == 0 else {})
        named.append(raw.headers.get("x-conversation-id"))
        parsed = raw.parse()
        answer = ("".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
                  if i == stream_turn else parsed.choices[0].message.content)
        history.append({"role": "assistant", "content": answer})
    return named


def test_a_conversations_turns_share_one_id_and_deleting_it_leaves_no_copy(merged):
    word = uuid.uuid4().hex[:10]
    turns = [f"Plan a garden party for my street {word}.", f"Make it cheaper ({word}-2).",
             f"And what if it rains ({word}-3)?"]
    ann, bob = tag(), tag()
    named = converse(merged, ann, turns, stream_turn=1)
    [other] = converse(merged, bob, turns[:1])  # the same first turn, another user
    header = f"client-{word}"  # a client's own id, sent with the first turn only
    given = converse(merged, ann, [f"Name a colour ({word}-4).", "And another one?"],
                     first_headers={"X-Conversation-Id": header})
    conversation = named[0]
    assert conversation and named == [conversation] * 3, named
    assert other and other != conversation
    assert given == [header, header]  # the second turn was found as the first one's follow-up
    rows = merged.rows_for(ann)
    assert [r["conversation"] for r in rows] == [conversation] * 3 + [header] * 2
    assert [r["conversation"] for r in merged.rows_for(bob)] == [other]

    deleted = merged.cli("logs", "delete", "--conversation", conversation, timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted 3 exchange(s) of conversation '{conversation}'" in deleted.stdout
    files = [p for p in merged.home.rglob("*") if p.is_file() and p.stat().st_size < 64 << 20]
    for text in (f"{word}-2", f"{word}-3"):  # the first turn is also bob's
        assert [p for p in files if text.encode() in p.read_bytes()] == [], text
    assert [r["conversation"] for r in merged.rows_for(ann)] == [header] * 2  # others kept
    assert len(merged.rows_for(bob)) == 1
