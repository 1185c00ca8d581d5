"""The chat UI as a person uses it, in a headless Chromium against the real server: type and send,
watch the answer stream in with the version that wrote it, opt out of training, start over; and
what the server logged for each exchange (its SQLite file, read directly), the conversation
each turn was logged under included."""

from __future__ import annotations

import json
import uuid

import pytest
from selenium.webdriver.common.by import By

from helpers.browser import (
    FOOTER,
    NEW_CONVERSATION,
    OPT_OUT,
    PLACEHOLDER,
    SEND,
    ChatPage,
    shows_end_of,
    words,
)
from helpers.live_server import Server

pytestmark = pytest.mark.slow

LOG_TIMEOUT_S = 120  # the log is written on a thread of its own, after the answer's last piece


def ask(chat: ChatPage, topic: str, how: str = "enter") -> tuple[str, str]:
    """Type a message naming a fresh token and send it (Enter or the Send button); the message
    and its token. The token finds the exchange in the log."""
    token = uuid.uuid4().hex[:12]
    message = f"Write two sentences about {topic}. (ref {token})"
    chat.type(message)
    if how == "enter":
        chat.press_enter()
    else:
        chat.click(SEND)
    chat.wait_for_user_message(token)
    return message, token


def logged(server: Server, token: str, after: int = 0) -> dict:
    """The one exchange after id `after` whose messages name `token`, once the server has
    logged it."""
    rows = server.wait_for(
        lambda: server.query("select * from exchanges where messages like ? and id > ?",
                             (f"%{token}%", after)),
        LOG_TIMEOUT_S, f"the exchange naming {token} in {server.db_path}", interval=0.25)
    assert len(rows) == 1, rows
    row = rows[0]
    row["messages"], row["response"] = json.loads(row["messages"]), json.loads(row["response"])
    return row


def finish(chat: ChatPage, server: Server, token: str, n: int = 1,
           after: int = 0) -> tuple[dict, str]:
    """Wait for answer `n` to be written, logged (after exchange `after`) and shown whole; the
    log row and the page text."""
    first = chat.wait_for_answer(n)  # its first piece: the event is running
    chat.wait_idle()  # the event is over: the whole answer is on the page
    row = logged(server, token, after)
    text = chat.texts("assistant")[n - 1]
    answer = row["response"][0]["content"]
    assert answer.strip(), row
    assert row["response"][0]["finish_reason"] in ("stop", "length"), row  # the engine finished
    assert row["status"] == "ok" and row["stream"] == 1, row
    assert shows_end_of(text, answer), f"the page shows {text!r}, the log {answer!r}"
    served = FOOTER.search(text)
    assert served and served.group(1) == row["model_served"] == FOOTER.search(first).group(1), (
        text, row["model_served"])
    return row, text


def test_a_sent_message_gets_a_streamed_answer_that_is_logged(chat, ui_server):
    chat.record_answers()
    message, token = ask(chat, "a lighthouse keeper")
    chat.wait().until(lambda _: chat.box.get_attribute("value") == "",
                      "the message box to be emptied on sending")
    row, text = finish(chat, ui_server, token)

    # streamed: the answer grew in the page, piece by piece, each piece already naming its version
    # (Gradio first shows an empty bubble while the event is pending, then the footer alone)
    pieces = chat.recorded_answers()
    assert all(FOOTER.search(p) for p in pieces if p.strip()), pieces
    growing = [p for p in pieces if words(p)]
    assert len(growing) >= 2, f"the answer appeared at once, not streamed: {pieces}"
    assert words(growing[-1]) == words(text)
    assert row["model_served"] == ui_server.base_name  # a fresh server: no adapter yet

    # logged as sent, kept for training
    assert row["messages"] == [{"role": "user", "content": message}]
    assert row["opt_out"] == 0, row
    assert row["model_requested"] == "dynalign"
    assert not chat.opt_out.is_selected()


def test_b_opting_out_flags_the_logged_exchange(chat, ui_server):
    chat.click(OPT_OUT)
    chat.wait().until(lambda _: chat.opt_out.is_selected(), "the opt-out box to be ticked")
    _, token = ask(chat, "the smell of rain", how="send")
    row, _ = finish(chat, ui_server, token)
    assert row["opt_out"] == 1, row
    assert chat.opt_out.is_selected(), "the opt-out box stays ticked for the next message"


def test_c_new_conversation_clears_the_chat_and_its_history(chat, ui_server):
    # a conversation carries its history: the second turn is sent with the first (footer removed)
    first_message, first_token = ask(chat, "mountains")
    first, _ = finish(chat, ui_server, first_token)
    second_message, second_token = ask(chat, "rivers")
    second, _ = finish(chat, ui_server, second_token, n=2)
    assert second["messages"] == [
        {"role": "user", "content": first_message},
        {"role": "assistant", "content": first["response"][0]["content"]},
        {"role": "user", "content": second_message},
    ]
    # both turns are logged under the page's own conversation id (a UUID it sent)
    assert second["conversation"] == first["conversation"] == str(uuid.UUID(first["conversation"]))

    chat.click(NEW_CONVERSATION)
    chat.wait().until(lambda _: not chat.messages("user") and not chat.messages("assistant"),
                      "the chat to be empty")
    chat.wait().until(lambda _: chat.driver.find_elements(By.CSS_SELECTOR, PLACEHOLDER),
                      "the empty chat's placeholder")
    assert chat.box.get_attribute("value") == ""

    # and the next message starts a new conversation: nothing of the old one is sent, and it
    # gets a new id although it opens with the same words (an id made from them would not)
    chat.type(first_message)
    chat.press_enter()
    chat.wait_for_user_message(first_token)
    third, _ = finish(chat, ui_server, first_token, after=second["id"])
    assert third["messages"] == [{"role": "user", "content": first_message}]
    assert len(chat.messages("user")) == 1
    assert third["conversation"] != first["conversation"]
    assert third["conversation"] == str(uuid.UUID(third["conversation"]))
