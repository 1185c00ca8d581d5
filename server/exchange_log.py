"""Writes chat exchanges to SQLite on a thread of its own, redacted, durably, surviving a full disk.

The gateway hands over raw material (the request body, the engine's response bytes or SSE events,
timings); parsing, redaction ([privacy] redact, dynalign/redact.py) and the INSERT happen here.

Durability (kill -9): `submit` returns a future that is done once the row is committed, and the
gateway awaits it (`committed`, at most COMMIT_WAIT_S) before the last bytes of a response go out:
the non-streamed body, or a stream's `data: [DONE]`. So an exchange a client has fully received is
in SQLite (WAL: a commit survives the process being killed). Waiting costs one SQLite commit per
response; the writer takes whatever is queued in one transaction, so under load many exchanges
share a commit instead of queueing behind each other.

Write failures (disk full, read-only file, locked, I/O error: sqlite3.OperationalError) never reach
a client: the rows are kept in memory (at most MAX_PENDING; beyond that the oldest are dropped and
counted), retried every RETRY_S seconds and written when the disk recovers. The failure is logged
once per streak (and its end once) and shown by `status()`, which GET /health includes as "log".
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections import deque
from concurrent.futures import Future

from dynalign.conversation_ids import answered, continuation_key
from dynalign.redact import redact, redact_choices, redact_messages
from dynalign.store import Store, now

log = logging.getLogger("dynalign.exchange_log")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop",
                 "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty")
MAX_PENDING = 10_000  # rows kept in memory while the disk fails
RETRY_S = 1.0  # how often kept rows are retried
COMMIT_WAIT_S = 5.0  # the longest a response waits for its row's commit


class ExchangeLog:
    def __init__(self, db_path, redact: bool = True, max_pending: int = MAX_PENDING,
                 retry_s: float = RETRY_S, on_row=None):
        """`on_row(row)`: called with each parsed row, written yet or not (the gateway's metrics)."""
        self.store = Store(db_path)  # opened here: an unusable state dir fails the server's start
        self.redact, self.max_pending, self.retry_s = redact, max_pending, retry_s
        self.on_row = on_row or (lambda row: None)
        self.queue: queue.Queue = queue.Queue()
        self.pending: deque = deque()  # (row, future or None), oldest first
        self.health = {"ok": True, "failed": 0, "dropped": 0, "error": None, "since": None}
        self.thread = threading.Thread(target=self._run, daemon=True, name="exchange-log")
        self.thread.start()

    def submit(self, record: dict) -> Future:
        """Queue a finished exchange. The future becomes True once its row is committed, False
        when it cannot be now (unparsable; or the write failed, and the row is kept and retried)."""
        future: Future = Future()
        self.queue.put((record, future))
        return future

    async def committed(self, future: Future, timeout: float = COMMIT_WAIT_S) -> bool:
        """Wait for `future` without blocking the event loop, at most `timeout` seconds: a slow or
        failing disk delays a response by that much at worst, and never fails it."""
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout)
        except asyncio.TimeoutError:
            return False

    def status(self) -> dict:
        """{"ok", "failed" (write attempts), "pending" (rows in memory), "dropped", "error",
        "since" (when the failure began)}."""
        return {**self.health, "pending": len(self.pending)}

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.pending:
            log.error("exchange log: %d exchange(s) could not be written and are lost: %s",
                      len(self.pending), self.health["error"])
        self.store.close()

    def _run(self) -> None:
        closing = False
        while not closing:
            try:
                batch = [self.queue.get(timeout=self.retry_s if self.pending else None)]
            except queue.Empty:
                batch = []  # time to retry the kept rows
            batch += self._drain()  # whatever else is queued shares this commit
            closing = None in batch
            for item in batch:
                if item is not None:
                    self._take(*item)
            self._flush()

    def _drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                return items

    def _take(self, record: dict, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            future = None  # nobody waits for it any more; the row is still written
        try:
            row = to_row(record, redact_text=self.redact)
        except (ValueError, KeyError, TypeError) as e:  # one odd response must not stop logging
            log.error("exchange not logged: cannot parse the engine's response: %r", e)
            _resolve(future, False)
            return
        self.on_row(row)
        self.pending.append(({"created": now(), **row}, future))
        if len(self.pending) > self.max_pending:
            _, lost = self.pending.popleft()
            _resolve(lost, False)
            self.health["dropped"] += 1

    def _flush(self) -> None:
        if not self.pending:
            return
        batch = list(self.pending)
        try:
            self.store.log_exchanges([row for row, _ in batch])
        except sqlite3.OperationalError as e:  # disk full, read-only, locked, I/O error
            self._failed(e)
            for _, future in batch:
                _resolve(future, False)
            return
        self.pending.clear()
        self._recovered(len(batch))
        for _, future in batch:
            _resolve(future, True)

    def _failed(self, error: sqlite3.OperationalError) -> None:
        if self.health["ok"]:
            log.error("exchange log: cannot write to SQLite: %s; exchanges are kept in memory "
                      "(at most %d) and retried every %.0f s", error, self.max_pending,
                      self.retry_s)
            self.health.update(ok=False, since=now())
        self.health["failed"] += 1
        self.health["error"] = str(error)

    def _recovered(self, written: int) -> None:
        if not self.health["ok"]:  # the error line may not have reached a full disk: repeat it
            log.warning("exchange log: writing again after failing since %s (%s); %d kept "
                        "exchange(s) written, %d dropped in all", self.health["since"],
                        self.health["error"], written, self.health["dropped"])
            self.health.update(ok=True, error=None, since=None)


def _resolve(future: Future | None, value: bool) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def stored_client(client_id, redact_text: bool):
    """The client id as the log stores it (an address is personal data: redacted to [IP])."""
    return redact(client_id) if redact_text and isinstance(client_id, str) else client_id


def to_row(record: dict, redact_text: bool = False) -> dict:
    """The row for a finished exchange; with `redact_text`, messages, answers and the client id
    have personal data and secrets replaced by placeholders (dynalign/redact.py). Its
    continuation key is a digest of the text as stored (redacted), as the gateway computes a
    follow-up's."""
    body = record["body"]
    if record["stream"]:
        result = parse_stream(record["events"])
    else:
        result = parse_completion(record["content"])
    messages, choices = body["messages"], result["choices"]
    if redact_text:
        messages, choices = redact_messages(messages), redact_choices(choices)
    client = stored_client(record["client_id"], redact_text)
    return {
        "client_id": client, "user": body.get("user") or record.get("user"),
        "model_requested": body.get("model"), "model_served": record["model_served"],
        "version": record["version"], "mixed_versions": int(record["mixed_versions"]),
        "messages": messages, "response": choices,
        "finish_reason": ",".join(str(c.get("finish_reason")) for c in result["choices"]),
        "params": {k: body[k] for k in SAMPLING_KEYS if k in body},
        "stream": int(record["stream"]), "prompt_tokens": result["usage"].get("prompt_tokens"),
        "completion_tokens": result["usage"].get("completion_tokens"),
        "latency_ms": record["latency_ms"], "ttft_ms": record.get("ttft_ms"),
        "opt_out": int(record["opt_out"]), "status": record["status"],
        "completion_id": result.get("id"),  # what the client got: POST /v1/feedback names it
        "canary": record.get("canary"), "arm": record.get("arm"),
        "key_id": record.get("key_id"),  # which chat key sent it: only that one may rate it
        "conversation": record.get("conversation"),  # server/conversations.py
        "continuation_key": (None if record.get("who") is None else continuation_key(
            record["who"], answered(messages, choices))),  # what its follow-up finds it by
    }


def parse_completion(content: bytes) -> dict:
    data = json.loads(content)
    choices = [{"index": c["index"], "content": (c.get("message") or {}).get("content"),
                "finish_reason": c.get("finish_reason")} for c in data.get("choices", [])]
    return {"choices": choices, "usage": data.get("usage") or {}, "id": data.get("id")}


def parse_stream(events: list[bytes]) -> dict:
    """Reassemble streamed deltas per choice; the engine's last event carries the usage."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage: dict = {}
    completion_id = None
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            completion_id = completion_id or chunk.get("id")
            for c in chunk.get("choices", []):
                texts.setdefault(c["index"], []).append((c.get("delta") or {}).get("content") or "")
                if c.get("finish_reason"):
                    finish[c["index"]] = c["finish_reason"]
    choices = [{"index": i, "content": "".join(parts), "finish_reason": finish.get(i)}
               for i, parts in sorted(texts.items())]
    return {"choices": choices, "usage": usage, "id": completion_id}
