"""The bad-input catalogue of tests/integration/test_bad_input.py: hostile or malformed requests,
each with the status range a production server must answer (always an OpenAI-style error body).

`body` is a dict/list (sent as JSON), bytes (sent as they are), or a function of the prepared
folders (`dirs`, name -> path) returning either. `auth` picks the Authorization header: "chat"
(a chat key; the default on /v1), "admin" (the default on /admin), "none", "wrong", or "chat" on
/admin (a chat key where the admin key is needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Bad:
    id: str
    method: str
    path: str
    body: Any = None
    auth: str = ""  # "" = the right key for the route
    status: tuple[int, int] = (400, 400)  # inclusive range
    words: str = ""  # expected in error.message (lowercase), when set
    headers: dict = field(default_factory=dict)  # sent with the request


def chat(id: str, body=None, status=(400, 400), words: str = "", **fields) -> Bad:
    body = body if body is not None else {"messages": HI, "max_tokens": 4, **fields}
    return Bad(id, "POST", CHAT, body, status=status, words=words)


def nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


def with_content(text_json: str) -> bytes:
    """A chat whose user content is the given JSON string literal (escapes kept as sent)."""
    return ('{"messages": [{"role": "user", "content": %s}], "max_tokens": 4}' % text_json).encode()


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


BAD_JSON = [
    chat("malformed-json", b'{"messages": [', words="json"),
    chat("empty-body", b""),
    chat("body-is-a-list", b"[]"),
    chat("body-is-a-string", b'"hello"'),
    chat("body-is-null", b"null"),
    chat("trailing-garbage", b'{"messages": []} trailing'),
    chat("deep-nesting-100k-lists", nested(100_000)),
    chat("deep-nesting-100k-objects", b'{"messages": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"),
    chat("invalid-utf8-bytes", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'),
    chat("lone-high-surrogate", with_content('"a\\ud800b"'), words="surrogate"),
    chat("lone-low-surrogate", with_content('"\\udc00"'), words="surrogate"),
    chat("nan-temperature", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    chat("infinity-in-extra-field", b'{"messages": [{"role": "user", "content": "hi"}], '
         b'"repetition_penalty": Infinity}'),
    chat("huge-body-8mb", {"messages": [{"role": "user", "content": "x " * 4_000_000}]},
         status=(400, 413)),
]

BAD_FIELDS = [
    chat("messages-missing", {"max_tokens": 4}, words="messages"),
    chat("messages-not-a-list", {"messages": "hi"}),
    chat("messages-empty", {"messages": []}),
    chat("message-not-an-object", {"messages": ["hi"]}),
    chat("role-unknown", {"messages": [{"role": "wizard", "content": "hi"}]}, words="role"),
    chat("content-a-number", {"messages": [{"role": "user", "content": 42}]}),
    chat("content-image-part", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}),
    chat("max-tokens-negative", max_tokens=-5, words="max_tokens"),
    chat("max-tokens-zero", max_tokens=0),
    chat("max-tokens-huge", max_tokens=10**12),
    chat("max-tokens-string", max_tokens="10"),
    chat("max-tokens-float", max_tokens=1.5),
    chat("max-tokens-bool", max_tokens=True),
    chat("n-too-large", n=1000, words="n"),
    chat("n-zero", n=0),
    chat("temperature-string", temperature="hot"),
    chat("top-p-zero", top_p=0),
    chat("stop-too-many", stop=[str(i) for i in range(17)]),
    chat("stop-a-number", stop=5),
    chat("stream-a-string", stream="yes"),
    chat("top-logprobs-21", logprobs=True, top_logprobs=21),
    chat("seed-beyond-int64", seed=2**70),
    chat("prompt-logprobs-huge", prompt_logprobs=100_000),
    chat("logit-bias-out-of-vocab", logit_bias={"999999999": 5}),
    chat("allowed-token-ids-out-of-vocab", allowed_token_ids=[999_999_999]),
    chat("min-tokens-over-max-tokens", min_tokens=50),
    chat("request-chat-template", chat_template="{{ raise('x') }}"),
    chat("tools-a-string", tools="all of them"),
    chat("user-an-object", user={"id": 1}),
    chat("unknown-model", model="gpt-4", status=(404, 404)),
    chat("model-empty-string", model=""),
    chat("model-path-traversal", model="../../etc/passwd", status=(404, 404)),
    chat("model-missing-version", model="dynalign-v99", status=(404, 404)),
    chat("model-version-of-4301-digits", model="dynalign-v" + "1" * 4301, status=(404, 404)),
    chat("prompt-beyond-context", {"messages": [{"role": "user", "content": "word " * 5000}],
                                   "max_tokens": 4}),
    chat("20k-messages", {"messages": [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "hello"}] * 10_000
                          + [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    chat("best-of-not-honoured", words="'best_of'", best_of=2),
    chat("unknown-extra-field", words="'frobnicate'", frobnicate={"a": [1, 2]}),
    chat("functions-not-honoured", words="tools", functions=[{"name": "f"}]),
]


def register(id: str, path_of, words: str = "", status=(400, 400), **extra) -> Bad:
    body = lambda dirs: {"path": path_of(dirs), **extra}  # noqa: E731
    return Bad(id, "POST", "/admin/adapters", body, status=status, words=words)


def activate(id: str, version: str, body=None, status=(404, 404)) -> Bad:
    return Bad(id, "POST", f"/admin/adapters/{version}/activate", body, status=status)


BAD_ADMIN = [
    register("register-garbage-config", lambda d: d["garbage-config"], words="json"),
    register("register-config-wrong-rank", lambda d: d["string-rank"], words="rank"),
    register("register-config-alpha-string", lambda d: d["string-alpha"]),
    register("register-truncated-safetensors", lambda d: d["truncated"], words="safetensors"),
    register("register-huge-header-length", lambda d: d["huge-header"], words="safetensors"),
    register("register-config-links-to-etc-passwd", lambda d: d["passwd-link"]),
    register("register-config-is-a-directory", lambda d: d["config-dir"]),
    register("register-config-is-a-fifo", lambda d: d["config-fifo"]),
    register("register-weights-is-a-directory", lambda d: d["weights-dir"]),
    register("register-path-traversal", lambda d: "../../../../../etc"),
    register("register-path-with-nul", lambda d: "/tmp/a\x00b"),
    register("register-path-too-long", lambda d: "/tmp/" + "a" * 5000),
    register("register-path-a-number", lambda d: 12, words="path"),
    register("register-missing-parent", lambda d: d["good"], status=(404, 404), parent=99),
    Bad("register-body-not-json", "POST", "/admin/adapters", b"{path:"),
    activate("activate-missing-version", "99"),
    activate("activate-version-beyond-sqlite", "99999999999999999999999"),
    Bad("adapter-version-beyond-sqlite", "GET", "/admin/adapters/99999999999999999999999",
        status=(404, 404)),
    Bad("adapter-version-of-4301-digits", "GET", "/admin/adapters/" + "1" * 4301,
        status=(404, 404)),
    activate("activate-version-of-4301-digits", "1" * 4301),
    register("register-parent-beyond-sqlite", lambda d: d["good"], words="parent",
             parent=10**30),
    activate("activate-negative-version", "-1"),
    activate("activate-float-version", "1.0"),
    activate("activate-encoded-traversal", "%2e%2e%2f%2e%2e%2fetc"),
    activate("activate-garbage-body", "base", body=b"{force", status=(400, 400)),
    activate("activate-list-body", "base", body=[1, 2], status=(400, 400)),
    Bad("rollback-to-nonsense", "POST", "/admin/rollback", {"to": "nonsense"}, status=(404, 404)),
    Bad("rollback-to-missing", "POST", "/admin/rollback", {"to": 99}, status=(404, 404)),
    Bad("rollback-to-traversal", "POST", "/admin/rollback", {"to": "../../etc"}, status=(404, 404)),
    Bad("refresh-negative-steps", "POST", "/admin/refresh", {"max_steps": -1}, words="max_steps"),
    Bad("refresh-unknown-key", "POST", "/admin/refresh", {"state_dir": "/tmp"}),
    Bad("refresh-list-body", "POST", "/admin/refresh", [1]),
    Bad("schedule-bad-cron", "PUT", "/admin/schedule", {"cron": "not a cron"}),
    Bad("schedule-hours-a-string", "PUT", "/admin/schedule", {"interval_hours": "six"}),
    Bad("exchanges-limit-not-int", "GET", "/admin/exchanges?limit=abc"),
    Bad("exchanges-limit-negative", "GET", "/admin/exchanges?limit=-5", words="limit"),
    Bad("exchanges-limit-zero", "GET", "/admin/exchanges?limit=0", words="limit"),
    Bad("exchanges-before-beyond-sqlite", "GET", "/admin/exchanges?before=" + "9" * 25),
    Bad("rounds-limit-negative", "GET", "/admin/rounds?limit=-1", words="limit"),
    Bad("round-beyond-sqlite", "GET", "/admin/rounds/" + "9" * 25),
    Bad("cancel-round-beyond-sqlite", "POST", "/admin/rounds/" + "9" * 25 + "/cancel"),
    Bad("delete-exchange-beyond-sqlite", "DELETE", "/admin/exchanges/" + "9" * 25),
    Bad("exchanges-opt-out-maybe", "GET", "/admin/exchanges?opt_out=maybe"),
    Bad("delete-exchange-not-int", "DELETE", "/admin/exchanges/abc"),
    Bad("delete-missing-exchange", "DELETE", "/admin/exchanges/999999", status=(404, 404)),
    Bad("round-missing", "GET", "/admin/rounds/999", status=(404, 404)),
]

BAD_AUTH = [
    Bad("chat-without-key", "POST", CHAT, {"messages": HI}, auth="none", status=(401, 401)),
    Bad("chat-with-wrong-key", "POST", CHAT, {"messages": HI}, auth="wrong", status=(401, 401)),
    # the admin key may chat (an operator's `dynalign eval`), and name any registered version
    Bad("chat-with-admin-key-names-a-missing-version", "POST", CHAT,
        {"messages": HI, "model": "dynalign-v99"}, auth="admin", status=(404, 404)),
    Bad("models-with-wrong-key", "GET", "/v1/models", auth="wrong", status=(401, 401)),
    Bad("admin-list-without-key", "GET", "/admin/adapters", auth="none", status=(401, 401)),
    Bad("admin-list-with-wrong-key", "GET", "/admin/adapters", auth="wrong", status=(401, 401)),
    Bad("admin-list-with-chat-key", "GET", "/admin/adapters", auth="chat", status=(403, 403)),
    Bad("activate-base-without-key", "POST", "/admin/adapters/base/activate", auth="none",
        status=(401, 401)),
    Bad("activate-base-with-chat-key", "POST", "/admin/adapters/base/activate", auth="chat",
        status=(403, 403)),
    Bad("rollback-with-wrong-key", "POST", "/admin/rollback", auth="wrong", status=(401, 401)),
    Bad("delete-exchange-without-key", "DELETE", "/admin/exchanges/1", auth="none",
        status=(401, 401)),
    Bad("refresh-with-chat-key", "POST", "/admin/refresh", {"max_steps": 1}, auth="chat",
        status=(403, 403)),
    Bad("schedule-without-key", "PUT", "/admin/schedule", {"off": True}, auth="none",
        status=(401, 401)),
]

BAD_METHODS = [
    Bad("get-chat-completions", "GET", CHAT, status=(405, 405)),
    Bad("put-chat-completions", "PUT", CHAT, {"messages": HI}, status=(405, 405)),
    Bad("delete-adapters", "DELETE", "/admin/adapters", status=(405, 405)),
    Bad("get-rollback", "GET", "/admin/rollback", status=(405, 405)),
    Bad("patch-schedule", "PATCH", "/admin/schedule", {"off": True}, status=(405, 405)),
    Bad("legacy-completions", "POST", "/v1/completions", {"prompt": "hi"}, status=(404, 404)),
    Bad("engine-dev-endpoint-through-gateway", "POST", "/collective_rpc",
        {"method": "reload_weights"}, status=(404, 404)),
]

def history(id: str, messages: list, index: int, words: str) -> Bad:
    """A malformed conversation: 400 invalid_messages naming messages[index]."""
    return chat(id, {"messages": messages, "max_tokens": 4}, words=f"messages[{index}] {words}")


ANSWERED = [*HI, {"role": "assistant", "content": "hello"}]
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call-1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}

BAD_HISTORIES = [
    history("history-user-after-user", [*ANSWERED, *HI, *HI], 3, "is a user turn right after"),
    history("history-empty-last-user-turn", [*ANSWERED, {"role": "user", "content": "  "}], 2,
            "is the last user turn and it is empty"),
    history("history-tool-result-without-its-call", [*HI, CALLED, {
        "role": "tool", "tool_call_id": "call-2", "content": "42"}], 2, "is a tool result"),
    Bad("conversation-header-with-a-space", "POST", CHAT, {"messages": HI, "max_tokens": 4},
        headers={"X-Conversation-Id": "two words"}, words="x-conversation-id"),
]

CATALOGUE = BAD_JSON + BAD_FIELDS + BAD_HISTORIES + BAD_ADMIN + BAD_AUTH + BAD_METHODS

# Odd but valid: answered (200) and logged once, and the engine lives on.
ODD_BUT_VALID = {
    "nul-in-content": with_content('"before\\u0000after"'),
    "rtl-override-and-zero-width": with_content('"abc\\u202edcba\\u200b\\u2066x\\u2069"'),
    "escaped-surrogate-pair-emoji": with_content('"smile \\ud83d\\ude00"'),
    "prompt-logprobs-with-n-2": raw({"messages": HI, "max_tokens": 2, "n": 2,
                                      "prompt_logprobs": 1}),
}
