"""The engine's supervisor (server/supervisor.py) without an engine: the restart limit within its
window, the 503 a chat gets while the engine restarts, and close() that allows no more restarts.
The engine's real death and restart: tests/integration/test_engine_death.py."""

from fastapi.testclient import TestClient

from dynalign.config import Config, EngineConfig
from server.engine import EngineProcess
from server.gateway import create_app
from server.supervisor import RESTARTING, EngineSupervisor


def supervisor(max_restarts: int = 2, window: float = 600.0) -> EngineSupervisor:
    cfg = Config(engine=EngineConfig(max_restarts=max_restarts, restart_window_s=window))
    return EngineSupervisor(cfg, EngineProcess(cfg, "merged"))


def test_more_deaths_than_max_restarts_within_the_window_stop_restarting():
    s = supervisor(max_restarts=2)
    assert [s._may_restart() for _ in range(3)] == [True, True, False]


def test_deaths_older_than_the_window_are_forgotten():
    s = supervisor(max_restarts=1, window=0.0)
    assert all(s._may_restart() for _ in range(5))


def test_max_restarts_zero_never_restarts():
    assert supervisor(max_restarts=0)._may_restart() is False


def test_a_chat_while_the_engine_restarts_is_a_503_with_retry_after():
    s = supervisor()
    s.state = "restarting"
    client = TestClient(create_app(Config(), "merged", "http://127.0.0.1:9", engine_status=s))
    response = client.post("/v1/chat/completions",
                           json={"model": "dynalign", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "engine_restarting" and error["message"] == RESTARTING
    assert error["type"] == "engine_unavailable"


def test_after_close_no_engine_is_started():
    s = supervisor()
    s.close()  # no engine was ever started: nothing to stop
    assert s.state == "stopped"
    s._restart()
    assert s.engine.proc is None and s.restarts == 0
