"""The real system as a subprocess: `dynalign serve` (gateway + vLLM CPU engine, and the Gradio UI
when asked) with its own state dir, ports and SQLite file, started and stopped as a user would.

Stopping a server is itself checked: SIGINT (what Ctrl-C sends) must end the gateway and leave no
process of its tree alive; whatever is left is killed and reported as a failure.

The base model is $DYNALIGN_TEST_MODEL when set, else the embedded model prepared once into
<repo>/state/model.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from dynalign.config import Config, ModelConfig

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 900  # the engine takes ~30-80 s idle; far more on a busy 2-core machine
STOP_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class StopResult:
    sigint_stopped: bool  # the gateway process exited on SIGINT alone, before the deadline
    returncode: int | None
    seconds: float
    survivors: list[str] = field(default_factory=list)  # processes of its tree still alive after


@dataclass
class Server:
    proc: subprocess.Popen
    mode: str
    port: int
    engine_port: int
    home: Path
    model_path: str
    output_path: Path
    ui_port: int | None = None  # the Gradio UI's port; None: started with --no-ui
    admin_key: str | None = None  # its admin key: DYNALIGN_ADMIN_KEY, or the <state>/admin.key it made
    api_key: str | None = None  # DYNALIGN_API_KEY (chat keys, comma-separated); None: chat is open
    tree: list[psutil.Process] = field(default_factory=list)
    stopped: StopResult | None = None

    # addresses and clients
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        assert self.ui_port is not None, "this server was started without the UI"
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def base_name(self) -> str:
        """What the base model is served as (config model.name is unset)."""
        return Config(model=ModelConfig(path=self.model_path)).model_name

    @property
    def db_path(self) -> Path:
        return self.home / "dynalign.db"

    def client(self, timeout: float = 300) -> openai.OpenAI:
        key = self.api_key.split(",")[0] if self.api_key else "x"
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=timeout)

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """`dynalign --config <this server's config file> ...` as a user runs it."""
        return subprocess.run([sys.executable, "-m", "dynalign.cli", "--config",
                               str(self.home.parent / "dynalign.toml"), *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=server_env(self.admin_key, self.api_key),
                              cwd=self.home.parent, stdin=subprocess.DEVNULL)

    @property
    def admin_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def _auth(self, kwargs: dict) -> dict:
        """The admin key as a bearer token, unless the call gives its own Authorization."""
        kwargs["headers"] = {**self.admin_headers, **kwargs.get("headers", {})}
        return kwargs

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=300, **self._auth(kwargs))

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=600, **self._auth(kwargs))

    def activate(self, version: str) -> httpx.Response:
        return self.post(f"/admin/adapters/{version}/activate")

    def active(self) -> str:
        response = self.get("/admin/adapters")
        assert response.status_code == 200, response.text
        return response.json()["active"]

    def engine_running_requests(self) -> float | None:
        """vLLM's gauge of requests running in the engine (None if it cannot be read)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.engine_port}/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("vllm:num_requests_running")]
        return sum(values) if values else None

    wait_for = staticmethod(wait_for)

    def refresh_tree(self) -> None:
        """Re-read its process tree (after the engine was restarted), for stop() to check."""
        self.tree = _tree(self.proc)

    # the SQLite log
    def query(self, sql: str, params=()) -> list[dict]:
        conn = sqlite3.connect(str(self.db_path), timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def exchange_count(self) -> int:
        return self.query("select count(*) as n from exchanges")[0]["n"]

    def rows_for(self, user: str) -> list[dict]:
        return self.query("select * from exchanges where user = ? order by id", (user,))

    def wait_rows(self, user: str, n: int = 1, timeout: float = 60) -> list[dict]:
        """The log is written off the response path: wait for the rows tagged with `user`."""
        return wait_for(lambda: (rows := self.rows_for(user)) and len(rows) >= n and rows,
                        timeout, f"{n} exchange row(s) for user {user!r}")

    # life cycle
    def output(self, lines: int = 40) -> str:
        text = self.output_path.read_text(errors="replace") if self.output_path.exists() else ""
        engine_log = self.home / "logs" / "engine.log"
        engine = engine_log.read_text(errors="replace") if engine_log.exists() else ""
        tail = lambda t: "\n".join(t.splitlines()[-lines:])  # noqa: E731
        report = f"--- dynalign serve output ---\n{tail(text)}\n--- engine.log ---\n{tail(engine)}"
        ui_log = self.home / "logs" / "ui.log"
        if self.ui_port is not None and ui_log.exists():
            report += f"\n--- ui.log ---\n{tail(ui_log.read_text(errors='replace'))}"
        return report

    def stop(self) -> StopResult:
        """Ctrl-C: SIGINT to the gateway's process group, wait, then kill what of ours is left."""
        if self.stopped is not None:
            return self.stopped
        start = time.monotonic()
        sigint_stopped = False
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
                sigint_stopped = True
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        seconds = time.monotonic() - start
        # The engine runs in a process group of its own: give its processes a moment to exit
        # after the gateway is gone, then kill (by pid, all of them ours) what is still alive.
        _, alive = psutil.wait_procs(self.tree, timeout=15)
        alive = [p for p in alive if _really_alive(p)]
        survivors = [_describe(p) for p in alive]
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.stopped = StopResult(sigint_stopped, self.proc.returncode, seconds, survivors)
        print(f"\n[{self.mode} server] stopped: {self.stopped}")
        return self.stopped


def _really_alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def server_env(admin_key: str | None = None, api_key: str | None = None) -> dict:
    """The environment of a server (or of the CLI talking to it): DYNALIGN_ADMIN_KEY and
    DYNALIGN_API_KEY only when given (no admin key: the server makes <state>/admin.key)."""
    env = dict(os.environ)
    for key in ("DYNALIGN_HOME", "DYNALIGN_API_KEY", "DYNALIGN_ADMIN_KEY"):
        env.pop(key, None)  # the config file's state_dir must win; only the keys given here
    if admin_key is not None:
        env["DYNALIGN_ADMIN_KEY"] = admin_key
    if api_key is not None:
        env["DYNALIGN_API_KEY"] = api_key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(root: Path, model_path: str, mode: str, ui: bool = False,
                 admin_key: str | None = None, engine_settings: str = "",
                 api_key: str | None = None) -> Server:
    """`dynalign serve` in `root`, ready: its /health answers (and its UI's page, with `ui`);
    its admin key is `admin_key` (DYNALIGN_ADMIN_KEY), else the <state>/admin.key it creates;
    with `api_key` (DYNALIGN_API_KEY) its chat API asks for a key; `engine_settings`: more TOML
    lines of its [engine] section ("max_restarts = 1\n")."""
    home = root / "state"
    port, engine_port = free_port(), free_port()
    ui_port = free_port() if ui else None
    ui_section = (f'[ui]\nenabled = true\nhost = "127.0.0.1"\nport = {ui_port}\n\n' if ui
                  else '[ui]\nenabled = false\n\n')
    config = root / "dynalign.toml"
    config.write_text(
        f'state_dir = "{home}"\n\n'
        f'[model]\npath = "{model_path}"\n\n'
        f'[engine]\nport = {engine_port}\nswap = "{mode}"\nkv_cache_gib = 1\n{engine_settings}\n'
        f'[server]\nport = {port}\n\n'
        f'{ui_section}'
        # Rounds on these servers test training and publishing; the gate (which would reject
        # nearly everything a 135M judge sees) is switched on by the tests that test it.
        f'[learn.gate]\nenabled = false\n')
    output_path = root / "serve.out"
    with open(output_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynalign.cli", "--config", str(config), "serve",
             *([] if ui else ["--no-ui"])],
            cwd=root, env=server_env(admin_key, api_key), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc, mode, port, engine_port, home, model_path, output_path, ui_port,
                    admin_key=admin_key, api_key=api_key)
    started = time.monotonic()
    try:
        def answers(url: str):
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"dynalign serve exited with {proc.returncode}\n{server.output()}")
                try:
                    return httpx.get(url, timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False
            return ready
        wait_for(answers(f"{server.url}/health"), STARTUP_TIMEOUT_S, f"{mode} server /health",
                 interval=0.5)
        server.admin_key = admin_key or (home / "admin.key").read_text().strip()
        if ui:
            wait_for(answers(f"{server.ui_url}/"), STARTUP_TIMEOUT_S, f"{mode} server's UI page",
                     interval=0.5)
    except BaseException:
        server.tree = _tree(proc)
        server.stop()
        raise
    server.tree = _tree(proc)
    print(f"\n[{mode} server] up in {time.monotonic() - started:.1f} s on port {port}"
          f"{f' (UI on port {ui_port})' if ui else ''} ({len(server.tree) - 1} child processes)")
    return server


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_server(tmp_path_factory, model_path: str, mode: str, ui: bool = False,
               admin_key: str | None = None, api_key: str | None = None):
    """A fixture body: yield a started server, then stop it and check that SIGINT stopped all of it."""
    name = f"{mode}-ui-server" if ui else f"{mode}-server"
    server = start_server(tmp_path_factory.mktemp(name), model_path, mode, ui=ui,
                          admin_key=admin_key, api_key=api_key)
    try:
        yield server
    finally:
        result = server.stop()
    assert result.sigint_stopped, f"SIGINT did not stop the server\n{server.output()}"
    assert not result.survivors, f"processes of the server survived SIGINT: {result.survivors}"


def resolve_base_model(tmp_path_factory) -> str:
    """$DYNALIGN_TEST_MODEL, or the embedded model prepared into <repo>/state/model (a no-op once
    it is there)."""
    path = os.environ.get("DYNALIGN_TEST_MODEL")
    if path:
        assert (Path(path) / "config.json").exists(), f"DYNALIGN_TEST_MODEL={path}: no model there"
        return str(Path(path).resolve())
    from dynalign.config import load_config
    from dynalign.model import prepare

    empty = tmp_path_factory.mktemp("prepare") / "empty.toml"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DYNALIGN_HOME", raising=False)  # it would override state_dir
        cfg = load_config(empty, overrides={"state_dir": str(REPO / "state")})
        return str(prepare(cfg).resolve())


def gone(pid: int) -> bool:
    """The process has ended (or is a zombie nobody has reaped yet)."""
    try:
        p = psutil.Process(pid)
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
