"""Runs refresh rounds: one at a time, each in its own process, then the gate, then publishing.

Used by the gateway (`dynalign serve`: admin API and schedule) and by `dynalign learn`. The
store is the single source of truth: `open_round` refuses a round while another is open, in one
write transaction, so two managers (a gateway and a standalone learner) never overlap either.

A round: queued -> running (the child `learner.round` trains, then measures the candidate for
the gate) -> evaluating (the gate decides, dynalign/gate.py) -> promoted | rejected, or failed /
cancelled. A rejected candidate is registered with status "rejected" and its reasons; with
`on_drift = "rollback"` a drift flag also puts the last unflagged version back into service. The child
runs niced, in its own process group; a crash or out-of-memory kill of it fails the round and
publishes nothing. The manager's own death leaves its round open; the next manager to start
marks it failed (`recover`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Callable

from dynalign.config import Config, _build, _set_dotted, resolved_toml
from dynalign.errors import RoundBusyError, RoundError
from dynalign.gate import Decision, decide, last_good
from dynalign.dataset import read_rows, seed_path
from dynalign.memory import check_fits, local_judges
from dynalign.procs import alive, die_with_parent, preload_tcmalloc, signal_group
from dynalign.checks import check
from dynalign.conversation import token_counter
from dynalign.rounds import longest_prompt
from dynalign.scoreboard import enabled as scoreboard_enabled
from dynalign.store import OPEN_ROUND, Store, now

log = logging.getLogger("dynalign.rounds")


def evaluation_gate(cfg: Config, round_row: dict) -> Decision:
    """Promote or not, from the measurements the round wrote (gate.json) and [learn.gate]."""
    if not cfg.learn.promote:
        return Decision(False, ["learn.promote is off: registered, not activated"])
    if not cfg.learn.gate.enabled:
        return Decision(True, ["the evaluation gate is off (learn.gate.enabled = false)"])
    path = Path(round_row["candidate"]).parent / "gate.json"
    if not path.exists():
        return Decision(False, ["the round wrote no gate measurements (gate.json)"])
    return decide(cfg.learn.gate, json.loads(path.read_text()))


# publish(candidate_dir, parent, note, promote) -> the new version number (Versions.publish,
# in the server's process or through POST /admin/adapters/publish)
Publisher = Callable[[str, "int | None", str, bool], int]
# activate(version or None for the base model): the operator's hot-swap, for drift rollbacks
Activator = Callable[["int | None"], None]


def with_overrides(cfg: Config, overrides: dict | None) -> Config:
    """`{"max_steps": 2, "prompts": 2}` applied to [learn]; unknown keys and wrong types are errors."""
    nested: dict = {}
    for key, value in (overrides or {}).items():
        _set_dotted(nested, key, value)  # "judge.model" reaches [learn.judge]
    learn = _build(cfg.learn, nested, prefix="learn.")
    cfg = dataclasses.replace(cfg, state_dir=str(cfg.home), learn=learn)
    check(cfg)
    return cfg


def learner_command(cfg: Config, config_path: Path, round_id: int) -> list[str]:
    module = ["-m", "learner.round", str(config_path), "--round-id", str(round_id)]
    if cfg.learn.accelerate_config:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                cfg.learn.accelerate_config, *module]
    return [sys.executable, *module]


class RoundManager:
    def __init__(self, cfg: Config, publish: Publisher, activate: Activator | None = None,
                 gate=evaluation_gate, gpu: bool | None = None):
        """`gpu`: whether rounds train on a GPU, where the memory check does not apply (None:
        dynalign.memory.learner_on_gpu() says)."""
        self.cfg, self.publish, self.activate, self.gate = cfg, publish, activate, gate
        self.gpu = gpu
        self.procs: dict[int, subprocess.Popen] = {}
        self.threads: dict[int, threading.Thread] = {}
        self.scoring: int | None = None  # the version a scoreboard is measuring now

    def store(self) -> Store:
        return Store(self.cfg.db_path)  # one connection per call: rounds run on their own threads

    def recover(self) -> list[int]:
        """Fail the open rounds whose managing process is gone (a crash or restart)."""
        failed = []
        with closing(self.store()) as store:
            for row in store.open_rounds():
                if row["owner_pid"] == os.getpid() or alive(row["owner_pid"]):
                    continue
                _kill_group(row["pid"])
                store.update_round(row["id"], status="failed", error=(
                    f"interrupted: the process that ran it (pid {row['owner_pid']}) exited"))
                failed.append(row["id"])
        return failed

    def resume_scoreboard(self) -> int | None:
        """The newest promoted round's scoreboard, when it did not finish (the server stopped
        while it ran: killed, or it stopped the child): measured again on a thread before any
        new round starts, its cache keeping what was already answered and judged. Returns the
        version, or None."""
        if not scoreboard_enabled(self.cfg):
            return None
        with closing(self.store()) as store:
            row = next((r for r in store.rounds(limit=50) if r["status"] == "promoted"), None)
        board = json.loads(row["metrics"] or "{}").get("scoreboard") if row else None
        if row is None or (board or {}).get("status") == "measured":
            return None
        version = self.scoring = row["adapter_version"]
        threading.Thread(target=self._remeasure, args=(row["id"], version),
                         name=f"scoreboard-{row['id']}", daemon=True).start()
        return version

    def _remeasure(self, round_id: int, version: int) -> None:
        try:
            result = self._scoreboard(self.cfg, round_id, version)
        finally:
            self.scoring = None
        with closing(self.store()) as store:
            summary = json.loads(store.round(round_id)["metrics"] or "{}")
            store.update_round(round_id, metrics={**summary, "scoreboard": result})

    def trigger(self, trigger: str = "operator", overrides: dict | None = None) -> dict:
        if self.scoring is not None:  # the scoreboard is the end of the last round's work
            raise RoundBusyError(f"the scoreboard of version {self.scoring} is running; the next "
                                 "round starts when it is done", None)
        cfg = with_overrides(self.cfg, overrides)
        self.refuse_overlap()  # before the memory estimate: a running round holds that memory
        self.check_memory(cfg)
        with closing(self.store()) as store:
            round_id = store.open_round(trigger, resolved_toml(cfg), os.getpid())
            folder = self.cfg.round_dir(round_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.toml").write_text(resolved_toml(cfg))
            if overrides:
                (folder / "overrides.json").write_text(json.dumps(overrides))
            thread = threading.Thread(target=self._run, args=(round_id, cfg, folder),
                                      name=f"round-{round_id}", daemon=True)
            self.threads[round_id] = thread
            thread.start()
            return store.round(round_id)

    def refuse_overlap(self) -> None:
        """RoundBusyError while a round is open (open_round checks again, atomically)."""
        with closing(self.store()) as store:
            row = next(iter(store.open_rounds()), None)
        if row:
            raise RoundBusyError(f"round {row['id']} is {row['status']}; rounds never overlap",
                                 row["id"])

    def check_memory(self, cfg: Config) -> None:
        """Refuse (ConfigError, naming the setting to lower) a round that would not fit in the
        memory the machine has available now: before anything is loaded (dynalign/memory.py)."""
        with closing(self.store()) as store:
            exchanges = store.training_exchanges(store.consumed_upto())
        longest = longest_prompt(exchanges, read_rows(seed_path(cfg)), cfg.learn,
                                 token_counter(cfg.model_path))
        check_fits(cfg.model_path, cfg.learn, longest, judges=local_judges(cfg), gpu=self.gpu)

    def cancel(self, round_id: int, wait_s: float = 30.0) -> dict:
        with closing(self.store()) as store:
            row = store.round(round_id)
            if row["status"] not in ("queued", "running"):
                raise RoundError(f"round {round_id} is {row['status']}: only a queued or running "
                                 "round can be cancelled")
            store.update_round(round_id, cancel_requested=1)
            _kill_group(row["pid"])
        thread = self.threads.get(round_id)
        if thread is not None:
            thread.join(wait_s)
        with closing(self.store()) as store:
            return store.round(round_id)

    def shutdown(self, wait_s: float = 30.0) -> None:
        """Cancel this manager's running rounds (the learner dies with us anyway)."""
        for round_id, thread in list(self.threads.items()):
            if thread.is_alive():
                with closing(self.store()) as store:
                    if store.round(round_id)["status"] in OPEN_ROUND:
                        store.update_round(round_id, cancel_requested=1,
                                           error="cancelled: the server stopped")
                    _kill_group(store.round(round_id)["pid"])
                proc = self.procs.get(round_id)  # the round's learner, or its scoreboard
                _kill_group(proc.pid if proc else None)
                thread.join(wait_s)

    def wait(self, round_id: int, timeout: float | None = None) -> None:
        thread = self.threads.get(round_id)
        if thread is not None:
            thread.join(timeout)

    def busy(self) -> bool:
        return any(t.is_alive() for t in self.threads.values())

    def _run(self, round_id: int, cfg: Config, folder: Path) -> None:
        """The round's life after `trigger`. This is a thread's outermost frame: whatever goes
        wrong is recorded on the round (failed) rather than lost with the thread."""
        with closing(self.store()) as store:
            try:
                rc = self._train(store, round_id, cfg, folder)
                row = store.round(round_id)
                if row["cancel_requested"]:
                    store.update_round(round_id, status="cancelled")
                elif rc != 0:
                    store.update_round(round_id, status="failed",
                                       error=_exit_error(rc, row, folder / "learner.log"))
                else:
                    self.conclude(store, cfg, row)
            except Exception as e:  # noqa: BLE001 (recorded on the round, see docstring)
                log.exception("round %s failed", round_id)
                store.update_round(round_id, status="failed", error=f"{type(e).__name__}: {e}")

    def _train(self, store: Store, round_id: int, cfg: Config, folder: Path) -> int:
        if store.round(round_id)["cancel_requested"]:
            return -1
        proc = self._child(cfg, learner_command(cfg, folder / "config.toml", round_id),
                           folder / "learner.log")
        self.procs[round_id] = proc
        store.update_round(round_id, status="running", started=now(), pid=proc.pid)
        if store.round(round_id)["cancel_requested"]:  # a cancel that came before the pid
            _kill_group(proc.pid)
        try:
            return proc.wait()
        finally:
            self.procs.pop(round_id, None)

    def _child(self, cfg: Config, command: list[str], log_path: Path) -> subprocess.Popen:
        """A learner-side child process: niced, its own process group, dying with us."""
        env = preload_tcmalloc({**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1",
                                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(cfg.learn.threads),
                                "DYNALIGN_HOME": str(cfg.home)})
        with open(log_path, "ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                    preexec_fn=_child_setup(cfg.learn.nice))

    def conclude(self, store: Store, cfg: Config, row: dict) -> None:
        """A round whose learner left a candidate: gate it, publish it (served or rejected),
        and roll back past drift when the gate says so."""
        store.update_round(row["id"], status="evaluating")
        summary = json.loads(row["metrics"] or "{}")
        decision = self.gate(cfg, store.round(row["id"]))
        note = f"round {row['id']}: " + "; ".join(decision.reasons)
        version = self.publish(row["candidate"], summary.get("parent"), note, decision.promote)
        verdict = {"promote": decision.promote, "reasons": decision.reasons, **decision.report}
        measure = decision.promote and version is not None and scoreboard_enabled(cfg)
        self.scoring = version if measure else None  # before the round ends: no round between
        store.update_round(row["id"], status="promoted" if decision.promote else "rejected",
                           adapter_version=version, metrics={**summary, "gate": verdict},
                           error=None if decision.promote else "; ".join(decision.reasons))
        if decision.rollback:
            verdict["rolled_back_to"] = self._rollback(store)
            store.update_round(row["id"], metrics={**summary, "gate": verdict})
        if measure:
            try:
                summary["scoreboard"] = self._scoreboard(cfg, row["id"], version)
            finally:
                self.scoring = None
            store.update_round(row["id"], metrics={**summary, "gate": verdict})

    def _scoreboard(self, cfg: Config, round_id: int, version: int) -> dict:
        """`learner.scoreboard` on the promoted version, in a child like the learner's; its
        outcome (the row's id, or why it failed) goes into the round's metrics. A failed
        scoreboard changes nothing about the promotion."""
        folder = self.cfg.round_dir(round_id)
        command = [sys.executable, "-m", "learner.scoreboard", str(folder / "config.toml"),
                   "--version", str(version)]
        try:
            proc = self._child(cfg, command, folder / "scoreboard.log")
        except OSError as e:  # the round stays promoted whatever happens here
            return {"version": version, "status": "failed", "error": f"not started: {e}"}
        self.procs[round_id] = proc
        try:
            rc = proc.wait()
        finally:
            self.procs.pop(round_id, None)
        if rc != 0:
            log.warning("the scoreboard of version %s failed (exit %s)", version, rc)
            return {"version": version, "status": "failed",
                    "error": _tail(folder / "scoreboard.log", 5)}
        with closing(self.store()) as store:
            rows = store.scoreboards(version)
        return {"version": version, "status": "measured", "id": rows[-1]["id"] if rows else None}

    def _rollback(self, store: Store) -> int | None:
        """Serve the newest version whose round was not flagged for drift (None: the base)."""
        target = last_good(store.adapters(), flagged_versions(store))
        if target != store.active_version() and self.activate is not None:
            log.warning("drift: rolling back to %s", target or "the base model")
            self.activate(target)
        return target


def flagged_versions(store: Store) -> set[int]:
    """Versions whose round's gate recorded drift flags."""
    flagged = set()
    for row in store.rounds(limit=10_000):
        gate = json.loads(row["metrics"] or "{}").get("gate") or {}
        if row["adapter_version"] and gate.get("drift_flags"):
            flagged.add(row["adapter_version"])
    return flagged


def _child_setup(nice: int):
    def setup() -> None:
        die_with_parent()
        os.nice(nice)
    return setup


def _kill_group(pid: int | None) -> None:
    if alive(pid):
        signal_group(pid, signal.SIGTERM)


def _exit_error(rc: int, row: dict, log_path: Path) -> str:
    """Why the learner failed: the signal that killed it (the OOM killer, an operator's kill -9),
    else its own message when it left one, else its log's end."""
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else f"signal {-rc}"
        hint = " (the out-of-memory killer?)" if rc == -signal.SIGKILL else ""
        tail = _tail(log_path, 5)
        return (f"the learner (pid {row['pid']}) was killed by {name}{hint}; nothing was "
                f"published." + (f" Its log ends:\n{tail}" if tail else ""))
    return row["error"] or _tail(log_path)


def _tail(path: Path, lines: int = 15) -> str:
    """The end of the learner's log without progress-bar redraws (they hide the message)."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except FileNotFoundError:
        return "the learner exited before writing a log"
    return "\n".join([line for line in text if line.strip() and "it/s]" not in line][-lines:])

