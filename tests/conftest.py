"""Every test runs in its own temp dir with its own state dir and no keys from the environment.

`json_server` starts real local HTTP servers that stand in for an OpenAI-compatible provider or
judge (tests/helpers/stand_in.py), stopped after the test."""

import os

import pytest

from helpers.stand_in import serve_json, url_of


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), each worker's vLLM engines compute on a
    core of their own: vLLM's automatic binding would put every engine on core 0.

    Every engine of the run shares one vLLM cache dir (VLLM_CACHE_ROOT, which the engine's
    environment keeps when set), as a user's restarts over one state dir do: vLLM caches what it
    learns by inspecting the model class (keyed on the hash of vLLM's source file), and each
    engine on a fresh state dir of its own spent ~15 s re-inspecting it in a subprocess.

    torch in the tests' own processes (a local judge, `bench/align.py`, the CLI in process) runs
    one thread (OMP_NUM_THREADS=1), as the learner does by default (learn.threads): with two
    workers each core is busy, and OpenMP threads that wait on a busy core spin (bench/align.py's
    quick run took 41 s alone and 209 s in the suite with two threads)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and (os.cpu_count() or 1) > 1:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(int(worker[2:]) % os.cpu_count()))
    if getattr(config, "cache", None) is not None:  # pytest's cache dir (.pytest_cache/d/vllm)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(config.cache.mkdir("vllm")))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNALIGN_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("DYNALIGN_API_KEY", raising=False)
    monkeypatch.delenv("DYNALIGN_ADMIN_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def json_server():
    servers = []

    def start(respond) -> str:
        servers.append(serve_json(respond))
        return url_of(servers[-1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
