"""server.exchange_log: parsing engine responses and the background writer."""

import asyncio
import json
import sqlite3
import time

import pytest

from dynalign.store import Store
from server.exchange_log import ExchangeLog, parse_completion, parse_stream, to_row


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def _chunk(index, content=None, finish=None, role=None):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}], "usage": None}


STREAM = [
    _event(_chunk(0, role="assistant", content="")),
    _event(_chunk(1, role="assistant", content="")),
    _event(_chunk(0, "Hel")),
    _event(_chunk(1, "Good")),
    _event(_chunk(0, "lo")),
    _event(_chunk(1, "bye")),
    _event(_chunk(1, finish="length")),
    _event(_chunk(0, "!", finish="stop")),
    _event({"id": "c", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}),
    b"data: [DONE]",
]


def test_parse_stream_reassembles_choices():
    result = parse_stream(STREAM)
    assert result["choices"] == [
        {"index": 0, "content": "Hello!", "finish_reason": "stop"},
        {"index": 1, "content": "Goodbye", "finish_reason": "length"},
    ]
    assert result["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def test_parse_stream_events_with_several_lines_and_blank_separators():
    joined = [b"\n\n".join(STREAM[:5]) + b"\n\n", b"\n\n".join(STREAM[5:]) + b"\n\n"]
    assert parse_stream(joined) == parse_stream(STREAM)


def test_parse_stream_empty_and_done_only():
    assert parse_stream([b"data: [DONE]"]) == {"choices": [], "usage": {}, "id": None}
    assert parse_stream([]) == {"choices": [], "usage": {}, "id": None}


def test_parse_completion():
    content = json.dumps({
        "id": "x", "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "Yo"}, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }).encode()
    result = parse_completion(content)
    assert result["choices"] == [{"index": 0, "content": "Hi", "finish_reason": "stop"},
                                 {"index": 1, "content": "Yo", "finish_reason": "length"}]
    assert result["usage"]["completion_tokens"] == 2
    assert result["id"] == "x"


def test_parse_completion_without_usage():
    result = parse_completion(b'{"choices": [{"index": 0, "message": null, "finish_reason": null}]}')
    assert result == {"choices": [{"index": 0, "content": None, "finish_reason": None}],
                      "usage": {}, "id": None}


def _record(**extra):
    body = {"model": "dynalign-v2", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.3, "n": 2, "user": "alice", "stream": True, "irrelevant": 1}
    record = {"body": body, "stream": True, "events": STREAM, "client_id": "cid",
              "model_served": "dynalign-v2", "version": 2, "mixed_versions": False,
              "latency_ms": 41.5, "ttft_ms": 7.0, "opt_out": False, "status": "ok"}
    record.update(extra)
    return record


def test_to_row_streamed():
    row = to_row(_record())
    assert row["response"][1]["content"] == "Goodbye"
    assert row["finish_reason"] == "stop,length"
    assert row["params"] == {"temperature": 0.3, "n": 2}
    assert row["user"] == "alice" and row["model_requested"] == "dynalign-v2"
    assert row["prompt_tokens"] == 9 and row["completion_tokens"] == 5
    assert row["stream"] == 1 and row["mixed_versions"] == 0 and row["opt_out"] == 0
    assert row["completion_id"] == "c"  # the id the client's chunks carried: feedback names it


def test_exchange_log_writes_to_sqlite(tmp_path):
    db = tmp_path / "state" / "dynalign.db"
    log = ExchangeLog(db)
    log.submit(_record())
    content = json.dumps({"choices": [{"index": 0, "message": {"content": "plain"},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    body = {"messages": [{"role": "user", "content": "q"}]}
    log.submit(_record(body=body, stream=False, events=None, content=content, user="bob",
                       mixed_versions=True, opt_out=True, version=None))
    log.close()
    assert not log.thread.is_alive()

    store = Store(db)
    try:
        rows = store.exchanges()
    finally:
        store.close()
    assert len(rows) == 2
    plain, streamed = rows  # newest first
    assert json.loads(streamed["response"])[0]["content"] == "Hello!"
    assert json.loads(streamed["messages"]) == [{"role": "user", "content": "hi"}]
    assert json.loads(streamed["params"]) == {"temperature": 0.3, "n": 2}
    assert streamed["version"] == 2 and streamed["latency_ms"] == 41.5 and streamed["ttft_ms"] == 7.0
    assert json.loads(plain["response"]) == [{"index": 0, "content": "plain", "finish_reason": "stop"}]
    assert plain["user"] == "bob" and plain["stream"] == 0 and plain["version"] is None
    assert plain["mixed_versions"] == 1 and plain["opt_out"] == 1


def test_unparsable_response_is_skipped_and_logging_goes_on(tmp_path):
    db = tmp_path / "state" / "dynalign.db"
    log = ExchangeLog(db)
    log.submit(_record(stream=False, events=None, content=b"<html>502 Bad Gateway</html>"))
    log.submit(_record())
    log.close()
    store = Store(db)
    rows = store.exchanges()
    store.close()
    assert [json.loads(r["response"])[1]["content"] for r in rows] == ["Goodbye"]


# redaction ([privacy] redact)
def _secret_record(**extra):
    body = {"messages": [{"role": "user", "content": "I am jo@example.com, card 4111 1111 1111 1111"}]}
    content = json.dumps({"choices": [{"index": 0, "message": {"content": "Call +44 20 7946 0958"},
                                       "finish_reason": "stop"}], "usage": {}}).encode()
    return _record(body=body, stream=False, events=None, content=content, client_id="10.0.0.7",
                   **extra)


def test_to_row_redacts_messages_answers_and_the_client_address():
    row = to_row(_secret_record(), redact_text=True)
    assert row["messages"] == [{"role": "user", "content": "I am [EMAIL], card [CARD]"}]
    assert row["response"][0]["content"] == "Call [PHONE]"
    assert row["client_id"] == "[IP]"
    raw = to_row(_secret_record())
    assert raw["messages"][0]["content"].startswith("I am jo@example.com")


def test_nothing_unredacted_reaches_the_sqlite_files(tmp_path):
    db = tmp_path / "dynalign.db"
    log = ExchangeLog(db, redact=True)
    assert log.submit(_secret_record()).result(timeout=30) is True
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the file and its WAL
    log.close()
    for secret in (b"jo@example.com", b"4111 1111", b"7946 0958", b"10.0.0.7"):
        assert secret not in stored
    assert b"[EMAIL]" in stored


# durability: a completed exchange is committed before the gateway lets its response end
def _rows(db) -> list[dict]:
    conn = sqlite3.connect(str(db))  # another connection, as another process would see it
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from exchanges order by id")]
    finally:
        conn.close()


def test_the_row_is_committed_when_the_submitted_future_is_done(tmp_path):
    db = tmp_path / "dynalign.db"
    log = ExchangeLog(db)
    try:
        assert log.submit(_record()).result(timeout=30) is True
        assert [r["user"] for r in _rows(db)] == ["alice"]
        assert asyncio.run(log.committed(log.submit(_record(body={"messages": []})))) is True
        assert len(_rows(db)) == 2
    finally:
        log.close()


# write failures: requests go on, the failure is reported, nothing is lost once the disk recovers
def _fail(log: ExchangeLog, how: str) -> None:
    """Real SQLite failures on the writer's own connection: SQLITE_FULL ("database or disk is
    full": the file may not grow) or SQLITE_READONLY ("attempt to write a readonly database")."""
    conn = log.store.db.conn
    if how == "full":
        pages = conn.execute("pragma page_count").fetchone()[0]
        conn.execute(f"pragma max_page_count = {pages}")
    else:
        conn.execute("pragma query_only = 1")


def _recover(log: ExchangeLog, how: str) -> None:
    conn = log.store.db.conn
    conn.execute("pragma max_page_count = 1073741823" if how == "full" else "pragma query_only = 0")


def _big(i: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"question {i} " + "x" * 20000}]}
    return _record(body=body)


@pytest.mark.parametrize("how, error", [("full", "database or disk is full"),
                                        ("readonly", "attempt to write a readonly database")])
def test_a_failing_disk_keeps_rows_in_memory_and_writes_them_when_it_recovers(
        tmp_path, caplog, how, error):
    db = tmp_path / "dynalign.db"
    log = ExchangeLog(db, retry_s=0.05)
    try:
        _fail(log, how)
        futures = [log.submit(_big(i)) for i in range(3)]
        assert [f.result(timeout=30) for f in futures] == [False] * 3  # nobody waits on a sick disk
        assert asyncio.run(log.committed(log.submit(_big(3)))) is False
        wait_for(lambda: log.status()["failed"] >= 3, "retries")
        status = log.status()
        assert status["ok"] is False and status["pending"] == 4 and status["dropped"] == 0
        assert error in status["error"] and status["since"]
        assert log.thread.is_alive() and _rows(db) == []
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "cannot write" in r.message]
        assert len(errors) == 1  # once per failure streak, not once per retry

        _recover(log, how)
        wait_for(lambda: log.status()["ok"] and log.status()["pending"] == 0, "recovery")
        rows = _rows(db)
        assert [json.loads(r["messages"])[0]["content"][:10] for r in rows] == [
            f"question {i}" for i in range(4)]  # each once, in order
        assert log.status() | {"failed": 0} == {"ok": True, "failed": 0, "dropped": 0,
                                                "error": None, "since": None, "pending": 0}
        assert any("writing again" in r.message for r in caplog.records)
        assert log.submit(_record()).result(timeout=30) is True
    finally:
        log.close()


def test_the_rows_kept_in_memory_are_bounded(tmp_path):
    db = tmp_path / "dynalign.db"
    log = ExchangeLog(db, max_pending=2, retry_s=0.05)
    try:
        _fail(log, "full")
        for f in [log.submit(_big(i)) for i in range(5)]:
            f.result(timeout=30)
        assert log.status()["pending"] == 2 and log.status()["dropped"] == 3
        _recover(log, "full")
        wait_for(lambda: log.status()["pending"] == 0, "recovery")
        assert [json.loads(r["messages"])[0]["content"][:10] for r in _rows(db)] == [
            "question 3", "question 4"]  # the newest are kept
    finally:
        log.close()


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
