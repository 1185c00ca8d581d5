"""The engine's keeper inside `dynalign serve`: when the engine process dies (a crash, the OOM
killer), the gateway answers chats with 503 (code engine_restarting, a Retry-After header) while a
fresh engine is started and the active version is put back into it by the startup path
(Versions.reopen). More than engine.max_restarts deaths within engine.restart_window_s stop the
whole service with exit code 1, for a supervisor (systemd, a container runtime) to take over.

States: up -> restarting -> up ... ; stopped (the service gave up or is stopping).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import sys
import threading
import time

import httpx
from fastapi.responses import JSONResponse

from dynalign.config import Config
from server.engine import EngineProcess
from server.validate import RequestError

RETRY_AFTER_S = 5
RESTARTING = "the engine stopped and is restarting; retry in a few seconds"
STOPPED = "the engine stopped and the service is shutting down"
# A stream the engine's death cut off ends with this event (the openai client raises APIError).
STREAM_CUT_EVENT = b"data: " + json.dumps(RequestError(
    f"the engine stopped during this answer; {RESTARTING}", status=503, type="engine_unavailable",
    code="engine_restarting").body()).encode() + b"\n\n"


class EngineUnavailable(RequestError):
    """Raised by the chat route while the engine is not up: answered as a 503 (see response)."""

    def __init__(self, state: str):
        restarting = state == "restarting"
        super().__init__(RESTARTING if restarting else STOPPED, status=503,
                         type="engine_unavailable",
                         code="engine_restarting" if restarting else "engine_stopped")

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})


class EngineSupervisor:
    def __init__(self, cfg: Config, engine: EngineProcess):
        self.cfg, self.engine = cfg, engine
        self.state = "starting"
        self.restarts = 0  # engines started after a death, over the service's life
        self.deaths: collections.deque[float] = collections.deque()  # within the window
        self.gave_up = False
        self.closed = False
        self.lock = threading.Lock()  # engine start and close: never a start after close
        self.server = self.loop = self.versions = None

    def info(self) -> dict:
        return {"engine_state": self.state, "engine_restarts": self.restarts}

    def check(self) -> None:
        if self.state != "up":
            raise EngineUnavailable(self.state)

    def watch(self, app) -> None:
        """Called on the app's loop once the gateway is ready (self.server: the uvicorn server
        that runs it): supervise from now on."""
        self.loop, self.versions = asyncio.get_running_loop(), app.state.versions
        self.state = "up"
        threading.Thread(target=self._watch, daemon=True, name="engine-watch").start()

    def close(self) -> None:
        """The service is stopping: no more restarts; stop the engine's process group."""
        with self.lock:
            self.closed = True
            self.state = "stopped"
        self.engine.stop()

    def _watch(self) -> None:
        """The thread's outermost frame: however supervision ends (but by close), the service
        ends with it (exit code 1) rather than answer 503 forever."""
        try:
            while self._engine_died() and self._may_restart():
                self._restart()
        finally:
            if not self.closed:
                self.gave_up, self.state = True, "stopped"
                self.server.should_exit = True

    def _engine_died(self) -> bool:
        code = self.engine.proc.wait()
        if self.closed or self.server.should_exit:
            return False
        self.state = "restarting"
        _say(f"engine exited unexpectedly (code {code}):\n{self.engine.log_tail()}")
        return True

    def _may_restart(self) -> bool:
        now, window = time.monotonic(), self.cfg.engine.restart_window_s
        self.deaths.append(now)
        while self.deaths[0] < now - window:
            self.deaths.popleft()
        if len(self.deaths) <= self.cfg.engine.max_restarts:
            return True
        _say(f"the engine died {len(self.deaths)} times within {window:.0f} s "
             f"(engine.max_restarts = {self.cfg.engine.max_restarts}): stopping the service")
        return False

    def _restart(self) -> None:
        _say(f"restarting the engine (restart {self.restarts + 1}); chats get 503 meanwhile")
        started = time.monotonic()
        with self.lock:
            if self.closed:
                return
            self.engine.stop()  # what is left of the dead engine's process group
            # Started from this thread, not a worker thread: PR_SET_PDEATHSIG fires when the
            # thread that started the child ends, and this one lives as long as the service.
            self.engine.start()
        future = asyncio.run_coroutine_threadsafe(self.versions.reopen(self._wait_ready),
                                                  self.loop)
        try:
            future.result()
        except (RuntimeError, httpx.HTTPError, concurrent.futures.CancelledError) as e:
            _say(f"engine restart failed: {e}")  # counted as one more death by the loop
            self.engine.stop()
            return
        self.restarts += 1
        self.state = "up"
        _say(f"engine restarted in {time.monotonic() - started:.1f} s; serving "
             f"{'the base model' if self.versions.active is None else f'v{self.versions.active}'}")

    def _wait_ready(self) -> None:
        """In a worker thread, under Versions.lock (no activation meanwhile)."""
        self.engine.wait_ready(self.cfg.engine.startup_timeout_s,
                               abandon=lambda: self.closed or self.server.should_exit)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
