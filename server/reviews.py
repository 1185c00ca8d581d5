"""The review queue's admin routes (dynalign/reviews.py), mounted under /admin.

GET  /admin/reviews            items, newest first: ?status=open|decided, ?round=N, ?limit=N
GET  /admin/reviews/{id}       one item: what was judged, each judge's numbers, any verdict
POST /admin/reviews/{id}       a verdict, once: {"verdict": "better"|"worse"|"tie", "by": NAME}
                               for a pair (is A, the candidate's answer, better?), or
                               {"score": 0-5, "by": NAME} for one answer. 404 unknown, 409 decided.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request

from dynalign import reviews
from server.validate import MAX_ID, MAX_PAGE, MIN_ID, RequestError, read_object

router = APIRouter()


@router.get("/reviews")
async def list_reviews(request: Request, status: str = "", limit: int = Query(50, ge=1),
                       round: int | None = Query(None, ge=MIN_ID, le=MAX_ID)):
    if status not in ("", *reviews.STATUSES):
        raise RequestError(f"status must be one of {', '.join(reviews.STATUSES)}; got {status!r}")
    rows = reviews.listing(request.app.state.store, status, round, min(limit, MAX_PAGE))
    return {"data": rows}


@router.get("/reviews/{review_id}")
async def get_review(request: Request, review_id: int = Path(ge=MIN_ID, le=MAX_ID)):
    return reviews.get(request.app.state.store, review_id)


@router.post("/reviews/{review_id}")
async def decide_review(request: Request, review_id: int = Path(ge=MIN_ID, le=MAX_ID)):
    body = await read_object(request, ' with "verdict" (better, worse, tie) or "score" (0-5), '
                             'and "by"', required=True)
    unknown = set(body) - {"verdict", "score", "by"}
    if unknown:
        raise RequestError(f"unknown field: {sorted(unknown)[0]}")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise RequestError(f"score must be a number 0-5; got {score!r}")
    if not isinstance(body.get("by", ""), str) or not isinstance(body.get("verdict", ""), str):
        raise RequestError("verdict and by must be strings")
    return await request.app.state.db(lambda store: reviews.decide(
        store, review_id, body.get("by", ""), body.get("verdict"), score))
