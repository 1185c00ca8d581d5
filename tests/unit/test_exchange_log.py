"""server.exchange_log: parsing engine responses and the background writer."""

import json

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
    assert parse_stream([b"data: [DONE]"]) == {"choices": [], "usage": {}}
    assert parse_stream([]) == {"choices": [], "usage": {}}


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


def test_parse_completion_without_usage():
    result = parse_completion(b'{"choices": [{"index": 0, "message": null, "finish_reason": null}]}')
    assert result == {"choices": [{"index": 0, "content": None, "finish_reason": None}], "usage": {}}


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
