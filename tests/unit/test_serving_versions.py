"""server/versions.py and server/canary.py on a running loop with a real store: which versions
answer by name, a canary resumed in merged mode, the canary's races, and the adapters an engine
holds after a restart. A stand-in answers vLLM's adapter-loading route as vLLM does (400 for a
name it holds already) and forgets everything when "restarted"."""

import asyncio
import threading

import httpx
import pytest

from dynalign.config import load_config
from dynalign.errors import CanaryError
from dynalign.store import Store
from helpers.tiny_lora import write_adapter, write_base
from server.canary import review
from server.engine import EngineClient
from server.store_thread import StoreThread
from server.validate import RequestError
from server.versions import Versions


class Engine:
    """What the stand-in engine holds: adapter names, as vLLM's load route keeps them."""

    def __init__(self, json_server):
        self.held: set[str] = set()
        self.loads: list[str] = []
        self.url = json_server(self.respond).removesuffix("/v1")

    def respond(self, path, headers, body):
        name = body["lora_name"]
        self.loads.append(name)
        if name in self.held:
            return 400, {"error": {"message": f"The lora adapter '{name}' has already been "
                                              "loaded.", "code": 400}}, {}
        self.held.add(name)
        return 200, {}, {}

    def restart(self) -> None:
        self.held.clear()


class Loop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


@pytest.fixture
def loop():
    made = Loop()
    yield made
    made.loop.call_soon_threadsafe(made.loop.stop)


@pytest.fixture
def make(tmp_path, json_server, loop):
    """make(mode, overrides) -> (Versions, Engine) over one state dir (a second call is the
    gateway restarted on it); three registered versions, v1 active, in LoRA mode."""
    base = write_base(tmp_path / "tiny-base")
    stores = []

    def versions(mode: str = "lora", register: bool = True):
        engine = Engine(json_server)
        cfg = load_config(overrides={"model.path": str(base), "engine.swap": mode})
        store = Store(cfg.db_path)
        stores.append(store)
        made = Versions(cfg, mode, EngineClient(engine.url, httpx.AsyncClient()), store)
        loop.run(made.startup())
        if register:
            for v in (1, 2, 3):
                loop.run(made.register(str(write_adapter(tmp_path / f"a{v}"))))
            loop.run(made.activate(1))
        return made, engine

    yield versions
    for store in stores:
        store.close()


def settings(versions: Versions, version: int) -> dict:
    return {**vars(versions.cfg.canary), "version": version, "share": 0.5}


# which versions answer by name
def test_only_the_active_a_running_canary_and_the_base_answer_by_name(make, loop):
    versions, engine = make()
    versions.store.set_adapter_status(3, "rejected", note="lost its gate")
    for name, status in (("dynalign-v2", "candidate"), ("dynalign-v3", "rejected")):
        with pytest.raises(RequestError) as refused:
            loop.run(versions.resolve(name, "ann"))
        error = refused.value
        assert (error.status, error.code) == (404, "model_not_serving")
        assert f"it is {status}" in error.message and "dynalign-v1" in error.message
    assert "dynalign-v2" not in engine.loads  # refused before anything was loaded
    assert loop.run(versions.resolve("dynalign-v1")).version == 1
    assert loop.run(versions.resolve(versions.cfg.model_name)).version is None
    assert loop.run(versions.resolve("dynalign-v3", admin=True)).version == 3  # dynalign eval
    with pytest.raises(RequestError, match="does not exist"):
        loop.run(versions.resolve("dynalign-v9", admin=True))
    loop.run(versions.start_canary(settings(versions, 2)))
    assert loop.run(versions.resolve("dynalign-v2")).version == 2  # the canary's, by name
    assert [t.public_name for t in versions.servable()] == [
        versions.cfg.model_name, "dynalign-v1", "dynalign-v2"]


def test_a_version_number_of_thousands_of_digits_is_a_404_not_a_500(make, loop):
    versions, _ = make(register=False)
    for name in ("dynalign-v" + "1" * 4301, "dynalign-v" + "9" * 20):
        with pytest.raises(RequestError) as refused:
            loop.run(versions.resolve(name))
        assert refused.value.status == 404


# a canary resumed by a gateway restarted in merged mode
def test_a_canary_is_not_resumed_in_merged_mode_and_the_active_version_stays(make, loop):
    versions, _ = make("lora")
    versions.store.set_active(None)  # the base serves (merged mode would reload v1's weights)
    canary = loop.run(versions.start_canary(settings(versions, 2)))
    restarted, _ = make("merged", register=False)
    assert restarted.canary is None and restarted.active is None
    row = restarted.store.last_canary()
    assert row["id"] == canary["id"] and row["status"] == "stopped"
    assert "engine.swap = 'merged'" in row["reason"] and "active version stays" in row["reason"]
    assert loop.run(restarted.resolve("dynalign", "a user of the canary arm")).version is None
    again, _ = make("lora", register=False)  # ended for good: a LoRA restart resumes nothing
    assert again.canary is None


# the canary's races
def test_two_reviews_at_once_end_the_canary_once_and_neither_fails(make, loop, tmp_path):
    versions, _ = make()
    canary = loop.run(versions.start_canary({**settings(versions, 2), "min_feedback": 1,
                                             "min_raters": 1}))
    for arm, rating in (("active", 1), ("canary", 1)):
        exchange = versions.store.log_exchange({"canary": canary["id"], "arm": arm,
                                                "status": "ok", "client_id": arm})
        versions.store.add_feedback(exchange, rating, user=arm)
    db = StoreThread(versions.cfg.db_path)

    async def both():
        return await asyncio.gather(review(versions, db), review(versions, db))
    decisions = loop.run(both())
    db.close()
    assert sorted(d is None for d in decisions) == [False, True], decisions  # one ended it
    assert versions.store.last_canary()["status"] == "promoted" and versions.active == 2


def test_a_review_never_ends_a_canary_started_after_its_numbers(make, loop):
    versions, _ = make()
    first = loop.run(versions.start_canary(settings(versions, 2)))
    loop.run(versions.end_canary("stop", "by the test"))
    second = loop.run(versions.start_canary(settings(versions, 3)))
    assert loop.run(versions.end_canary("rollback", "first's numbers",
                                        canary_id=first["id"])) is False
    assert versions.canary["id"] == second["id"]
    assert versions.store.adapter(3)["status"] == "candidate"  # not rejected on old numbers
    loop.run(versions.end_canary("stop", "by an operator"))
    with pytest.raises(CanaryError):  # an operator's stop with none running is still a 409
        loop.run(versions.end_canary("stop", "again"))


def test_a_canary_start_waits_for_an_activation_and_records_the_active_it_left(make, loop):
    """start_canary takes the versions lock: an activation under way (holding it) finishes
    first, and the canary records the version that activation left serving."""
    versions, _ = make()

    async def race():
        async with versions.lock:  # an activation of v3, under way
            start = asyncio.ensure_future(versions.start_canary(settings(versions, 2)))
            done, _ = await asyncio.wait({start}, timeout=2)
            assert not done, "the canary started in the middle of an activation"
            versions.flip(3)
        return await start
    canary = loop.run(race())
    assert canary["active"] == 3 == versions.store.running_canary()["active"]


# adapters held by an engine restarted while a request loaded one
def test_an_adapter_loaded_while_the_engine_restarts_is_not_forgotten(make, loop):
    """While reopen waits for the fresh engine, requests come: one for the canary's v2 (held
    by the dead engine) and an operator's first one for v3. Both must be served after: v2 had
    to be loaded again, and v3, loaded into the fresh engine before the bookkeeping was reset,
    is answered although the engine says "already loaded" to a second load."""
    versions, engine = make()
    loop.run(versions.start_canary(settings(versions, 2)))
    engine.restart()  # a fresh engine: it holds nothing

    def ready():
        for name in ("dynalign-v2", "dynalign-v3"):
            asyncio.run_coroutine_threadsafe(versions.resolve(name, admin=True),
                                             loop.loop).result()
    loop.run(versions.reopen(ready))
    assert engine.held == {"dynalign-v1", "dynalign-v2", "dynalign-v3"}
    for version in (2, 3):  # v3 was a 502 until the next restart
        assert loop.run(versions.resolve(f"dynalign-v{version}", admin=True)).version == version
