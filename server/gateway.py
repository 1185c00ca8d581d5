"""The gateway: a thin FastAPI app in front of the vLLM engine.

It checks keys and request bodies, resolves the alias `dynalign` to the active adapter version,
forwards to the engine (streaming bytes through untouched but for the model name), and hands each
finished exchange to the SQLite writer thread. Admin routes live in server/admin.py.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dynalign import conversation_ids
from dynalign.canary import routing_key
from dynalign.config import Config
from dynalign.errors import (CanaryError, DynalignError, ReviewDecidedError, RoundBusyError,
                             RoundError, UnknownReviewError, UnknownRoundError,
                             UnknownVersionError)
from dynalign.store import Store
from server import admin, canary, conversations, feedback, guard, learning, reviews
from server.auth import ADMIN, Keys, client_key, load_keys, require_admin_key, require_chat_key
from server.engine import EngineCallError, EngineClient
from server.exchange_log import ExchangeLog, stored_client
from server.metrics import CONTENT_TYPE as METRICS_TYPE
from server.metrics import CountAnswers, Metrics
from server.store_thread import StoreThread
from server.supervisor import STREAM_CUT_EVENT, EngineSupervisor, EngineUnavailable
from server.validate import Limits, RequestError, read_json, validate_chat
from server.versions import Target, Versions, public_name

VERSION_HEADER = "X-Dynalign-Version"


def create_app(cfg: Config, mode: str, engine_url: str, on_ready=None,
               keys: Keys | None = None, engine_status: EngineSupervisor | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=cfg.server.request_timeout_s) as http:
            app.state.http, app.state.engine_url = http, engine_url
            app.state.store = Store(cfg.db_path)
            app.state.db = StoreThread(cfg.db_path)  # reads and writes kept off the loop
            app.state.versions = Versions(cfg, mode, EngineClient(engine_url, http),
                                          app.state.store, on_swap=metrics.swaps.observe)
            await app.state.versions.startup()
            app.state.log = ExchangeLog(cfg.db_path, redact=cfg.privacy.redact,
                                        on_row=metrics.exchange)
            app.state.rounds, app.state.schedule = learning.start(cfg, app.state.versions,
                                                                  app.state.db)
            metrics.watch(app.state)
            if on_ready:
                on_ready(app)
            yield
            learning.stop(app.state.rounds, app.state.schedule)
            app.state.log.close()
            app.state.db.close()
            app.state.store.close()

    metrics = Metrics()
    app = FastAPI(title="dynalign gateway", lifespan=lifespan)
    guard.install(app, cfg.server)  # Host, Origin (CORS): before CountAnswers, which counts them
    app.add_middleware(CountAnswers, metrics=metrics)
    app.state.cfg, app.state.metrics = cfg, metrics
    app.state.engine_status = engine_status  # None: not supervised (always taken as up)
    app.state.keys = keys if keys is not None else load_keys(cfg)
    app.state.prompt_logprobs_lock = asyncio.Lock()
    app.state.feedback_limit = feedback.RateLimit(cfg.server.feedback_per_minute)
    app.state.started = int(time.time())
    app.state.limits = Limits(cfg.server.max_n, cfg.model.max_model_len, mode == "lora")
    _add_error_handlers(app)
    _add_routes(app)
    app.include_router(feedback.router, dependencies=[Depends(require_chat_key)])
    app.include_router(admin.router, prefix="/admin", dependencies=[Depends(require_admin_key)])
    app.include_router(learning.router, prefix="/admin", dependencies=[Depends(require_admin_key)])
    app.include_router(canary.router, prefix="/admin", dependencies=[Depends(require_admin_key)])
    app.include_router(reviews.router, prefix="/admin", dependencies=[Depends(require_admin_key)])
    return app


def error_response(status: int, message: str, type: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request, e: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
        return JSONResponse(e.body(), status_code=e.status, headers={**headers, **e.headers})

    @app.exception_handler(DynalignError)
    async def dynalign_error(request, e: DynalignError):
        if isinstance(e, (UnknownVersionError, UnknownRoundError, UnknownReviewError)):
            return error_response(404, str(e), "invalid_request_error", "not_found")
        if isinstance(e, ReviewDecidedError):
            return error_response(409, str(e), "invalid_request_error", "review_decided")
        if isinstance(e, CanaryError):
            return error_response(409, str(e), "invalid_request_error", e.code)
        if isinstance(e, RoundError):  # busy, or not in a state that allows it
            code = "round_in_progress" if isinstance(e, RoundBusyError) else "round_state"
            return error_response(409, str(e), "invalid_request_error", code)
        return error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(EngineCallError)
    async def engine_error(request, e: EngineCallError):
        if await _engine_dead(request.app.state):  # e.g. a swap's /pause as the engine died
            return _died(request.app.state).response()
        return error_response(502, str(e), "engine_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def params_error(request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        return error_response(400, f"invalid parameters: {problems}", "invalid_request_error")

    @app.exception_handler(EngineUnavailable)
    async def engine_unavailable(request, e: EngineUnavailable):
        return e.response()

    @app.exception_handler(httpx.TransportError)
    async def engine_down(request, e: httpx.TransportError):
        return _died(request.app.state).response()  # it died under this request, most likely


def _add_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request):
        versions: Versions = request.app.state.versions
        up = await versions.engine.healthy()
        supervised = request.app.state.engine_status
        engine = supervised.info() if supervised else {}
        up = up and engine.get("engine_state", "up") == "up"
        status = "ok" if up else ("engine_restarting" if engine.get("engine_state") == "restarting"
                                  else "engine_down")
        body = {"status": status, "engine": up, "swap": versions.mode,
                "active": public_name(versions.cfg, versions.active), **engine,
                "log": request.app.state.log.status()}  # write failures: server/exchange_log.py
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics", dependencies=[Depends(require_admin_key)])
    async def metrics(request: Request):
        """Prometheus text (server/metrics.py); the admin key, as for /admin (docs/api.md)."""
        text = await request.app.state.db(lambda store: request.app.state.metrics.text())
        return Response(text, media_type=METRICS_TYPE)  # read on the store's thread: not the loop

    @app.get("/v1/models", dependencies=[Depends(require_chat_key)])
    async def models(request: Request):
        versions: Versions = request.app.state.versions
        created = request.app.state.started
        data = [{"id": "dynalign", "object": "model", "created": created, "owned_by": "dynalign",
                 "root": public_name(versions.cfg, versions.active)}]
        data += [{"id": t.public_name, "object": "model", "created": created,
                  "owned_by": "dynalign", "version": t.version} for t in versions.servable()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_chat_key)])
    async def chat(request: Request):
        if request.app.state.engine_status is not None:
            request.app.state.engine_status.check()  # 503 while the engine restarts
        body = await read_json(request)
        validate_chat(body, request.app.state.limits)
        versions: Versions = request.app.state.versions
        target = await versions.resolve(body.get("model"), routing_key(body, request.headers),
                                        admin=client_key(request) == ADMIN)
        if request.app.state.limits.lora_enabled and body.get("prompt_logprobs") is not None:
            async with request.app.state.prompt_logprobs_lock:  # see validate._check_logprobs
                return await forward_chat(request, body, target)
        return await forward_chat(request, body, target)


def _opt_out(request: Request, body: dict) -> bool:
    header = request.headers.get("x-dynalign-opt-out", "").lower() in ("1", "true", "yes")
    return header or body.get("store") is False


@dataclass
class Exchange:
    """One chat on its way through the gateway, until it is handed to the log writer (once:
    a stream hands itself over at its [DONE], and the end of the response finds it done)."""

    body: dict
    client_id: str
    user: str | None
    model_served: str
    version: int | None
    opt_out: bool
    stream: bool
    epoch: int  # the weights' epoch it started under (merged mode swaps in place)
    canary: int | None = None  # the running canary that routed it, and to which arm
    arm: str | None = None
    key_id: str | None = None  # the chat key that sent it (server/auth.py: client_key)
    who: str | None = None  # whose conversation it is, and which (dynalign/conversation_ids.py)
    conversation: str | None = None
    start: float = field(default_factory=time.perf_counter)
    ttft_ms: float | None = None
    handed_over: bool = False

    def finish(self, state, status: str, content: bytes = b"", events=None):
        """Hand it to the log writer, once; returns the future of its commit (None if done)."""
        if self.handed_over:
            return None
        self.handed_over = True
        return state.log.submit({
            "body": self.body, "client_id": self.client_id, "user": self.user,
            "model_served": self.model_served, "version": self.version, "opt_out": self.opt_out,
            "stream": self.stream, "ttft_ms": self.ttft_ms,
            "latency_ms": (time.perf_counter() - self.start) * 1000,
            "mixed_versions": self.epoch != state.versions.weights_epoch,
            "canary": self.canary, "arm": self.arm, "key_id": self.key_id,
            "who": self.who, "conversation": self.conversation,
            "status": status, "content": content, "events": events})

    def headers(self) -> dict:
        """The response headers naming the version that answered and the conversation."""
        return {VERSION_HEADER: self.model_served, conversation_ids.HEADER: self.conversation}


async def _exchange(request: Request, body: dict, target: Target) -> Exchange:
    """The record of a chat about to be forwarded, with its conversation (server/conversations.py:
    a bad X-Conversation-Id header is a 400 here, before the engine is asked)."""
    state = request.app.state
    record = Exchange(body, request.headers.get("x-client-id") or request.client.host,
                      request.headers.get("x-dynalign-user"), target.public_name, target.version,
                      _opt_out(request, body), bool(body.get("stream")),
                      state.versions.weights_epoch, target.canary, target.arm,
                      client_key(request))
    redact_text = state.cfg.privacy.redact
    record.who = conversation_ids.who(record.key_id, body.get("user") or record.user,
                                      stored_client(record.client_id, redact_text))
    record.conversation = await conversations.assign(request, body, record.who, redact_text)
    return record


async def forward_chat(request: Request, body: dict, target: Target):
    state = request.app.state
    payload = {k: v for k, v in body.items() if k != "store"}
    payload["model"] = target.engine_model
    record = await _exchange(request, body, target)
    rename = (f'"model":"{target.engine_model}"'.encode(), f'"model":"{target.public_name}"'.encode())
    url = f"{state.engine_url}/v1/chat/completions"
    if record.stream:
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return await _stream(state, url, payload, record, rename, wants_usage)
    response = await _post_unless_client_leaves(request, url, payload)
    if response is None:
        record.finish(state, status="aborted", content=b"{}")
        return Response(status_code=499)
    if response.status_code != 200:
        await _unless_engine_died(state, response.status_code)
        return Response(response.content, response.status_code, media_type="application/json")
    content = response.content.replace(*rename)
    await state.log.committed(record.finish(state, status="ok", content=content))  # kill -9 safe
    return Response(content, media_type="application/json", headers=record.headers())


async def _post_unless_client_leaves(request: Request, url: str, payload: dict):
    """The engine's answer, or None when the client hung up first (the engine request is then
    cancelled, which makes vLLM abort it, as it does for streams)."""
    post = asyncio.ensure_future(request.app.state.http.post(url, json=payload))
    left = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({post, left}, return_when=asyncio.FIRST_COMPLETED)
    left.cancel()
    if post.done():
        return post.result()
    post.cancel()
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(state, url, payload, record, rename, wants_usage):
    response = await state.http.send(state.http.build_request("POST", url, json=payload), stream=True)
    if response.status_code != 200:
        content = await response.aread()
        await response.aclose()
        await _unless_engine_died(state, response.status_code)
        return Response(content, response.status_code, media_type="application/json")

    async def events():
        events, status, buffer = [], "aborted", b""
        try:
            async for raw in response.aiter_raw():
                if record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - record.start) * 1000
                buffer += raw
                *complete, buffer = buffer.split(b"\n\n")
                for event in complete:
                    if _is_error_event(event):  # vLLM reports a failure in-band, then [DONE]
                        status = "error"
                        if await _engine_dead(state):
                            yield STREAM_CUT_EVENT
                            return
                    events.append(event)
                    if event.strip() == b"data: [DONE]" and status != "error":
                        # everything is delivered: the openai client hangs up on reading [DONE],
                        # possibly before the engine's stream ends, and that is not an abort
                        status = "ok"  # logged and committed before [DONE] goes out: kill -9 safe
                        await state.log.committed(record.finish(state, "ok", events=events))
                    if wants_usage or b'"choices":[]' not in event:
                        yield event.replace(*rename) + b"\n\n"
            if status != "error":
                status = "ok"
        except httpx.TransportError:  # the engine died mid-answer: say so in-band, then end
            status = "error"  # logged as such, not as "aborted" (that is the client hanging up)
            yield STREAM_CUT_EVENT
        finally:
            await response.aclose()
            record.finish(state, status=status, events=events)

    return StreamingResponse(events(), media_type="text/event-stream", headers=record.headers())


def _is_error_event(event: bytes) -> bool:
    return event.startswith(b'data: {"error"') or event.startswith(b'data: {"object":"error"')


async def _engine_dead(state) -> bool:
    """After the engine failed a request: is the engine itself gone? (When its core process dies,
    vLLM answers the requests in flight with a 500, or an error event in a stream, before its
    API server exits; its /health then answers 503, or nothing.)"""
    return not await state.versions.engine.healthy()


async def _unless_engine_died(state, status_code: int) -> None:
    """A 5xx from the engine because it died is the documented 503 with Retry-After."""
    if status_code >= 500 and await _engine_dead(state):
        raise _died(state)


def _died(state) -> EngineUnavailable:
    """The 503 for a request the engine's death failed: restarting, unless the service gave up."""
    status = state.engine_status
    return EngineUnavailable(status.state if status and status.state != "up" else "restarting")
