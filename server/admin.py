"""Admin routes, mounted under /admin (key: DYNALIGN_ADMIN_KEY when set)."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Path, Query, Request

from dynalign import reviews
from dynalign.erasure import forget
from dynalign.evaluate import approval, approval_by_version
from dynalign.rounds import round_view
from dynalign.store import Store
from server.validate import MAX_ID, MAX_PAGE, MIN_ID, RequestError, read_json, read_object
from server.versions import Versions, parse_version, public_name

router = APIRouter()


def _versions(request: Request) -> Versions:
    return request.app.state.versions


def adapter_view(versions: Versions, row: dict) -> dict:
    return {**row, "name": public_name(versions.cfg, row["version"]),
            "metrics": json.loads(row["metrics"] or "{}")}


@router.get("/adapters")
async def list_adapters(request: Request):
    versions = _versions(request)
    approvals = approval_by_version(await request.app.state.db(Store.ratings_by_version))
    return {"active": public_name(versions.cfg, versions.active), "swap": versions.mode,
            "base_approval": approvals.get(None, approval()),
            "data": [{**adapter_view(versions, row),
                      "approval": approvals.get(row["version"], approval())}
                     for row in versions.store.adapters()]}


@router.post("/adapters", status_code=201)
async def register_adapter(request: Request):
    body, parent = await _adapter_body(request)
    versions = _versions(request)
    row = await versions.register(body["path"], parent=parent, note=str(body.get("note", "")))
    if body.get("activate"):
        await versions.activate(row["version"])
        row = versions.store.adapter(row["version"])
    return adapter_view(versions, row)


@router.post("/adapters/publish", status_code=201)
async def publish_candidate(request: Request):
    """A round's candidate with its gate's verdict ({"path", "parent", "note", "promote"}):
    what a standalone `dynalign learn` calls; the same Versions.publish as in-server rounds."""
    body, parent = await _adapter_body(request)
    if not isinstance(body.get("promote"), bool):
        raise RequestError("'promote' must be true or false (the gate's verdict)", param="promote")
    versions = _versions(request)
    version = await versions.publish(body["path"], parent, str(body.get("note", "")),
                                     body["promote"])
    return adapter_view(versions, versions.store.adapter(version))


async def _adapter_body(request: Request) -> tuple[dict, int | None]:
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise RequestError("body must be an object with a string 'path'", param="path")
    parent = body.get("parent")
    if parent is not None and (type(parent) is not int or not 1 <= parent <= MAX_ID):
        raise RequestError("'parent' must be a version number (a positive integer)",
                           param="parent")
    return body, parent


@router.get("/adapters/{version}")
async def get_adapter(version: str, request: Request):
    """One version, with the round that made it: the gate's verdict and reasons."""
    versions = _versions(request)
    number = parse_version(version)
    if number is None:
        raise RequestError("'base' is the base model, not an adapter version", status=404,
                           code="version_not_found")
    row = adapter_view(versions, versions.store.adapter(number))
    made_by = versions.store.round_of_version(number)
    row["round"] = round_view(made_by) if made_by else None
    row["scoreboard"] = await request.app.state.db(Store.scoreboards, number)
    return row


@router.get("/scoreboard")
async def scoreboard(request: Request, version: str | None = None):
    """Every version's latest scoreboard against the base (dynalign/scoreboard.py): its headline
    numbers per judge and prompt set; `?version=3` for one version (404 if unknown)."""
    number = None
    if version is not None:
        number = parse_version(version)
        if number is None:
            raise RequestError("'base' is what versions are measured against, not a version",
                               status=404, code="version_not_found")
        _versions(request).store.adapter(number)  # unknown: 404 naming it
    cfg = _versions(request).cfg
    rows = await request.app.state.db(Store.scoreboards, number)
    store = _versions(request).store  # people's verdicts on each version's split pairs, apart
    return {"data": [{**r, "name": public_name(cfg, r["version"]),
                      "reviews": reviews.tally(store, version=r["version"])} for r in rows]}


@router.post("/adapters/{version}/activate")
async def activate_adapter(version: str, request: Request):
    """Promote or roll back to VERSION (or 'base'). A version the gate rejected needs
    {"force": true}: the operator overrides the gate, and the note says so."""
    versions = _versions(request)
    number = parse_version(version)
    force = (await read_object(request, ' such as {"force": true}')).get("force") is True
    rejected = number is not None and versions.store.adapter(number)["status"] == "rejected"
    if rejected and not force:
        raise RequestError(f"version {number} was rejected by the gate; send "
                           '{"force": true} to activate it anyway', status=409,
                           code="adapter_rejected")
    result = await _activate(versions, number)
    if rejected:
        note = versions.store.adapter(number)["note"] or ""
        versions.store.set_adapter_status(number, "active", note=f"{note} [force-promoted]")
    return result


@router.post("/rollback")
async def rollback(request: Request):
    """Serve the version the active one was trained from (its parent; none: the base model), or
    {"to": VERSION | "base"}."""
    versions = _versions(request)
    to = (await read_object(request, ' such as {"to": "base"}')).get("to")
    if to is not None:
        number = parse_version(str(to))
        if number is not None and versions.store.adapter(number)["status"] == "rejected":
            raise RequestError(f"version {number} was rejected by the gate: activate it with "
                               '{"force": true} instead', status=409, code="adapter_rejected")
    elif versions.active is None:
        raise RequestError("the base model is serving: there is nothing to roll back",
                           status=409, code="nothing_to_roll_back")
    else:
        number = versions.store.adapter(versions.active)["parent"]
    return await _activate(versions, number)


async def _activate(versions: Versions, number: int | None) -> dict:
    start = time.perf_counter()
    await versions.activate(number)
    return {"active": public_name(versions.cfg, versions.active),
            "seconds": round(time.perf_counter() - start, 3)}


@router.get("/exchanges")
async def recent_exchanges(request: Request, limit: int = Query(20, ge=1), q: str = "",
                           user: str = "", opt_out: bool | None = None,
                           before: int | None = Query(None, ge=MIN_ID, le=MAX_ID),
                           conversation: str = ""):
    """Logged exchanges, newest first, each with its `conversation` id: `q` searches the text,
    `user`, `opt_out`, `conversation` (one conversation's turns), and `before` (an id) pages
    back; `limit` 1 or more, capped at MAX_PAGE."""
    rows = _versions(request).store.exchanges(limit=min(limit, MAX_PAGE), search=q,
                                              user=user, opt_out=opt_out, before=before,
                                              conversation=conversation)
    return {"data": rows}


@router.delete("/exchanges/{exchange_id}")
async def delete_exchange(request: Request, exchange_id: int = Path(ge=MIN_ID, le=MAX_ID)):
    """One exchange with its ratings, every copy (dynalign/erasure.py), on the store's thread:
    the WAL checkpoint may wait for readers. `copies_remain`: null, or that copies remain in
    dynalign.db-wal and how to finish (the deletion stands)."""
    cfg = request.app.state.cfg
    erased = await request.app.state.db(lambda store: forget(cfg, store, ids=[exchange_id]))
    if not erased.exchanges:
        raise RequestError(f"no exchange with id {exchange_id}", status=404,
                           code="exchange_not_found")
    return {"deleted": exchange_id, "ratings": erased.ratings,
            "copies_remain": erased.copies_remain}
