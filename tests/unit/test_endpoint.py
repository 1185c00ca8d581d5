"""The openai client's retries as configured by Endpoint, against a real local HTTP server that
answers with scripted statuses (standing in for a rate-limited or misconfigured provider)."""

import pytest

from dynalign.endpoint import Endpoint
from dynalign.errors import EndpointError

COMPLETION = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "Plan a trip"}}]}


@pytest.fixture
def provider(json_server):
    """A server answering each POST with the next (status, body) of `script`."""
    state = {"script": [], "requests": []}

    def respond(path, headers, body):
        state["requests"].append((headers, body))
        status, payload = state["script"].pop(0) if state["script"] else (200, COMPLETION)
        return status, payload, {"Retry-After": "0"} if status == 429 else {}

    state["url"] = json_server(respond)
    return state


def _error(message):
    return {"error": {"message": message, "type": "x", "code": None}}


def test_sends_model_seed_temperature_key_and_opt_out(provider, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    endpoint = Endpoint("goal_writer", provider["url"], "m1", "JUDGE_KEY", temperature=0.5,
                        max_tokens=9)
    assert endpoint.chat([{"role": "user", "content": "hi"}], seed=42) == "Plan a trip"
    headers, body = provider["requests"][0]
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["x-dynalign-opt-out"] == "1"
    assert (body["model"], body["seed"], body["temperature"], body["max_tokens"]) == \
        ("m1", 42, 0.5, 9)


def test_negative_temperature_is_not_sent(provider):
    Endpoint("evaluator", provider["url"], "m", temperature=-1).chat([])
    assert "temperature" not in provider["requests"][0][1]


def test_rate_limits_and_5xx_are_retried(provider):
    provider["script"] = [(429, _error("slow down")), (503, _error("busy"))]
    assert Endpoint("evaluator", provider["url"], "m", max_retries=2).chat([]) == "Plan a trip"
    assert len(provider["requests"]) == 3


def test_gives_up_after_the_retries_with_a_clear_error(provider):
    provider["script"] = [(500, _error("boom"))] * 3
    with pytest.raises(EndpointError, match=r"evaluator \(m at .*\): still HTTP 500 after 2 "
                                            r"retries: boom"):
        Endpoint("evaluator", provider["url"], "m", max_retries=2).chat([])


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_fail_at_once_and_name_the_key_variable(provider, status):
    provider["script"] = [(status, _error("bad key"))]
    with pytest.raises(EndpointError, match=f"authentication failed \\(HTTP {status}\\): set "
                                            "JUDGE_KEY"):
        Endpoint("prompt_writer", provider["url"], "m", "JUDGE_KEY", max_retries=5).chat([])
    assert len(provider["requests"]) == 1


def test_unknown_model(provider):
    provider["script"] = [(404, _error("The model 'nope' does not exist"))]
    with pytest.raises(EndpointError, match="HTTP 404, no such model or path: The model 'nope'"):
        Endpoint("goal_writer", provider["url"], "nope").chat([])


def test_unreachable_endpoint():
    with pytest.raises(EndpointError, match="cannot connect after 0 retries"):
        Endpoint("goal_writer", "http://127.0.0.1:9/v1", "m", max_retries=0).chat([])
