"""Fixtures that run the real system: `dynalign serve --no-ui` (gateway + vLLM CPU engine) as a
subprocess, each server with its own state dir, ports and SQLite file.

The servers are module-scoped (one engine start per module, ~1 min on CPU) and independent of the
per-test autouse fixture in tests/conftest.py: they never read DYNALIGN_HOME or the test's cwd.
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
import threading
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
    tree: list[psutil.Process] = field(default_factory=list)
    stopped: StopResult | None = None

    # addresses and clients
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_name(self) -> str:
        """What the base model is served as (config model.name is unset)."""
        return Config(model=ModelConfig(path=self.model_path)).model_name

    @property
    def db_path(self) -> Path:
        return self.home / "dynalign.db"

    def client(self, timeout: float = 300) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=timeout)

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """`dynalign --config <this server's config file> ...` as a user runs it."""
        return subprocess.run([sys.executable, "-m", "dynalign.cli", "--config",
                               str(self.home.parent / "dynalign.toml"), *args],
                              capture_output=True, text=True, timeout=timeout, env=server_env(),
                              cwd=self.home.parent, stdin=subprocess.DEVNULL)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=300, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=600, **kwargs)

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
        return f"--- dynalign serve output ---\n{tail(text)}\n--- engine.log ---\n{tail(engine)}"

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


def server_env() -> dict:
    env = dict(os.environ)
    for key in ("DYNALIGN_HOME", "DYNALIGN_API_KEY", "DYNALIGN_ADMIN_KEY"):
        env.pop(key, None)  # the config file's state_dir must win; no auth on these servers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(root: Path, model_path: str, mode: str) -> Server:
    home = root / "state"
    port, engine_port = free_port(), free_port()
    config = root / "dynalign.toml"
    config.write_text(
        f'state_dir = "{home}"\n\n'
        f'[model]\npath = "{model_path}"\n\n'
        f'[engine]\nport = {engine_port}\nswap = "{mode}"\nkv_cache_gib = 1\n\n'
        f'[server]\nport = {port}\n\n'
        f'[ui]\nenabled = false\n\n'
        # Rounds on these servers test training and publishing; the gate (which would reject
        # nearly everything a 135M judge sees) is switched on by the tests that test it.
        f'[learn.gate]\nenabled = false\n')
    output_path = root / "serve.out"
    with open(output_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynalign.cli", "--config", str(config), "serve", "--no-ui"],
            cwd=root, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc, mode, port, engine_port, home, model_path, output_path)
    started = time.monotonic()
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"dynalign serve exited with {proc.returncode}\n{server.output()}")
            try:
                return httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, STARTUP_TIMEOUT_S, f"{mode} server /health", interval=0.5)
    except BaseException:
        server.tree = _tree(proc)
        server.stop()
        raise
    server.tree = _tree(proc)
    print(f"\n[{mode} server] up in {time.monotonic() - started:.1f} s on port {port} "
          f"({len(server.tree) - 1} child processes)")
    return server


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _serve(tmp_path_factory, model_path: str, mode: str):
    server = start_server(tmp_path_factory.mktemp(f"{mode}-server"), model_path, mode)
    try:
        yield server
    finally:
        result = server.stop()
    assert result.sigint_stopped, f"SIGINT did not stop the server\n{server.output()}"
    assert not result.survivors, f"processes of the server survived SIGINT: {result.survivors}"


# base model and adapters
@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
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


@pytest.fixture(scope="session")
def test_adapter(base_model, tmp_path_factory) -> Path:
    """A LoRA adapter with random B matrices: it changes greedy output at once.

    noise=0.02 left the greedy answer of some prompts unchanged (checked with transformers on
    "Tell me about the sea."); 0.05 changed every prompt tried.
    """
    from learner.adapter import new_adapter

    return new_adapter(base_model, tmp_path_factory.mktemp("adapters") / "v1", seed=1, noise=0.05)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """An adapter made for a different (tiny, random) Llama: its tensor shapes fit no base here."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from learner.adapter import new_adapter

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=49152)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    return new_adapter(str(root / "base"), root / "adapter", seed=1, noise=0.02)


# servers
@pytest.fixture(scope="module")
def merged(base_model, tmp_path_factory):
    yield from _serve(tmp_path_factory, base_model, "merged")


@pytest.fixture(scope="module")
def lora(base_model, tmp_path_factory):
    yield from _serve(tmp_path_factory, base_model, "lora")


# load while swapping
@dataclass
class LoadResult:
    thread: int
    stream: bool
    start: float
    end: float
    models: list[str] = field(default_factory=list)  # one per non-streamed answer, one per chunk
    text: str = ""
    error: str | None = None


@dataclass
class Activation:
    version: str
    name: str  # the public name the server reported as active
    start: float
    end: float
    server_seconds: float


LOAD_MESSAGES = [{"role": "user", "content": "Count from one to ten in words."}]


def _one_request(client: openai.OpenAI, stream: bool, thread: int, model: str) -> tuple[list, str]:
    kwargs = dict(model=model, messages=LOAD_MESSAGES, max_tokens=12, temperature=0,
                  extra_headers={"X-Dynalign-User": f"load-{thread}"})
    if not stream:
        completion = client.chat.completions.create(**kwargs)
        return [completion.model], completion.choices[0].message.content or ""
    models, parts = [], []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        models.append(chunk.model)
        parts += [c.delta.content or "" for c in chunk.choices]
    return models, "".join(parts)


def run_swaps_under_load(server: Server, versions: list[str], threads: int = 8,
                         per_swap: int = 8, model: str = "dynalign",
                         timeout: float = 600) -> tuple[list[LoadResult], list[Activation]]:
    """`threads` clients send streamed and non-streamed chats in a loop while the main thread
    activates each of `versions` in turn. After each activation it waits until `per_swap`
    requests that started after it have finished, so every version is seen under load."""
    results: list[LoadResult] = []
    lock = threading.Lock()
    stop = threading.Event()
    hard_deadline = time.monotonic() + timeout

    def worker(k: int) -> None:
        client = server.client(timeout=300)
        for i in range(1000):
            if stop.is_set() or time.monotonic() > hard_deadline:
                return
            stream = (i + k) % 2 == 0
            result = LoadResult(k, stream, time.monotonic(), 0.0)
            try:
                result.models, result.text = _one_request(client, stream, k, model)
            except Exception as e:  # recorded: the test asserts there are none
                result.error = repr(e)
            result.end = time.monotonic()
            with lock:
                results.append(result)

    def finished_since(t: float) -> int:
        with lock:
            return sum(1 for r in results if r.start >= t)

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    activations: list[Activation] = []
    started = time.monotonic()
    for t in pool:
        t.start()
    try:
        wait_for(lambda: finished_since(started) >= threads, timeout / 2, "load to warm up")
        for version in versions:
            t0 = time.monotonic()
            response = server.activate(version)
            t1 = time.monotonic()
            assert response.status_code == 200, response.text
            body = response.json()
            activations.append(Activation(version, body["active"], t0, t1, body["seconds"]))
            wait_for(lambda: finished_since(t1) >= per_swap, timeout / 2,
                     f"{per_swap} requests after activating {version}")
    finally:
        stop.set()
        for t in pool:
            t.join(timeout=300)
    assert not any(t.is_alive() for t in pool), "a load thread did not finish"
    print(f"\n[{server.mode}] {len(results)} requests under load; activations "
          "(client s / server s): "
          + ", ".join(f"{a.version}: {a.end - a.start:.2f}/{a.server_seconds:.2f}"
                      for a in activations))
    return results, activations


def check_swap_results(results: list[LoadResult], activations: list[Activation],
                       before: str) -> None:
    """No failures, no empty answers, one model name per answer, and every request that started
    after an activation returned (and finished before the next one began) names that version."""
    failed = [r for r in results if r.error]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    empty = [r for r in results if not r.text.strip()]
    assert not empty, f"{len(empty)} empty answers, e.g. {empty[:3]}"
    for r in results:
        assert len(set(r.models)) == 1, f"one answer named several models: {r}"
    windows = [(float("-inf"), before)] + [(a.end, a.name) for a in activations]
    for i, (start, name) in enumerate(windows):
        next_start = activations[i].start if i < len(activations) else float("inf")
        following = windows[i + 1][1] if i + 1 < len(windows) else name
        inside = [r for r in results if start <= r.start and r.end <= next_start]
        straddling = [r for r in results if start <= r.start < next_start and r.end > next_start]
        if i > 0:
            assert inside, f"no request ran wholly after activation {i} of {activations}"
        wrong = [r for r in inside if r.models[0] != name]
        assert not wrong, f"requests after the switch to {name} answered as {wrong[:3]}"
        wrong = [r for r in straddling if r.models[0] not in (name, following)]
        assert not wrong, f"requests around the switch to {following} answered as {wrong[:3]}"


@pytest.fixture(name="start_server", scope="session")
def start_server_fixture():
    """start_server(root, model_path, mode): a further server, stopped by the caller."""
    return start_server


@pytest.fixture(scope="session")
def swap_under_load():
    return run_swaps_under_load


@pytest.fixture(scope="session")
def check_swaps():
    return check_swap_results


def error_body(response: httpx.Response) -> dict:
    """The OpenAI error shape: {"error": {"message": str, "type": str, ...}}."""
    body = response.json()
    assert isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    assert isinstance(body["error"].get("type"), str) and body["error"]["type"], body
    return body["error"]


@pytest.fixture(scope="session")
def openai_error():
    return error_body
