"""`dynalign serve`: engine, gateway and UI, started together and stopped together.

The engine and the UI are child processes in their own process groups; Ctrl-C (or SIGTERM) stops
the gateway gracefully, then both groups. Children also get SIGTERM if this process dies. An engine
that dies is restarted while the gateway answers 503 (server/supervisor.py); too many deaths stop
the service with exit code 1.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import uvicorn

from dynalign.config import Config
from dynalign.model import prepare
from server.auth import prepare_keys, ui_env
from dynalign.procs import die_with_parent
from server.engine import EngineProcess, swap_mode
from server.gateway import create_app
from server.supervisor import EngineSupervisor
from server.versions import public_name


def start_ui(cfg: Config) -> subprocess.Popen | None:
    if not cfg.ui.enabled:
        return None
    log = open(cfg.home / "logs" / "ui.log", "ab")
    cmd = [sys.executable, "-m", "ui.app", "--api-url", cfg.gateway_url,
           "--host", cfg.ui.host, "--port", str(cfg.ui.port),
           "--max-tokens", str(cfg.ui.max_tokens)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent, env=ui_env(cfg))


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def banner(cfg: Config, mode: str, app) -> None:
    lines = [f"dynalign is up (swap mode: {mode}, answering: "
             f"{public_name(cfg, app.state.versions.active)})",
             f"  API (OpenAI-compatible): {cfg.gateway_url}",
             f"  admin:                   http://{cfg.server.host}:{cfg.server.port}/admin/adapters"]
    if cfg.ui.enabled:
        lines.append(f"  chat UI:                 http://{cfg.ui.host}:{cfg.ui.port}")
    lines.append(f"  state dir:               {cfg.home}   (Ctrl-C stops everything)")
    print("\n".join(lines), flush=True)


def on_ready(cfg: Config, mode: str, supervisor: EngineSupervisor):
    """Once the gateway is up: the banner, and the engine's supervision begins."""
    def ready(app) -> None:
        banner(cfg, mode, app)
        supervisor.watch(app)
    return ready


def serve(cfg: Config) -> int:
    keys = prepare_keys(cfg)  # refuses open doors off loopback (server/auth.py)
    (cfg.home / "logs").mkdir(parents=True, exist_ok=True)
    prepare(cfg)
    mode = swap_mode(cfg)
    engine = EngineProcess(cfg, mode)
    supervisor = EngineSupervisor(cfg, engine)
    ui = None
    try:
        print(f"starting the vLLM engine (log: {engine.log_path}) ...", flush=True)
        engine.start()
        ui = start_ui(cfg)
        engine.wait_ready(cfg.engine.startup_timeout_s)
        app = create_app(cfg, mode, engine.url, on_ready=on_ready(cfg, mode, supervisor),
                         engine_status=supervisor, keys=keys)
        supervisor.server = uvicorn.Server(uvicorn.Config(
            app, host=cfg.server.host, port=cfg.server.port, log_level="warning",
            timeout_graceful_shutdown=5))  # its should_exit: how supervision stops the service
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutdown
            supervisor.server.run()
        return 1 if supervisor.gave_up else 0
    finally:
        stop(ui)
        supervisor.close()
