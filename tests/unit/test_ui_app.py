"""ui.app without a server or a browser: the page builds, --help is fast, respond() streams."""

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from ui.app import _chat_handler, build_app, rate, respond, to_openai


def _sse(*models_and_texts: tuple[str, str]) -> bytes:
    chunks = [
        {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        for model, text in models_and_texts
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


def _client(handler) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(base_url="http://gateway.test/v1", api_key="none", http_client=http, max_retries=0)


def _streaming(seen: list):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = _sse(("dynalign-v3", "Hel"), ("dynalign-v3", "lo"))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return handler


def test_help_is_fast():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ui.app", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--api-url" in out.stdout
    assert time.monotonic() - start < 3  # gradio is not imported for --help


@pytest.mark.timeout(120)
def test_build_app_returns_blocks():
    import gradio as gr

    assert isinstance(build_app("http://127.0.0.1:9/v1", "dynalign", "none"), gr.Blocks)


def test_respond_streams_and_names_the_version():
    seen: list[httpx.Request] = []
    steps = list(respond(_client(_streaming(seen)), "dynalign", [], "hi", opt_out=False))
    assert steps[0] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    last = steps[-1][-1]["content"][0]["text"]
    assert last.startswith("Hello") and "answered by dynalign-v3" in last
    body = json.loads(seen[0].content)
    assert body["messages"] == [{"role": "user", "content": "hi"}] and "store" not in body
    assert body["max_tokens"] == 512
    assert "x-dynalign-opt-out" not in seen[0].headers


def test_opt_out_sends_store_false_and_header():
    seen: list[httpx.Request] = []
    list(respond(_client(_streaming(seen)), "dynalign", [], "hi", opt_out=True))
    assert json.loads(seen[0].content)["store"] is False
    assert seen[0].headers["x-dynalign-opt-out"] == "1"


def test_error_becomes_a_chat_message():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    steps = list(respond(_client(refuse), "dynalign", [], "hi", opt_out=False))
    assert steps[-1][-1]["content"][0]["text"].startswith("⚠️ error: ")


def test_history_sent_without_footers_or_errors():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b\n\n*answered by dynalign-v2*"}]},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "⚠️ error: Connection error."},
        {"role": "user", "content": "d"},
    ]
    # "c" got only an error: it goes with it, so the turns alternate (the gateway refuses two
    # user turns in a row); a partial answer before an error is kept, and its question with it
    assert to_openai(history) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "d"},
    ]
    partial = [history[0], {"role": "assistant", "content": "b"},
               {"role": "assistant", "content": "⚠️ error: boom"}]
    assert to_openai(partial) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_error_mid_stream_keeps_the_partial_answer():
    def half(request: httpx.Request) -> httpx.Response:
        body = _sse(("dynalign-v3", "Hel")).replace(b"data: [DONE]", b'data: {"error": {"message": "boom"}}')
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    final = list(respond(_client(half), "dynalign", [], "hi", opt_out=False))[-1]
    assert [m["content"][0]["text"] for m in final[1:]] == ["Hel\n\n*answered by dynalign-v3*", "⚠️ error: boom"]


def test_max_tokens_is_configurable():
    seen: list[httpx.Request] = []
    list(respond(_client(_streaming(seen)), "dynalign", [], "hi", opt_out=False, max_tokens=7))
    assert json.loads(seen[0].content)["max_tokens"] == 7


def test_respond_keeps_each_answers_completion_id_for_its_thumbs():
    ids = {}
    history = list(respond(_client(_streaming([])), "dynalign", [], "hi", opt_out=False,
                           ids=ids))[-1]
    assert ids == {1: "c"} and history[1]["role"] == "assistant"  # index 1: the answer


def test_a_thumb_posts_a_rating_of_that_answer_and_reports_what_failed(json_server):
    posted = []

    def gateway(path, headers, body):
        posted.append((path, body))
        if body["id"] == "chatcmpl-gone":
            return 404, {"error": {"message": "no logged answer has the id", "type": "x",
                                   "param": "id", "code": "not_found"}}, {}
        return 200, {"object": "feedback", **body}, {}

    client = openai.OpenAI(base_url=json_server(gateway), api_key="none", max_retries=0)
    ids = {1: "chatcmpl-1", 3: "chatcmpl-gone"}
    assert rate(client, ids, 1, False) is None and rate(client, ids, 1, True) is None
    assert rate(client, ids, 1, "") is None  # a thumb taken back: nothing sent
    assert "cannot be rated" in rate(client, ids, 5, True)
    assert "not stored" in (error := rate(client, ids, 3, False)) and "no logged answer" in error
    assert posted == [("/v1/feedback", {"id": "chatcmpl-1", "rating": -1}),
                      ("/v1/feedback", {"id": "chatcmpl-1", "rating": 1}),
                      ("/v1/feedback", {"id": "chatcmpl-gone", "rating": -1})]


def test_each_turn_names_the_pages_conversation_made_at_its_first_turn():
    seen: list[httpx.Request] = []
    chat = _chat_handler(_client(_streaming(seen)), "dynalign", 16)
    *_, (history, _, _, conversation) = chat("hi", [], False, {}, "")
    assert conversation and seen[0].headers["x-conversation-id"] == conversation
    *_, (_, _, _, kept) = chat("more", history, True, {}, conversation)
    assert kept == conversation and seen[1].headers["x-conversation-id"] == conversation
    assert seen[1].headers["x-dynalign-opt-out"] == "1"  # the opt-out's header too
    *_, (_, _, _, fresh) = chat("hi", [], False, {}, "")  # after "New conversation"
    assert fresh != conversation and seen[2].headers["x-conversation-id"] == fresh
