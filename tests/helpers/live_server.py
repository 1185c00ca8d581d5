"""The real system as a subprocess: `dynalign serve` (gateway + vLLM CPU engine, and the Gradio UI
when asked) with its own state dir, ports and SQLite file, started and stopped as a user would.

Stopping a server is itself checked: SIGINT (what Ctrl-C sends) must end the gateway and leave no
process of its tree alive; whatever is left is killed and reported as a failure.

The base model is $DYNALIGN_TEST_MODEL when set, else the embedded model prepared once into
<repo>/state/model.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from dynalign import launch
from dynalign.config import Config, ModelConfig
from dynalign.launch import free_port  # noqa: F401  (for tests that need a port of their own)

REPO = Path(__file__).resolve().parents[2]


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
class Server(launch.Launched):
    """A started server (dynalign/launch.py: proc, root, home, ports, tree), with what tests ask
    of it."""

    mode: str = ""
    model_path: str = ""
    admin_key: str | None = None  # its admin key: DYNALIGN_ADMIN_KEY, or the <state>/admin.key it made
    api_key: str | None = None  # DYNALIGN_API_KEY (chat keys, comma-separated); None: chat is open
    stopped: launch.Stopped | None = None

    # addresses and clients
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

    def client(self, timeout: float = 300, key: str | None = None) -> openai.OpenAI:
        """The openai client with the first chat key (or `key`: the admin key, another one)."""
        key = key or (self.api_key.split(",")[0] if self.api_key else "x")
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

    def delete(self, path: str, **kwargs) -> httpx.Response:
        return httpx.delete(f"{self.url}{path}", timeout=600, **self._auth(kwargs))

    def activate(self, version: str) -> httpx.Response:
        return self.post(f"/admin/adapters/{version}/activate")

    def active(self) -> str:
        response = self.get("/admin/adapters")
        assert response.status_code == 200, response.text
        return response.json()["active"]

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """The gateway's GET /metrics (admin key), parsed by prometheus_client's own parser:
        {(sample name, frozenset of its labels' items): value}. `metric(scraped, name, **labels)`
        reads one sample of it."""
        from prometheus_client.parser import text_string_to_metric_families

        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(response.text)
                for s in family.samples}

    def engine_running_requests(self) -> float | None:
        """vLLM's gauge of requests running in the engine (None if it cannot be read)."""
        return self.engine_metric("vllm:num_requests_running")

    def engine_metric(self, name: str) -> float | None:
        """The sum of one of vLLM's metrics over its labels (None if it cannot be read)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.engine_port}/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith((name + "{", name + " "))]
        return sum(values) if values else None

    wait_for = staticmethod(wait_for)

    def refresh_tree(self) -> None:
        """Re-read its process tree (after the engine was restarted), for stop() to check."""
        self.tree = [self.proc.pid, *launch.descendants(self.proc.pid)]

    def processes(self) -> list[psutil.Process]:
        """Its process tree as last read (the gateway first), those still there."""
        found = []
        for pid in self.tree:
            try:
                found.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return found

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
        return self.tail(lines)

    def stop(self) -> launch.Stopped:
        """Ctrl-C: SIGINT to the gateway's process group, wait, then kill what of ours is left."""
        if self.stopped is None:
            self.stopped = launch.stop(self)
            print(f"\n[{self.mode} server] stopped: {self.stopped}")
        return self.stopped


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
                 api_key: str | None = None, settings: str = "", ui_settings: str = "",
                 server_settings: str = "") -> Server:
    """`dynalign serve` in `root`, ready: its /health answers (and its UI's page, with `ui`);
    its admin key is `admin_key` (DYNALIGN_ADMIN_KEY), else the <state>/admin.key it creates;
    with `api_key` (DYNALIGN_API_KEY) its chat API asks for a key; `engine_settings`: more TOML
    lines of its [engine] section ("max_restarts = 1\n"); `settings`: more TOML sections at the
    end ("[privacy]\nretention_days = 30\n"), `ui_settings`, `server_settings` more lines of its
    [ui] and [server] sections. A state dir already in `root/state` is used."""
    # Rounds on these servers test training and publishing; the gate (which would reject
    # nearly everything a 135M judge sees) is switched on by the tests that test it.
    started = launch.launch(root, model_path, mode, server_env(admin_key, api_key), ui=ui,
                            engine=engine_settings, ui_settings=ui_settings,
                            server_settings=server_settings,
                            extra=f"[learn.gate]\nenabled = false\n\n{settings}")
    server = Server(started.proc, root, started.port, started.engine_port, started.ui_port,
                    mode=mode, model_path=model_path, admin_key=admin_key, api_key=api_key)
    t0 = time.monotonic()
    try:
        launch.wait_ready(server)
        server.admin_key = admin_key or (server.home / "admin.key").read_text().strip()
    except BaseException:
        server.stop()
        raise
    print(f"\n[{mode} server] up in {time.monotonic() - t0:.1f} s on port {server.port}"
          f"{f' (UI on port {server.ui_port})' if ui else ''} ({len(server.tree) - 1} child processes)")
    return server


def run_server(tmp_path_factory, model_path: str, mode: str, ui: bool = False,
               admin_key: str | None = None, api_key: str | None = None,
               root: Path | None = None, settings: str = "", ui_settings: str = "",
               server_settings: str = ""):
    """A fixture body: yield a started server, then stop it and check that SIGINT stopped all of it."""
    name = f"{mode}-ui-server" if ui else f"{mode}-server"
    server = start_server(root or tmp_path_factory.mktemp(name), model_path, mode, ui=ui,
                          admin_key=admin_key, api_key=api_key, settings=settings,
                          ui_settings=ui_settings, server_settings=server_settings)
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
    return not launch.running(pid)


def metric(scraped: dict, name: str, **labels) -> float | None:
    """One sample of a `Server.metrics()` scrape (None when it is not there)."""
    return scraped.get((name, frozenset(labels.items())))
