"""Canary rollout between adapter versions (LoRA swap mode), mounted under /admin:

POST   /admin/canary          {"version": N, "share": 0.1, "min_feedback": 50, "max_hours": 24,
                              "margin": 0.05, "confidence": 0.95, "on_timeout": "decide"}: serve
                              version N to `share` of the alias's users next to the active one
GET    /admin/canary          the running canary (else the last one) and both arms' numbers
DELETE /admin/canary          end it; the active version stays
POST   /admin/canary/promote  serve the canary's version to everyone now

The store holds the canary and the exchange log which arm answered what, so a gateway restart
resumes it with its counts. `review` ends it when dynalign/canary.py's rule says so; it runs
after each rating and every minute on the schedule's scheduler.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from dynalign.canary import arm_stats, decide
from dynalign.errors import CanaryError, CanaryRunningError
from server.validate import read_object, validate_canary
from server.versions import Versions, public_name

router = APIRouter()
ENDED = {"promote": "promoted", "rollback": "rolled_back", "keep": "expired", "stop": "stopped"}


@router.post("/canary", status_code=201)
async def start_canary(request: Request):
    body = validate_canary(await read_object(request, ' with "version"', required=True))
    versions: Versions = request.app.state.versions
    async with versions.canary_lock:
        _check_can_start(versions, body["version"])
        await versions.resolve(public_name(versions.cfg, body["version"]))  # loaded before traffic
        versions.canary = versions.store.start_canary(active=versions.active, **body)
    return canary_view(versions)


def _check_can_start(versions: Versions, version: int) -> None:
    if versions.mode != "lora":
        raise CanaryError('a canary serves two versions side by side, which needs engine.swap = '
                          '"lora" (merged mode holds one version at a time)', "canary_needs_lora")
    if versions.canary:
        raise CanaryRunningError(versions.canary["version"])
    row = versions.store.adapter(version)  # 404 for an unknown version
    if row["status"] == "rejected":
        raise CanaryError(f"version {version} was rejected ({row['note']}): activate it with "
                          "force if you mean it, a canary only tries candidates", "adapter_rejected")
    if version == versions.active:
        raise CanaryError(f"version {version} is already active", "already_active")


@router.get("/canary")
async def get_canary(request: Request):
    return canary_view(request.app.state.versions)


@router.delete("/canary")
async def stop_canary(request: Request):
    versions = request.app.state.versions
    await conclude(versions, "stop", "stopped by an operator")
    return canary_view(versions)


@router.post("/canary/promote")
async def promote_canary(request: Request):
    versions = request.app.state.versions
    await conclude(versions, "promote", "promoted by an operator")
    return canary_view(versions)


def canary_view(versions: Versions) -> dict:
    """The running canary (else the last one, or null) with both arms' numbers."""
    row = versions.canary or versions.store.last_canary()
    if row is None:
        return {"canary": None, "arms": None}
    arms = arm_stats(versions.store.canary_exchanges(row["id"]))
    names = {"active": public_name(versions.cfg, row["active"]),
             "canary": public_name(versions.cfg, row["version"])}
    return {"canary": row, "arms": {arm: {"name": names[arm], **arms[arm]} for arm in arms}}


async def review(versions: Versions) -> dict | None:
    """End the running canary if its rule says so; the decision, or None."""
    if versions.canary is None:
        return None
    arms = arm_stats(versions.store.canary_exchanges(versions.canary["id"]))
    decision = decide(versions.canary, arms)
    if decision:
        await conclude(versions, *decision)
    return decision


async def conclude(versions: Versions, action: str, reason: str) -> None:
    """Promote (serve the canary's version to all), roll back (mark it rejected, with why),
    keep or stop (the active version stays); the canary ends, once."""
    async with versions.canary_lock:
        canary = versions.canary
        if canary is None:
            raise CanaryError("no canary is running", "no_canary")
        if action == "promote":
            await versions.activate(canary["version"], ending_canary=True)
        versions.store.end_canary(canary["id"], ENDED[action], reason)
        versions.canary = None
        if action == "rollback":
            versions.store.set_adapter_status(canary["version"], "rejected",
                                              note=f"canary {canary['id']}: {reason}")
