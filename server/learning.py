"""Refresh rounds inside the gateway: the round manager, the schedule, and their admin routes.

POST /admin/refresh            start a round now; the body may override [learn] keys for this
                               round only ({"max_steps": 2, "prompts": 2}); 202 with the round,
                               409 (code round_in_progress) while another round is open
GET  /admin/rounds             recent rounds with live progress, and the schedule (?limit=20;
                               ?steps=true adds each round's per-step metrics)
GET  /admin/rounds/{id}        one round: progress (step i of N, ETA, reward), summary, per-step
                               metrics, the config it ran with, and people's verdicts on the
                               pairs its judge panel split on (reviews: GET /admin/reviews)
POST /admin/rounds/{id}/cancel stop a queued or running round
GET  /admin/schedule           the schedule: spec, next run, last firing and what it did
PUT  /admin/schedule           an operator's schedule (kept across restarts); DELETE: the config's
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Path, Query, Request

from dynalign import reviews
from dynalign.config import Config
from dynalign.erasure import forget
from dynalign.rounds import round_view
from dynalign.schedule_spec import spec_from
from server.canary import review
from server.validate import MAX_ID, MAX_PAGE, MIN_ID, read_object
from server.versions import Versions

router = APIRouter()
log = logging.getLogger("dynalign.retention")
CANARY_REVIEW_S = 60


def start(cfg: Config, versions: Versions, db):
    """The round manager (publishing through `versions`, the operator's hot-swap path) and the
    refresh schedule, whose scheduler also runs retention and a running canary's review (its
    time limit; ratings review it at once). Rounds left open by a previous gateway are failed
    first, and a promoted version's scoreboard that it left unfinished is run again. `db`: the gateway's store thread, which the review reads the canary's sums on."""
    from learner.manager import RoundManager
    from learner.schedule import Schedule

    loop = asyncio.get_running_loop()
    rounds = RoundManager(cfg, publish=versions_publisher(versions, loop),
                          activate=versions_activator(versions, loop))
    rounds.recover()
    rounds.resume_scoreboard()  # one cut off by the last stop: before the schedule's next round
    schedule = Schedule(cfg, rounds.trigger)
    schedule.start()
    add_retention(cfg, schedule.scheduler)
    schedule.scheduler.add_job(
        lambda: asyncio.run_coroutine_threadsafe(review(versions, db), loop).result(), "interval",
        seconds=CANARY_REVIEW_S, id="canary-review", coalesce=True, max_instances=1)
    return rounds, schedule


def stop(rounds, schedule) -> None:
    schedule.stop()
    rounds.shutdown()


def add_retention(cfg: Config, scheduler) -> bool:
    """[privacy] retention_days > 0: a daily job on `scheduler` (at retention_hour UTC, and once
    now, catching up on a day missed while down) deletes logged exchanges older than that."""
    from apscheduler.triggers.cron import CronTrigger

    if cfg.privacy.retention_days <= 0:
        return False
    trigger = CronTrigger(hour=cfg.privacy.retention_hour, timezone="UTC")
    scheduler.add_job(purge_old_exchanges, trigger, args=[cfg], id="retention", coalesce=True,
                      max_instances=1, misfire_grace_time=None)
    scheduler.add_job(purge_old_exchanges, args=[cfg], id="retention-now", max_instances=1)
    return True


def purge_old_exchanges(cfg: Config) -> int:
    from contextlib import closing

    from dynalign.store import Store

    with closing(Store(cfg.db_path)) as store:
        erased = forget(cfg, store, older_than=cfg.privacy.retention_days)
    log.warning("retention: deleted %d exchange(s) older than %s days and %d rating(s)",
                len(erased.exchanges), cfg.privacy.retention_days, erased.ratings)
    if erased.copies_remain:
        log.error("retention: %s", erased.copies_remain)
    return len(erased.exchanges)


def versions_publisher(versions: Versions, loop: asyncio.AbstractEventLoop):
    """Register a round's candidate and activate it (or mark it rejected), on the app's loop."""
    def run(candidate, parent, note, promote) -> int:
        return asyncio.run_coroutine_threadsafe(
            versions.publish(candidate, parent, note, promote), loop).result()
    return run


def versions_activator(versions: Versions, loop: asyncio.AbstractEventLoop):
    """Activate a version (None: the base model) on the app's loop: drift rollbacks."""
    def run(version) -> None:
        asyncio.run_coroutine_threadsafe(versions.roll_back_to(version), loop).result()
    return run


@router.post("/refresh", status_code=202)
async def refresh(request: Request):
    overrides = await read_object(request, ' of [learn] overrides, e.g. {"max_steps": 2, '
                                  '"prompts": 2}')
    row = await asyncio.to_thread(request.app.state.rounds.trigger, "operator", overrides)
    return round_view(row)


@router.get("/rounds")
async def list_rounds(request: Request, limit: int = Query(20, ge=1), steps: bool = False):
    """The newest `limit` rounds (capped at MAX_PAGE); with steps=true each also carries its
    per-step metrics."""
    store, cfg = request.app.state.store, request.app.state.cfg
    rows = store.rounds(limit=min(limit, MAX_PAGE))
    views = [round_view(r, cfg.round_dir(r["id"]) if steps else None) for r in rows]
    return {"data": views, "schedule": request.app.state.schedule.info()}


@router.get("/rounds/{round_id}")
async def get_round(request: Request, round_id: int = Path(ge=MIN_ID, le=MAX_ID)):
    cfg, store = request.app.state.cfg, request.app.state.store
    view = round_view(store.round(round_id), cfg.round_dir(round_id))
    view["reviews"] = reviews.tally(store, round_id)  # people's verdicts, apart from the judges'
    return view


@router.post("/rounds/{round_id}/cancel")
async def cancel_round(request: Request, round_id: int = Path(ge=MIN_ID, le=MAX_ID)):
    row = await asyncio.to_thread(request.app.state.rounds.cancel, round_id)
    return round_view(row)


@router.get("/schedule")
async def schedule(request: Request):
    return request.app.state.schedule.info()


@router.put("/schedule")
async def set_schedule(request: Request):
    """{"interval_hours": H} | {"cron": "m h dom mon dow"} (+ "timezone") | {"off": true}: kept
    across restarts until DELETE /admin/schedule goes back to the config file's."""
    body = await read_object(request, ', e.g. {"interval_hours": 6}', required=True)
    spec = spec_from(body)
    return await asyncio.to_thread(request.app.state.schedule.set, spec)


@router.delete("/schedule")
async def reset_schedule(request: Request):
    return await asyncio.to_thread(request.app.state.schedule.reset)
