"""Checks on request bodies before anything reaches the engine: reading them (size limit, strict
JSON; the gateway's and the admin routers'), and a chat-completions body's fields.

Pure Python, no engine needed. Each failure is a `RequestError` that the gateway turns into an
OpenAI-style error body. The engine re-checks what needs the tokenizer (prompt length).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynalign import canary as canary_rules

if TYPE_CHECKING:
    from starlette.requests import Request

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot exist (and overflows a query)
MIN_ID = -(2**63)  # SQLite's smallest: ids in between that name no row are a 404, not a 400
MAX_PAGE = 500  # the most rows one admin listing returns; a larger `limit` is capped to it

# What a chat request may carry. vLLM ignores fields it does not know (it only logs them), so a
# client sending `best_of` or `functions` would silently get something else than it asked for:
# anything outside this list is a 400 naming it. OpenAI's chat fields that vLLM honours, our
# `store` (opt-out), and vLLM's sampling extras passed through on purpose (docs/api.md).
OPENAI_FIELDS = frozenset({
    "messages", "model", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
    "top_logprobs", "max_tokens", "max_completion_tokens", "n", "response_format", "seed", "stop",
    "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "reasoning_effort", "store"})
VLLM_EXTRAS = frozenset({
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
    "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens",
    "bad_words", "allowed_token_ids", "prompt_logprobs", "structured_outputs",
    "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "echo",
    "truncate_prompt_tokens"})
CHAT_FIELDS = OPENAI_FIELDS | VLLM_EXTRAS
INSTEAD = {"best_of": "sample n answers and choose yourself", "functions": "use 'tools'",
           "function_call": "use 'tool_choice'"}


class RequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass
class Limits:
    max_n: int = 8
    max_model_len: int = 2048
    lora_enabled: bool = False


def parse_json(raw: bytes):
    """Strict JSON, or a RequestError: invalid UTF-8, NaN/Infinity, nesting deeper than the parser
    goes, and lone surrogates ("\\ud800", which cannot be re-encoded to forward) are all refused."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise RequestError("invalid JSON body: nested too deeply") from None
    except UnicodeEncodeError:
        raise RequestError("invalid JSON body: a string holds a lone surrogate "
                           "(\\ud800-\\udfff without its pair)") from None
    except ValueError as e:
        raise RequestError(f"invalid JSON body: {e}") from None
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def validate_chat(body, limits: Limits) -> None:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    _check_fields(body)
    _check_messages(body.get("messages"))
    _check_model(body)
    _check_sampling(body, limits)
    _check_logprobs(body, limits)


FEEDBACK_FIELDS = frozenset({"id", "rating", "comment", "user"})
MAX_COMMENT = 4000  # characters: a comment is a remark on one answer, not a document
MAX_USER = 256


def validate_feedback(body) -> dict:
    """A POST /v1/feedback body: {"id": completion id, "rating": 1 | -1, "comment"?, "user"?}."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    unknown = sorted(set(body) - FEEDBACK_FIELDS)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}: feedback takes id, rating, comment "
                           "and user", param=unknown[0], code="unsupported_parameter")
    if not isinstance(body.get("id"), str) or not 0 < len(body["id"]) <= MAX_USER:
        raise RequestError("'id' must be the chat completion's id (a non-empty string)",
                           param="id")
    if _typed(body, "rating", int) not in (1, -1):
        raise RequestError(f"'rating' must be 1 (thumbs up) or -1 (thumbs down), got "
                           f"{body.get('rating')!r}", param="rating")
    for key, limit in (("comment", MAX_COMMENT), ("user", MAX_USER)):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise RequestError(f"'{key}' must be a string of at most {limit} characters",
                               param=key)
    return body


def validate_canary(body: dict, defaults: dict) -> dict:
    """A POST /admin/canary body, with `defaults` (the [canary] config section) filled in."""
    unknown = sorted(set(body) - set(canary_rules.FIELDS) - {"version"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}: a canary takes version, "
                           f"{', '.join(canary_rules.FIELDS)}", param=unknown[0])
    if _typed(body, "version", int) is None or not 0 < body["version"] <= MAX_ID:
        raise RequestError("'version' must be the number of a registered adapter version",
                           param="version")
    out = {**defaults, **body}
    for key in canary_rules.FIELDS:
        _typed(out, key, type(defaults[key]))
    bad = canary_rules.problems(out)
    if bad:
        key, why = bad[0]
        raise RequestError(f"'{key}' {why}", param=key)
    return out


def _check_fields(body: dict) -> None:
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:
        hint = "; ".join(f"{k}: {INSTEAD[k]}" for k in unknown if k in INSTEAD)
        raise RequestError(
            f"unsupported parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}: this server does not honour "
            f"{'them' if len(unknown) > 1 else 'it'}{f' ({hint})' if hint else ''}; "
            "docs/api.md lists the fields a chat request takes", param=unknown[0],
            code="unsupported_parameter")


def _check_messages(messages) -> None:
    if messages is None:
        raise RequestError("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")
    _check_history(messages)


def _check_history(messages: list[dict]) -> None:
    """A history a chat template renders as the client means it: user and assistant turns
    alternating, each tool result answering a call made before it, a last user turn with text.
    (A last message of another role is kept: a tool result, an assistant prefix to continue.)"""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "user" and i and messages[i - 1]["role"] == "user":
            raise _bad_history(i, "is a user turn right after a user turn: user and "
                               "assistant turns must alternate (chat templates such as "
                               "Llama 2's, Mistral's and Gemma's require it, and so do the "
                               "training prompts made from the log); send them as one message")
        made = message.get("tool_calls") if role == "assistant" else None
        if isinstance(made, list):  # its shape is the engine's to check
            calls |= {c["id"] for c in made if isinstance(c, dict) and isinstance(c.get("id"), str)}
        call = message.get("tool_call_id")
        if role == "tool" and not (isinstance(call, str) and call in calls):
            raise _bad_history(i, f"is a tool result for the call {repr(call)[:80]}, which "
                               "no earlier assistant message made (its tool_calls[].id)")
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is not None and not _text_of(messages[last]).strip():
        raise _bad_history(last, "is the last user turn and it is empty: there is nothing to "
                           "answer")


def _bad_history(index: int, why: str) -> RequestError:
    return RequestError(f"messages[{index}] {why}", param=f"messages[{index}]",
                        code="invalid_messages")


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part["text"] for part in content)  # text parts only (_check_message)
    return content or ""


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise RequestError(f"{where} must be an object", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}",
                           param=f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant" and message.get("tool_calls"):
        return
    if isinstance(content, str):
        return
    if isinstance(content, list) and all(_is_text_part(p) for p in content):
        return
    raise RequestError(f"{where}.content must be a string or an array of text parts",
                       param=f"{where}.content")


def _is_text_part(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _check_model(body: dict) -> None:
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise RequestError("'model' must be a non-empty string", param="model")


def _check_sampling(body: dict, limits: Limits) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = _typed(body, key, int)
        if value is not None and value <= 0:
            raise RequestError(f"'{key}' must be at least 1, got {value}", param=key)
        if value is not None and value > limits.max_model_len:
            raise RequestError(f"'{key}' is {value}, more than the context length "
                               f"({limits.max_model_len} tokens)", param=key)
    n = _typed(body, "n", int)
    if n is not None and not 1 <= n <= limits.max_n:
        raise RequestError(f"'n' must be between 1 and {limits.max_n}, got {n}", param="n")
    _in_range(body, "temperature", 0.0, 2.0)
    _in_range(body, "top_p", 0.0, 1.0, low_open=True)
    _in_range(body, "presence_penalty", -2.0, 2.0)
    _in_range(body, "frequency_penalty", -2.0, 2.0)
    _typed(body, "seed", int)
    _typed(body, "stream", bool)
    _check_stream_options(body.get("stream_options"))
    _check_stop(body.get("stop"))


def _check_logprobs(body: dict, limits: Limits) -> None:
    logprobs = _typed(body, "logprobs", bool)
    top = _typed(body, "top_logprobs", int)
    if top is not None and not 0 <= top <= 20:
        raise RequestError("'top_logprobs' must be between 0 and 20", param="top_logprobs")
    if top and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    if body.get("prompt_logprobs") is None or not limits.lora_enabled:
        return
    # vLLM's CPU LoRA path kills the whole engine when one step computes prompt logprobs for more
    # than one sequence: the gateway allows one such request at a time, with n = 1, not streamed.
    if (body.get("n") or 1) >= 2 or body.get("stream"):
        raise RequestError("'prompt_logprobs' needs n = 1 and no streaming while LoRA serving is "
                           "enabled", param="prompt_logprobs")


def _typed(body: dict, key: str, kind: type):
    value = body.get(key)
    if value is None:
        return None
    bad_bool = kind is not bool and isinstance(value, bool)
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    ok = ok and (kind is not float or math.isfinite(value))
    if bad_bool or not ok:
        names = {int: "an integer", float: "a finite number", bool: "a boolean", str: "a string"}
        raise RequestError(f"'{key}' must be {names[kind]}, got {value!r}", param=key)
    return value


def _in_range(body: dict, key: str, low: float, high: float, low_open: bool = False) -> None:
    value = _typed(body, key, float)
    if value is None:
        return
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(f"'{key}' must be in {bracket}{low}, {high}], got {value}", param=key)


def _check_stream_options(options) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    for key in ("include_usage", "continuous_usage_stats"):
        _typed(options, key, bool)


def _check_stop(stop) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
        raise RequestError("'stop' must be a string or an array of at most 16 strings",
                           param="stop")


# request bodies (the gateway's and the admin routers': the one reader)
async def read_body(request: Request) -> bytes:
    """The request body, read as it streams in, for every route that takes one. 413
    request_too_large past `server.max_body_mb`: on a Content-Length over it before anything is
    read, else as soon as the bytes read pass it (a chunked body, or one whose Content-Length lies
    low), so no more than the limit is ever held. 415 for a body not declared application/json
    (_not_json)."""
    limit = int(request.app.state.cfg.server.max_body_mb * 2**20)
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise _not_json(content_type)  # refused unread
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(request)
    chunks, size = [], 0  # joined once at the end: a growing buffer would copy itself
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(request)
        chunks.append(chunk)
    body = b"".join(chunks)
    if content_type is None and body.strip():
        raise _not_json(content_type)  # no type at all: only the routes taking no body
    return body


def _too_large(request: Request) -> RequestError:
    return RequestError(f"request body over {request.app.state.cfg.server.max_body_mb:g} MiB "
                        "(server.max_body_mb)", status=413, code="request_too_large")


def _is_json(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/json"


def _not_json(content_type: str | None) -> RequestError:
    """415 for a body not declared `Content-Type: application/json`: a browser sends a
    cross-site form or text/plain fetch without asking the server first (no CORS preflight),
    and such a chat would be logged and trained on. A request without a body (how the routes
    that take none are called) needs no type."""
    return RequestError("the body must be JSON sent with 'Content-Type: application/json' "
                        f"(got {content_type or 'no Content-Type'!r})", status=415,
                        code="unsupported_media_type")


async def read_json(request: Request):
    return parse_json(await read_body(request))


async def read_object(request: Request, what: str, required: bool = False) -> dict:
    """A JSON object body (`what` names it in the error); an empty body is {} unless required."""
    raw = await read_body(request)  # read once: the stream cannot be read again
    if not required and not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object{what}")
    return body
