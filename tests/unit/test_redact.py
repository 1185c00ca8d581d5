"""dynalign.redact: what is replaced, and the ordinary text that must survive untouched."""

import random
import string

import pytest

from dynalign.redact import (high_entropy, luhn_ok, redact, redact_choices, redact_messages)

HITS = [
    ("mail me at john.doe+news@example.co.uk today", "mail me at [EMAIL] today"),
    ("Contact: a_b-c@mail-server.example.org.", "Contact: [EMAIL]."),
    ("openai sk-proj-abcdEFGH1234ijklMNOP5678qrst", "openai [KEY]"),
    ("anthropic sk-ant-api03-AbCdEfGhIjKlMnOpQrSt", "anthropic [KEY]"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe [KEY]"),
    ("github ghp_0123456789abcdefghijABCDEFGHIJ0123", "github [KEY]"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "aws [KEY] here"),
    ("hf hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf [KEY]"),
    ("slack xoxb-123456789012-abcdefghij", "slack [KEY]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n",
     "jwt [KEY]"),
    ("Authorization: Bearer abcdef123456.ghijkl", "Authorization: Bearer [KEY]"),
    ("api_key = 'x9f8e7d6c5b4a3z2'", "api_key = '[KEY]'"),
    ('{"client_secret": "Qw3rTy8uIoP1aSdF"}', '{"client_secret": "[KEY]"}'),
    ("token Zx8Qm2Lp9Rt4Vw7Yb1Nc6Kd3Hf5Jg0Ts end", "token [KEY] end"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("card 4111-1111-1111-1111", "card [CARD]"),
    ("mastercard 5500005555555559.", "mastercard [CARD]."),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("amex 378282246310005", "amex [CARD]"),
    ("call +44 20 7946 0958 please", "call [PHONE] please"),
    ("call (415) 555-0199 now", "call [PHONE] now"),
    ("at 415-555-0199", "at [PHONE]"),
    ("at 415.555.0199", "at [PHONE]"),
    ("toll free 1-800-555-0199", "toll free [PHONE]"),
    ("+1 415 555 0199", "[PHONE]"),
    ("+14155550199", "[PHONE]"),
    ("London 020 7946 0958", "London [PHONE]"),
    ("Paris 01 23 45 67 89", "Paris [PHONE]"),
    ("Berlin 030 12345678", "Berlin [PHONE]"),
    ("server at 192.168.1.20:8080", "server at [IP]:8080"),
    ("from 8.8.8.8.", "from [IP]."),
    ("ip 2001:db8:85a3::8a2e:370:7334 end", "ip [IP] end"),
    ("full 2001:0db8:0000:0000:0000:ff00:0042:8329", "full [IP]"),
    ("mapped ::ffff:192.0.2.128", "mapped ::ffff:[IP]"),
]

MISSES = [
    "on 2024-01-15 at 10:30:45",
    "version 1.2.3, v1.2.3.4 and 2.0.0-rc1",
    "in 1999 there were 42 cats, 7 dogs and 1,000,000 ants",
    "x[1::2], a::b, std::vector<int> and foo::bar::baz()",
    "pi is 3.14159265358979",
    "an ordinary 1234567890123456 number (Luhn fails)",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "AbstractSingletonProxyFactoryBean and getUserById2",
    "myVeryLongVariableNameForTheUserAccount12 = parse_http_response_v2()",
    "test_user_profile_handler_v2_Returns404, HTTPServerErrorHandlerV2ForIPv6Sockets",
    "src/components/UserProfile2/IndexPage3.tsx",
    "ERR_CONNECTION_REFUSED_1234567890ABCDEFGH",
    "01.02.2024 10:30 and 2024.01.15 and 15/01/2024",
    "population 8,000,000,000; price $1,299.99; 3-2 win",
    "MAC 00:1A:2B:3C:4D:5E at 12:30",
    "1+1=2, +5 points, -40 degrees",
    "ISBN 978-3-16-148410-0",
    "foo@bar is not an address, nor is @handle",
    "use 0.0.0 or 10.0 or 300.1.1.1",
    "password: see below",
    "Hello, world! Write a haiku about the sea.",
]


@pytest.mark.parametrize("text, expected", HITS)
def test_hits_become_placeholders(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", MISSES)
def test_ordinary_text_survives(text):
    assert redact(text) == text


def test_redaction_is_idempotent_and_keeps_placeholders():
    once = redact(" ".join(text for text, _ in HITS))
    assert redact(once) == once
    assert "[EMAIL]" in once and "[KEY]" in once and "[CARD]" in once
    assert "[PHONE]" in once and "[IP]" in once


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("4111 1111 1111 1111")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("0")  # too short to be a card


def test_random_tokens_are_high_entropy_and_words_are_not():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits
    tokens = ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(500)]
    assert sum(map(high_entropy, tokens)) >= 470  # ~98 %; the rest stay (see the docstring)
    assert not high_entropy("ThisIsTheNameOfAFunction1234Returning")
    assert not high_entropy("0123456789abcdef0123456789abcdef")  # hex: no upper case


def test_messages_string_content_text_parts_and_tool_arguments():
    messages = [
        {"role": "system", "content": "mail ops@example.com"},
        {"role": "user", "content": [{"type": "text", "text": "my ip is 10.1.2.3"},
                                     {"type": "image_url", "image_url": {"url": "http://x/1.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "call", "arguments": '{"phone": "+44 20 7946 0958"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    out = redact_messages(messages)
    assert out[0] == {"role": "system", "content": "mail [EMAIL]"}
    assert out[1]["content"][0] == {"type": "text", "text": "my ip is [IP]"}
    assert out[1]["content"][1] == messages[1]["content"][1]
    assert out[2]["tool_calls"][0]["function"] == {"name": "call",
                                                   "arguments": '{"phone": "[PHONE]"}'}
    assert out[3] == messages[3]
    assert messages[0]["content"] == "mail ops@example.com"  # the input is not changed


def test_choices():
    choices = [{"index": 0, "content": "write to a@b.io", "finish_reason": "stop"},
               {"index": 1, "content": None, "finish_reason": "length"}]
    assert redact_choices(choices) == [
        {"index": 0, "content": "write to [EMAIL]", "finish_reason": "stop"}, choices[1]]
