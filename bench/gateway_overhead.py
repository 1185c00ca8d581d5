"""What metrics and canary routing add to a chat request on the gateway, measured in one run.

It times the code they put on a request's path, in process, against a baseline without it (no
engine, no network: what is timed is only what the two features add):
(a) the HTTP middleware (server/metrics.py: CountAnswers) around a FastAPI route that answers at
    once, driven through httpx's ASGI transport, with vs without it, alternated in rounds;
(b) the canary's choice of arm (dynalign/canary.py: routing_key + arm_of) per request;
(c) counting a logged exchange (Metrics.exchange), which runs on the log writer's thread, after
    the response, so it is not on the request's path at all (shown for completeness).
The issue's target: <= 1 ms added at p50.

Usage: .venv/bin/python bench/gateway_overhead.py [--requests 3000] [--rounds 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per arm and round")
    p.add_argument("--rounds", type=int, default=4, help="alternations of with / without")
    p.add_argument("--out", help="also write the results as JSON here")
    return p.parse_args()


def app(with_metrics: bool):
    from fastapi import FastAPI

    from server.metrics import CountAnswers, Metrics

    api = FastAPI()
    if with_metrics:
        api.add_middleware(CountAnswers, metrics=Metrics())

    @api.post("/v1/chat/completions")
    async def chat():
        return {"ok": True}

    return api


async def request_times(api, n: int) -> list[float]:
    import httpx

    body = {"model": "dynalign", "messages": [{"role": "user", "content": "hi"}]}
    times = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://gateway") as client:
        for _ in range(n):
            start = time.perf_counter()
            await client.post("/v1/chat/completions", json=body)
            times.append(time.perf_counter() - start)
    return times


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    args = parse_args()
    preamble()
    from dynalign.canary import arm_of, routing_key
    from server.metrics import Metrics

    with_m, without = app(True), app(False)
    p50 = {"with": [], "without": []}
    for r in range(args.rounds):  # alternate the order: drift on a shared box hits both
        for name, api in (("with", with_m), ("without", without))[:: 1 if r % 2 == 0 else -1]:
            p50[name].append(statistics.median(asyncio.run(request_times(api, args.requests))))
    headers = {"x-dynalign-user": "someone"}
    body = {"messages": [{"role": "user", "content": "hi"}]}
    metrics = Metrics()
    row = {"model_served": "dynalign-v3", "status": "ok", "latency_ms": 420.0, "ttft_ms": 40.0,
           "stream": 1, "prompt_tokens": 30, "completion_tokens": 120}
    out = {
        "p50_without_us": statistics.fmean(p50["without"]) * 1e6,
        "p50_with_metrics_us": statistics.fmean(p50["with"]) * 1e6,
        "ratio_with_over_without": statistics.fmean(
            w / o for w, o in zip(p50["with"], p50["without"])),
        "canary_routing_us": per_call_us(
            lambda i: arm_of(routing_key({**body, "user": f"u{i}"}, headers), 7, 0.1), 100_000),
        "count_exchange_us": per_call_us(lambda i: metrics.exchange(row), 100_000),
    }
    out["added_p50_us"] = (out["p50_with_metrics_us"] - out["p50_without_us"]
                           + out["canary_routing_us"])
    for key, value in out.items():
        print(f"{key:28s} {value:10.2f}")
    print(f"added at p50 on a request's path: {out['added_p50_us'] / 1000:.3f} ms "
          "(target <= 1 ms)")
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
