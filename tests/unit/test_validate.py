"""server.validate: what a chat request may ask, and the OpenAI-shaped errors for what it may not."""

import pytest

from server.validate import (MAX_COMMENT, Limits, RequestError, parse_json, validate_chat,
                             validate_feedback)

LIMITS = Limits(max_n=4, max_model_len=512, lora_enabled=False)
LORA = Limits(max_n=4, max_model_len=512, lora_enabled=True)
MSGS = [{"role": "user", "content": "hi"}]


def _body(**extra):
    return {"model": "m", "messages": MSGS, **extra}


def _reject(body, limits=LIMITS) -> RequestError:
    with pytest.raises(RequestError) as e:
        validate_chat(body, limits)
    err = e.value
    assert err.status == 400
    out = err.body()
    assert set(out) == {"error"}
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["type"] == "invalid_request_error"
    assert out["error"]["message"] and out["error"]["param"] == err.param
    return err


def test_accepts_full_normal_body():
    body = {
        "model": "dynalign-v3",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
        "stream": True, "n": 4, "stop": ["\n", "END"], "seed": 7, "logprobs": True,
        "top_logprobs": 5, "max_tokens": 512, "temperature": 0.7, "top_p": 1, "user": "u",
        "presence_penalty": -1, "frequency_penalty": 0.5,
    }
    assert validate_chat(body, LIMITS) is None


def test_accepts_minimal_and_edges():
    validate_chat({"messages": MSGS}, LIMITS)  # model is optional
    validate_chat(_body(temperature=0, top_p=0.01, stop="x", max_tokens=1, n=1), LIMITS)
    validate_chat(_body(temperature=2.0), LIMITS)
    validate_chat({"messages": [{"role": "assistant", "content": None,
                                 "tool_calls": [{"id": "t"}]}]}, LIMITS)


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_rejects_non_object_body(body):
    err = _reject(body)
    assert err.param is None


def test_rejects_missing_messages():
    assert _reject({"model": "m"}).param == "messages"


@pytest.mark.parametrize("messages", [[], {"role": "user"}, "hi"])
def test_rejects_empty_or_non_list_messages(messages):
    assert _reject(_body(messages=messages)).param == "messages"


def test_rejects_message_not_object():
    assert _reject(_body(messages=[MSGS[0], "hi"])).param == "messages[1]"


@pytest.mark.parametrize("role", ["robot", None, "USER"])
def test_rejects_unknown_role(role):
    assert _reject(_body(messages=[{"role": role, "content": "x"}])).param == "messages[0].role"


@pytest.mark.parametrize("content", [3, None, {"text": "x"}, [{"type": "image_url", "image_url": {}}],
                                     [{"type": "text", "text": 5}], ["plain"]])
def test_rejects_bad_content(content):
    err = _reject(_body(messages=[{"role": "user", "content": content}]))
    assert err.param == "messages[0].content"


@pytest.mark.parametrize("model", ["", 3, ["m"]])
def test_rejects_bad_model(model):
    assert _reject(_body(model=model)).param == "model"


@pytest.mark.parametrize("value", [0, -1, "5", True, 513, 1.5])
def test_rejects_bad_max_tokens(value):
    assert _reject(_body(max_tokens=value)).param == "max_tokens"


def test_rejects_bad_max_completion_tokens():
    assert _reject(_body(max_completion_tokens=0)).param == "max_completion_tokens"
    assert "context length" in _reject(_body(max_completion_tokens=10_000)).message


@pytest.mark.parametrize("n", [0, 5, -2, "2", True])
def test_rejects_bad_n(n):
    assert _reject(_body(n=n)).param == "n"


@pytest.mark.parametrize("value", [3, -0.1, "hot", False, float("nan"), float("inf")])
def test_rejects_bad_temperature(value):
    assert _reject(_body(temperature=value)).param == "temperature"


@pytest.mark.parametrize("value", [0, 0.0, 1.5])
def test_rejects_bad_top_p(value):
    assert _reject(_body(top_p=value)).param == "top_p"


@pytest.mark.parametrize("stop", [[1], ["a", None], 5, ["s"] * 17])
def test_rejects_bad_stop(stop):
    assert _reject(_body(stop=stop)).param == "stop"


@pytest.mark.parametrize("key, value", [("seed", "7"), ("stream", "yes"), ("stream", 1),
                                        ("logprobs", 1), ("presence_penalty", 3)])
def test_rejects_other_wrong_types(key, value):
    assert _reject(_body(**{key: value})).param == key


def test_top_logprobs_needs_logprobs():
    assert _reject(_body(top_logprobs=3)).param == "top_logprobs"
    assert _reject(_body(top_logprobs=3, logprobs=False)).param == "top_logprobs"
    assert _reject(_body(top_logprobs=21, logprobs=True)).param == "top_logprobs"
    validate_chat(_body(top_logprobs=0), LIMITS)
    validate_chat(_body(top_logprobs=20, logprobs=True), LIMITS)


def test_prompt_logprobs_with_n2_rejected_under_lora():
    err = _reject(_body(prompt_logprobs=1, n=2), LORA)
    assert err.param == "prompt_logprobs"
    assert "LoRA" in err.message


def test_prompt_logprobs_streamed_rejected_under_lora():
    assert _reject(_body(prompt_logprobs=1, stream=True), LORA).param == "prompt_logprobs"
    validate_chat(_body(prompt_logprobs=1, stream=True, n=2), LIMITS)
    validate_chat(_body(prompt_logprobs=1, stream=False), LORA)


def test_prompt_logprobs_allowed_without_lora_or_with_n1():
    validate_chat(_body(prompt_logprobs=1, n=2), LIMITS)
    validate_chat(_body(prompt_logprobs=1, n=1), LORA)
    validate_chat(_body(prompt_logprobs=1), LORA)
    validate_chat(_body(n=2), LORA)


def test_request_error_body_carries_code_and_status():
    err = RequestError("nope", param="p", status=404, code="x_not_found", type="not_found_error")
    assert err.body() == {"error": {"message": "nope", "type": "not_found_error", "param": "p",
                                    "code": "x_not_found"}}
    assert err.status == 404 and str(err) == "nope"


@pytest.mark.parametrize("options", ["yes", [True], {"include_usage": "yes"}])
def test_rejects_bad_stream_options(options):
    assert _reject(_body(stream=True, stream_options=options)).status == 400


def test_accepts_stream_options_object():
    validate_chat(_body(stream=True, stream_options={"include_usage": True}), Limits())


@pytest.mark.parametrize("raw, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"content": "a\\ud800b"}', "lone surrogate"),
    (b'{"content": "\\udc00"}', "lone surrogate"),
    (b'{"temperature": NaN}', "NaN"),
    (b'{"repetition_penalty": -Infinity}', "Infinity"),
    (b'{"content": "\xff\xfe"}', "utf-8"),
    (b'{"messages": [', "invalid JSON")])
def test_parse_json_refuses_what_cannot_be_forwarded(raw, words):
    """Each of these was a 500 before: RecursionError, or httpx failing to re-encode the body."""
    with pytest.raises(RequestError, match=words) as e:
        parse_json(raw)
    assert e.value.status == 400


def test_parse_json_keeps_a_surrogate_pair_and_nul():
    assert parse_json(b'{"c": "\\ud83d\\ude00 \\u0000"}') == {"c": "\U0001F600 \x00"}



@pytest.mark.parametrize("field, words", [
    ("best_of", "sample n answers"), ("functions", "use 'tools'"), ("service_tier", ""),
    ("kv_transfer_params", ""), ("chat_template", "")])
def test_fields_the_server_does_not_honour_are_refused_by_name(field, words):
    err = _reject(_body(**{field: 2}))
    assert err.param == field and err.code == "unsupported_parameter"
    assert f"'{field}'" in err.message and words in err.message


def test_several_unknown_fields_are_named_together():
    err = _reject(_body(best_of=2, audio={}))
    assert "parameters 'audio', 'best_of'" in err.message and err.param == "audio"


def test_every_field_passed_through_is_one_vllm_honours():
    """The allow-list cannot drift from the engine: each field (but our own `store`) is a field
    of the installed vLLM's chat request, so none reaches it only to be ignored."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from server.validate import CHAT_FIELDS

    assert CHAT_FIELDS - {"store"} <= set(ChatCompletionRequest.model_fields)
    validate_chat(_body(top_k=5, min_p=0.1, ignore_eos=True, store=False), LIMITS)


def test_feedback_takes_an_id_a_rating_and_optional_comment_and_user():
    body = {"id": "chatcmpl-1", "rating": -1, "comment": "wrong", "user": "ann"}
    assert validate_feedback(body) is body
    assert validate_feedback({"id": "chatcmpl-1", "rating": 1})


@pytest.mark.parametrize("body, param", [
    ({"id": "chatcmpl-1"}, "rating"),
    ({"id": "chatcmpl-1", "rating": 0}, "rating"),
    ({"id": "chatcmpl-1", "rating": 5}, "rating"),
    ({"id": "chatcmpl-1", "rating": True}, "rating"),
    ({"id": "chatcmpl-1", "rating": 1.0}, "rating"),
    ({"id": "chatcmpl-1", "rating": "1"}, "rating"),
    ({"rating": 1}, "id"),
    ({"id": "", "rating": 1}, "id"),
    ({"id": 7, "rating": 1}, "id"),
    ({"id": "chatcmpl-1", "rating": 1, "comment": "x" * (MAX_COMMENT + 1)}, "comment"),
    ({"id": "chatcmpl-1", "rating": 1, "comment": ["x"]}, "comment"),
    ({"id": "chatcmpl-1", "rating": 1, "user": 3}, "user"),
    ({"id": "chatcmpl-1", "rating": 1, "stars": 5}, "stars"),
])
def test_malformed_feedback_is_a_400_naming_the_field(body, param):
    with pytest.raises(RequestError) as e:
        validate_feedback(body)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_feedback_body_must_be_an_object():
    with pytest.raises(RequestError):
        validate_feedback([{"id": "chatcmpl-1", "rating": 1}])


def _user(text="hi"):
    return {"role": "user", "content": text}


def _assistant(text="hello", calls=()):
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}} for c in calls]}


def _tool(call_id, text="42"):
    return {"role": "tool", "tool_call_id": call_id, "content": text}


@pytest.mark.parametrize("messages, index, words", [
    ([_user(), _user("again")], 1, "user turn right after a user turn"),
    ([{"role": "system", "content": "s"}, _user(), _assistant(), _user(), _user()], 4,
     "must alternate"),
    ([_user("   ")], 0, "last user turn and it is empty"),
    ([_user(), _assistant(), {"role": "user", "content": [{"type": "text", "text": " "}]},
      _assistant("prefix")], 2, "empty"),
    ([_user(), _tool("c1")], 1, "no earlier assistant message made"),
    ([_user(), _assistant(calls=["c1"]), _tool("c2")], 2, "'c2'"),
    ([_user(), _assistant(calls=["c1"]), {"role": "tool", "content": "42"}], 2, "None"),
    ([_user(), _tool("c1"), _assistant(calls=["c1"])], 1, "earlier"),  # the call came after
], ids=["user-after-user", "user-after-user-later", "empty-last-user", "empty-last-user-parts",
        "tool-without-call", "tool-other-call", "tool-without-id", "tool-before-its-call"])
def test_rejects_malformed_histories_naming_the_message(messages, index, words):
    err = _reject({"messages": messages})
    assert err.param == f"messages[{index}]" and err.code == "invalid_messages"
    assert err.message.startswith(f"messages[{index}] ") and words in err.message


@pytest.mark.parametrize("messages", [
    [_user(), _assistant(calls=["c1", "c2"]), _tool("c1"), _tool("c2")],  # results last
    [_user(), _assistant(), _user("go on"), _assistant("Once upon")],  # a prefix to continue
    [_user(""), _assistant(), _user("now this")],  # an earlier empty turn is the client's choice
    [{"role": "system", "content": "only instructions"}],
    [_user(), _assistant(), _assistant("more")],
], ids=["tool-results", "assistant-prefix", "earlier-empty", "system-only", "assistant-twice"])
def test_accepts_histories_that_render_as_meant(messages):
    assert validate_chat({"messages": messages}, LIMITS) is None
