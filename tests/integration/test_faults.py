"""Faults, tested rather than assumed (the engine's own death: test_engine_death.py):

- kill -9 of a learner mid-round: chats are answered before, during and after; the round ends
  `failed` saying the learner was killed; no version is registered or activated; the next round
  is promoted.
- kill -9 of the gateway (`dynalign serve`) under chat load: its engine dies with it
  (PR_SET_PDEATHSIG); a server restarted over the same state dir serves the same active version
  (the same greedy answer), and every exchange whose response a client received in full is in
  the SQLite log.

One server for the module (merged swap mode), tests in file order; the last one kills it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import psutil
import pytest

from helpers.live_server import gone

pytestmark = pytest.mark.slow

ROUND_TIMEOUT = 1800  # s: loading torch/TRL, the step, merging the adapter; a busy 2-core box
TINY = {"max_steps": 1, "prompts": 1, "reward": "rule", "num_generations": 4,
        "prompts_per_step": 1, "max_completion_tokens": 16}
END = ("promoted", "rejected", "failed", "cancelled")
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def server(base_model, tmp_path_factory, start_server):
    server = start_server(tmp_path_factory.mktemp("faults-server"), base_model, "merged")
    try:
        yield server
    finally:
        server.stop()  # the last test kills it; stop() then kills (by pid) what survived


def tag() -> str:
    return f"fault-{uuid.uuid4().hex[:10]}"


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json()


def view(server, round_id: int) -> dict:
    return ok(server.get(f"/admin/rounds/{round_id}"))


def wait_end(server, round_id: int) -> dict:
    return server.wait_for(lambda: (v := view(server, round_id))["status"] in END and v,
                           ROUND_TIMEOUT, f"round {round_id} to end", interval=1.0)


def listing(server) -> list[tuple]:
    return [(r["version"], r["status"]) for r in ok(server.get("/admin/adapters"))["data"]]


def greedy(server, user: str | None = None, stream: bool = False):
    """(the model that answered, its text) of a greedy chat, read to its end."""
    kwargs = dict(model="dynalign", messages=PROMPT, max_tokens=16, temperature=0,
                  extra_headers={"X-Dynalign-User": user or tag()})
    if not stream:
        completion = server.client().chat.completions.create(**kwargs)
        return completion.model, completion.choices[0].message.content
    chunks = list(server.client().chat.completions.create(stream=True, **kwargs))
    return chunks[0].model, "".join(c.delta.content or "" for ch in chunks for c in ch.choices)


class ChatLoad:
    """Threads that chat (streamed and not, alternating) until stopped, each chat tagged with
    its own user; `done` lists the tags whose response was received in full."""

    def __init__(self, server, threads: int = 2):
        self.server, self.stop = server, threading.Event()
        self.done: list[tuple[float, str, str]] = []  # (finished at, user, model)
        self.errors: list[tuple[float, str]] = []
        self.pool = [threading.Thread(target=self._loop, args=(k,), daemon=True)
                     for k in range(threads)]
        for t in self.pool:
            t.start()

    def _loop(self, k: int) -> None:
        for i in range(10_000):
            if self.stop.is_set():
                return
            user = tag()
            try:
                model, _ = greedy(self.server, user, stream=(i + k) % 2 == 0)
                self.done.append((time.monotonic(), user, model))
            except Exception as e:  # recorded: the tests assert on them
                self.errors.append((time.monotonic(), repr(e)))

    def answered_since(self, t: float) -> int:
        return sum(1 for end, _, _ in self.done if end >= t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.pool:
            t.join(300)
        assert not any(t.is_alive() for t in self.pool), "a chat thread hangs"


def test_a_learner_killed_mid_round_fails_it_and_serving_goes_on(server):
    active, before = server.active(), listing(server)
    load = ChatLoad(server)
    row = ok(server.post("/admin/refresh", json={**TINY, "max_steps": 50}), 202)

    def running():
        v = view(server, row["id"])
        assert v["status"] not in END, f"the round ended before it was seen running: {v}"
        return v if v["status"] == "running" and v["pid"] and v["progress"].get("phase") else None
    pid = server.wait_for(running, ROUND_TIMEOUT, "the learner to run", interval=0.5)["pid"]
    t = time.monotonic()
    server.wait_for(lambda: load.answered_since(t) >= 2, 300, "chats while the learner runs")
    os.killpg(pid, signal.SIGKILL)  # the learner's process group, as the OOM killer might

    done = wait_end(server, row["id"])
    assert done["status"] == "failed", done
    assert "killed by SIGKILL" in done["error"] and "nothing was published" in done["error"], done
    assert done["adapter_version"] is None and done["finished"], done
    assert gone(pid)
    t = time.monotonic()
    server.wait_for(lambda: load.answered_since(t) >= 2, 300, "chats after the learner's death")
    load.finish()
    assert not load.errors, f"chats failed around the learner's death: {load.errors[:3]}"
    assert {model for _, _, model in load.done} == {active}
    assert listing(server) == before and server.active() == active
    newest = max((v for v, _ in before), default=0)
    assert not (server.home / "adapters" / f"{newest + 1:04d}").exists()

    again = wait_end(server, ok(server.post("/admin/refresh", json=TINY), 202)["id"])
    assert again["status"] == "promoted", again
    assert again["adapter_version"] == newest + 1
    assert server.active() == f"dynalign-v{newest + 1}"
    assert greedy(server)[0] == f"dynalign-v{newest + 1}"


def test_a_killed_gateway_restarts_on_the_same_version_and_lost_no_exchange(
        server, start_server, test_adapter):
    if server.active() == server.base_name:  # run alone: an adapter version of its own
        ok(server.post("/admin/adapters", json={"path": str(test_adapter), "activate": True}), 201)
    active, versions = server.active(), listing(server)
    assert active != server.base_name
    model, text = greedy(server)
    assert model == active

    load = ChatLoad(server, threads=3)
    t = time.monotonic()
    server.wait_for(lambda: load.answered_since(t) >= 6, 300, "chats before the kill")
    last_user = tag()
    greedy(server, last_user, stream=True)  # read to its end, then at once:
    server.refresh_tree()
    children = server.processes()[1:]
    os.killpg(server.proc.pid, signal.SIGKILL)  # the gateway's own group: only the gateway
    server.proc.wait(60)
    load.finish()
    completed = [user for _, user, _ in load.done] + [last_user]
    _, alive = psutil.wait_procs(children, timeout=60)
    alive = [p for p in alive if not gone(p.pid)]
    assert not alive, f"the engine outlived the killed gateway: {alive}"

    again = start_server(server.home.parent, server.model_path, "merged")
    try:
        assert again.active() == active and listing(again) == versions
        assert greedy(again) == (active, text), "the restarted server serves other weights"
        print(f"\n{len(completed)} exchanges received in full before the kill")
        missing = [u for u in completed
                   if not any(r["status"] == "ok" for r in again.rows_for(u))]
        assert not missing, (f"{len(missing)} of {len(completed)} exchanges the client received "
                             f"in full are not in the log: {missing[:5]}")
    finally:
        result = again.stop()
    assert result.sigint_stopped and not result.survivors, (result, again.output())
