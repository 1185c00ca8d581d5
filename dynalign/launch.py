"""`dynalign serve` as a child process on free ports: the one way the benchmarks (bench/serve.py)
and the live tests (tests/helpers/live_server.py) start a real server and stop it.

It simplifies to what both need: a folder `root` with `root/dynalign.toml` (the model, the swap
mode, free ports) and the state dir `root/state`; `python -m dynalign.cli --config ... serve` in a
session of its own, output to a file; ready when GET /health answers 200 (and the UI's page, when
it has one); stopped as Ctrl-C would (SIGINT to its group), then whatever of its process tree is
still alive is killed and reported. Stdlib plus httpx; starting anything is the caller's call.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynalign.procs import alive, stop_group

STARTUP_TIMEOUT_S = 900  # the engine takes ~30-80 s idle; far more on a busy 2-core machine
STOP_TIMEOUT_S = 90


class NotReady(RuntimeError):
    """The server exited, or did not answer in time; the message carries its output's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stopped:
    sigint_stopped: bool  # the gateway process exited on SIGINT alone, before the deadline
    returncode: int | None
    seconds: float
    survivors: list[str] = field(default_factory=list)  # processes of its tree still alive after


@dataclass
class Launched:
    """A started `dynalign serve`: its process, ports and files."""

    proc: subprocess.Popen
    root: Path
    port: int
    engine_port: int
    ui_port: int | None = None
    tree: list[int] = field(default_factory=list)  # its process tree, as last read

    @property
    def home(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "dynalign.toml"

    @property
    def output_path(self) -> Path:
        return self.root / "serve.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 40) -> str:
        """The last lines of its output and of the engine's log (and the UI's, when it has one)."""
        logs = {"dynalign serve output": self.output_path,
                "engine.log": self.home / "logs" / "engine.log"}
        if self.ui_port is not None:
            logs["ui.log"] = self.home / "logs" / "ui.log"
        return "\n".join(f"--- {name} ---\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:])
            for name, path in logs.items() if path.exists())


def config_text(home: Path, model: str, mode: str, port: int, engine_port: int,
                ui_port: int | None = None, kv_cache_gib: int = 1, engine: str = "",
                extra: str = "", dtype: str = "", ui_settings: str = "",
                server: str = "") -> str:
    """The TOML of a local server; `engine`, `server`, `ui_settings`: more lines of its [engine],
    [server] and [ui] sections, `extra`: more sections at the end, `dtype`: model.dtype (else
    "auto")."""
    ui = (f'[ui]\nenabled = true\nhost = "127.0.0.1"\nport = {ui_port}\n{ui_settings}\n' if ui_port
          else '[ui]\nenabled = false\n\n')
    dtype = f'dtype = "{dtype}"\n' if dtype else ""
    return (f'state_dir = "{home}"\n\n[model]\npath = "{model}"\n{dtype}\n'
            f'[engine]\nport = {engine_port}\nswap = "{mode}"\nkv_cache_gib = {kv_cache_gib}\n'
            f'{engine}\n[server]\nport = {port}\n{server}\n{ui}{extra}')


def launch(root: Path, model: str, mode: str, env: dict, ui: bool = False,
           kv_cache_gib: int = 1, engine: str = "", extra: str = "", dtype: str = "",
           ui_settings: str = "", server_settings: str = "") -> Launched:
    """Write root/dynalign.toml and start `dynalign serve` on it (not yet ready: see wait_ready)."""
    root.mkdir(parents=True, exist_ok=True)
    port, engine_port, ui_port = free_port(), free_port(), free_port() if ui else None
    server = Launched(None, root, port, engine_port, ui_port)  # type: ignore[arg-type]
    server.config.write_text(config_text(server.home, model, mode, port, engine_port, ui_port,
                                         kv_cache_gib, engine, extra, dtype, ui_settings,
                                         server_settings))
    with open(server.output_path, "ab") as out:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "dynalign.cli", "--config", str(server.config), "serve",
             *([] if ui else ["--no-ui"])],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    return server


def wait_ready(server: Launched, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Until /health (and the UI's page) answer 200; NotReady if it exits or the time runs out."""
    urls = [f"{server.url}/health"]
    if server.ui_port is not None:
        urls.append(f"http://127.0.0.1:{server.ui_port}/")
    for url in urls:
        _wait_answering(server, url, timeout)
    server.tree = [server.proc.pid, *descendants(server.proc.pid)]


def _wait_answering(server: Launched, url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise NotReady(f"dynalign serve exited with {server.proc.returncode}\n{server.tail()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"{url} did not answer within {timeout:.0f} s\n{server.tail()}")
        time.sleep(0.5)


def stop(server: Launched, grace: float = STOP_TIMEOUT_S) -> Stopped:
    """Ctrl-C: SIGINT to the gateway's group, wait; then kill what of its tree is left (the engine
    leads a group of its own), after a moment for it to follow the gateway out."""
    tree = sorted(set(server.tree) | set(descendants(server.proc.pid)))
    start = time.monotonic()
    sigint_stopped = server.proc.poll() is not None or stop_group(server.proc, signal.SIGINT,
                                                                  grace=grace)
    seconds = time.monotonic() - start
    alive_after = _wait_gone(tree, 15)
    survivors = [_describe(pid) for pid in alive_after]
    for pid in alive_after:
        _kill(pid)
    _wait_gone(alive_after, 10)
    return Stopped(sigint_stopped, server.proc.returncode, seconds, survivors)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return alive(pid) and state not in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)
    return f"{pid} {cmd.strip()[:120]}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

