"""`dynalign serve`: engine, gateway and UI, started together and stopped together.

The engine and the UI are child processes in their own process groups; Ctrl-C (or SIGTERM) stops
the gateway gracefully, then both groups. Children also get SIGTERM if this process dies.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading

import uvicorn

from dynalign.config import Config
from dynalign.model import prepare
from server.engine import EngineProcess, _die_with_parent, swap_mode
from server.gateway import create_app
from server.versions import public_name


def start_ui(cfg: Config) -> subprocess.Popen | None:
    if not cfg.ui.enabled:
        return None
    log = open(cfg.home / "logs" / "ui.log", "ab")
    cmd = [sys.executable, "-m", "ui.app", "--api-url", cfg.gateway_url,
           "--host", cfg.ui.host, "--port", str(cfg.ui.port)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def banner(cfg: Config, mode: str):
    def on_ready(app) -> None:
        lines = [f"dynalign is up (swap mode: {mode}, answering: "
                 f"{public_name(cfg, app.state.versions.active)})",
                 f"  API (OpenAI-compatible): {cfg.gateway_url}",
                 f"  admin:                   http://{cfg.server.host}:{cfg.server.port}/admin/adapters"]
        if cfg.ui.enabled:
            lines.append(f"  chat UI:                 http://{cfg.ui.host}:{cfg.ui.port}")
        lines.append(f"  state dir:               {cfg.home}   (Ctrl-C stops everything)")
        print("\n".join(lines), flush=True)
    return on_ready


def watch_engine(engine: EngineProcess, server: uvicorn.Server) -> None:
    """If the engine dies, stop the gateway too (exit code 1) rather than answer 503 forever:
    a supervisor (systemd, a container runtime) can then restart the whole service."""
    def watch() -> None:
        engine.proc.wait()
        if not server.should_exit:
            print(f"engine exited unexpectedly:\n{engine.log_tail()}", file=sys.stderr, flush=True)
            server.should_exit = True
    threading.Thread(target=watch, daemon=True, name="engine-watch").start()


def serve(cfg: Config) -> int:
    (cfg.home / "logs").mkdir(parents=True, exist_ok=True)
    prepare(cfg)
    mode = swap_mode(cfg)
    engine = EngineProcess(cfg, mode)
    ui = None
    try:
        print(f"starting the vLLM engine (log: {engine.log_path}) ...", flush=True)
        engine.start()
        ui = start_ui(cfg)
        engine.wait_ready(cfg.engine.startup_timeout_s)
        app = create_app(cfg, mode, engine.url, on_ready=banner(cfg, mode))
        server = uvicorn.Server(uvicorn.Config(app, host=cfg.server.host, port=cfg.server.port,
                                               log_level="warning", timeout_graceful_shutdown=5))
        watch_engine(engine, server)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutdown
            server.run()
        return 0 if engine.proc.poll() is None else 1
    finally:
        stop(ui)
        engine.stop()
