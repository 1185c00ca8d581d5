"""dynalign chat UI: a small Gradio page in front of the dynalign gateway.

It talks to the gateway only through the official ``openai`` client, streams each
reply, and writes under every answer which adapter version produced it (the served
model name the gateway puts in each chunk's ``model`` field, e.g. ``dynalign-v3``).
A "Don't use my chats for training" box sends ``store: false`` and the
``X-Dynalign-Opt-Out: 1`` header with each request. Each turn carries the conversation's own id
in the ``X-Conversation-Id`` header (a fresh UUID per conversation: "New conversation" starts
another), so the log groups its turns. Thumbs up / down under an answer
post a rating of it to ``/v1/feedback``, naming the completion id its stream carried.

    python -m ui.app --api-url http://127.0.0.1:8000/v1 --host 127.0.0.1 --port 7860

The API key comes from ``DYNALIGN_API_KEY`` (``none`` when unset). gradio and openai
are imported only where needed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from collections.abc import Iterator

from dynalign.config import UIConfig

FOOTER = "\n\n*answered by {}*"
FOOTER_RE = re.compile(r"\n\n\*answered by [^*\n]*\*\s*\Z")
ERROR_PREFIX = "⚠️ error: "
OPT_OUT_HEADER = "X-Dynalign-Opt-Out"
CONVERSATION_HEADER = "X-Conversation-Id"  # dynalign.conversation_ids.HEADER
OPT_OUT_LABEL = "Don't use my chats for training"
MAX_TOKENS = UIConfig.max_tokens  # the default when run alone; `dynalign serve` passes its own
INTRO = "### dynalign chat\nEach answer names the adapter version that wrote it."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ui.app", description="dynalign chat UI (Gradio)")
    p.add_argument("--api-url", default="http://127.0.0.1:8000/v1", help="gateway base URL (OpenAI API)")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    p.add_argument("--port", type=int, default=7860, help="port the UI listens on")
    p.add_argument("--model", default="dynalign", help="model name sent with each request")
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="longest answer, in tokens")
    return p.parse_args(argv)


def _text(content) -> str:
    """A Gradio message's content as plain text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _is_error(message: dict) -> bool:
    return message["role"] == "assistant" and _text(message["content"]).startswith(ERROR_PREFIX)


def to_openai(history: list[dict]) -> list[dict]:
    """The conversation as the gateway should see it: plain text, no version footers, no error
    notes. A user turn that got only an error is left out with it: user and assistant turns must
    alternate (the gateway refuses a user turn right after a user turn)."""
    out: list[dict] = []
    for m in history:
        if not _is_error(m):
            out.append({"role": m["role"], "content": FOOTER_RE.sub("", _text(m["content"]))})
        elif out and out[-1]["role"] == "user":
            out.pop()
    return out


def _msg(role: str, text: str) -> dict:
    # A text part rather than a bare string: Gradio runs inspect.cleandoc on bare strings,
    # which would dedent code blocks in the answer.
    return {"role": role, "content": [{"type": "text", "text": text}]}


def opt_out_kwargs(opt_out: bool) -> dict:
    """Extra request arguments that ask the gateway not to keep this chat for training."""
    if not opt_out:
        return {}
    return {"extra_body": {"store": False}, "extra_headers": {OPT_OUT_HEADER: "1"}}


def request_kwargs(opt_out: bool, conversation: str | None) -> dict:
    """Extra request arguments: the opt-out's, and the conversation's id as a header."""
    kwargs = opt_out_kwargs(opt_out)
    if conversation:
        kwargs["extra_headers"] = {**kwargs.get("extra_headers", {}),
                                   CONVERSATION_HEADER: conversation}
    return kwargs


def new_conversation_id() -> str:
    return str(uuid.uuid4())


def _stream(client, model: str, messages: list[dict], opt_out: bool, max_tokens: int,
            conversation: str | None = None) -> Iterator[tuple[str, str, str | None]]:
    """Yield (answer so far, served model name, completion id) as the chunks arrive."""
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            max_tokens=max_tokens,
                                            **request_kwargs(opt_out, conversation))
    text, served = "", model
    for chunk in stream:
        served = chunk.model or served
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        yield text, served, chunk.id


def respond(client, model: str, history: list[dict], message: str, opt_out: bool,
            max_tokens: int = MAX_TOKENS, ids: dict | None = None,
            conversation: str | None = None) -> Iterator[list[dict]]:
    """Send `message` after `history` (in `conversation`: its id); yield the history with the
    user turn, then with the growing answer. `ids` gets the answer's completion id under its
    index in the history."""
    import openai

    history = [*history, _msg("user", message)]
    yield history
    answer: list[dict] = []
    try:
        for text, served, completion_id in _stream(client, model, to_openai(history), opt_out,
                                                   max_tokens, conversation):
            answer = [_msg("assistant", text + FOOTER.format(served))]
            if ids is not None and completion_id:
                ids[len(history)] = completion_id
            yield history + answer
    except openai.APIError as exc:
        yield history + answer + [_msg("assistant", ERROR_PREFIX + exc.message)]


def _chat_handler(client, model: str, max_tokens: int):
    def chat(message: str, history: list[dict], opt_out: bool, ids: dict, conversation: str):
        conversation = conversation or new_conversation_id()  # the first turn makes it
        if not message.strip():
            yield history, message, ids, conversation
            return
        for updated in respond(client, model, history, message, opt_out, max_tokens, ids,
                               conversation):
            yield updated, "", ids, conversation

    return chat


def rate(client, ids: dict, index, liked) -> str | None:
    """A thumb on answer `index`: POST /v1/feedback; an error text, or None when it was stored.
    Taking a thumb back (`liked` neither True nor False) sends nothing: the last rating stays."""
    import openai

    if liked not in (True, False):
        return None
    if ids.get(index) is None:
        return "this answer cannot be rated (it has no completion id)"
    try:
        client.post("/feedback", cast_to=object,
                    body={"id": ids[index], "rating": 1 if liked else -1})
    except openai.APIError as exc:
        return f"the rating was not stored: {exc.message}"
    return None


def _wire(gr, handler, box, send, chatbot, opt_out, new, ids, conversation, client) -> None:
    chat = gr.on([box.submit, send.click], handler, [box, chatbot, opt_out, ids, conversation],
                 [chatbot, box, ids, conversation], api_name="chat", concurrency_limit=None)
    new.click(lambda: ([], "", {}, new_conversation_id()), None,
              [chatbot, box, ids, conversation], cancels=[chat], api_name="new_conversation")

    def on_like(ids: dict, data):
        error = rate(client, ids, data.index, data.liked)
        if error:
            gr.Warning(error)

    # Gradio passes the event's data to the argument typed gr.LikeData; this module's annotations
    # are strings (gradio is imported late), so the type is given as an object.
    on_like.__annotations__ = {"ids": dict, "data": gr.LikeData}

    chatbot.like(on_like, [ids], None, api_name="rate")


def build_app(api_url: str, model: str, api_key: str, max_tokens: int = MAX_TOKENS):
    """The page as a gr.Blocks, not launched: the chat tab and the operator console's tab."""
    import gradio as gr
    import openai

    from ui.console import build_console
    from ui.console_wire import wire_tab

    client = openai.OpenAI(base_url=api_url, api_key=api_key)
    with gr.Blocks(title="dynalign chat") as app, gr.Tabs(elem_id="tabs"):
        with gr.Tab("Chat", elem_id="chat-tab") as chat_tab:
            _chat_tab(gr, client, model, max_tokens)
        with gr.Tab("Operator", elem_id="operator-tab") as operator_tab:
            console = build_console(gr, api_url)
        wire_tab(gr, console, operator_tab, [chat_tab])
    return app


def _chat_tab(gr, client, model: str, max_tokens: int) -> None:
    """The chat: the conversation, the message box, opt-out and "New conversation"."""
    gr.Markdown(INTRO)
    chatbot = gr.Chatbot(label="Chat", height=520, buttons=["copy", "copy_all"], placeholder="Say hello.")
    with gr.Row(equal_height=True):
        box = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", scale=8, autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1)
    with gr.Row(equal_height=True):
        opt_out = gr.Checkbox(label=OPT_OUT_LABEL, value=False)
        new = gr.Button("New conversation", variant="secondary")
    ids = gr.State({})  # completion id of each answer, by its index in the conversation
    conversation = gr.State("")  # its X-Conversation-Id ("": made at the first turn)
    _wire(gr, _chat_handler(client, model, max_tokens), box, send, chatbot, opt_out, new, ids,
          conversation, client)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    key = os.environ.get("DYNALIGN_API_KEY") or "none"
    app = build_app(args.api_url, args.model, key, args.max_tokens)
    app.queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
