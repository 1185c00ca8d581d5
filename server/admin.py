"""Admin routes, mounted under /admin (key: DYNALIGN_ADMIN_KEY when set)."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request

from server.validate import RequestError
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
    return {"active": public_name(versions.cfg, versions.active), "swap": versions.mode,
            "data": [adapter_view(versions, row) for row in versions.store.adapters()]}


@router.post("/adapters", status_code=201)
async def register_adapter(request: Request):
    from server.gateway import read_json

    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise RequestError("body must be an object with a string 'path'", param="path")
    parent = body.get("parent")
    if parent is not None and not isinstance(parent, int):
        raise RequestError("'parent' must be an integer version", param="parent")
    versions = _versions(request)
    origin = "round" if body.get("source") == "round" else "registered"
    row = await versions.register(body["path"], parent=parent, note=str(body.get("note", "")),
                                  origin=origin)
    if body.get("activate"):
        await versions.activate(row["version"])
        row = versions.store.adapter(row["version"])
    return adapter_view(versions, row)


@router.post("/adapters/{version}/activate")
async def activate_adapter(version: str, request: Request):
    versions = _versions(request)
    number = parse_version(version)
    if number is not None and versions.store.adapter(number)["status"] == "rejected":
        raise RequestError(f"version {number} was rejected; it cannot be activated", status=409,
                           code="adapter_rejected")
    start = time.perf_counter()
    await versions.activate(number)
    return {"active": public_name(versions.cfg, versions.active),
            "seconds": round(time.perf_counter() - start, 3)}


@router.get("/exchanges")
async def recent_exchanges(request: Request, limit: int = 20):
    return {"data": _versions(request).store.exchanges(limit=min(max(limit, 1), 500))}
