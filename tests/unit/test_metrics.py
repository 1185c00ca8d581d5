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


def test_state_is_read_at_scrape_time_from_the_store_and_the_versions(tmp_path):
    from types import SimpleNamespace

    from dynalign.config import Config, ModelConfig
    from dynalign.store import Store
    from server.engine import EngineClient
    from server.exchange_log import ExchangeLog
    from server.store_thread import StoreThread
    from server.supervisor import EngineSupervisor
    from server.versions import Versions

    cfg = Config(state_dir=str(tmp_path / "state"), model=ModelConfig(path="/models/tiny"))
    store = Store(cfg.db_path)
    versions = Versions(cfg, "lora", EngineClient("http://127.0.0.1:9", None), store)
    log = ExchangeLog(cfg.db_path)
    supervisor = EngineSupervisor(cfg, engine=None)  # its state is read, its engine never used
    supervisor.state, supervisor.restarts = "restarting", 2
    metrics = Metrics()
    db = StoreThread(cfg.db_path)  # what the scrape reads, on its own thread (as /metrics does)
    metrics.watch(SimpleNamespace(cfg=cfg, versions=versions, store=store, log=log,
                                  engine_status=supervisor, db=db))
    store.add_adapter("/a/1", base_model="tiny", rank=4)
    versions.canary = store.start_canary(version=1, active=None, share=0.5, min_feedback=5,
                                         min_raters=1, max_hours=1.0, margin=0.05, confidence=0.95,
                                         on_timeout="keep")
    for arm, rating in (("canary", -1), ("canary", None), ("active", 1)):
        exchange = store.log_exchange({"version": 1 if arm == "canary" else None, "status": "ok",
                                       "canary": versions.canary["id"], "arm": arm})
        if rating:
            store.add_feedback(exchange, rating)
    store.update_round(store.open_round("operator", "", 1), status="running",
                       progress={"step": 2, "reward": 0.75})
    got = db.run(lambda _: samples(metrics))
    log.close()
    key = lambda name, **labels: (name, frozenset(labels.items()))  # noqa: E731
    assert got[key("dynalign_active_info", version="tiny", swap="lora")] == 1
    assert got[key("dynalign_canary_requests", arm="canary", version="dynalign-v1")] == 2
    assert got[key("dynalign_canary_requests", arm="active", version="tiny")] == 1
    assert got[key("dynalign_canary_ratings", arm="canary", rating="down")] == 1
    assert got[key("dynalign_feedback", version="dynalign-v1", rating="down")] == 1
    assert got[key("dynalign_feedback", version="tiny", rating="up")] == 1
    assert got[key("dynalign_rounds", status="running")] == 1
    assert got[key("dynalign_round_step", round="1")] == 2
    assert got[key("dynalign_round_reward", round="1")] == 0.75
    assert got[key("dynalign_log_pending")] == 0 and got[key("dynalign_log_ok")] == 1
    assert got[key("dynalign_engine_up")] == 0 and got[key("dynalign_engine_restarts_total")] == 2
    supervisor.state, supervisor.restarts = "up", 3  # read again at the next scrape
    got = db.run(lambda _: samples(metrics))
    db.close()
    assert got[key("dynalign_engine_up")] == 1 and got[key("dynalign_engine_restarts_total")] == 3
