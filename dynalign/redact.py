"""Redaction of personal data and secrets in chat text, before anything is stored.

`redact(text)` replaces e-mail addresses with [EMAIL], IP addresses (v4 and v6) with [IP], API keys
and tokens with [KEY], payment card numbers with [CARD] and phone numbers with [PHONE]. It errs
towards keeping ordinary text: a card number must pass the Luhn check, a phone number needs a phone's
shape (+country code, (415) 555-0199 / 415-555-0199, or a 0-prefixed number with separators), an
IPv6 address needs three groups, and a "high-entropy" token needs 32+ characters mixing upper case,
lower case and digits with enough entropy, so dates, versions, years, hashes, UUIDs and code
identifiers survive. Pure functions, standard library only; placeholders are never re-redacted.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][\w.%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                   r"\.[A-Za-z]{2,}\b")
KEY_PREFIXED = re.compile(
    r"(?<![\w-])(?:sk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")  # JWT
KEY_LABELLED = re.compile(  # "Bearer abc...", api_key = "abc...": the label stays
    r"(?i)(\bbearer\s+|\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token"
    r"|client[_-]?secret|password)[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9._~+/=-]{12,})")
WORDLIKE = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{4,}")
TOKEN = re.compile(r"(?<![\w+/=-])[A-Za-z0-9_+/=-]{32,}(?![\w+/=-])")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                  r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){OCTET}(?:\.{OCTET}){{3}}(?![\w]|\.\d)")
CARD = re.compile(r"(?<![\w.,+-])(?:[2-6]\d{3}(?P<s>[ -]?)\d{4}(?P=s)\d{4}(?P=s)\d{1,7}"
                  r"|3[47]\d{2}(?P<a>[ -]?)\d{6}(?P=a)\d{5})(?![\w]|[.,-]\d)")  # Amex 4-6-5
PHONE = re.compile(
    r"(?<![\w+.,/-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # +44 20 7946 0958, +1 (415) 555-0199
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # (415) 555-0199, 1-800-555-0199
    r"|0\d{1,4}(?:[ -]\d{2,8}){1,4}"  # 020 7946 0958, 030 12345678, 01 23 45 67 89
    r")(?![\w]|[.,/-]\d)")
PLACEHOLDERS = ("[EMAIL]", "[KEY]", "[IP]", "[CARD]", "[PHONE]")


def redact(text: str) -> str:
    """`text` with personal data and secrets replaced by placeholders (see the module doc)."""
    text = EMAIL.sub("[EMAIL]", text)
    text = KEY_PREFIXED.sub("[KEY]", text)
    text = KEY_LABELLED.sub(lambda m: m.group(1) + "[KEY]", text)
    text = TOKEN.sub(lambda m: "[KEY]" if high_entropy(m.group()) else m.group(), text)
    text = IPV6.sub(lambda m: "[IP]" if is_ipv6(m.group()) else m.group(), text)
    text = IPV4.sub("[IP]", text)
    text = CARD.sub(lambda m: "[CARD]" if luhn_ok(m.group()) else m.group(), text)
    return PHONE.sub(lambda m: "[PHONE]" if 9 <= _digits(m.group()) <= 15 else m.group(), text)


def redact_messages(messages: list) -> list:
    """A copy of chat `messages` with every text redacted: string content, text parts, tool-call
    arguments. Anything else (roles, names, image parts) is kept as it is."""
    return [_redact_message(m) if isinstance(m, dict) else m for m in messages]


def redact_choices(choices: list[dict]) -> list[dict]:
    """The logged response choices ({"index", "content", "finish_reason"}) with content redacted."""
    return [{**c, "content": redact(c["content"])} if isinstance(c.get("content"), str) else c
            for c in choices]


def _redact_message(message: dict) -> dict:
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = redact(content)
    elif isinstance(content, list):
        out["content"] = [_redact_part(p) for p in content]
    if isinstance(message.get("tool_calls"), list):
        out["tool_calls"] = [_redact_tool_call(c) for c in message["tool_calls"]]
    return out


def _redact_part(part):
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": redact(part["text"])}
    return part


def _redact_tool_call(call):
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": redact(function["arguments"])}}
    return call


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
                for i, d in enumerate(reversed(digits)))
    return 13 <= len(digits) <= 19 and total % 10 == 0


def high_entropy(token: str) -> bool:
    """A random-looking token: upper case, lower case and 2+ digits, >= 4 bits of entropy per
    character, and under 60 % of it in word-like runs ("Name", "user", "HTTP"); identifiers made
    of words have more (99 % of random base62 tokens have less), hex hashes lack upper case."""
    if not (re.search(r"[A-Z]", token) and re.search(r"[a-z]", token)
            and len(re.findall(r"\d", token)) >= 2):
        return False
    words = sum(len(m.group()) for m in WORDLIKE.finditer(token))
    counts = Counter(token).values()
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts)
    return words < 0.6 * len(token) and entropy >= 4.0


def is_ipv6(candidate: str) -> bool:
    """A valid IPv6 address with at least three groups (so `a[1::2]` slices and times survive)."""
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return len([g for g in candidate.split(":") if g]) >= 3


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)
