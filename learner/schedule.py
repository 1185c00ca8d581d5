"""The refresh schedule: APScheduler with an interval or cron trigger from `[learn.schedule]`.

APScheduler's jobs live in memory here (its persistent job stores need SQLAlchemy); what must
survive a restart is kept in our own SQLite `schedule` table instead: the spec, the anchor an
interval counts from (so a restart keeps the phase: every 6 h from 00:00 stays 00:00, 06:00, ...),
and the last firing. A firing that fell due while nothing was running happens once at start
(coalesced). A firing during a round is skipped and recorded, never queued.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import closing
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from dynalign.config import Config, ScheduleConfig
from dynalign.errors import ConfigError, DynalignError, RoundBusyError
from dynalign.store import Store, now

log = logging.getLogger("dynalign.schedule")
JOB = "refresh"
CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 (and 7) = Sunday


def spec_of(schedule: ScheduleConfig) -> dict | None:
    if schedule.cron:
        return {"cron": schedule.cron, "timezone": schedule.timezone}
    if schedule.interval_hours > 0:
        return {"interval_hours": schedule.interval_hours, "timezone": schedule.timezone}
    return None


def cron_trigger(cron: str, timezone) -> CronTrigger:
    """A crontab(5) line as crontab means it. APScheduler 3's own from_crontab counts the day of
    the week from Monday = 0, so "30 3 * * 1" would fire on Tuesdays; numeric days are given to
    it as names instead (cron: 0 and 7 are Sunday)."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"a cron line has 5 fields (m h dom mon dow), got {len(fields)}")
    minute, hour, day, month, dow = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=cron_days(dow), timezone=timezone)


def cron_days(field: str) -> str:
    """A crontab day-of-week field in APScheduler's words: "1-5" -> "mon,tue,wed,thu,fri"."""
    if field == "*" or any(c.isalpha() for c in field):
        return field  # names mean the same to both
    days = set()
    for item in field.split(","):
        span, _, step = item.partition("/")
        low, _, high = span.partition("-")
        first, last = (0, 6) if span == "*" else (int(low), int(high or (7 if step else low)))
        if not 0 <= first <= last <= 7:
            raise ValueError(f"day of week {item!r} is not within 0-7")
        days.update(d % 7 for d in range(first, last + 1, int(step or 1)))
    return ",".join(CRON_DAYS[d] for d in sorted(days))


def make_trigger(spec: dict, anchor: dt.datetime):
    try:
        if "cron" in spec:
            return cron_trigger(spec["cron"], spec["timezone"])
        return IntervalTrigger(hours=spec["interval_hours"], start_date=anchor,
                               timezone=spec["timezone"])
    except (ValueError, KeyError) as e:
        raise ConfigError(f"invalid learn.schedule {spec}: {e}") from None


def next_after(trigger, at: dt.datetime) -> dt.datetime | None:
    return trigger.get_next_fire_time(None, at + dt.timedelta(microseconds=1))


def first_run(trigger, since: dt.datetime, at: dt.datetime) -> dt.datetime:
    """`at` when a firing fell due in (since, at] (missed while down), else the next one."""
    due = trigger.get_next_fire_time(None, since + dt.timedelta(microseconds=1))
    return at if due is not None and due <= at else next_after(trigger, at)


def spec_from(body: dict) -> dict | None:
    """An operator's schedule: {"interval_hours": 6} or {"cron": "0 3 * * *"} (either with
    "timezone"), or {"off": true}. Checked like the config's."""
    timezone = body.get("timezone", "UTC")
    if body.get("off") is True and len(body) == 1:
        return None
    if set(body) - {"interval_hours", "cron", "timezone"} or len(set(body) - {"timezone"}) != 1:
        raise ConfigError('a schedule is {"interval_hours": H} or {"cron": "m h dom mon dow"}, '
                          'with an optional "timezone", or {"off": true}')
    if "cron" in body:
        spec = {"cron": body["cron"], "timezone": timezone}
    else:
        hours = body["interval_hours"]
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
            raise ConfigError("interval_hours must be a number above 0")
        spec = {"interval_hours": hours, "timezone": timezone}
    make_trigger(spec, dt.datetime.now(dt.timezone.utc))
    return spec


class Schedule:
    def __init__(self, cfg: Config, fire: Callable[[str], dict]):
        self.cfg, self.fire = cfg, fire
        self.spec = spec_of(cfg.learn.schedule)
        self.source = "config"
        self.scheduler: BackgroundScheduler | None = None

    def start(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """Start the scheduler thread; returns the first run time (None: no schedule). A
        schedule an operator set wins over the config file's until it is reset."""
        with closing(Store(self.cfg.db_path)) as store:
            state = store.schedule_state()
        if state and state.get("source") == "operator":
            self.spec, self.source = json.loads(state["spec"]), "operator"
        if self.spec is None:
            return None
        at = at or dt.datetime.now(dt.timezone.utc)
        make_trigger(self.spec, at)  # a bad spec fails here, before anything is saved
        with closing(Store(self.cfg.db_path)) as store:
            if state is None or json.loads(state["spec"]) != self.spec:
                state = {"spec": json.dumps(self.spec), "anchor": at.isoformat(),
                         "last_fire": None, "source": self.source}
                store.save_schedule_state(**state)
        anchor = dt.datetime.fromisoformat(state["anchor"])
        trigger = make_trigger(self.spec, anchor)
        since = dt.datetime.fromisoformat(state["last_fire"]) if state["last_fire"] else anchor
        first = first_run(trigger, since, at)
        self.scheduler = BackgroundScheduler(timezone=self.spec["timezone"])
        # the recurring job keeps the anchor's phase; a firing missed while down is a one-off
        self.scheduler.add_job(self._fire, trigger, id=JOB, next_run_time=next_after(trigger, at),
                               coalesce=True, max_instances=1, misfire_grace_time=None)
        if first == at:
            self.scheduler.add_job(self._fire, id=f"{JOB}-missed", next_run_time=at,
                                   misfire_grace_time=None)
        self.scheduler.start()
        return first

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    def set(self, spec: dict | None, source: str = "operator") -> dict:
        """Replace the running schedule (None: off); "operator" keeps it across restarts,
        "config" goes back to the config file's. A new spec starts a new phase from now."""
        self.stop()
        at = dt.datetime.now(dt.timezone.utc)
        with closing(Store(self.cfg.db_path)) as store:
            store.save_schedule_state(spec=json.dumps(spec), anchor=at.isoformat(),
                                      last_fire=None, source=source)
        self.spec, self.source = spec, source
        if spec is not None:
            self.start(at)
        return self.info()

    def reset(self) -> dict:
        return self.set(spec_of(self.cfg.learn.schedule), source="config")

    def info(self) -> dict:
        job = self.scheduler.get_job(JOB) if self.scheduler else None
        with closing(Store(self.cfg.db_path)) as store:
            state = store.schedule_state() or {}
        return {"spec": self.spec, "source": self.source,
                "config": spec_of(self.cfg.learn.schedule),
                "next_run": job.next_run_time.isoformat() if job else None,
                "last_fire": state.get("last_fire"), "last_result": state.get("last_result")}

    def _fire(self) -> None:
        try:
            row = self.fire("schedule")
            result = f"started round {row['id']}"
        except RoundBusyError as e:
            result = f"skipped: {e}"
        except DynalignError as e:  # a bad [learn] config, say: shown at /admin/schedule
            result = f"failed to start: {e}"
        log.warning("scheduled refresh: %s", result)
        with closing(Store(self.cfg.db_path)) as store:
            store.save_schedule_state(last_fire=now(), last_result=result)
