"""Fixtures that run the real system: `dynalign serve --no-ui` (gateway + vLLM CPU engine) as a
subprocess, each server with its own state dir, ports and SQLite file (tests/helpers/live_server.py,
shared with tests/browser).

The servers are module-scoped (one engine start per module, ~1 min on CPU) and independent of the
per-test autouse fixture in tests/conftest.py: they never read DYNALIGN_HOME or the test's cwd.
Stopping a server is itself checked: SIGINT (what Ctrl-C sends) must end the gateway and leave no
process of its tree alive; whatever is left is killed and reported as a failure.

The base model is $DYNALIGN_TEST_MODEL when set, else the embedded model prepared once into
<repo>/state/model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from helpers.live_server import Server, resolve_base_model, run_server, start_server, wait_for


# base model and adapters
@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> str:
    return resolve_base_model(tmp_path_factory)


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
    yield from run_server(tmp_path_factory, base_model, "merged")


@pytest.fixture(scope="module")
def lora(base_model, tmp_path_factory):
    yield from run_server(tmp_path_factory, base_model, "lora")


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
