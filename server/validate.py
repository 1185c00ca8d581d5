"""Checks on a chat-completions request body before anything reaches the engine.

Pure Python, no engine needed. Each failure is a `RequestError` that the gateway turns into an
OpenAI-style error body. The engine re-checks what needs the tokenizer (prompt length).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

ROLES = {"system", "developer", "user", "assistant", "tool"}


class RequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type

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
    _check_messages(body.get("messages"))
    _check_model(body)
    _check_sampling(body, limits)
    _check_logprobs(body, limits)


def _check_messages(messages) -> None:
    if messages is None:
        raise RequestError("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")


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
        names = {int: "an integer", float: "a finite number", bool: "a boolean"}
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
