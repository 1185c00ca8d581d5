"""The conversation id of a chat request, found before it is forwarded (its response carries the
id in the `X-Conversation-Id` header, streamed or not, and the logged exchange stores it).

What it simplifies: the rules live in dynalign/conversation_ids.py; this module reads what they
need from the request (the header, who sent it, its messages redacted as the log stores them) and
looks the continued exchange up on the store's thread (an indexed read, off the event loop).
"""

from __future__ import annotations

from starlette.requests import Request

from dynalign import conversation_ids as ids
from dynalign.redact import redact_messages
from dynalign.store import Store
from server.validate import RequestError


async def assign(request: Request, body: dict, who: str, redact_text: bool) -> str:
    """The request's conversation id: the client's header (checked: 400 naming it), else the
    conversation its history continues, else a new one (dynalign/conversation_ids.py)."""
    given = request.headers.get(ids.HEADER)
    if given is not None:
        if not ids.valid_id(given):
            raise RequestError(f"header {ids.HEADER} must be 1 to {ids.MAX_ID_CHARS} printable "
                               "ASCII characters without spaces (a UUID, say)", param=ids.HEADER,
                               code="invalid_conversation_id")
        return given
    messages = redact_messages(body["messages"]) if redact_text else body["messages"]
    history = ids.earlier(messages)
    if history is not None:
        key = ids.continuation_key(who, history)
        found = await request.app.state.db(Store.continued_conversation, key)
        if found:
            return found
    return ids.new_id(who, messages)
