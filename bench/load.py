"""Load with hot-swaps (issue 7): C concurrent clients for D seconds, twice on one server, the
second time with K hot-swaps; nothing may fail and every completed request must be logged.

One `dynalign serve --no-ui` (bench/serve.py's harness; engine.swap = merged by default, or --mode
lora) in a temp state dir. Before it starts, V = min(K + 1, 3) tiny LoRA adapters (learner
new_adapter: random B, noise 0.02, seeds 1..V) are made with peft; they are registered, and v1 is
activated, so both phases serve an adapter (in lora mode an adapter serves slower than the base).
Each client sends chats back to back (short prompts, temperature 0, `ignore_eos`, N tokens;
streamed and non-streamed in turn) through the gateway under alias "dynalign".
  phase 1, baseline: D seconds, no swap.
  phase 2, swaps: D seconds; at D/(K+1), 2D/(K+1), ... activate v2, v3, v1, v2, ...
A request fails on any exception, a non-200 answer, a stream without [DONE] or finish_reason, or
an answer without text. Clients start no request after D s; the phase ends when the last one
finishes (throughput = completed / that wall time). Checks: every request that ran wholly between
two swaps names the version active then; the rows tagged with the phase's X-Dynalign-User equal
its completed requests, in total and per model name (waited for: the gateway may log off the
response path). Prints a table with the ratios swaps / baseline (same run, same server), each
swap's seconds, and the p50 latency of the requests running across each swap against the rest of
phase 2 (the same background load: the steadier figure on a shared machine); writes
bench/results/load-<UTC time>.json. Exit code 1 on a failed request or swap, a wrong version or a
log mismatch.

Usage: .venv/bin/python bench/load.py [--clients 32] [--duration 120] [--swaps 3]
                                      [--mode merged|lora] [--max-tokens 24] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

# the standard library only, so that --help stays fast: heavy imports come later, in functions
from _load_util import (Outcome, across_swaps, failure_digest, log_problems, ratios, summarize,
                        swap_plan, swap_times, table, version_problems)

BENCH = Path(__file__).resolve().parent
PROMPTS = ["Name three fruits.", "What is a verb?", "Say hello in French.", "Why is ice cold?",
           "Give me a word that rhymes with cat.", "What is 12 times 3?", "Describe a cloud.",
           "What do bees make?"]
LOG_WAIT_S = 120


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent clients C (default 32)")
    p.add_argument("--duration", type=float, default=120, help="seconds per phase D (default 120)")
    p.add_argument("--swaps", type=int, default=3, help="hot-swaps in phase 2 K (default 3)")
    p.add_argument("--mode", choices=("merged", "lora"), default="merged",
                   help="engine.swap of the server (default merged, the CPU default)")
    p.add_argument("--max-tokens", type=int, default=24, help="tokens per chat N (default 24)")
    p.add_argument("--model", help="prepared base model (default: $DYNALIGN_TEST_MODEL, else "
                   "prepared into <repo>/state/model)")
    return p.parse_args()


# --- one client ---------------------------------------------------------------------------

def chat_body(i: int, stream: bool, max_tokens: int) -> dict:
    messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
    body = {"model": "dynalign", "messages": messages,
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def plain_chat(http, url: str, body: dict, headers: dict) -> tuple[str, int]:
    r = await http.post(url, json=body, headers=headers)
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    data = r.json()
    choice = data["choices"][0]
    if not choice.get("finish_reason") or not (choice.get("message") or {}).get("content"):
        raise RuntimeError(f"incomplete answer: {str(data)[:200]}")
    return data["model"], data["usage"]["completion_tokens"]


async def streamed_chat(http, url: str, body: dict, headers: dict) -> tuple[str, int]:
    models, text, finish, tokens, done = set(), [], None, 0, False
    async with http.stream("POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                models.add(event.get("model"))
                tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                for c in event.get("choices", []):
                    text.append((c.get("delta") or {}).get("content") or "")
                    finish = c.get("finish_reason") or finish
    if not done or not finish or not "".join(text) or len(models) != 1:
        raise RuntimeError(f"truncated stream: [DONE] {done}, finish_reason {finish}, "
                           f"{len(''.join(text))} chars, models {models}")
    return models.pop(), tokens


async def client_loop(http, url: str, k: int, user: str, t0: float, args, out: list) -> None:
    """Chats back to back until the phase's D seconds are over; every outcome goes to `out`."""
    i = 0
    while time.perf_counter() < t0 + args.duration:
        stream = (i + k) % 2 == 0
        start = time.perf_counter()
        outcome = Outcome(start - t0, 0.0, stream)
        try:
            call = streamed_chat if stream else plain_chat
            outcome.model, outcome.tokens = await call(
                http, url, chat_body(i + k, stream, args.max_tokens), {"X-Dynalign-User": user})
        except Exception as e:  # any failure is counted, and its message printed
            outcome.error = f"{type(e).__name__}: {e}"[:300]
        outcome.seconds = time.perf_counter() - start
        out.append(outcome)
        i += 1


# --- one phase --------------------------------------------------------------------------------

async def activate(http, server, version: int, t0: float) -> dict:
    start = time.perf_counter()
    swap = {"version": version, "at_s": round(start - t0, 2)}
    try:
        r = await http.post(f"{server.gateway}/admin/adapters/{version}/activate",
                            headers=server.admin_headers)  # bench/serve.py's server: /admin key
        swap["client_s"] = round(time.perf_counter() - start, 3)
        r.raise_for_status()
        swap.update(active=r.json()["active"], server_s=r.json()["seconds"])
    except Exception as e:
        swap["error"] = f"{type(e).__name__}: {e}"[:300]
    return swap


async def swapper(http, server, plan: list[int], t0: float, duration: float) -> list[dict]:
    done = []
    for version, at in zip(plan, swap_times(duration, len(plan))):
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        done.append(await activate(http, server, version, t0))
        print(f"  swap to v{version} at {done[-1]['at_s']:.1f} s: {done[-1]}", flush=True)
    return done


async def run_phase(server, name: str, plan: list[int], args) -> dict:
    import httpx

    outcomes: list = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        url = f"{server.gateway}/v1/chat/completions"
        clients = [asyncio.create_task(client_loop(http, url, k, f"loadbench-{name}-{k}", t0,
                                                   args, outcomes)) for k in range(args.clients)]
        swaps = await swapper(http, server, plan, t0, args.duration)
        await asyncio.gather(*clients)
        wall = time.perf_counter() - t0
    return {"summary": summarize(outcomes, wall), "swaps": swaps, "outcomes": outcomes,
            "across_swaps": across_swaps(outcomes, swaps)}


async def warm_up(gateway: str, args) -> None:
    """One chat per client, not measured, so the baseline does not pay for a cold engine."""
    import httpx
    async with httpx.AsyncClient(timeout=300) as http:
        url = f"{gateway}/v1/chat/completions"
        await asyncio.gather(*(plain_chat(http, url, chat_body(k, False, args.max_tokens),
                                          {"X-Dynalign-User": "loadbench-warmup"})
                               for k in range(args.clients)))


# --- the SQLite log ---------------------------------------------------------------------------

def logged_rows(db: Path, phase: str) -> list[dict]:
    import sqlite3
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        cur = conn.execute(
            "select model_served, status, mixed_versions, count(*) from exchanges "
            "where user like ? group by 1, 2, 3 order by 1", (f"loadbench-{phase}-%",))
        return [{"model_served": m, "status": s, "mixed_versions": x, "n": n}
                for m, s, x, n in cur]
    finally:
        conn.close()


def wait_rows(db: Path, phase: str, completed: int) -> tuple[list[dict], float]:
    """The phase's rows once there are as many as completed requests (or at the deadline), read
    again 2 s later so that late extra rows are seen too; and how long the wait took."""
    start = time.monotonic()
    while (sum(r["n"] for r in logged_rows(db, phase)) < completed
           and time.monotonic() < start + LOG_WAIT_S):
        time.sleep(0.2)
    waited = time.monotonic() - start
    time.sleep(2)
    return logged_rows(db, phase), round(waited, 2)


# --- the run ----------------------------------------------------------------------------------

def make_adapters(path: str, n: int, root: Path) -> list[str]:
    from learner.adapter import new_adapter
    return [str(new_adapter(path, root / f"adapter-{i + 1}", seed=i + 1, noise=0.02))
            for i in range(n)]


def register(server, adapters: list[str]) -> list[int]:
    versions = [server.admin("/adapters", {"path": a})["version"] for a in adapters]
    server.admin(f"/adapters/{versions[0]}/activate")
    return versions


def phases(server, versions: list[int], args) -> dict:
    asyncio.run(warm_up(server.gateway, args))
    out = {}
    for name, plan in (("baseline", []), ("swaps", swap_plan(versions, args.swaps))):
        print(f"phase {name}: {args.clients} clients x {args.duration:.0f} s, swaps to "
              f"{['v%d' % v for v in plan]}", flush=True)
        out[name] = asyncio.run(run_phase(server, name, plan, args))
        print(f"  {name}: {out[name]['summary']}", flush=True)
    return out


def check_phase(server, name: str, phase: dict, first: str) -> tuple[list[str], list[str]]:
    """Failed requests or swaps, the versions answered, and the log; fills phase['log']."""
    s = phase["summary"]
    problems = [f"{name}: {s['failed']} failed requests: "
                + "; ".join(failure_digest(phase["outcomes"]))] if s["failed"] else []
    problems += [f"{name}: swap to v{w['version']} failed: {w['error']}"
                 for w in phase["swaps"] if "error" in w]
    wrong, notes = version_problems(phase["outcomes"], phase["swaps"], first)
    problems += [f"{name}: {p}" for p in wrong]
    rows, waited = wait_rows(server.home / "dynalign.db", name, s["completed"])
    phase["log"] = {"rows": rows, "waited_s": waited}
    return problems + log_problems(name, s["models"], rows), [f"{name}: {n}" for n in notes]


def check(server, result: dict, versions: list[int]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    for name, phase in result.items():
        p, n = check_phase(server, name, phase, f"dynalign-v{versions[0]}")
        problems, notes = problems + p, notes + n
    return problems, notes


def report_swaps(phase: dict) -> None:
    across = phase["across_swaps"]
    for i, w in enumerate(phase["swaps"]):
        print(f"swap to v{w['version']} at {w['at_s']:.1f} s: client {w.get('client_s')} s, "
              f"server {w.get('server_s')} s; the {across['in_flight_n'][i]} requests running "
              f"across it: p50 {across['in_flight_p50_ms'][i]:.0f} ms"
              f"{'  ERROR ' + w['error'] if 'error' in w else ''}")
    if phase["swaps"]:
        print(f"requests of that phase that overlapped no swap: p50 "
              f"{across['others_p50_ms']:.0f} ms")


def report(result: dict, problems: list[str], notes: list[str]) -> None:
    print("\n" + table(result["baseline"]["summary"], result["swaps"]["summary"]))
    report_swaps(result["swaps"])
    for name, phase in result.items():
        rows = phase["log"]["rows"]
        print(f"log {name}: {sum(r['n'] for r in rows)} rows for {phase['summary']['completed']} "
              f"completed (waited {phase['log']['waited_s']} s); " + ", ".join(
                  f"{r['model_served']} {r['status']} mixed={r['mixed_versions']}: {r['n']}"
                  for r in rows))
    print("".join(f"NOTE: {n}\n" for n in notes), end="")
    print("\n" + ("\n".join(f"PROBLEM: {p}" for p in problems) or "OK: 0 failed requests, "
                  "log rows = completed requests (per model name) in both phases"))


def save(result: dict, problems: list[str], args, meta: dict) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = {"workload": {**vars(args), **meta}, "ok": not problems, "problems": problems,
           "ratios_swaps_over_baseline": ratios(result["baseline"]["summary"],
                                                result["swaps"]["summary"]),
           "phases": {name: {**{k: v for k, v in p.items() if k != "outcomes"},
                             "requests": [o.row() for o in p["outcomes"]],
                             "request_columns": ["start_s", "ms", "stream", "model", "tokens",
                                                 "error"]}
                      for name, p in result.items()}}
    path = BENCH / "results" / f"load-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return path


def main() -> int:
    args = parse_args()
    sys.path[:0] = [str(BENCH), str(BENCH.parent)]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars
    import tempfile

    from serve import Server, model_path  # bench/serve.py: the same server harness
    path = model_path(argparse.Namespace(model_path=args.model))
    with tempfile.TemporaryDirectory(prefix="dynalign-load-") as tmp:
        adapters = make_adapters(path, min(args.swaps + 1, 3), Path(tmp))
        server = Server(Path(tmp) / "server", path, args.mode)
        try:
            server.wait_ready()
            versions = register(server, adapters)
            print(f"server up ({args.mode}); versions {versions}, v{versions[0]} active",
                  flush=True)
            result = phases(server, versions, args)
            problems, notes = check(server, result, versions)
        finally:
            server.stop()
    report(result, problems, notes)
    saved = save(result, problems, args, {"model_path": path, "versions": versions,
                                          "notes": notes})
    print(f"\nJSON: {saved}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
