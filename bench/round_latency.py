"""Chat latency while a refresh round trains beside the engine (2 CPU cores shared).

One `dynalign serve --no-ui` (merged mode) in a temp state dir. A fixed chat (temperature 0,
`ignore_eos`, N tokens, one at a time) is timed K times: idle, then during a round's training
steps (rule reward, so no scoring forward passes; the round is cancelled after the measurement),
then idle again. Each configuration of the learner process is one round: learn.nice 10 (the
default) and learn.nice 0, both with learn.threads 1. Reports p50 / p95 latency and the ratio
during / idle (idle = mean of the idle phases before and after).

Usage: .venv/bin/python bench/round_latency.py [--requests 12] [--max-tokens 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server, model_path  # noqa: E402  (bench/serve.py: the same server harness)

ROUND = {"reward": "rule", "max_steps": 200, "prompts": 8, "num_generations": 8,
         "prompts_per_step": 1, "max_completion_tokens": 64, "threads": 1}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=12, help="timed chats per phase K")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per chat N")
    p.add_argument("--model-path")
    p.add_argument("--quick", action="store_true", help="K=4")
    args = p.parse_args()
    args.requests = 4 if args.quick else args.requests
    return args


def timed_chats(server: Server, k: int, n: int) -> list[float]:
    import httpx
    body = {"model": "dynalign", "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Describe the water cycle."}]}
    seconds = []
    for _ in range(k):
        start = time.perf_counter()
        r = httpx.post(f"{server.gateway}/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        seconds.append(time.perf_counter() - start)
    return seconds


def round_row(server: Server, round_id: int) -> dict:
    import httpx
    return httpx.get(f"{server.gateway}/admin/rounds/{round_id}", timeout=30,
                     headers=server.admin_headers).json()


def during_round(server: Server, args, nice: int) -> list[float]:
    row = server.admin("/refresh", {**ROUND, "nice": nice})
    deadline = time.monotonic() + 600
    while (round_row(server, row["id"])["progress"].get("phase") != "training"
           and time.monotonic() < deadline):
        time.sleep(1)  # the learner loads its model first; measure only while it trains
    try:
        return timed_chats(server, args.requests, args.max_tokens)
    finally:
        server.admin(f"/rounds/{row['id']}/cancel")


def stats(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"p50_s": round(statistics.median(ordered), 3),
            "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)}


def main() -> int:
    args = parse_args()
    path = model_path(args)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "s", path, "merged")
        try:
            server.wait_ready()
            timed_chats(server, 2, args.max_tokens)  # warm-up
            out = {}
            for nice in (10, 0):
                before = timed_chats(server, args.requests, args.max_tokens)
                during = during_round(server, args, nice)
                after = timed_chats(server, args.requests, args.max_tokens)
                idle = statistics.median(before + after)
                out[f"nice {nice}"] = {"idle": stats(before + after), "during": stats(during),
                                       "p50_ratio": round(statistics.median(during) / idle, 2)}
        finally:
            server.stop()
    print(f"chat latency, {args.max_tokens} tokens, one at a time, K={args.requests} per phase")
    print(f"{'learner':<10} {'idle p50':>9} {'during p50':>11} {'during p95':>11} {'ratio':>6}")
    for name, r in out.items():
        print(f"{name:<10} {r['idle']['p50_s']:>9} {r['during']['p50_s']:>11} "
              f"{r['during']['p95_s']:>11} {r['p50_ratio']:>6}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
