"""learner.schedule: triggers, the first run after a (re)start, the anchor kept in SQLite across
restarts, and a firing during a round being skipped and recorded.

Start times are in 2099, so the real scheduler thread started by `Schedule.start` never fires
during a test; the firing itself is driven by calling `_fire` directly."""

import datetime as dt
import json
import os
from contextlib import closing

import pytest

from dynalign.config import ScheduleConfig, load_config
from dynalign.errors import ConfigError, RoundBusyError
from dynalign.store import Store
from dynalign.schedule_spec import first_run, make_trigger, next_after, spec_from, spec_of
from learner.schedule import Schedule

T0 = dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc)


def _h(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def _cfg(**schedule):
    return load_config(None, {f"learn.schedule.{k}": v for k, v in schedule.items()})


def _state(cfg):
    with closing(Store(cfg.db_path)) as store:
        return store.schedule_state()


def _started(cfg, at):
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    try:
        return schedule.start(at=at), schedule.info()
    finally:
        schedule.stop()


def test_spec_of():
    assert spec_of(ScheduleConfig()) is None
    assert spec_of(ScheduleConfig(interval_hours=6)) == {"interval_hours": 6, "timezone": "UTC"}
    assert spec_of(ScheduleConfig(interval_hours=6, cron="0 3 * * *", timezone="Europe/Paris")) \
        == {"cron": "0 3 * * *", "timezone": "Europe/Paris"}  # cron wins


@pytest.mark.parametrize("spec", [
    {"cron": "every day", "timezone": "UTC"},
    {"cron": "61 * * * *", "timezone": "UTC"},
    {"cron": "0 3 * * *", "timezone": "Nowhere/Land"},
    {"interval_hours": 6, "timezone": "Nowhere/Land"},
])
def test_make_trigger_rejects_a_bad_spec(spec):
    with pytest.raises(ConfigError, match="invalid learn.schedule"):
        make_trigger(spec, T0)


def test_first_run_interval_keeps_the_anchors_phase():
    trigger = make_trigger({"interval_hours": 6, "timezone": "UTC"}, T0)
    assert first_run(trigger, since=T0, at=T0) == _h(6)  # a fresh schedule: not at once
    assert first_run(trigger, since=T0, at=_h(1)) == _h(6)
    # fired at 06:00 (a little late), restarted at 07:00: next is 12:00, not 13:00
    assert first_run(trigger, since=_h(6) + dt.timedelta(seconds=3), at=_h(7)) == _h(12)


def test_first_run_missed_while_down_fires_at_start():
    trigger = make_trigger({"interval_hours": 6, "timezone": "UTC"}, T0)
    assert first_run(trigger, since=T0, at=_h(7)) == _h(7)
    assert first_run(trigger, since=T0, at=_h(6)) == _h(6)  # exactly due counts as due
    # many missed firings coalesce into one at start
    assert first_run(trigger, since=T0, at=_h(100)) == _h(100)


def test_first_run_cron():
    trigger = make_trigger({"cron": "0 3 * * *", "timezone": "UTC"}, T0)
    assert first_run(trigger, since=T0, at=_h(2)) == _h(3)
    assert first_run(trigger, since=T0, at=_h(4)) == _h(4)  # 03:00 was missed
    assert first_run(trigger, since=_h(3), at=_h(4)) == _h(27)  # 03:00 ran: tomorrow's


def test_no_schedule_starts_nothing_and_saves_nothing():
    cfg = _cfg()
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    assert schedule.start(at=T0) is None
    assert schedule.info()["next_run"] is None
    assert _state(cfg) is None


def test_start_persists_the_anchor_and_a_restart_keeps_it():
    cfg = _cfg(interval_hours=6)
    first, info = _started(cfg, T0)
    assert first == _h(6)
    assert info["next_run"] == _h(6).isoformat()
    state = _state(cfg)
    assert json.loads(state["spec"]) == {"interval_hours": 6.0, "timezone": "UTC"}
    assert state["anchor"] == T0.isoformat() and state["last_fire"] is None

    # a "restart": a new Schedule on the same database, same spec, an hour later
    first, _ = _started(_cfg(interval_hours=6), _h(1))
    assert first == _h(6)  # still the 00:00 phase, not 07:00
    assert _state(cfg)["anchor"] == T0.isoformat()

    # down across 06:00: the missed firing happens at start
    first, _ = _started(_cfg(interval_hours=6), _h(7))
    assert first == _h(7)
    assert _state(cfg)["anchor"] == T0.isoformat()


def test_a_changed_spec_resets_the_anchor():
    _started(_cfg(interval_hours=6), T0)
    first, _ = _started(_cfg(interval_hours=4), _h(7))
    assert first == _h(11)  # counted from the restart, nothing "missed" under the old spec
    state = _state(_cfg(interval_hours=4))
    assert state["anchor"] == _h(7).isoformat()
    assert json.loads(state["spec"])["interval_hours"] == 4.0


def test_restart_counts_from_the_last_firing():
    cfg = _cfg(interval_hours=6)
    _started(cfg, T0)
    with closing(Store(cfg.db_path)) as store:
        store.save_schedule_state(last_fire=(_h(6) + dt.timedelta(seconds=2)).isoformat(),
                                  last_result="started round 1")
    assert _started(cfg, _h(7))[0] == _h(12)
    first, info = _started(cfg, _h(12.5))  # 12:00 missed
    assert first == _h(12.5)
    assert info["last_result"] == "started round 1"


def test_fire_during_a_round_is_skipped_and_recorded():
    cfg = _cfg(interval_hours=6)

    def open_a_round(trigger):  # what RoundManager.trigger does first: one open round at most
        with closing(Store(cfg.db_path)) as store:
            return store.round(store.open_round(trigger, "", os.getpid()))

    schedule = Schedule(cfg, open_a_round)
    schedule._fire()
    state = _state(cfg)
    assert state["last_result"] == "started round 1"
    assert state["last_fire"]
    with closing(Store(cfg.db_path)) as store:
        assert store.round(1)["trigger"] == "schedule"

    schedule._fire()  # round 1 is still queued
    state = _state(cfg)
    assert state["last_result"].startswith("skipped: round 1 is queued")
    with closing(Store(cfg.db_path)) as store:
        assert [r["id"] for r in store.rounds()] == [1]  # nothing queued behind it
    with pytest.raises(RoundBusyError):
        open_a_round("operator")
    assert schedule.info()["last_result"].startswith("skipped")


def test_a_missed_firing_runs_once_and_the_interval_keeps_its_phase():
    cfg = _cfg(interval_hours=6)
    _started(cfg, at=T0)  # anchor T0: due at 6, 12, 18 h
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    try:
        first = schedule.start(at=_h(7))  # down across the 6 h firing
        jobs = {job.id: job.next_run_time for job in schedule.scheduler.get_jobs()}
    finally:
        schedule.stop()
    assert first == _h(7)
    assert jobs == {"refresh": _h(12), "refresh-missed": _h(7)}  # not 13 h: the phase stays


def test_a_bad_cron_or_timezone_fails_when_the_config_loads_and_saves_nothing():
    with pytest.raises(ConfigError, match="learn.schedule: .*61"):
        _cfg(cron="61 * * * *")
    with pytest.raises(ConfigError, match="learn.schedule: .*Mars/Olympus"):
        _cfg(interval_hours=6, timezone="Mars/Olympus")
    assert _state(load_config()) is None


# an operator's schedule (the console, PUT /admin/schedule)

@pytest.mark.parametrize("body, spec", [
    ({"interval_hours": 6}, {"interval_hours": 6, "timezone": "UTC"}),
    ({"cron": "0 3 * * *", "timezone": "Europe/Paris"}, {"cron": "0 3 * * *",
                                                         "timezone": "Europe/Paris"}),
    ({"off": True}, None),
])
def test_spec_from_an_operator(body, spec):
    assert spec_from(body) == spec


@pytest.mark.parametrize("body, words", [
    ({}, "a schedule is"), ({"interval_hours": 6, "cron": "0 3 * * *"}, "a schedule is"),
    ({"every": 6}, "a schedule is"), ({"interval_hours": -1}, "above 0"),
    ({"interval_hours": "6"}, "above 0"), ({"cron": "61 * * * *"}, "invalid learn.schedule"),
    ({"off": True, "cron": "0 3 * * *"}, "a schedule is"),
])
def test_spec_from_refuses_bad_bodies(body, words):
    with pytest.raises(ConfigError, match=words):
        spec_from(body)


def test_an_operators_schedule_survives_a_restart_until_reset():
    cfg = _cfg(interval_hours=24)
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    try:
        info = schedule.set({"interval_hours": 2, "timezone": "UTC"})
        assert info["source"] == "operator" and info["spec"]["interval_hours"] == 2
        assert info["config"] == {"interval_hours": 24, "timezone": "UTC"} and info["next_run"]
    finally:
        schedule.stop()
    first, info = _started(cfg, dt.datetime.now(dt.timezone.utc))  # a restart
    assert info["spec"] == {"interval_hours": 2, "timezone": "UTC"} and info["source"] == "operator"
    restarted = Schedule(cfg, lambda trigger: {"id": 0})
    try:
        restarted.start()
        off = restarted.set(None)
        assert off["spec"] is None and off["next_run"] is None
        back = restarted.reset()
        assert back["source"] == "config" and back["spec"]["interval_hours"] == 24
        assert back["next_run"] is not None
    finally:
        restarted.stop()
    assert _started(cfg, dt.datetime.now(dt.timezone.utc))[1]["source"] == "config"


def test_an_operator_can_switch_a_config_schedule_off_across_restarts():
    cfg = _cfg(interval_hours=24)
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    schedule.set(None)
    schedule.stop()
    first, info = _started(cfg, dt.datetime.now(dt.timezone.utc))
    assert first is None and info["spec"] is None and info["next_run"] is None


@pytest.mark.parametrize("dow, weekdays", [
    ("1", {0}), ("0", {6}), ("7", {6}), ("1-5", {0, 1, 2, 3, 4}), ("0,6", {5, 6}),
    ("*/2", {6, 1, 3, 5}), ("5-7", {4, 5, 6}), ("mon-fri", {0, 1, 2, 3, 4}), ("*", set(range(7)))])
def test_cron_days_mean_what_crontab_means(dow, weekdays):
    """crontab: 0 and 7 are Sunday, 1 Monday (APScheduler 3's from_crontab reads 1 as Tuesday)."""
    trigger = make_trigger({"cron": f"30 3 * * {dow}", "timezone": "UTC"}, T0)
    fired, at = set(), T0
    for _ in range(14):
        at = next_after(trigger, at)
        fired.add(at.weekday())  # Python: Monday = 0
    assert fired == weekdays


@pytest.mark.parametrize("cron", ["30 3 * * 8", "30 3 * * 5-2", "30 3 * *", "30 3 * * x-1"])
def test_a_bad_cron_day_is_refused(cron):
    with pytest.raises(ConfigError):
        make_trigger({"cron": cron, "timezone": "UTC"}, T0)
