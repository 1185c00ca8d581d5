"""Conversation ids (dynalign/conversation_ids.py, server/conversations.py) on the real gateway app
and its real SQLite log, with a stand-in engine: a local HTTP server answering chat completions,
plain or streamed, and counting what reached it.

The rules: the client's X-Conversation-Id header (checked), else the conversation whose logged
exchange (messages + answer, same client) this request's history repeats, else a new id from the
client, the system message and the first user turn. The response names the id in its header.
"""

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from dynalign import conversation_ids as ids
from dynalign.config import Config
from server.gateway import create_app

CHAT = "/v1/chat/completions"
LOCAL = "http://127.0.0.1:8000"  # what a local client sends as Host (server/guard.py)
ANSWER = "Sure: write to me at jo.doe@example.com, turn {}."  # redacted in the log


def _completion(body: dict) -> dict:
    turn = sum(m["role"] == "user" for m in body["messages"])
    return {"id": f"chatcmpl-{turn}", "object": "chat.completion", "created": 0,
            "model": body["model"], "usage": {"prompt_tokens": 3, "completion_tokens": 5},
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER.format(turn)}}]}


def _events(completion: dict) -> bytes:
    """The completion as SSE chunks: the answer in two pieces, then the usage, then [DONE]."""
    text = completion["choices"][0]["message"]["content"]
    chunk = {k: completion[k] for k in ("id", "created", "model")}
    pieces = [{**chunk, "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
              for part in (text[:7], text[7:])]
    pieces.append({**chunk, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in pieces) + \
        b"data: [DONE]\n\n"


@pytest.fixture
def engine(json_server):
    """A stand-in vLLM (conftest's JSON server, streaming when asked): its URL, and the bodies it
    was sent."""
    seen: list[dict] = []

    def respond(path, headers, body):
        seen.append(body)
        if body.get("stream"):
            return 200, _events(_completion(body)), {"Content-Type": "text/event-stream"}
        return 200, _completion(body), {}

    yield json_server(respond).removesuffix("/v1"), seen


@pytest.fixture
def gateway(engine):
    """The gateway app with its lifespan (log writer, store thread) over this test's state dir."""
    with TestClient(create_app(Config(), "merged", engine[0]), base_url=LOCAL) as client:
        yield client


def _rows() -> list[dict]:
    conn = sqlite3.connect(Config().db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from exchanges order by id")]
    finally:
        conn.close()


def chat(gateway, messages: list, user: str = "ann", stream: bool = False, **headers):
    """One chat; (its response, the conversation id its header names, the answer's text)."""
    response = gateway.post(CHAT, json={"messages": messages, "stream": stream, "user": user},
                            headers=headers)
    assert response.status_code == 200, response.text
    if stream:
        text = "".join(json.loads(line[6:])["choices"][0]["delta"]["content"]
                       for line in response.text.splitlines()
                       if line.startswith("data: {") and '"delta"' in line)
    else:
        text = response.json()["choices"][0]["message"]["content"]
    return response, response.headers.get(ids.HEADER), text


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_the_clients_header_is_the_conversation_and_later_turns_without_it_continue_it(gateway):
    history = [user("Plan a garden party for my street.")]
    _, first, answer = chat(gateway, history, **{ids.HEADER: "client-conv-1"})
    assert first == "client-conv-1"
    history += [assistant(answer), user("Make it cheaper.")]
    _, second, answer = chat(gateway, history, stream=True)  # no header now, streamed
    history += [assistant(answer), user("And what if it rains?")]
    _, third, _ = chat(gateway, history)
    assert second == third == "client-conv-1"  # found by its continuation key, not made anew
    assert [r["conversation"] for r in _rows()] == ["client-conv-1"] * 3
    assert "[EMAIL]" in _rows()[0]["response"]  # matched although the log holds it redacted


def test_a_new_conversation_is_named_by_its_client_system_message_and_first_turn(gateway):
    opening = [user("Plan a garden party for my street.")]
    _, ann, answer = chat(gateway, opening, user="ann")
    _, bob, _ = chat(gateway, opening, user="bob")  # the same first turn, another user
    _, styled, _ = chat(gateway, [{"role": "system", "content": "Be brief."}, *opening])
    _, ann_again, _ = chat(gateway, opening, user="ann")  # the same opening: the same id
    assert len({ann, bob, styled}) == 3 and ann_again == ann
    assert len(ann) == 32 and ids.valid_id(ann)  # a client may send it back as its header
    # another user repeating ann's history does not join her conversation
    _, taken, _ = chat(gateway, [*opening, assistant(answer), user("And then?")], user="carl")
    assert taken not in (ann, bob)
    assert [r["conversation"] for r in _rows()] == [ann, bob, styled, ann, taken]


def test_a_turn_whose_history_matches_no_exchange_keeps_the_id_its_opening_gives(gateway):
    opening = [user("Plan a garden party for my street.")]
    _, first, _ = chat(gateway, opening)
    _, edited, _ = chat(gateway, [*opening, assistant("an answer I wrote myself"), user("Hm?")])
    assert edited == first
    header, _, _ = chat(gateway, opening, **{ids.HEADER: "c-2"})
    assert header.headers[ids.HEADER] == "c-2"


@pytest.mark.parametrize("value", ["", "two words", "x" * 129, "tab\there", "caf\xe9"],
                         ids=["empty", "space", "129-chars", "tab", "not-ascii"])
def test_a_bad_conversation_header_is_a_400_naming_it_and_nothing_is_logged(gateway, engine,
                                                                            value):
    response = gateway.post(CHAT, json={"messages": [user("hi")]},
                            headers={ids.HEADER: value.encode("latin-1")})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == ids.HEADER and ids.HEADER in error["message"]
    assert error["code"] == "invalid_conversation_id"
    assert engine[1] == [] and _rows() == []
    assert chat(gateway, [user("hi")], **{ids.HEADER: "x" * 128})[1] == "x" * 128  # still up


def test_a_malformed_history_is_refused_before_the_engine_and_not_logged(gateway, engine):
    response = gateway.post(CHAT, json={"messages": [user("a"), user("b")]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[1]"
    assert engine[1] == [] and _rows() == []


def test_the_rules_as_functions():
    ann, bob = ids.who(None, "ann", "[IP]"), ids.who(None, "bob", "[IP]")
    assert ids.who("k1", None, "[IP]") != ids.who("k2", None, "[IP]")  # another chat key
    turn = [user("hi")]
    assert ids.new_id(ann, turn) != ids.new_id(bob, turn)
    assert ids.new_id(ann, turn) == ids.new_id(ann, [*turn, assistant("yo"), user("more")])
    logged = ids.answered(turn, [{"index": 0, "content": "yo  there"}])
    follow_up = [*turn, {"role": "assistant", "content": [{"type": "text", "text": "yo there"}]},
                 user("more")]
    assert ids.continuation_key(ann, logged) == ids.continuation_key(ann, ids.earlier(follow_up))
    assert ids.continuation_key(bob, logged) != ids.continuation_key(ann, logged)
    assert ids.earlier(turn) is None and ids.earlier([*turn, user("again")]) is None
    assert [ids.valid_id(v) for v in ("a", "x" * 128, "x" * 129, "a b", "", "é")] == [
        True, True, False, False, False, False]
