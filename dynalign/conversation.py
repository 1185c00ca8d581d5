"""A logged conversation as a training prompt, and as the context a judge reads. Pure: no torch.

What it simplifies: an OpenAI request's `messages` may hold system messages, content parts,
assistant tool calls and tool results. A training prompt keeps only what a chat template for
user/assistant turns can render: the client's system message (kept or dropped by
`learn.client_system`), then user and assistant turns alternating, a tool call and its result
folded into the assistant turn as text, up to and including the last user turn.

Too long for `learn.max_prompt_tokens`: whole turns (a user message and what answered it) are
cut from the left, the client's system message goes next, and the last user turn is never cut;
a conversation whose last user turn alone does not fit is left out (counted as too long).

A judge reads a conversation as text (`as_text`): the earlier turns as context, then the request
being answered. The client's system message is not shown to a judge: a judge's score must not
follow instructions a client wrote for the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Callable

CHARS_PER_TOKEN = 4  # where no tokenizer file is at hand (an estimate; CJK or code has more)
TURN_TOKENS = 5  # a chat template's markers around one message (ChatML: <|im_start|>role\n ... <|im_end|>\n)
CONTEXT_HEADER = "[Earlier in the conversation]"
REQUEST_HEADER = "[The request being answered]"

Messages = list[dict]
Counter = Callable[[Messages], int]


def content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("text"))
    return content if isinstance(content, str) else ""


def last_user_turn(messages) -> str | None:
    """The text of the last user message (stripped), None when it is missing or empty."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    for message in reversed(messages or []):
        if message.get("role") == "user":
            return content_text(message.get("content")).strip() or None
    return None


def training_messages(messages, client_system: str = "keep") -> Messages | None:
    """The conversation up to and including its last user turn, as user/assistant turns (and
    the client's system message first when `client_system` is "keep"); None without a user turn
    that has text."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    end = max((i for i, m in enumerate(messages or []) if m.get("role") == "user"), default=-1)
    if end < 0 or not content_text(messages[end].get("content")).strip():
        return None
    system = [content_text(m.get("content")).strip() for m in messages[:end]
              if m.get("role") in ("system", "developer")]
    out = ([{"role": "system", "content": "\n\n".join(s for s in system if s)}]
           if client_system == "keep" and any(system) else [])
    for message in messages[:end + 1]:
        _add_turn(out, message)
    return out


def _add_turn(out: Messages, message: dict) -> None:
    """Append `message` as a user or assistant turn; tool calls and tool results become text of
    the assistant turn they belong to, so the turns keep alternating."""
    role, text = message.get("role"), content_text(message.get("content")).strip()
    if role == "assistant":
        calls = [f"[called {c['function']['name']}({c['function'].get('arguments', '')})]"
                 for c in message.get("tool_calls") or [] if c.get("function")]
        text = "\n".join(t for t in [text, *calls] if t)
    elif role == "tool":
        role, text = "assistant", f"[tool result] {text}"
    elif role != "user":
        return
    if out and out[-1]["role"] == role == "assistant":
        out[-1]["content"] = "\n".join(t for t in (out[-1]["content"], text) if t)
    else:
        out.append({"role": role, "content": text})


def user_turns(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def fit(messages: Messages, max_tokens: int, count: Counter) -> Messages | None:
    """`messages` within `max_tokens` (by `count`): whole turns cut from the left, then the
    system message; None when the last user turn alone is longer."""
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    starts = sorted({0} | {i for i, m in enumerate(turns) if m["role"] == "user"})  # turns
    for start in starts:
        for head in (system, []) if start == starts[-1] else (system,):
            candidate = head + turns[start:]
            if count(candidate) <= max_tokens:
                return candidate
    return None


def as_text(messages: Messages) -> str:
    """What a judge reads as the user's request: the last user turn alone for a one-turn
    conversation; otherwise the earlier turns as "User:" / "Assistant:" lines under a header,
    then the request under its own header. The client's system message is left out."""
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    if len(turns) <= 1:
        return turns[-1]["content"] if turns else ""
    earlier = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns[:-1])
    return f"{CONTEXT_HEADER}\n{earlier}\n\n{REQUEST_HEADER}\n{turns[-1]['content']}"


def prompt_text(prompt) -> str:
    """A prompt as a judge reads it: plain text as is; a conversation (a TRL prompt, a probe)
    with its earlier turns as context before the request (`as_text`)."""
    return as_text(prompt) if isinstance(prompt, list) else str(prompt)


def key(messages: Messages) -> str:
    """Identical conversations (case and spacing aside) have the same key."""
    flat = [(m["role"], " ".join(m["content"].lower().split())) for m in messages]
    return hashlib.sha256(json.dumps(flat).encode()).hexdigest()


def with_system(system_prompt: str, messages: Messages) -> Messages:
    """The conversation as rollouts see it: the CA system prompt first, the client's own system
    message (if kept) after it in the same system turn (many templates render one system turn
    only)."""
    if messages and messages[0]["role"] == "system":
        merged = f"{system_prompt}\n\n{messages[0]['content']}"
        return [{"role": "system", "content": merged}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def token_counter(model_path: str | None) -> Counter:
    """Tokens of a conversation as a chat template renders it: each message's content by the
    model's own tokenizer (its tokenizer.json, read by the `tokenizers` library: no torch) plus
    TURN_TOKENS; without that file, CHARS_PER_TOKEN characters a token."""
    path = Path(model_path or "") / "tokenizer.json"
    if model_path and path.is_file() and importlib.util.find_spec("tokenizers"):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return lambda messages: sum(len(tokenizer.encode(m["content"], add_special_tokens=False))
                                    + TURN_TOKENS for m in messages)
    return lambda messages: sum(len(m["content"]) // CHARS_PER_TOKEN + TURN_TOKENS
                                for m in messages)


PROBES_FILE = Path(__file__).resolve().parent.parent / "data" / "eval" / "multiturn_probes.jsonl"


def load_probes(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Multi-turn probes ({"id", "messages"}: user and assistant turns alternating, ending on a
    user turn) of our own making: the gate judges answers to them, rounds never train on them.
    Errors name the line."""
    from dynalign.dataset import json_object
    from dynalign.errors import DataError

    path = Path(path or PROBES_FILE)
    if not path.is_file():
        raise DataError(f"no such probes file: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            row = json_object(path, number, line)
            roles = [m.get("role") for m in row.get("messages") or [] if isinstance(m, dict)]
            if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
                raise DataError(f"{path}:{number}: messages must alternate user and assistant "
                                "turns, starting and ending with a user turn")
            rows.append(row)
    return rows[:limit]
