"""Canary rollout between adapter versions (LoRA swap mode), mounted under /admin:

POST   /admin/canary          {"version": N, "share": 0.1, "min_feedback": 50, "max_hours": 24,
                              "margin": 0.05, "confidence": 0.95, "on_timeout": "decide"}: serve
                              version N to `share` of the alias's users next to the active one
                              (fields not given: the [canary] config section)
GET    /admin/canary          the running canary (else the last one) and both arms' numbers
DELETE /admin/canary          end it; the active version stays
POST   /admin/canary/promote  serve the canary's version to everyone now

Starting and ending one are Versions' (server/versions.py), which also starts one for a round
that passed its gate when learn.promote = "canary". The store holds the canary and the exchange
log which arm answered what, so a gateway restart resumes it with its counts. `review` ends it
when dynalign/canary.py's rule says so; it runs after each rating and every minute on the
schedule's scheduler. Both arms' numbers are sums in SQL (Store.canary_arms), read on the store
thread (server/store_thread.py), never on the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from dynalign.canary import arm_stats, decide
from dynalign.store import Store
from server.validate import read_object, validate_canary
from server.versions import Versions, public_name

router = APIRouter()


@router.post("/canary", status_code=201)
async def start_canary(request: Request):
    versions: Versions = request.app.state.versions
    body = validate_canary(await read_object(request, ' with "version"', required=True),
                           defaults=vars(versions.cfg.canary))
    await versions.start_canary(body)
    return await canary_view(request)


@router.get("/canary")
async def get_canary(request: Request):
    return await canary_view(request)


@router.delete("/canary")
async def stop_canary(request: Request):
    await request.app.state.versions.end_canary("stop", "stopped by an operator")
    return await canary_view(request)


@router.post("/canary/promote")
async def promote_canary(request: Request):
    await request.app.state.versions.end_canary("promote", "promoted by an operator")
    return await canary_view(request)


async def canary_view(request: Request) -> dict:
    """The running canary (else the last one, or null) with both arms' numbers."""
    versions: Versions = request.app.state.versions
    row = versions.canary or versions.store.last_canary()
    if row is None:
        return {"canary": None, "arms": None}
    sums = await request.app.state.db(Store.canary_arms, row["id"], True)
    arms = arm_stats(sums)
    names = {"active": public_name(versions.cfg, row["active"]),
             "canary": public_name(versions.cfg, row["version"])}
    return {"canary": row, "arms": {arm: {"name": names[arm], **arms[arm]} for arm in arms}}


async def review(versions: Versions, db) -> tuple[str, str] | None:
    """End the running canary if its rule says so; the decision that ended it, or None. The
    numbers are that canary's: if it ended, or another started, while they were summed, nothing
    happens (Versions.end_canary with its id)."""
    canary = versions.canary
    if canary is None:
        return None
    decision = decide(canary, arm_stats(await db(Store.canary_arms, canary["id"])))
    if decision and await versions.end_canary(*decision, canary_id=canary["id"]):
        return decision
    return None
