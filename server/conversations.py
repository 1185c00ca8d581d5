"""The conversation id of a chat request, found before it is forwarded (its response carries the
id in the `X-Conversation-Id` header, streamed or not, and the logged exchange stores it).

What it simplifies: the rules live in dynalign/conversation_ids.py; this module reads what they
need from the request (the header, who sent it, its messages redacted as the log stores them) and
looks the continued exchange up on the store's thread (an indexed read); all of it off the event
loop.
"""

from __future__ import annotations

import asyncio

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
    key, new = await asyncio.to_thread(_digests, who, body["messages"], redact_text)
    found = key and await request.app.state.db(Store.continued_conversation, key)
    return found or new


def _digests(who: str, messages: list, redact_text: bool) -> tuple[str | None, str]:
    """(the key of the history this request continues, None when it continues nothing; the id
    of a new conversation), from the messages as the log stores them. Run off the event loop:
    redacting a 4 MiB body takes seconds."""
    if redact_text:
        messages = redact_messages(messages)
    history = ids.earlier(messages)
    key = ids.continuation_key(who, history) if history is not None else None
    return key, ids.new_id(who, messages)
