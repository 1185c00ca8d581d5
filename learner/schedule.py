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

from dynalign.config import Config
from dynalign.errors import DynalignError, RoundBusyError
from dynalign.schedule_spec import first_run, make_trigger, next_after, spec_of
from dynalign.store import Store, now

log = logging.getLogger("dynalign.schedule")
JOB = "refresh"
class Schedule:
    """The refresh schedule, on the service's one APScheduler (`self.scheduler`, running from
    `start` to `stop`), which other timed jobs share (retention: server/learning.py)."""

    def __init__(self, cfg: Config, fire: Callable[[str], dict]):
        self.cfg, self.fire = cfg, fire
        self.spec = spec_of(cfg.learn.schedule)
        self.source = "config"
        self.scheduler = BackgroundScheduler(timezone="UTC")

    def start(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """Start the scheduler thread; returns the first run time (None: no schedule). A
        schedule an operator set wins over the config file's until it is reset."""
        if not self.scheduler.running:
            self.scheduler.start()
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
        # the recurring job keeps the anchor's phase; a firing missed while down is a one-off
        self.scheduler.add_job(self._fire, trigger, id=JOB, next_run_time=next_after(trigger, at),
                               coalesce=True, max_instances=1, misfire_grace_time=None)
        if first == at:
            self.scheduler.add_job(self._fire, id=f"{JOB}-missed", next_run_time=at,
                                   misfire_grace_time=None)
        return first

    def stop(self) -> None:
        """Stop the scheduler, and with it every job on it."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _remove_jobs(self) -> None:
        for job in (JOB, f"{JOB}-missed"):
            if self.scheduler.get_job(job):
                self.scheduler.remove_job(job)

    def set(self, spec: dict | None, source: str = "operator") -> dict:
        """Replace the running schedule (None: off); "operator" keeps it across restarts,
        "config" goes back to the config file's. A new spec starts a new phase from now."""
        self._remove_jobs()
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
        job = self.scheduler.get_job(JOB)
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
