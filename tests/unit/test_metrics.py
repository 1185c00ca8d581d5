"""server/metrics.py without an engine: counting a logged row, the HTTP middleware's labels, and the
text parsed back by prometheus_client's own parser."""

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import CountAnswers, Metrics


def samples(metrics: Metrics) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.text().decode())
            for s in family.samples}


def test_a_logged_row_counts_once_with_its_tokens_and_times():
    metrics = Metrics()
    row = {"model_served": "dynalign-v2", "status": "ok", "latency_ms": 1500.0, "ttft_ms": 40.0,
           "stream": 1, "prompt_tokens": 12, "completion_tokens": 30}
    metrics.exchange(row)
    metrics.exchange({**row, "stream": 0, "status": "aborted", "completion_tokens": None})
    got = samples(metrics)
    v2 = frozenset({"version": "dynalign-v2"}.items())
    assert got[("dynalign_chat_exchanges_total", v2 | {("status", "ok")})] == 1
    assert got[("dynalign_chat_exchanges_total", v2 | {("status", "aborted")})] == 1
    assert got[("dynalign_chat_tokens_total", v2 | {("kind", "prompt")})] == 24
    assert got[("dynalign_chat_tokens_total", v2 | {("kind", "completion")})] == 30
    assert got[("dynalign_chat_latency_seconds_count", v2)] == 2
    assert got[("dynalign_chat_latency_seconds_sum", v2)] == 3.0
    assert got[("dynalign_chat_ttft_seconds_count", v2)] == 1  # only the stream has one


def test_http_answers_are_counted_by_route_template_method_and_code():
    metrics = Metrics()
    app = FastAPI()
    app.add_middleware(CountAnswers, metrics=metrics)

    @app.get("/items/{item}")
    def item(item: int):
        return {"item": item}

    client = TestClient(app)
    assert client.get("/items/1").status_code == 200 and client.get("/items/2").status_code == 200
    assert client.get("/items/x").status_code == 422
    assert client.get("/nowhere").status_code == 404
    got = samples(metrics)
    key = lambda route, code: ("dynalign_http_requests_total",  # noqa: E731
                               frozenset({"route": route, "method": "GET", "code": code}.items()))
    assert got[key("/items/{item}", "200")] == 2  # one series, not one per id
    assert got[key("/items/{item}", "422")] == 1
    assert got[key("unmatched", "404")] == 1
