"""Schedules as data: `[learn.schedule]` or an operator's body to a spec, a spec to an
APScheduler trigger (crontab lines read as crontab means them), and the next firing after a
time. Pure; the config's check (dynalign/checks.py) and the running schedule
(learner/schedule.py) both use it, so a spec that loads is a spec that runs.
"""

from __future__ import annotations

import datetime as dt

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from dynalign.errors import ConfigError

CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 (and 7) = Sunday


def spec_of(schedule) -> dict | None:
    """`[learn.schedule]` as a spec; None when it has none."""
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
