"""Which logged exchanges belong to one conversation: the conversation id of a chat request.

What it simplifies: an OpenAI client sends the whole history with every turn and no id of its
own, so the gateway has to recognise turn 3 as the follow-up of turns 1 and 2. The rules, in order
(server/conversations.py applies them to a request; docs/operations.md#conversations):

1. the client's `X-Conversation-Id` header (`valid_id`: 1-128 printable ASCII characters, no
   spaces), taken as it is;
2. else, when the request continues an exchange logged for the same client (`who`): that
   exchange's id. Each logged exchange stores `continuation_key(who, its messages + its answer)`;
   a request continues it when `continuation_key(who, its messages but the last)` is the same;
3. else a new conversation: `new_id(who, messages)`, a digest of the client, the system message
   (if any) and the first user turn. So a conversation started without a header keeps its id even
   when a turn cannot be matched (an answer the client edited), and two conversations of the same
   client that open with the same words share one id (send a header to keep them apart).

Keys and ids are digests of the text as it is stored: redacted when [privacy] redact is on (the
caller passes redacted messages and the stored client id), so an id or key reveals nothing that
the logged row does not already show. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json

HEADER = "X-Conversation-Id"
MAX_ID_CHARS = 128


def valid_id(value: str) -> bool:
    """A client's conversation id: 1-128 printable ASCII characters, no spaces."""
    return 0 < len(value) <= MAX_ID_CHARS and all("!" <= c <= "~" for c in value)


def who(key_id: str | None, user: str | None, client: str | None) -> str:
    """Whose conversation it is: the chat key that sent it (None when keys are off) and the user
    (`user` / X-Dynalign-User), else the client (X-Client-Id or the address, as stored)."""
    return json.dumps([key_id, user or client])


def continuation_key(who: str, messages: list) -> str:
    """What a follow-up of these messages (a history ending with an answer) is found by."""
    return _digest([who, [_canonical(m) for m in messages]])


def earlier(messages: list) -> list | None:
    """The history a request continues: its messages but the last, when they hold an answer
    (an assistant turn); None when there is nothing to continue."""
    head = messages[:-1]
    return head if any(_role(m) == "assistant" for m in head) else None


def answered(messages: list, choices: list) -> list:
    """A logged exchange's messages followed by its answer (the first choice: the one a client
    continuing the conversation sends back)."""
    first = next((c for c in choices if c.get("index", 0) == 0), choices[0] if choices else {})
    return [*messages, {"role": "assistant", "content": first.get("content")}]


def new_id(who: str, messages: list) -> str:
    """A new conversation's id: a digest of the client, its system message and first user turn."""
    system = [_text(m) for m in messages if _role(m) in ("system", "developer")][:1]
    first_user = next((_text(m) for m in messages if _role(m) == "user"), "")
    return _digest([who, system, first_user])[:32]


def by_conversation(rows: list[dict]) -> list[list[dict]]:
    """Logged exchanges (listed newest first) grouped by conversation: the conversation with
    the newest exchange first, its turns oldest first. An exchange without a conversation id
    (logged before they were recorded) is a group of its own."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row.get("conversation") or ("exchange", row["id"]), []).append(row)
    return [sorted(group, key=lambda row: row["id"]) for group in groups.values()]


def _canonical(message) -> list:
    """A message as far as a follow-up repeats it: role and text, spacing aside (tool calls are
    not logged with an answer, so they are left out)."""
    return [_role(message), " ".join(_text(message).split())]


def _role(message) -> str | None:
    return message.get("role") if isinstance(message, dict) else None


def _text(message) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict)
                       and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode("utf-8")).hexdigest()

