"""The gateway in front of a real vLLM engine, swap mode "merged": chat through the official openai
client, the SQLite log, bad input, hot-swap and rollback, swaps under load, Ctrl-C.

One server for the whole module; tests run in file order and each leaves the base model active.
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import uuid

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

GREEDY_MESSAGES = [{"role": "user", "content": "Write a short poem about autumn."}]


def tag() -> str:
    """A fresh value for X-Dynalign-User: it finds the request's row without touching the prompt."""
    return f"t-{uuid.uuid4().hex[:12]}"


def greedy(server, model: str = "dynalign", user: str | None = None):
    return server.client().chat.completions.create(
        model=model, messages=GREEDY_MESSAGES, temperature=0, max_tokens=24,
        extra_headers={"X-Dynalign-User": user or tag()})


# 1. non-streaming chat and its log row
@pytest.mark.parametrize("model", ["dynalign", None], ids=["alias", "omitted"])
def test_chat_is_answered_and_logged(merged, model):
    user = tag()
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Name a colour."}]
    raw = merged.client().chat.completions.with_raw_response.create(
        model=model or openai.NOT_GIVEN,  # NOT_GIVEN: the body has no "model" key at all
        messages=messages, max_tokens=16, extra_headers={"X-Dynalign-User": user})
    completion = raw.parse()
    assert raw.headers.get("x-dynalign-version") == merged.base_name
    assert completion.model == merged.base_name
    text = completion.choices[0].message.content
    assert text
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0

    [row] = merged.wait_rows(user)
    assert row["model_served"] == merged.base_name
    assert row["model_requested"] == model
    assert row["version"] is None
    assert row["status"] == "ok"
    assert row["stream"] == 0 and row["opt_out"] == 0 and row["mixed_versions"] == 0
    assert row["prompt_tokens"] == completion.usage.prompt_tokens
    assert row["completion_tokens"] == completion.usage.completion_tokens
    assert row["latency_ms"] > 0
    assert row["ttft_ms"] is None
    assert json.loads(row["messages"]) == messages
    [logged] = json.loads(row["response"])
    assert logged["content"] == text
    assert logged["finish_reason"] == completion.choices[0].finish_reason == row["finish_reason"]
    assert json.loads(row["params"]) == {"max_tokens": 16}


# 2. streaming chat
def test_stream_matches_log_and_sends_no_usage_unless_asked(merged):
    user = tag()
    messages = [{"role": "user", "content": "Say something about rivers."}]
    chunks = list(merged.client().chat.completions.create(
        model="dynalign", messages=messages, max_tokens=20, stream=True,
        extra_headers={"X-Dynalign-User": user}))
    assert chunks
    assert all(c.usage is None for c in chunks), "usage sent without stream_options.include_usage"
    assert all(c.choices for c in chunks), "a chunk without choices (the usage chunk) leaked"
    assert {c.model for c in chunks} == {merged.base_name}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text

    [row] = merged.wait_rows(user)
    assert row["stream"] == 1 and row["status"] == "ok"
    assert json.loads(row["response"])[0]["content"] == text
    assert row["completion_tokens"] > 0 and row["prompt_tokens"] > 0  # the gateway asked for usage
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]


def test_stream_with_include_usage_ends_with_usage(merged):
    user = tag()
    chunks = list(merged.client().chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": "Say something about lakes."}],
        max_tokens=20, stream=True, stream_options={"include_usage": True},
        extra_headers={"X-Dynalign-User": user}))
    last = chunks[-1]
    assert last.usage is not None and last.choices == []
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)

    [row] = merged.wait_rows(user)
    assert json.loads(row["response"])[0]["content"] == text
    assert row["completion_tokens"] == last.usage.completion_tokens
    assert row["prompt_tokens"] == last.usage.prompt_tokens
    assert row["ttft_ms"] is not None


def test_stream_with_several_choices_is_logged_per_choice(merged):
    user = tag()
    chunks = list(merged.client().chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=12,
        n=2, stream=True, extra_headers={"X-Dynalign-User": user}))
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    [row] = merged.wait_rows(user)
    logged = json.loads(row["response"])
    assert {c["index"]: c["content"] for c in logged} == texts
    assert len(row["finish_reason"].split(",")) == 2


LONG = 2000  # tokens (ignore_eos): a hang-up that never reaches the engine generates all of them
GENERATED = "vllm:generation_tokens_total"


def test_client_that_hangs_up_mid_stream_is_logged_as_aborted(merged):
    user = tag()
    body = {"model": "dynalign", "stream": True, "max_tokens": LONG, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write a very long story about a ship."}]}
    merged.wait_for(lambda: merged.engine_running_requests() == 0, 120, "an idle engine")
    before = merged.engine_metric(GENERATED)
    with httpx.stream("POST", f"{merged.url}/v1/chat/completions", json=body, timeout=120,
                      headers={"X-Dynalign-User": user}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # held: a dropped line iterator closes the connection
        for line in lines:
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                break  # one token arrived
        merged.wait_for(lambda: merged.engine_running_requests() == 1, 120,
                        "the engine to report the request running")
    # the connection is closed: the client hung up
    [row] = merged.wait_rows(user)
    assert row["status"] == "aborted"
    assert row["stream"] == 1 and row["ttft_ms"] is not None
    assert (row["completion_tokens"] or 0) < LONG
    # the hang-up reached the engine: it stopped before the LONG tokens it would have generated
    merged.wait_for(lambda: merged.engine_running_requests() == 0, 300, "the engine to stop")
    assert merged.engine_metric(GENERATED) - before < LONG


def test_client_that_hangs_up_before_a_non_streamed_answer_is_not_served_on(merged):
    """The client closes its connection once the engine runs its request (state, not a clock)."""
    user = tag()
    body = json.dumps({"model": "dynalign", "max_tokens": LONG, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Write a long story."}]}).encode()
    merged.wait_for(lambda: merged.engine_running_requests() == 0, 120, "an idle engine")
    before = merged.engine_metric(GENERATED)
    with socket.create_connection(("127.0.0.1", merged.port), timeout=60) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\nX-Dynalign-User: " + user.encode() +
                       b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        merged.wait_for(lambda: merged.engine_running_requests() == 1, 120,
                        "the engine to report the request running")
    merged.wait_for(lambda: merged.engine_running_requests() == 0, 300, "the engine to stop")
    assert merged.engine_metric(GENERATED) - before < LONG  # it stopped: not served on
    [row] = merged.wait_rows(user)
    assert row["status"] != "ok"


# 3. models and health
def test_models_and_health(merged):
    ids = [m.id for m in merged.client().models.list().data]
    assert "dynalign" in ids and merged.base_name in ids
    health = merged.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["engine"] is True and body["active"] == merged.base_name
    assert body["swap"] == "merged"


# 4. opt-out
@pytest.mark.parametrize("how, expected", [
    ("store-false", 1), ("header", 1), ("normal", 0)])
def test_opt_out_is_logged(merged, how, expected):
    user = tag()
    headers = {"X-Dynalign-User": user}
    extra_body = None
    if how == "store-false":
        extra_body = {"store": False}
    if how == "header":
        headers["X-Dynalign-Opt-Out"] = "1"
    completion = merged.client().chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
        extra_headers=headers, extra_body=extra_body)
    assert completion.choices[0].message.content is not None
    [row] = merged.wait_rows(user)
    assert row["opt_out"] == expected


# 4b. feedback: a rating of one answer, named by the completion id its client received
def test_feedback_rates_an_answer_by_the_id_its_client_received(merged, openai_error):
    user, stream_user = tag(), tag()
    answer = greedy(merged, user=user)
    chunks = list(merged.client().chat.completions.create(
        model="dynalign", messages=GREEDY_MESSAGES, max_tokens=8, stream=True,
        extra_headers={"X-Dynalign-User": stream_user}))
    [row], [streamed] = merged.rows_for(user), merged.rows_for(stream_user)
    client = merged.client()  # the documented way from the openai client: its generic post
    record = client.post("/feedback", cast_to=object, body={
        "id": answer.id, "rating": -1, "comment": "wrong, mail me at ann@example.com"})
    assert record["exchange_id"] == row["id"] and record["rating"] == -1, record
    assert record["version"] == row["version"] and record["model"] == row["model_served"]
    assert record["user"] == user  # the exchange's user when the rating names none
    assert "ann@example.com" not in record["comment"] and "[EMAIL]" in record["comment"]

    def rate(body):
        return httpx.post(f"{merged.url}/v1/feedback", json=body, timeout=60)

    another = rate({"id": answer.id, "rating": 1, "user": "ann"})  # not the user it answered
    assert another.status_code == 403 and openai_error(another)["code"] == "not_your_answer"
    changed = rate({"id": answer.id, "rating": 1, "user": user})
    assert changed.status_code == 200 and changed.json()["rating"] == 1, changed.text
    history = merged.query("select rating, user from feedback where exchange_id = ? order by id",
                           (row["id"],))
    assert history == [{"rating": 1, "user": user}]  # one rating per answer: the latest
    by_stream = rate({"id": chunks[0].id, "rating": 1})  # every chunk carries the id
    assert by_stream.status_code == 200 and by_stream.json()["exchange_id"] == streamed["id"]
    base = merged.get("/admin/adapters").json()["base_approval"]  # the base answered both
    assert (base["ratings"], base["up"], base["approval"]) == (2, 2, 1.0), base  # latest counts

    count = merged.query("select count(*) as n from feedback")[0]["n"]
    unknown = rate({"id": "chatcmpl-never-served", "rating": 1})
    assert unknown.status_code == 404 and openai_error(unknown)["code"] == "not_found"
    for body, param in (({"id": answer.id, "rating": 3}, "rating"),
                        ({"id": answer.id, "rating": 1, "comment": "x" * 5000}, "comment"),
                        ({"rating": 1}, "id")):
        bad = rate(body)
        assert bad.status_code == 400 and openai_error(bad)["param"] == param, bad.text
    assert merged.query("select count(*) as n from feedback")[0]["n"] == count  # nothing stored


# 4c. metrics: Prometheus text, parsed by prometheus_client's own parser, moving with the traffic
def scrape(server) -> dict:
    """{(sample name, frozenset of labels): value} from GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    response = server.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_count_the_traffic_sent(merged):
    base = merged.base_name
    before = scrape(merged)
    users = [tag() for _ in range(3)]
    for user in users[:2]:
        greedy(merged, user=user)
    list(merged.client().chat.completions.create(
        model="dynalign", messages=GREEDY_MESSAGES, max_tokens=8, stream=True,
        extra_headers={"X-Dynalign-User": users[2]}))
    bad = httpx.post(f"{merged.url}/v1/chat/completions", json={"messages": []}, timeout=60)
    assert bad.status_code == 400
    assert merged.activate("base").status_code == 200  # a swap (to what is served: still one)
    rows = [merged.wait_rows(u)[0] for u in users]
    after = scrape(merged)

    def moved(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("dynalign_chat_exchanges_total", version=base, status="ok") == 3
    assert moved("dynalign_chat_tokens_total", version=base, kind="completion") == sum(
        r["completion_tokens"] for r in rows)
    assert moved("dynalign_chat_latency_seconds_count", version=base) == 3
    assert moved("dynalign_chat_ttft_seconds_count", version=base) == 1  # the stream
    chat = "/v1/chat/completions"
    assert moved("dynalign_http_requests_total", route=chat, method="POST", code="200") == 3
    assert moved("dynalign_http_requests_total", route=chat, method="POST", code="400") == 1
    assert moved("dynalign_swap_seconds_count") == 1
    assert after[("dynalign_active_info", frozenset({"version": base, "swap": "merged"}.items()))] == 1
    assert after[("dynalign_engine_up", frozenset())] == 1
    assert after[("dynalign_log_pending", frozenset())] == 0
    no_key = httpx.get(f"{merged.url}/metrics", timeout=30)
    assert no_key.status_code == 401  # the admin key, as for /admin


def test_a_canary_needs_the_lora_swap_mode(merged, openai_error):
    response = merged.post("/admin/canary", json={"version": 1, "share": 0.2})
    assert response.status_code == 409 and openai_error(response)["code"] == "canary_needs_lora"
    assert merged.get("/admin/canary").json() == {"canary": None, "arms": None}


# 5. bad input
BAD_REQUESTS = {
    "invalid-json": (b'{"messages": [', 400),
    "not-an-object": ([{"role": "user", "content": "hi"}], 400),
    "missing-messages": ({"model": "dynalign"}, 400),
    "empty-messages": ({"messages": []}, 400),
    "unknown-role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    "content-not-text": ({"messages": [{"role": "user", "content": 42}]}, 400),
    "max-tokens-string": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
                          400),
    "max-tokens-zero": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400),
    "max-tokens-above-context": ({"messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 5000}, 400),
    "prompt-above-context": ({"messages": [{"role": "user", "content": "word " * 3000}],
                             "max_tokens": 8}, 400),  # only the engine can count: its 400
    "prompt-above-context-stream": ({"messages": [{"role": "user", "content": "word " * 3000}],
                                    "max_tokens": 8, "stream": True}, 400),
    "n-over-limit": ({"messages": [{"role": "user", "content": "hi"}], "n": 9}, 400),
    "temperature-out-of-range": ({"messages": [{"role": "user", "content": "hi"}],
                                 "temperature": 5}, 400),
    "unknown-model": ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                      404),
    "unknown-version": ({"model": "dynalign-v99", "messages": [{"role": "user", "content": "hi"}]},
                        404),
}


def test_bad_requests_get_openai_errors_and_are_not_logged(merged, openai_error):
    before = merged.exchange_count()
    users = []
    for name, (body, status) in BAD_REQUESTS.items():
        user = tag()
        users.append(user)
        headers = {"X-Dynalign-User": user, "Content-Type": "application/json"}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(f"{merged.url}/v1/chat/completions", content=content,
                              headers=headers, timeout=120)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        openai_error(response)

    # The official client maps them to its exceptions too.
    client = merged.client()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="dynalign", n=9,
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])

    # The server still works, and only the good request was logged (the log is one FIFO queue:
    # once its row is there, any row of an earlier request would be too).
    user = tag()
    completion = client.chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
        extra_headers={"X-Dynalign-User": user})
    assert completion.choices[0].message.content is not None
    merged.wait_rows(user)
    assert merged.exchange_count() == before + 1
    assert not any(merged.rows_for(u) for u in users)


@pytest.mark.parametrize("options", ["yes", [True]])
def test_stream_options_of_the_wrong_type_get_a_400(merged, options):
    response = httpx.post(f"{merged.url}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
        "stream_options": options})
    assert response.status_code == 400, f"{response.status_code} {response.text}"


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/nope", 404), ("GET", "/v1/chat/completions", 405),
    ("GET", "/admin/exchanges?limit=abc", 400)])
def test_framework_errors_have_the_openai_shape(merged, openai_error, method, path, status):
    response = httpx.request(method, f"{merged.url}{path}", timeout=60,
                             headers=merged.admin_headers)
    assert response.status_code == status
    assert openai_error(response)["message"]


# 6. hot-swap: register, reject bad adapters, activate, roll back
@pytest.fixture(scope="module")
def registered(merged, test_adapter):
    """Version 1 registered (merged into full weights at registration), not active."""
    response = merged.post("/admin/adapters", json={"path": str(test_adapter), "note": "test"})
    assert response.status_code == 201, response.text
    return response.json()


def test_register_activate_and_roll_back(merged, registered, tiny_adapter, tmp_path, openai_error):
    assert registered["version"] == 1
    assert registered["status"] == "candidate"
    assert registered["name"] == "dynalign-v1"
    assert merged.active() == merged.base_name

    base = greedy(merged)
    assert base.model == merged.base_name
    base_text = base.choices[0].message.content
    assert base_text

    # invalid registrations: 4xx, nothing registered, nothing activated
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(registered["path"] + "/adapter_config.json", no_weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    relabelled = tmp_path / "relabelled"  # the tiny adapter, claiming our base model: shapes differ
    shutil.copytree(tiny_adapter, relabelled)
    config = json.loads((relabelled / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = merged.model_path
    (relabelled / "adapter_config.json").write_text(json.dumps(config))
    invalid = {
        "missing folder": ({"path": str(tmp_path / "nowhere")}, None),
        "empty folder": ({"path": str(empty)}, "adapter_config.json"),
        "no weights file": ({"path": str(no_weights)}, "adapter_model.safetensors"),
        "other base model": ({"path": str(tiny_adapter)}, "base"),
        "other shapes": ({"path": str(relabelled)}, "shape"),
        "no path": ({"note": "x"}, "path"),
    }
    for name, (body, words) in invalid.items():
        response = merged.post("/admin/adapters", json=body)
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text}"
        error = openai_error(response)
        if words:
            assert words in error["message"], f"{name}: {error['message']}"
    response = merged.post("/admin/adapters", content=b"{not json",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    listing = merged.get("/admin/adapters").json()
    assert [row["version"] for row in listing["data"]] == [1]
    assert listing["active"] == merged.base_name

    # unknown versions: 404, active unchanged
    for version in ("7", "v7", "dynalign-v7", "nonsense"):
        response = merged.activate(version)
        assert response.status_code == 404, f"{version}: {response.text}"
        openai_error(response)
    assert merged.active() == merged.base_name

    # in merged mode only the active version is servable
    with pytest.raises(openai.NotFoundError):
        greedy(merged, model="dynalign-v1")

    response = merged.activate("1")
    assert response.status_code == 200, response.text
    print(f"\nactivate v1: {response.json()['seconds']} s (server)")
    assert response.json()["active"] == "dynalign-v1"
    assert merged.active() == "dynalign-v1"
    assert merged.get("/health").json()["active"] == "dynalign-v1"
    assert {m.id for m in merged.client().models.list().data} == {"dynalign", "dynalign-v1"}

    user = tag()
    tuned = greedy(merged, user=user)
    assert tuned.model == "dynalign-v1"
    tuned_text = tuned.choices[0].message.content
    assert tuned_text and tuned_text != base_text
    [row] = merged.wait_rows(user)
    assert row["version"] == 1 and row["model_served"] == "dynalign-v1"
    assert row["mixed_versions"] == 0
    by_name = greedy(merged, model="dynalign-v1")
    assert by_name.choices[0].message.content == tuned_text
    with pytest.raises(openai.NotFoundError):  # the base is not servable while v1 is active
        greedy(merged, model=merged.base_name)

    response = merged.activate("base")
    assert response.status_code == 200, response.text
    print(f"activate base: {response.json()['seconds']} s (server)")
    assert response.json()["active"] == merged.base_name
    rolled_back = greedy(merged)
    assert rolled_back.model == merged.base_name
    assert rolled_back.choices[0].message.content == base_text

    listing = merged.get("/admin/adapters").json()["data"]
    assert {row["version"]: row["status"] for row in listing} == {1: "retired"}


# 7. swaps under load
def test_the_scoreboard_is_served_by_version_and_exported_as_metrics(merged, registered,
                                                                     openai_error):
    """A row as learner/scoreboard.py stores it (its computation: tests/integration/
    test_continual.py): the admin routes and /metrics show it; unknown versions are 404s."""
    from contextlib import closing

    from dynalign import scoreboard as sb
    from dynalign.config import load_config
    from dynalign.store import Store

    items = [{"a": "x", "b": "y", "pointwise": o, "outcome": o} for o in ["win"] * 7 + ["loss"] * 3]
    result = {"readings": sb.readings(items, load_config(None), balanced=False), "kl": 0.25,
              "scores": {"base": 2.0, "version": 2.5}, "tokens": {"base": 40, "version": 30},
              "ifeval": None, "aspects": {"benevolence": {"version": 3.25, "base": 2.5},
                                          "power": {"version": None, "base": 2.0}}}
    with closing(Store(merged.db_path)) as store:
        store.add_scoreboard(registered["version"], "judge-x", "seed held-out split", {},
                             sb.headline(result), result)
    listed = merged.get("/admin/scoreboard").json()["data"]
    mine = [r for r in listed if r["judge"] == "judge-x"]
    assert [r["name"] for r in mine] == [registered["name"]]
    assert mine[0]["summary"]["pointwise"]["win_rate"] == pytest.approx(0.7)
    shown = merged.get(f"/admin/adapters/{registered['version']}").json()["scoreboard"]
    assert [r["judge"] for r in shown] == ["judge-x"]
    for version in ("999", "base"):
        missing = merged.get(f"/admin/scoreboard?version={version}")
        assert missing.status_code == 404 and openai_error(missing), missing.text
    after = scrape(merged)
    labels = {"version": registered["name"], "reading": "pointwise", "judge": "judge-x"}
    value = after[("dynalign_scoreboard_win_rate", frozenset({**labels, "bound": "value"}.items()))]
    low = after[("dynalign_scoreboard_win_rate", frozenset({**labels, "bound": "low"}.items()))]
    assert value == pytest.approx(0.7) and low < value
    assert after[("dynalign_scoreboard_kl", frozenset({"version": registered["name"],
                                                       "judge": "judge-x"}.items()))] == 0.25
    aspect = {"version": registered["name"], "judge": "judge-x"}
    for name, of, value in (("benevolence", "version", 3.25), ("benevolence", "base", 2.5),
                            ("power", "base", 2.0)):
        key = ("dynalign_scoreboard_aspect", frozenset({**aspect, "aspect": name, "of": of}.items()))
        assert after[key] == value
    assert ("dynalign_scoreboard_aspect", frozenset(  # no reading: no gauge, never a 0
        {**aspect, "aspect": "power", "of": "version"}.items())) not in after


def test_swaps_under_load_fail_nothing(merged, registered, swap_under_load, check_swaps):
    assert merged.active() == merged.base_name
    results, activations = swap_under_load(merged, ["1", "base", "1", "base"])
    assert [a.name for a in activations] == ["dynalign-v1", merged.base_name] * 2
    check_swaps(results, activations, before=merged.base_name)
    assert merged.active() == merged.base_name


STRADDLE = 500  # tokens: the engine pauses the stream during the swap (it does not drain it), so
#                the stream only needs to outlast the moment the swap starts (the assertion on
#                running requests says when it did not)


def test_a_stream_running_through_a_merged_swap_completes_and_is_logged_as_mixed(merged,
                                                                                 registered):
    """A swap while a long stream is mid-answer: the stream is not cut, delivers every token,
    and its row says its answer came from two weight sets (mixed_versions = 1)."""
    assert merged.active() == merged.base_name
    user = tag()
    stream = merged.client().chat.completions.create(
        model="dynalign", stream=True, max_tokens=STRADDLE, temperature=0,
        messages=[{"role": "user", "content": "Write a very long story about a ship."}],
        extra_body={"ignore_eos": True}, extra_headers={"X-Dynalign-User": user},
        stream_options={"include_usage": True})
    chunks = iter(stream)
    first = next(c for c in chunks if c.choices and c.choices[0].delta.content)
    assert first.model == merged.base_name
    swapped = merged.activate("1")
    assert swapped.status_code == 200, swapped.text
    assert merged.engine_running_requests() == 1, "the stream ended before the swap: no straddle"
    usage = [c.usage for c in chunks if c.usage][-1]
    assert usage.completion_tokens == STRADDLE
    [row] = merged.wait_rows(user)
    assert row["status"] == "ok" and row["mixed_versions"] == 1, row
    assert merged.activate("base").status_code == 200



def test_folders_left_by_a_half_done_registration_do_not_leak_into_the_next(
        merged, registered, test_adapter):
    """A registration that died between copying and recording its row leaves folders under the
    next version number: the next registration replaces them instead of failing or reusing them."""
    stale_adapter, stale_merged = merged.home / "adapters" / "0002", merged.home / "merged" / "0002"
    for folder in (stale_adapter, stale_merged):
        folder.mkdir(parents=True)
        (folder / "stale.txt").write_text("left behind")
    response = merged.post("/admin/adapters", json={"path": str(test_adapter)})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 2
    assert not (stale_adapter / "stale.txt").exists()
    assert (stale_adapter / "adapter_model.safetensors").exists()
    assert not (stale_merged / "stale.txt").exists()
    assert list(stale_merged.glob("*.safetensors"))

# 9. Ctrl-C, then a restart over the same state dir (the last test: it stops the module's server)
def test_ctrl_c_stops_everything_and_a_restart_serves_the_active_version(
        merged, registered, start_server):
    response = merged.activate("1")
    assert response.status_code == 200, response.text
    tuned = greedy(merged)
    assert tuned.model == "dynalign-v1"
    rows_before = merged.exchange_count()

    result = merged.stop()
    assert result.sigint_stopped, merged.output()
    assert result.returncode == 0, merged.output()
    assert not result.survivors, result.survivors
    for port in (merged.port, merged.engine_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)

    # a canary left running by a LoRA-mode gateway over this state dir (merged mode cannot
    # serve its two versions: it is ended at start, not resumed to answer 404 to its arm)
    with sqlite3.connect(merged.db_path) as db:
        db.execute("insert into canaries (version, active, share, min_feedback, min_raters, "
                   "max_hours, margin, confidence, on_timeout, started, status) values "
                   "(2, 1, 0.5, 50, 10, 24, 0.05, 0.95, 'decide', '2026-12-07T00:00:00', "
                   "'running')")
    db.close()
    again = start_server(merged.home.parent, merged.model_path, "merged")
    try:
        assert again.get("/health").json()["active"] == "dynalign-v1"
        answer = greedy(again)
        assert answer.model == "dynalign-v1"
        assert answer.choices[0].message.content == tuned.choices[0].message.content
        users = [tag() for _ in range(16)]  # half would land on the canary's arm
        served = {again.client().chat.completions.create(
            model="dynalign", messages=GREEDY_MESSAGES, max_tokens=1,
            extra_headers={"X-Dynalign-User": u}).model for u in users}
        assert served == {"dynalign-v1"}
        [canary] = again.query("select status, reason from canaries")
        assert canary["status"] == "stopped" and "engine.swap = 'merged'" in canary["reason"]
        assert "canary 1 (version 2) ended" in again.output(400)
        assert again.exchange_count() >= rows_before  # the log survives restarts
        response = again.activate("base")
        assert response.status_code == 200, response.text
    finally:
        result = again.stop()
    assert result.sigint_stopped and not result.survivors, (result, again.output())

