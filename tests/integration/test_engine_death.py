"""When the engine's server process dies under the gateway (a crash, the OOM killer): the gateway
stops too, with exit code 1 and the engine's last log lines, so a supervisor can restart the
service; and no process of the engine's group (engine core, workers) is left behind.

A server of its own (its engine is killed here), stopped by the fixture without assertions: the
test asserts.
"""

from __future__ import annotations

import psutil
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(base_model, tmp_path_factory, start_server):
    server = start_server(tmp_path_factory.mktemp("death-server"), base_model, "merged")
    try:
        yield server
    finally:
        server.stop()  # kills (by pid) whatever of its tree survived


def engine_api_process(server) -> psutil.Process:
    [proc] = [p for p in server.tree
              if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline())]
    return proc


def test_engine_death_stops_the_service_and_leaves_nothing(server):
    others = [p for p in server.tree if p.pid != server.proc.pid]
    engine_api_process(server).kill()  # SIGKILL, as the OOM killer would
    assert server.proc.wait(120) == 1, server.output()
    assert "engine exited unexpectedly" in server.output()
    _, alive = psutil.wait_procs(others, timeout=60)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
