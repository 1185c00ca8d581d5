"""POST /v1/feedback: a user's thumbs up or down on one answer, the one route outside OpenAI's API
a chat client needs (docs/api.md).

The answer is named by the chat completion id its client received (`id` in the response, or in
every chunk of a stream); the exchange log keeps that id with the exchange, so a rating is linked
to the exchange and, through it, to the version that answered. One rating counts per answer: a
later one replaces it. A comment is redacted as prompts are ([privacy] redact). An opted-out
exchange's rating is stored like the others, and like the exchange never trained on.

Ratings steer canaries and what a round trains on first, so they are bounded: where chat keys
identify clients, only the key that received the answer may rate it (another gets the same 404
as an unknown id); an answer given to a named user is rated as that user; each key (without
keys: each client address) may send `server.feedback_per_minute` ratings a minute (429 with
Retry-After beyond). The store work runs on the store thread, not the event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from fastapi import APIRouter, Request

from dynalign.redact import redact
from server.auth import client_key
from server.canary import review
from server.validate import RequestError, read_json, validate_feedback

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request):
    state = request.app.state
    state.feedback_limit.take(client_key(request) or f"address:{request.client.host}")
    body = validate_feedback(await read_json(request))
    record = await state.db(rate, state.cfg, body, client_key(request),
                            request.headers.get("x-dynalign-user"))
    await review(state.versions, state.db)  # a canary may have the ratings it waited for
    return record


def rate(store, cfg, body: dict, key_id: str | None, header_user: str | None = None) -> dict:
    """Store the rating of the exchange that answered `body["id"]` (on the store's thread);
    the stored record."""
    exchange = store.exchange_by_completion(body["id"])
    if exchange is None or (exchange["key_id"] is not None and key_id != exchange["key_id"]):
        raise RequestError(f"no logged answer has the id {body['id']!r}: it is unknown, it was "
                           "deleted, or another key received it", param="id", status=404,
                           code="not_found")
    user = body.get("user") or header_user
    if exchange["user"] is not None and user not in (None, exchange["user"]):
        raise RequestError("this answer was given to another user: only they may rate it",
                           param="user", status=403, code="not_your_answer",
                           type="permission_error")
    comment = body.get("comment")
    if comment and cfg.privacy.redact:
        comment = redact(comment)
    row = store.add_feedback(exchange["id"], body["rating"], comment, exchange["user"] or user)
    return {"object": "feedback", **row, "completion_id": body["id"],
            "version": exchange["version"], "model": exchange["model_served"],
            "opt_out": bool(exchange["opt_out"])}


class RateLimit:
    """A token bucket per client: `per_minute` ratings a minute, in bursts of as many. At most
    MAX_CLIENTS buckets are kept (the least recently used go: a full bucket is the default)."""

    MAX_CLIENTS = 10_000

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, client: str, now: float | None = None) -> None:
        """One token of `client`'s, or RequestError 429 saying when the next one comes."""
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, then = self.buckets.pop(client, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - then) * self.per_minute / 60)
        if tokens < 1:
            self.buckets[client] = (tokens, now)
            wait = math.ceil((1 - tokens) * 60 / self.per_minute)
            raise RequestError(
                f"too many ratings from this client: at most {self.per_minute} a minute "
                f"(server.feedback_per_minute); retry in {wait} s", status=429,
                code="rate_limit_exceeded", type="rate_limit_error",
                headers={"Retry-After": str(wait)})
        self.buckets[client] = (tokens - 1, now)
        while len(self.buckets) > self.MAX_CLIENTS:
            self.buckets.popitem(last=False)
