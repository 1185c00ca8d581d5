"""`dynalign refresh | rounds | learn`: refresh rounds from the command line.

`refresh` and `rounds` talk to the running server's admin API. `learn` runs rounds in this
process's own round manager (one now, or on the schedule) and publishes each candidate through
the same admin API an operator uses, so the server hot-swaps it.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib

from dynalign.admin_client import admin_request
from dynalign.errors import ConfigError, DynalignError
from dynalign.rounds import round_view, step_text
from dynalign.store import ROUND_END


def round_overrides(args) -> dict:
    overrides = {"max_steps": args.max_steps, "prompts": args.prompts, "reward": args.reward}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare word: a string
    return overrides


def progress_line(row: dict) -> str:
    p = row.get("progress") or {}
    parts = [f"round {row['id']}: {row['status']}"]
    if row["status"] == "running" and p.get("phase"):
        parts.append(p["phase"])
    if p.get("step") is not None and p.get("max_steps"):
        parts.append(f"step {p['step']}/{p['max_steps']}")
    if step_text(row):
        parts.append(step_text(row))
    if p.get("reward") is not None:
        parts.append(f"reward {p['reward']:.3f}")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {p['eta_s']:.0f} s")
    if row.get("adapter_version"):
        parts.append(f"version {row['adapter_version']}")
    if row.get("error"):
        parts.append(f"({row['error'].splitlines()[-1]})")
    return ", ".join(parts)


def follow(get_row, every_s: float = 2.0) -> dict:
    last = None
    while True:
        row = get_row()
        line = progress_line(row)
        if line != last:
            print(line, flush=True)
            last = line
        if row["status"] in ROUND_END:
            return row
        time.sleep(every_s)  # polling a status for a person to read, not synchronising tests


def refresh_command(cfg, args) -> int:
    row = admin_request(cfg, "POST", "/refresh", round_overrides(args))
    if not args.wait:
        print(json.dumps(row, indent=2))
        return 0
    row = follow(lambda: admin_request(cfg, "GET", f"/rounds/{row['id']}"))
    return 0 if row["status"] in ("promoted", "rejected") else 1


def rounds_command(cfg, args) -> int:
    if args.action != "list" and args.id is None:
        raise DynalignError(f"dynalign rounds {args.action} needs a round id")
    if args.action == "list":
        for row in admin_request(cfg, "GET", "/rounds")["data"]:
            print(progress_line(row))
    elif args.action == "show":
        print(json.dumps(admin_request(cfg, "GET", f"/rounds/{args.id}"), indent=2))
    else:
        print(progress_line(admin_request(cfg, "POST", f"/rounds/{args.id}/cancel")))
    return 0


def http_publisher(cfg):
    def publish(candidate: str, parent, note: str, promote: bool) -> int:
        body = {"path": candidate, "parent": parent, "note": note, "promote": promote}
        return admin_request(cfg, "POST", "/adapters/publish", body)["version"]
    return publish


def http_activator(cfg):
    def activate(version) -> None:
        admin_request(cfg, "POST", f"/adapters/{'base' if version is None else version}/activate")
    return activate


def learn_command(cfg, args) -> int:
    from learner.manager import RoundManager
    from learner.schedule import Schedule

    admin_request(cfg, "GET", "/adapters")  # a wrong admin key fails now, not after a round
    manager = RoundManager(cfg, publish=http_publisher(cfg), activate=http_activator(cfg))
    manager.recover()
    if args.schedule:
        schedule = Schedule(cfg, lambda trigger: manager.trigger(trigger, round_overrides(args)))
        first = schedule.start()
        if first is None:
            raise ConfigError("no schedule: set learn.schedule.interval_hours or learn.schedule.cron")
        print(f"refresh schedule {schedule.spec}; first run {first.isoformat()} (Ctrl-C stops)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            schedule.stop()
            manager.shutdown()
        return 0
    row = manager.trigger("cli", round_overrides(args))
    row = follow(lambda: round_view(_fresh(manager, row["id"])))
    return 0 if row["status"] in ("promoted", "rejected") else 1


def _fresh(manager, round_id: int) -> dict:
    store = manager.store()
    try:
        return store.round(round_id)
    finally:
        store.close()

