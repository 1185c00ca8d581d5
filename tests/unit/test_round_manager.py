"""Refresh rounds in the store (one open at a time, end states, the schedule's row, the
migrations that added them) and learner.manager's parts that need no learner: per-round config
overrides, the learner command line, the default gate, and recovery of rounds left open by a
manager that died (with real processes standing in for the dead manager and its learner)."""

import asyncio
import dataclasses
import json
import os
import threading
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from dynalign import store as store_mod
from dynalign.config import load_config
from dynalign.errors import ConfigError, RoundBusyError, RoundError, UnknownRoundError
from dynalign.store import Store
from helpers.tiny_lora import write_adapter, write_base
from learner.manager import (RoundManager, evaluation_gate, flagged_versions, learner_command,
                             with_overrides)
from server.engine import EngineClient
from server.learning import versions_activator, versions_publisher
from server.versions import Versions

WAIT_FOR_STDIN = [sys.executable, "-c", "import sys; sys.stdin.read()"]


@pytest.fixture
def cfg():
    return load_config()


@pytest.fixture
def store(cfg):
    s = Store(cfg.db_path)
    yield s
    s.close()


def _publish(candidate, parent, note, activate):
    raise AssertionError("recovery publishes nothing")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid now names no process
    return proc.pid


# the store's rounds

def test_open_round_refuses_while_one_is_open_even_from_another_connection(cfg, store):
    first = store.open_round("operator", "cfg", owner_pid=123)
    with closing(Store(cfg.db_path)) as other:
        with pytest.raises(RoundBusyError, match=f"round {first} is queued") as busy:
            other.open_round("schedule", "cfg", owner_pid=456)
        assert busy.value.round_id == first
        assert isinstance(busy.value, RoundError)
        for status in ("running", "evaluating"):
            store.update_round(first, status=status)
            with pytest.raises(RoundBusyError, match=status):
                other.open_round("schedule", "cfg", owner_pid=456)
        # the refused connection is still usable, and an ended round frees the slot
        other.update_round(first, status="promoted")
        second = other.open_round("schedule", "cfg2", owner_pid=456)
    assert second == first + 1
    row = store.round(second)
    assert (row["status"], row["trigger"], row["config"], row["owner_pid"]) == \
        ("queued", "schedule", "cfg2", 456)
    assert json.loads(row["progress"]) == {} and json.loads(row["metrics"]) == {}
    assert row["created"] and row["finished"] is None


@pytest.mark.parametrize("end", ["promoted", "rejected", "failed", "cancelled"])
def test_end_states_set_finished(store, end):
    round_id = store.open_round("operator", "", 1)
    store.update_round(round_id, status="running", started="t0", progress={"step": 1})
    row = store.round(round_id)
    assert row["finished"] is None and json.loads(row["progress"]) == {"step": 1}
    store.update_round(round_id, status=end)
    assert store.round(round_id)["finished"]
    assert store.open_rounds() == []


def test_an_explicit_finished_time_is_kept(store):
    round_id = store.open_round("operator", "", 1)
    store.update_round(round_id, status="failed", finished="2000-01-01T00:00:00")
    assert store.round(round_id)["finished"] == "2000-01-01T00:00:00"


def test_rounds_newest_first_and_open_rounds(store):
    ids = []
    for _ in range(3):
        ids.append(store.open_round("operator", "", 1))
        store.update_round(ids[-1], status="rejected")
    last = store.open_round("operator", "", 1)
    store.update_round(last, status="evaluating")
    assert [r["id"] for r in store.rounds()] == [last, *reversed(ids)]
    assert [r["id"] for r in store.rounds(limit=2)] == [last, ids[-1]]
    assert [r["id"] for r in store.open_rounds()] == [last]


def test_unknown_round(store):
    with pytest.raises(UnknownRoundError, match="unknown round: 9"):
        store.round(9)


def test_schedule_state_upserts_only_the_given_fields(store):
    assert store.schedule_state() is None
    store.save_schedule_state(spec='{"cron": "0 3 * * *"}', anchor="a0", last_fire=None)
    store.save_schedule_state(last_fire="f1", last_result="started round 1")
    assert store.schedule_state() == {"name": "refresh", "spec": '{"cron": "0 3 * * *"}',
                                      "anchor": "a0", "last_fire": "f1",
                                      "last_result": "started round 1", "source": None}
    assert store.schedule_state("other") is None


def test_an_older_database_gains_the_round_owner_columns_and_schedule(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    names = [fn.__name__ for fn in store_mod.MIGRATIONS]
    upto = names.index("m003_rounds") + 1
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:upto])
    with closing(Store(path)) as old:
        old.db["rounds"].insert({"id": 1, "status": "promoted", "trigger": "operator"})
        assert "schedule" not in old.db.table_names()
    monkeypatch.undo()
    with closing(Store(path)) as new:
        columns = set(new.db["rounds"].columns_dict)
        assert {"owner_pid", "pid", "exchanges_upto", "candidate", "cancel_requested"} <= columns
        assert new.round(1)["status"] == "promoted" and new.round(1)["owner_pid"] is None
        assert new.consumed_upto() == 0
        new.save_schedule_state(anchor="a")
        assert new.schedule_state()["anchor"] == "a"
    conn = sqlite3.connect(path)
    try:
        done = {r[0] for r in conn.execute("select name from _migrations")}
    finally:
        conn.close()
    assert {"m004_round_owner", "m005_schedule"} <= done


# per-round overrides, the learner's command line, the gate

def test_with_overrides_applies_to_learn_only(cfg):
    out = with_overrides(cfg, {"max_steps": 2, "prompts": 3, "temperature": 1, "reward": "rule"})
    assert (out.learn.max_steps, out.learn.prompts, out.learn.reward) == (2, 3, "rule")
    assert out.learn.temperature == 1.0 and isinstance(out.learn.temperature, float)
    assert out.learn.num_generations == cfg.learn.num_generations
    assert cfg.learn.max_steps == 200  # the server's own config is untouched
    assert with_overrides(cfg, None).learn == cfg.learn


def test_with_overrides_nested_schedule_table(cfg):
    out = with_overrides(cfg, {"schedule": {"interval_hours": 2}})
    assert out.learn.schedule.interval_hours == 2.0


def test_with_overrides_dotted_keys_reach_nested_tables(cfg):
    out = with_overrides(cfg, {"judge.model": "big-judge", "judge.url": "http://j/v1"})
    assert (out.learn.judge.model, out.learn.judge.url) == ("big-judge", "http://j/v1")
    assert out.learn.judge.temperature == 0.0  # the table's other defaults stay


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "unknown config key: learn.bogus"),
    ({"max_steps": "two"}, "learn.max_steps must be a int"),
    ({"max_steps": True}, "learn.max_steps"),
    ({"use_vllm": "yes"}, "learn.use_vllm must be a bool"),
    ({"reward": "vibes"}, "learn.reward must be one of"),
    ({"num_generations": 1}, "learn.num_generations must be at least 2"),
])
def test_with_overrides_rejects_bad_ones(cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(cfg, overrides)


def test_with_overrides_pins_an_absolute_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DYNALIGN_HOME")
    cfg = load_config()
    assert cfg.state_dir == "state"  # relative to the server's cwd
    out = with_overrides(cfg, {})
    assert Path(out.state_dir).is_absolute()
    assert Path(out.state_dir) == tmp_path / "state" == cfg.home


def test_learner_command(cfg):
    assert learner_command(cfg, Path("/r/0003/config.toml"), 3) == [
        sys.executable, "-m", "learner.round", "/r/0003/config.toml", "--round-id", "3"]
    accel = load_config(None, {"learn.accelerate_config": "/etc/accel.yaml",
                               "learn.dtype": "bfloat16"})
    assert learner_command(accel, Path("/r/0004/config.toml"), 4) == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "/etc/accel.yaml",
        "-m", "learner.round", "/r/0004/config.toml", "--round-id", "4"]


def test_evaluation_gate_reads_the_rounds_measurements(cfg, tmp_path):
    row = {"id": 1, "candidate": str(tmp_path / "adapter")}
    missing = evaluation_gate(cfg, row)
    assert missing.promote is False and "gate.json" in missing.reasons[0]
    (tmp_path / "gate.json").write_text(json.dumps({
        "pairwise": {"n": 8, "judged": 6, "win": 5, "loss": 1, "win_rate": 5 / 6}}))
    assert evaluation_gate(cfg, row).promote is True
    off = evaluation_gate(load_config(None, {"learn.gate.enabled": False}), {"id": 1})
    assert off.promote is True and "gate is off" in off.reasons[0]
    no = evaluation_gate(load_config(None, {"learn.promote": False}), row)
    assert no.promote is False and "learn.promote is off" in no.reasons[0]


def test_flagged_versions_come_from_the_rounds_gate_verdicts(cfg, store):
    for version, flags in ((1, []), (2, ["KL to the base model 2.000 > 1.0"]), (None, ["x"])):
        round_id = store.open_round("test", "", os.getpid())
        store.update_round(round_id, status="rejected", adapter_version=version,
                           metrics={"gate": {"drift_flags": flags}})
    assert flagged_versions(store) == {2}


# recovery

def test_recover_fails_a_round_whose_manager_died_and_stops_its_learner(cfg, store):
    learner = subprocess.Popen(WAIT_FOR_STDIN, stdin=subprocess.PIPE, start_new_session=True)
    try:
        owner = _dead_pid()
        round_id = store.open_round("schedule", "", owner_pid=owner)
        store.update_round(round_id, status="running", pid=learner.pid)
        assert RoundManager(cfg, _publish).recover() == [round_id]
        assert learner.wait(timeout=30) == -signal.SIGTERM  # its process group was stopped
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    row = store.round(round_id)
    assert row["status"] == "failed" and row["finished"]
    assert f"pid {owner}" in row["error"] and "interrupted" in row["error"]
    assert store.open_rounds() == []
    assert RoundManager(cfg, _publish).recover() == []  # already settled


def test_recover_leaves_a_round_whose_manager_is_alive(cfg, store):
    owner = subprocess.Popen(WAIT_FOR_STDIN, stdin=subprocess.PIPE)
    try:
        round_id = store.open_round("operator", "", owner_pid=owner.pid)
        store.update_round(round_id, status="running")
        assert RoundManager(cfg, _publish).recover() == []
        assert store.round(round_id)["status"] == "running"
        assert owner.poll() is None
    finally:
        owner.stdin.close()
        owner.wait(timeout=30)


def test_recover_leaves_this_process_own_round(cfg, store):
    round_id = store.open_round("operator", "", owner_pid=os.getpid())
    assert RoundManager(cfg, _publish).recover() == []
    assert store.round(round_id)["status"] == "queued"


def test_trigger_while_a_round_is_open_starts_nothing(cfg, store):
    open_id = store.open_round("operator", "", owner_pid=os.getpid())
    manager = RoundManager(cfg, _publish)
    with pytest.raises(RoundBusyError) as busy:
        manager.trigger("operator", {"max_steps": 1})
    assert busy.value.round_id == open_id
    assert not (cfg.home / "rounds").exists() and manager.threads == {}
    with pytest.raises(ConfigError, match="learn.bogus"):
        manager.trigger("operator", {"bogus": 1})  # checked before anything else
    assert [r["id"] for r in store.rounds()] == [open_id]


def test_cancel_refuses_an_ended_round(cfg, store):
    round_id = store.open_round("operator", "", owner_pid=os.getpid())
    store.update_round(round_id, status="rejected")
    with pytest.raises(RoundError, match=f"round {round_id} is rejected"):
        RoundManager(cfg, _publish).cancel(round_id)
    with pytest.raises(UnknownRoundError):
        RoundManager(cfg, _publish).cancel(round_id + 1)


def test_a_drift_rollback_rejects_the_candidate_and_serves_the_first_unflagged_ancestor(
        tmp_path, served):
    """v1 <- v2 (active, promoted while on_drift was "flag", so its round is flagged) <- candidate
    flagged again with on_drift = "rollback": the candidate is rejected and v1 serves. Through the
    server's own publish and activate (Versions, LoRA mode, on a running loop) and the real gate
    reading the round's gate.json; a stand-in answers vLLM's adapter-loading route."""
    served = served({"learn.gate.on_drift": "rollback"})
    cfg, store, versions, loads = served.cfg, served.store, served.versions, served.loads
    assert served.publish(str(write_adapter(tmp_path / "a1")), None, "", True) == 1
    assert served.publish(str(write_adapter(tmp_path / "a2")), 1, "", True) == 2
    flagged = store.open_round("schedule", "", os.getpid())
    store.update_round(flagged, status="promoted", adapter_version=2,
                       metrics={"gate": {"drift_flags": ["KL to the base model 1.5 > 1.0"]}})
    round_id = _gated_round(tmp_path, store, parent=2, kl=cfg.learn.gate.max_kl * 3)
    served.manager.conclude(store, cfg, store.round(round_id))

    row = store.round(round_id)
    gate = json.loads(row["metrics"])["gate"]
    assert row["status"] == "rejected" and row["adapter_version"] == 3, row
    assert gate["drift_flags"] and "KL to the base model" in row["error"]
    assert gate["rolled_back_to"] == 1
    assert store.adapter(3)["status"] == "rejected"
    assert store.active_version() == 1 and versions.active == 1  # what the gateway serves
    assert loads == ["dynalign-v1", "dynalign-v2"]  # the candidate was never loaded


def test_a_round_that_passes_its_gate_starts_a_canary_with_promote_canary(tmp_path, served):
    """learn.promote = "canary": the passing candidate is served to [canary]'s share of users
    next to the active version, which stays; a drift rollback stops a running canary first."""
    served = served({"learn.promote": "canary", "engine.swap": "lora", "canary.share": 0.25,
                     "learn.gate.on_drift": "rollback"})
    store, versions = served.store, served.versions
    assert served.publish(str(write_adapter(tmp_path / "a1")), None, "", True) == 1
    canary = store.running_canary()
    assert canary["version"] == 1 and canary["active"] is None and canary["share"] == 0.25
    assert canary["min_feedback"] == served.cfg.canary.min_feedback
    assert versions.active is None and store.adapter(1)["status"] == "candidate"
    assert "canary 1: served to 25% of users" in store.adapter(1)["note"]
    assert served.loads == ["dynalign-v1"]  # loaded before any user is routed to it
    served.run(versions.end_canary("promote", "by the test"))
    assert versions.active == 1 and store.adapter(1)["status"] == "active"

    assert served.publish(str(write_adapter(tmp_path / "a2")), 1, "", True) == 2
    assert store.running_canary()["version"] == 2 and versions.active == 1
    flagged = store.open_round("schedule", "", os.getpid())  # v1's round drifted, unnoticed
    store.update_round(flagged, status="promoted", adapter_version=1,
                       metrics={"gate": {"drift_flags": ["KL to the base model 1.5 > 1.0"]}})
    drifted = _gated_round(tmp_path, store, parent=1, kl=served.cfg.learn.gate.max_kl * 3)
    served.manager.conclude(store, served.cfg, store.round(drifted))
    assert store.round(drifted)["status"] == "rejected"
    assert store.running_canary() is None and versions.canary is None
    ended = store.last_canary()
    assert ended["version"] == 2 and ended["status"] == "stopped" and "drift" in ended["reason"]
    assert versions.active is None and store.active_version() is None  # the base


def test_a_drift_rollback_meets_a_canary_that_ended_while_it_waited(tmp_path, served):
    """The canary ends by itself (its review holds the canary lock) just as a drift rollback
    comes: the rollback waits for the lock, finds no canary and serves the version it names."""
    served = served({"learn.promote": "canary", "engine.swap": "lora"})
    store, versions = served.store, served.versions
    assert served.publish(str(write_adapter(tmp_path / "a1")), None, "", True) == 1
    assert versions.canary is not None

    async def race():
        async with versions.canary_lock:  # the review, deciding
            rollback = asyncio.ensure_future(versions.roll_back_to(None))
            await asyncio.sleep(0)  # the rollback runs up to the lock and waits there
            assert not rollback.done()
            store.end_canary(versions.canary["id"], "promoted", "by its review")
            versions.canary = None
        await rollback
    served.run(race())
    assert versions.active is None and store.last_canary()["status"] == "promoted"


def _gated_round(tmp_path, store: Store, parent: int | None, kl: float) -> int:
    """A running round whose learner left a candidate and a gate.json that wins 12 of 16 with
    mean KL `kl`."""
    round_id = store.open_round("schedule", "", os.getpid())
    candidate = write_adapter(tmp_path / f"round-{round_id}" / "adapter")
    (candidate.parent / "gate.json").write_text(json.dumps({
        "pairwise": {"n": 16, "judged": 16, "win": 12, "loss": 4, "win_rate": 0.75},
        "drift": {"kl": kl}}))
    store.update_round(round_id, status="running", candidate=str(candidate),
                       metrics={"parent": parent})
    return round_id


@dataclasses.dataclass
class Served:
    cfg: object
    store: Store
    versions: Versions
    manager: RoundManager
    publish: object  # publish(candidate, parent, note, promote) -> version, as rounds call it
    loads: list  # the adapter names the engine was asked to load
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


@pytest.fixture
def served(tmp_path, json_server):
    """make(overrides) -> Served: the server's own publish and activate (Versions, LoRA mode,
    on a running loop) with a real store; a stand-in answers vLLM's adapter-loading route."""
    made = []

    def make(overrides: dict) -> Served:
        loads = []
        engine_url = json_server(lambda path, headers, body: (
            loads.append(body["lora_name"]) or 200, {}, {})).removesuffix("/v1")
        cfg = load_config(overrides={"model.path": str(write_base(tmp_path / "tiny-base")),
                                     **overrides})
        store = Store(cfg.db_path)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        versions = Versions(cfg, "lora", EngineClient(engine_url, httpx.AsyncClient()), store)
        manager = RoundManager(cfg, publish=versions_publisher(versions, loop),
                               activate=versions_activator(versions, loop))
        made.append(Served(cfg, store, versions, manager, versions_publisher(versions, loop),
                           loads, loop))
        return made[-1]

    yield make
    for one in made:
        one.loop.call_soon_threadsafe(one.loop.stop)
        one.store.close()


def test_a_promotion_runs_the_scoreboard_whose_failure_is_recorded_and_changes_nothing(store):
    """eval.scoreboard on: after the promotion the manager runs `learner.scoreboard` as a child;
    here its config file is missing, so it fails, which the round records (still promoted)."""
    from dynalign.gate import Decision

    cfg = load_config(None, {"eval.scoreboard": True})
    round_id = store.open_round("test", "", os.getpid())
    store.update_round(round_id, status="running", candidate="/nowhere/adapter")
    cfg.round_dir(round_id).mkdir(parents=True)  # trigger() makes it, with the round's config
    manager = RoundManager(cfg, lambda *a: 7,
                           gate=lambda cfg, row: Decision(True, ["a test gate"]))
    manager.conclude(store, cfg, store.round(round_id))
    row = store.round(round_id)
    board = json.loads(row["metrics"])["scoreboard"]
    assert row["status"] == "promoted" and row["adapter_version"] == 7
    assert board["status"] == "failed" and board["version"] == 7
    assert "config" in board["error"]  # the child's own message: no such config file
    assert manager.scoring is None


def test_no_round_starts_while_the_last_promotion_is_being_scoreboarded(cfg):
    manager = RoundManager(cfg, _publish)
    manager.scoring = 3
    with pytest.raises(RoundBusyError, match="scoreboard of version 3"):
        manager.trigger("operator")


def _promoted(store, metrics: dict) -> int:
    round_id = store.open_round("schedule", "", owner_pid=os.getpid())
    store.update_round(round_id, status="promoted", adapter_version=7, metrics=metrics)
    return round_id


def test_a_scoreboard_cut_off_by_a_stop_runs_again_at_the_next_start_before_any_round(store):
    """A promoted round whose scoreboard did not finish (here its child fails at once: the
    round's folder has no config) is measured again at start (while it runs, `scoring` refuses
    a round: tested above); the outcome lands in the round's metrics beside its gate."""
    cfg = load_config(None, {"eval.scoreboard": True})
    round_id = _promoted(store, {"gate": {"promote": True},
                                 "scoreboard": {"status": "failed", "error": "stopped"}})
    manager = RoundManager(cfg, _publish)
    assert manager.resume_scoreboard() == 7
    for thread in [t for t in threading.enumerate() if t.name == f"scoreboard-{round_id}"]:
        thread.join(120)  # (or it is done already)
    metrics = json.loads(store.round(round_id)["metrics"])
    assert metrics["gate"] == {"promote": True} and metrics["scoreboard"]["version"] == 7
    assert metrics["scoreboard"]["status"] == "failed" and "no such" in str(
        metrics["scoreboard"]["error"]).lower() and manager.scoring is None


@pytest.mark.parametrize("scoreboard, metrics", [
    (True, {"scoreboard": {"status": "measured", "id": 1}}),  # measured: nothing to redo
    (False, {}),  # scoreboards off
])
def test_no_scoreboard_is_rerun_when_done_or_off(store, scoreboard, metrics):
    _promoted(store, metrics)
    manager = RoundManager(load_config(None, {"eval.scoreboard": scoreboard}), _publish)
    assert manager.resume_scoreboard() is None and manager.scoring is None
