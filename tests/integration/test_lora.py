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


def test_first_requests_to_an_unloaded_version_at_once(lora, test_adapter, openai_error):
    """A registered version that is not serving answers by name only to the admin key (an
    operator's `dynalign eval`); eight such first requests at once load it once."""
    response = lora.post("/admin/adapters", json={"path": str(test_adapter)})  # a new version
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    refused = httpx.post(f"{lora.url}/v1/chat/completions", timeout=60, json={
        "model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert refused.status_code == 404 and openai_error(refused)["code"] == "model_not_serving"
    assert "it is candidate" in openai_error(refused)["message"]
    assert name not in {m.id for m in lora.client().models.list().data}

    def ask(client):
        return lambda: client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    results = in_threads(*[ask(lora.client(key=lora.admin_key)) for _ in range(8)])
    failed = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, openai.APIStatusError) for r in failed), failed
    assert lora.get("/health").json()["engine"] is True
    assert not failed, [f"{r.status_code} {r.message[:200]}" for r in failed]


# canary rollouts: a share of the alias's users on a candidate, next to the active version
def one_word(server, user: str):
    """One token for `user`; a one-word system message replaces the chat template's default
    one, which would triple the prompt (LoRA prefill is the cost of the canary tests on CPU)."""
    return server.client().chat.completions.create(
        model="dynalign", max_tokens=1, extra_headers={"X-Dynalign-User": user},
        messages=[{"role": "system", "content": "Hi."}, {"role": "user", "content": "hi"}])


def canary_arm(server, user: str) -> str:
    return "canary" if one_word(server, user).model == server.canary_name else "active"


def test_bad_canaries_are_refused_and_change_nothing(lora, openai_error):
    assert lora.active() == "dynalign-v1"
    for body, status, code in (({"version": 1}, 409, "already_active"),
                               ({"version": 99}, 404, None),
                               ({"version": 3, "share": 1.5}, 400, None),
                               ({"version": 3, "share": 0}, 400, None),
                               ({"version": "3"}, 400, None),
                               ({"version": 3, "stars": 5}, 400, None)):
        response = lora.post("/admin/canary", json=body)
        assert response.status_code == status, (body, response.text)
        assert code is None or openai_error(response)["code"] == code
    assert lora.delete("/admin/canary").status_code == 409  # none runs
    assert lora.get("/admin/canary").json() == {"canary": None, "arms": None}


def test_a_canary_splits_users_sticky_within_binomial_bounds_and_stops(lora, openai_error):
    from dynalign.canary import arm_of

    started = lora.post("/admin/canary", json={"version": 3, "share": 0.3, "min_feedback": 1000})
    assert started.status_code == 201, started.text
    canary = started.json()["canary"]
    lora.canary_name = "dynalign-v3"
    again = lora.post("/admin/canary", json={"version": 2})
    assert again.status_code == 409 and openai_error(again)["code"] == "canary_running"
    refused = lora.activate("2")  # a swap would change an arm under the comparison
    assert refused.status_code == 409 and openai_error(refused)["code"] == "canary_running"

    # 100 users: the bounds below fail a split that sends all or none, or inverts the share
    # (70 %); every user's arm is also checked against the documented hash
    users = [f"canary-{uuid.uuid4().hex[:10]}" for _ in range(100)]
    arms = {}
    for batch in range(0, len(users), 8):
        got = in_threads(*[(lambda u=u: canary_arm(lora, u)) for u in users[batch:batch + 8]])
        assert not [a for a in got if isinstance(a, Exception)], got
        arms.update(zip(users[batch:batch + 8], got))
    n, p = len(users), 0.3
    low, high = n * p - 4.5 * (n * p * (1 - p)) ** 0.5, n * p + 4.5 * (n * p * (1 - p)) ** 0.5
    assert low <= list(arms.values()).count("canary") <= high  # P(outside) < 1e-5
    assert arms == {u: arm_of(u, canary["id"], 0.3) for u in users}  # the documented hash
    assert all(canary_arm(lora, u) == arms[u] for u in users[:10])  # sticky

    live = lora.get("/admin/canary").json()
    assert live["canary"]["status"] == "running"
    scraped = lora.get("/metrics").text  # the arms in Prometheus text too
    assert (f'dynalign_canary_requests{{arm="canary",version="dynalign-v3"}} '
            f'{live["arms"]["canary"]["requests"]}.0') in scraped
    assert live["arms"]["canary"]["requests"] == list(arms.values()).count("canary") + sum(
        arms[u] == "canary" for u in users[:10])
    assert live["arms"]["active"]["errors"] == live["arms"]["canary"]["errors"] == 0
    assert live["arms"]["active"]["name"] == "dynalign-v1"
    stopped = lora.delete("/admin/canary").json()
    assert stopped["canary"]["status"] == "stopped" and lora.active() == "dynalign-v1"
    assert one_word(lora, users[0]).model == "dynalign-v1"  # everyone on the active again


def rate_by_arm(server, users: int, canary_rating: int, active_rating: int):
    for _ in range(users):
        answer = one_word(server, f"rater-{uuid.uuid4().hex[:10]}")
        rating = canary_rating if answer.model == server.canary_name else active_rating
        response = httpx.post(f"{server.url}/v1/feedback", json={"id": answer.id,
                                                                 "rating": rating}, timeout=60)
        assert response.status_code == 200, response.text
        if server.get("/admin/canary").json()["canary"]["status"] != "running":
            return


def test_ratings_promote_a_canary_that_does_as_well(lora):
    started = lora.post("/admin/canary", json={"version": 3, "share": 0.5, "min_feedback": 4,
                                               "min_raters": 4})
    assert started.status_code == 201, started.text
    lora.canary_name = "dynalign-v3"
    rate_by_arm(lora, 60, canary_rating=1, active_rating=1)
    ended = lora.get("/admin/canary").json()
    assert ended["canary"]["status"] == "promoted", ended
    assert min(a["feedback"]["ratings"] for a in ended["arms"].values()) >= 4
    assert lora.active() == "dynalign-v3"


def test_ratings_roll_back_a_canary_that_does_worse(lora):
    started = lora.post("/admin/canary", json={"version": 2, "share": 0.5, "min_feedback": 4,
                                               "min_raters": 4})
    assert started.status_code == 201, started.text
    lora.canary_name = "dynalign-v2"
    rate_by_arm(lora, 60, canary_rating=-1, active_rating=1)
    ended = lora.get("/admin/canary").json()
    assert ended["canary"]["status"] == "rolled_back" and "worse" in ended["canary"]["reason"]
    assert lora.active() == "dynalign-v3"
    [v2] = [a for a in lora.get("/admin/adapters").json()["data"] if a["version"] == 2]
    assert v2["status"] == "rejected" and "approval 0.00" in v2["note"]


def test_ctrl_c_stops_gateway_and_engine_and_a_restart_resumes_the_canary(
        lora, test_adapter, start_server):
    version = lora.post("/admin/adapters", json={"path": str(test_adapter)}).json()["version"]
    started = lora.post("/admin/canary", json={"version": version, "share": 0.5})
    assert started.status_code == 201, started.text
    users = [f"resume-{i}" for i in range(6)]
    models = {u: one_word(lora, u).model for u in users}
    for user in users:
        lora.wait_rows(user)
    before = lora.get("/admin/canary").json()

    result = lora.stop()
    assert result.sigint_stopped, lora.output()
    assert not result.survivors, result.survivors
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{lora.engine_port}/health", timeout=5)

    again = start_server(lora.home.parent, lora.model_path, "lora")
    try:
        resumed = again.get("/admin/canary").json()
        assert resumed["canary"] == before["canary"] and resumed["canary"]["status"] == "running"
        assert resumed["arms"] == before["arms"]  # its counts come from the log
        assert {u: one_word(again, u).model for u in users} == models  # the same arms
    finally:
        result = again.stop()
    assert result.sigint_stopped and not result.survivors, (result, again.output())
