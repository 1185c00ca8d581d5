"""The gateway with swap mode "lora": versions are LoRA adapters loaded into the engine by name, so
the base model and any version answer side by side. Also the request kind that crashes vLLM's CPU
LoRA path (prompt_logprobs for several sequences) must be kept away from the engine.

One server for the whole module; tests run in file order.
"""

from __future__ import annotations

import threading
import uuid

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

GREEDY_MESSAGES = [{"role": "user", "content": "Write a short poem about autumn."}]


def greedy(server, model: str = "dynalign", user: str | None = None):
    return server.client().chat.completions.create(
        model=model, messages=GREEDY_MESSAGES, temperature=0, max_tokens=24,
        extra_headers={"X-Dynalign-User": user or f"t-{uuid.uuid4().hex[:12]}"})


def in_threads(*calls):
    """Run the calls at the same time; return their results (or exceptions) in order."""
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i, call):
        try:
            barrier.wait(timeout=60)
            results[i] = call()
        except Exception as e:  # returned, asserted by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


@pytest.fixture(scope="module")
def base_text(lora):
    completion = greedy(lora)
    assert completion.model == lora.base_name
    assert completion.choices[0].message.content
    return completion.choices[0].message.content


def test_register_with_activate_changes_greedy_output(lora, test_adapter, base_text):
    assert lora.get("/health").json()["swap"] == "lora"
    response = lora.post("/admin/adapters", json={"path": str(test_adapter), "activate": True})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 1 and response.json()["status"] == "active"
    assert lora.active() == "dynalign-v1"

    user = f"t-{uuid.uuid4().hex[:12]}"
    tuned = greedy(lora, user=user)
    assert tuned.model == "dynalign-v1"
    assert tuned.choices[0].message.content and tuned.choices[0].message.content != base_text
    [row] = lora.wait_rows(user)
    assert row["version"] == 1 and row["model_served"] == "dynalign-v1"


def test_base_and_version_answer_side_by_side(lora, base_text):
    ids = {m.id for m in lora.client().models.list().data}
    assert {"dynalign", lora.base_name, "dynalign-v1"} <= ids

    base, tuned = in_threads(lambda: greedy(lora, model=lora.base_name),
                             lambda: greedy(lora, model="dynalign-v1"))
    assert not isinstance(base, Exception), base
    assert not isinstance(tuned, Exception), tuned
    assert base.model == lora.base_name and tuned.model == "dynalign-v1"
    assert base.choices[0].message.content and tuned.choices[0].message.content
    assert base.choices[0].message.content != tuned.choices[0].message.content
    # each alone, greedy: the base answers as it did before the adapter came
    assert greedy(lora, model=lora.base_name).choices[0].message.content == base_text


def test_prompt_logprobs_that_would_crash_the_engine_are_refused(lora, openai_error):
    client = lora.client()
    messages = [{"role": "user", "content": "hi"}]
    for extra in ({"n": 2}, {"stream": True}):
        response = httpx.post(f"{lora.url}/v1/chat/completions", timeout=120, json={
            "messages": messages, "max_tokens": 4, "prompt_logprobs": 1, **extra})
        assert response.status_code == 400, response.text
        assert openai_error(response)["param"] == "prompt_logprobs"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dynalign", messages=messages, max_tokens=4, n=2,
                                       extra_body={"prompt_logprobs": 1})

    # allowed: n = 1, several at once (the gateway runs them one at a time), base and adapter
    def one(model):
        return lambda: lora.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"hello {model}, how are you?"}],
            max_tokens=4, extra_body={"prompt_logprobs": 1})
    results = in_threads(*[one(m) for m in ("dynalign", lora.base_name, "dynalign", "dynalign-v1")])
    assert not [r for r in results if isinstance(r, Exception)], results
    assert all(r.model_extra.get("prompt_logprobs") for r in results)

    assert lora.get("/health").json()["engine"] is True
    after = client.chat.completions.create(model="dynalign", messages=messages, max_tokens=4, n=2)
    assert len(after.choices) == 2


def test_swap_under_load_fails_nothing(lora, test_adapter, swap_under_load, check_swaps):
    """v1 is loaded already; a version registered now is first loaded by its activation, under
    load."""
    assert lora.active() == "dynalign-v1"
    response = lora.post("/admin/adapters", json={"path": str(test_adapter)})
    assert response.status_code == 201, response.text
    new = response.json()["version"]
    results, activations = swap_under_load(lora, [str(new), "base", "1"], per_swap=8)
    assert [a.name for a in activations] == [f"dynalign-v{new}", lora.base_name, "dynalign-v1"]
    check_swaps(results, activations, before="dynalign-v1")


def test_first_requests_to_an_unloaded_version_at_once(lora, test_adapter):
    response = lora.post("/admin/adapters", json={"path": str(test_adapter)})  # a new version
    assert response.status_code == 201, response.text
    name = response.json()["name"]

    def ask(client):
        return lambda: client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    results = in_threads(*[ask(lora.client()) for _ in range(8)])
    failed = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, openai.APIStatusError) for r in failed), failed
    assert lora.get("/health").json()["engine"] is True
    assert not failed, [f"{r.status_code} {r.message[:200]}" for r in failed]


def test_ctrl_c_stops_gateway_and_engine(lora):
    result = lora.stop()
    assert result.sigint_stopped, lora.output()
    assert not result.survivors, result.survivors
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{lora.engine_port}/health", timeout=5)
