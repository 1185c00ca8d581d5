"""POST /v1/feedback: a user's thumbs up or down on one answer, the one route outside OpenAI's API
a chat client needs (docs/api.md).

The answer is named by the chat completion id its client received (`id` in the response, or in
every chunk of a stream); the exchange log keeps that id with the exchange, so a rating is linked
to the exchange and, through it, to the version that answered. Every rating is kept; the latest
one per exchange counts. A comment is redacted as prompts are ([privacy] redact). An opted-out
exchange's rating is stored like the others, and like the exchange never trained on.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from dynalign.redact import redact
from server.canary import review
from server.validate import RequestError, read_json, validate_feedback

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request):
    body = validate_feedback(await read_json(request))
    record = rate(request.app.state, body, request.headers.get("x-dynalign-user"))
    await review(request.app.state.versions)  # a canary may have the ratings it waited for
    return record


def rate(state, body: dict, header_user: str | None = None) -> dict:
    """Store the rating of the exchange that answered `body["id"]`; the stored record."""
    exchange = state.store.exchange_by_completion(body["id"])
    if exchange is None:
        raise RequestError(f"no logged answer has the id {body['id']!r}: it is unknown, or it "
                           "was deleted", param="id", status=404, code="not_found")
    comment = body.get("comment")
    if comment and state.cfg.privacy.redact:
        comment = redact(comment)
    user = body.get("user") or header_user or exchange["user"]
    row = state.store.add_feedback(exchange["id"], body["rating"], comment, user)
    return {"object": "feedback", **row, "completion_id": body["id"],
            "version": exchange["version"], "model": exchange["model_served"],
            "opt_out": bool(exchange["opt_out"])}
