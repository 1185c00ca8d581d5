"""Writes chat exchanges to SQLite on a thread of its own, off the response path.

The gateway hands over raw material (the request body, the engine's response bytes or SSE events,
timings); parsing and the INSERT happen here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading

from dynalign.store import Store

log = logging.getLogger("dynalign.exchange_log")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop",
                 "seed", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty")


class ExchangeLog:
    def __init__(self, db_path):
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(db_path,), daemon=True,
                                       name="exchange-log")
        self.thread.start()

    def submit(self, record: dict) -> None:
        self.queue.put(record)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self, db_path) -> None:
        store = Store(db_path)
        while (record := self.queue.get()) is not None:
            try:
                row = to_row(record)
            except (ValueError, KeyError, TypeError) as e:  # one odd response must not stop logging
                log.error("exchange not logged: cannot parse the engine's response: %r", e)
                continue
            store.log_exchange(row)
        store.close()


def to_row(record: dict) -> dict:
    body = record["body"]
    if record["stream"]:
        result = parse_stream(record["events"])
    else:
        result = parse_completion(record["content"])
    return {
        "client_id": record["client_id"], "user": body.get("user") or record.get("user"),
        "model_requested": body.get("model"), "model_served": record["model_served"],
        "version": record["version"], "mixed_versions": int(record["mixed_versions"]),
        "messages": body["messages"], "response": result["choices"],
        "finish_reason": ",".join(str(c.get("finish_reason")) for c in result["choices"]),
        "params": {k: body[k] for k in SAMPLING_KEYS if k in body},
        "stream": int(record["stream"]), "prompt_tokens": result["usage"].get("prompt_tokens"),
        "completion_tokens": result["usage"].get("completion_tokens"),
        "latency_ms": record["latency_ms"], "ttft_ms": record.get("ttft_ms"),
        "opt_out": int(record["opt_out"]), "status": record["status"],
    }


def parse_completion(content: bytes) -> dict:
    data = json.loads(content)
    choices = [{"index": c["index"], "content": (c.get("message") or {}).get("content"),
                "finish_reason": c.get("finish_reason")} for c in data.get("choices", [])]
    return {"choices": choices, "usage": data.get("usage") or {}}


def parse_stream(events: list[bytes]) -> dict:
    """Reassemble streamed deltas per choice; the engine's last event carries the usage."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage: dict = {}
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for c in chunk.get("choices", []):
                texts.setdefault(c["index"], []).append((c.get("delta") or {}).get("content") or "")
                if c.get("finish_reason"):
                    finish[c["index"]] = c["finish_reason"]
    choices = [{"index": i, "content": "".join(parts), "finish_reason": finish.get(i)}
               for i, parts in sorted(texts.items())]
    return {"choices": choices, "usage": usage}
