"""The engine's supervisor (server/supervisor.py) watching a real child process that stands in for
vLLM's server (a Python HTTP server answering /health, or one that dies or hangs at start, as a
plan file says): restarts within the limit, giving up beyond it, the 503 a chat gets while the
engine restarts, and close() that allows no more restarts. The supervisor runs as in `dynalign
serve`: watch() on a running event loop, a real store and Versions, and the uvicorn server's exit
flag. vLLM's own death and restart: tests/integration/test_engine_death.py."""

import asyncio
import signal
import sys
import threading
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from dynalign.config import Config, EngineConfig
from dynalign.launch import free_port
from dynalign.store import Store
from helpers.live_server import wait_for
from server.engine import EngineClient, EngineProcess
from server.gateway import create_app
from server.supervisor import RESTARTING, EngineSupervisor
from server.versions import Versions

# argv: root port. Each start appends to root/starts; the n-th start does plan[n] (the last
# word of the plan once it runs out): serve /health, die at once (exit 3), or hang unready.
STAND_IN = r"""
import http.server, pathlib, sys, time
root, port = pathlib.Path(sys.argv[1]), int(sys.argv[2])
with open(root / "starts", "a") as f:
    f.write("start\n")
n = len((root / "starts").read_text().split())
plan = (root / "plan").read_text().split()
what = plan[min(n, len(plan)) - 1]
if what == "die":
    sys.exit(3)
if what == "hang":
    time.sleep(3600)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""



class Service:
    """What `dynalign serve` gives the supervisor: an engine started and ready, an event loop
    that runs the gateway's coroutines, the versions, and the uvicorn server's exit flag."""

    def __init__(self, root, plan: list[str], **engine):
        (root / "plan").write_text(" ".join(plan))
        self.root = root
        self.cfg = Config(state_dir=str(root / "state"),
                          engine=EngineConfig(port=free_port(), startup_timeout_s=30, **engine))
        self.engine = EngineProcess(self.cfg, "merged", command=[
            sys.executable, "-c", STAND_IN, str(root), str(self.cfg.engine.port)])
        self.supervisor = EngineSupervisor(self.cfg, self.engine)
        self.supervisor.server = SimpleNamespace(should_exit=False)
        self.store = Store(self.cfg.db_path)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.engine.start()
        self.engine.wait_ready(30)
        app = SimpleNamespace(state=SimpleNamespace(versions=Versions(
            self.cfg, "merged", EngineClient(self.engine.url, httpx.AsyncClient()), self.store)))
        before = set(threading.enumerate())
        asyncio.run_coroutine_threadsafe(self._watch(app), self.loop).result(10)
        [self.watcher] = [t for t in set(threading.enumerate()) - before
                          if t.name == "engine-watch"]

    async def _watch(self, app) -> None:
        self.supervisor.watch(app)

    def starts(self) -> int:
        return len((self.root / "starts").read_text().split())

    def kill_engine(self) -> None:
        self.engine.proc.send_signal(signal.SIGKILL)

    def gave_up(self) -> bool:
        return self.supervisor.server.should_exit

    def close(self) -> None:
        self.supervisor.close()
        self.watcher.join(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.store.close()


@pytest.fixture
def service(tmp_path):
    services = []

    def start(plan: list[str], **engine) -> Service:
        services.append(Service(tmp_path, plan, **engine))
        return services[-1]

    yield start
    for s in services:
        s.close()


def test_an_engine_that_dies_is_restarted_and_serves_again(service):
    s = service(["serve"], max_restarts=2)
    assert s.supervisor.info() == {"engine_state": "up", "engine_restarts": 0}
    first = s.engine.proc.pid
    s.kill_engine()
    wait_for(lambda: s.supervisor.info()["engine_restarts"] == 1, 30, "the restart")
    assert s.supervisor.info() == {"engine_state": "up", "engine_restarts": 1}
    assert s.starts() == 2 and s.engine.proc.pid != first
    assert httpx.get(f"{s.engine.url}/health").status_code == 200
    assert not s.gave_up()


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_more_deaths_than_max_restarts_within_the_window_stop_the_service(service, max_restarts):
    s = service(["serve", "die"], max_restarts=max_restarts)
    s.kill_engine()
    wait_for(s.gave_up, 30, "the supervisor to give up")
    assert s.starts() == 1 + max_restarts  # every restart allowed was tried, and no more
    assert s.supervisor.gave_up and s.supervisor.info() == {
        "engine_state": "stopped", "engine_restarts": 0}


@pytest.mark.parametrize("window, serving", [(600.0, False), (0.0, True)])
def test_deaths_older_than_the_window_are_forgotten(service, window, serving):
    """One restart allowed per window: two quick deaths in a row exceed it, unless the window is
    so short that each death is alone in it."""
    s = service(["serve", "die", "die", "serve"], max_restarts=1, restart_window_s=window)
    s.kill_engine()
    if serving:
        wait_for(lambda: s.supervisor.info()["engine_state"] == "up" and s.starts() == 4, 30,
                 "the fourth start to serve")
        assert s.supervisor.info()["engine_restarts"] == 1 and not s.gave_up()
    else:
        wait_for(s.gave_up, 30, "the supervisor to give up")
        assert s.starts() == 2


def test_a_chat_while_the_engine_restarts_is_a_503_with_retry_after(service):
    s = service(["serve", "hang"])
    s.kill_engine()
    wait_for(lambda: s.starts() == 2, 30, "the restart to start an engine")
    assert s.supervisor.info()["engine_state"] == "restarting"
    client = TestClient(create_app(s.cfg, "merged", s.engine.url, engine_status=s.supervisor),
                        base_url="http://127.0.0.1:8000")  # a local Host (server/guard.py)
    response = client.post("/v1/chat/completions",
                           json={"model": "dynalign", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "engine_restarting" and error["message"] == RESTARTING
    assert error["type"] == "engine_unavailable"


def test_after_close_no_engine_is_started(service):
    s = service(["serve"])
    engine = s.engine.proc
    s.supervisor.close()  # what `dynalign serve` does on Ctrl-C
    assert engine.poll() is not None, "close() left the engine running"
    assert s.supervisor.info()["engine_state"] == "stopped"
    s.watcher.join(30)
    assert not s.watcher.is_alive(), "supervision goes on after close()"
    assert s.starts() == 1 and s.engine.proc is engine  # no restart after the engine's end
    assert not s.gave_up() and not s.supervisor.gave_up  # a stop, not a failure
