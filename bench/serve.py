"""Serving benchmark: ratios measured within one run (absolute tok/s drift on a shared CPU box).

Workload: C concurrent streaming chats (same prompts every time), temperature 0 and vLLM's
`ignore_eos`, so every request generates exactly N tokens. Throughput = completion tokens (from the
stream's usage) / wall time of the whole batch; latency = send to end of stream, per request (p50).
Each comparison alternates its two configurations for R rounds (A B, then B A, ...) with a warm-up
request before every measurement, and reports the mean of the per-round ratios.

(a) gateway vs engine: one `dynalign serve --no-ui` (engine.swap = merged) in a temp state dir;
    the workload goes to the gateway (model "dynalign") and straight to its vLLM engine (base model
    name). Reports tok/s gateway/engine and p50 gateway - engine, plus the added latency of a tiny
    request (max_tokens 1, one at a time, 30 pairs, median of the differences).
(b) adapter vs base: a test adapter (new_adapter seed 1, noise 0.02) is registered on the same
    server; merged mode swaps weights in place (activate v1 / activate base) between measurements.
    Then a second server with engine.swap = lora: "dynalign-v1" (LoRA) vs the base model name.
(c) vLLM (through the gateway, mean of (a)) vs transformers `generate` (bf16, batch of C, left
    padding, greedy, min_new_tokens = N), run after the servers are stopped.
--versus MODEL (instead of (a)-(c)): two servers at once, the base model and MODEL (a prepared
    name such as qwen2.5-coder-1.5b, or a folder), the same workload through each gateway,
    alternated: tok/s of each and the ratio MODEL / base.
--dtypes A,B (instead of (a)-(c)): the same, two servers of the base model with model.dtype A and
    B (bfloat16,float32: what model.dtype = "auto" chooses between on a CPU), plus the latency of
    one-token chats (prefill) through each, alternated.

Usage: .venv/bin/python bench/serve.py [--concurrency 16] [--max-tokens 128] [--rounds 2]
                                       [--model-path PATH] [--versus MODEL | --dtypes A,B]
                                       [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import preamble  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Explain how a hash table works.", "Write a short story about a lighthouse keeper.",
           "What causes the seasons on Earth?", "Describe the water cycle step by step.",
           "Give tips for learning a new language.", "How does a bicycle stay upright?",
           "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?"]  # cycled over C


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, help="concurrent chats C (default 16; quick 4)")
    p.add_argument("--max-tokens", type=int, help="tokens per chat N (default 128; quick 32)")
    p.add_argument("--rounds", type=int, help="alternation rounds R (default 2; quick 1)")
    p.add_argument("--model-path", help="prepared base model (default: $DYNALIGN_TEST_MODEL, "
                   "else prepared into <repo>/state/model)")
    p.add_argument("--versus", help="compare serving speed with this model (name or folder)")
    p.add_argument("--dtypes", help="compare serving speed with model.dtype A vs B (A,B)")
    p.add_argument("--quick", action="store_true", help="smoke run: C=4, N=32, R=1")
    a = p.parse_args()
    for key, full, quick in (("concurrency", 16, 4), ("max_tokens", 128, 32), ("rounds", 2, 1)):
        if getattr(a, key) is None:
            setattr(a, key, quick if a.quick else full)
    return a


def model_path(args) -> str:
    path = args.model_path or os.environ.get("DYNALIGN_TEST_MODEL")
    if path:
        return str(Path(path).resolve())
    from dynalign.config import Config
    from dynalign.model import prepare
    os.environ.pop("DYNALIGN_HOME", None)
    return str(prepare(Config(state_dir=str(REPO / "state"))).resolve())


class Server:
    """`dynalign serve --no-ui` in `root` (dynalign/launch.py: the same harness as the live tests),
    with a fresh admin key; `stop()` returns when every process of its tree is gone, so the next
    measurement has the CPU to itself."""

    def __init__(self, root: Path, model: str, swap: str, dtype: str = "", extra: str = ""):
        from dynalign.config import load_config
        from dynalign.launch import launch

        env = {k: v for k, v in os.environ.items() if k not in (
            "DYNALIGN_HOME", "DYNALIGN_API_KEY", "DYNALIGN_ADMIN_KEY", "VLLM_CPU_KVCACHE_SPACE")}
        env["DYNALIGN_ADMIN_KEY"] = f"bench-{os.urandom(16).hex()}"  # /admin always needs a key
        self.admin_headers = {"Authorization": f"Bearer {env['DYNALIGN_ADMIN_KEY']}"}
        self.launched = launch(root, model, swap, env, kv_cache_gib=2, dtype=dtype, extra=extra)
        self.home = self.launched.home
        self.base_name = load_config(self.launched.config).model_name
        self.gateway = self.launched.url
        self.engine = f"http://127.0.0.1:{self.launched.engine_port}/v1"

    def wait_ready(self, timeout: float = 900) -> None:
        from dynalign.launch import wait_ready

        wait_ready(self.launched, timeout)

    def admin(self, path: str, body: dict | None = None) -> dict:
        import httpx
        r = httpx.post(f"{self.gateway}/admin{path}", json=body, timeout=600,
                       headers=self.admin_headers)
        if r.status_code >= 400:
            raise RuntimeError(f"POST /admin{path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def stop(self) -> None:
        from dynalign.launch import stop

        stop(self.launched, grace=60)


async def chat(http, base_url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start, tokens, text = time.perf_counter(), 0, []
    async with http.stream("POST", f"{base_url}/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{base_url} {model}: {r.status_code} {(await r.aread())[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
            text += [(c.get("delta") or {}).get("content") or "" for c in event.get("choices", [])]
    return {"ms": (time.perf_counter() - start) * 1000, "tokens": tokens, "text": "".join(text)}


async def load(http, target: tuple, c: int, n: int) -> dict:
    """One measurement: a warm-up chat, then C concurrent chats of N tokens."""
    import asyncio
    await chat(http, *target, PROMPTS[0], 4)
    start = time.perf_counter()
    runs = await asyncio.gather(*(chat(http, *target, PROMPTS[i % len(PROMPTS)], n)
                                  for i in range(c)))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in runs)
    if tokens != c * n:
        print(f"  WARNING: {target[1]} generated {tokens} tokens, expected {c * n}", flush=True)
    return {"tok_s": tokens / wall, "p50_ms": statistics.median(r["ms"] for r in runs),
            "wall_s": wall, "tokens": tokens, "sample": runs[0]["text"][:80]}


async def compare(title: str, a: tuple, b: tuple, args, before=None) -> dict:
    """Alternate A and B (A B, B A, ...); `before(label)` switches the server's configuration."""
    import httpx
    rounds = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as http:
        for r in range(args.rounds):
            got = {}
            for label in ("ab" if r % 2 == 0 else "ba"):
                if before:
                    before(label)
                target = a if label == "a" else b
                got[label] = await load(http, target, args.concurrency, args.max_tokens)
                print(f"  {title} round {r + 1} {label.upper()} {target[1]} at {target[0]}: "
                      f"{got[label]['tok_s']:.1f} tok/s, p50 {got[label]['p50_ms']:.0f} ms",
                      flush=True)
            rounds.append({**got, "ratio": got["b"]["tok_s"] / got["a"]["tok_s"],
                           "p50_diff_ms": got["b"]["p50_ms"] - got["a"]["p50_ms"]})
    return {"a": a, "b": b, "rounds": rounds,
            "ratio": statistics.mean(x["ratio"] for x in rounds),
            "p50_diff_ms": statistics.mean(x["p50_diff_ms"] for x in rounds),
            "same_output": rounds[0]["a"]["sample"] == rounds[0]["b"]["sample"]}


async def tiny_latency(gateway: tuple, engine: tuple, pairs: int = 30) -> dict:
    """max_tokens 1, one request at a time, alternating which side goes first."""
    import httpx
    diffs, both = [], []
    async with httpx.AsyncClient(timeout=600) as http:
        for target in (gateway, engine):
            await chat(http, *target, PROMPTS[0], 1)
        for i in range(pairs):
            ms = {}
            for name, target in (("g", gateway), ("e", engine))[::1 if i % 2 else -1]:
                ms[name] = (await chat(http, *target, PROMPTS[0], 1))["ms"]
            diffs.append(ms["g"] - ms["e"])
            both.append(ms)
    return {"median_added_ms": statistics.median(diffs), "pairs": pairs,
            "gateway_p50_ms": statistics.median(m["g"] for m in both),
            "engine_p50_ms": statistics.median(m["e"] for m in both)}


def transformers_tok_s(path: str, args) -> dict:
    """Best of torch's default thread count and 1 thread (oversubscribed OpenMP threads crawl when
    anything else is using a core)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                     tokenize=False, add_generation_prompt=True)
             for i in range(args.concurrency)]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def generate(n: int) -> int:
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1])

    by_threads = {}
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        runs = []
        for r in range(args.rounds):
            generate(4)  # warm-up
            start = time.perf_counter()
            runs.append(generate(args.max_tokens) / (time.perf_counter() - start))
            print(f"  transformers {threads} thread(s) round {r + 1}: {runs[-1]:.1f} tok/s",
                  flush=True)
        by_threads[threads] = statistics.mean(runs)
    best = max(by_threads, key=by_threads.get)
    return {"tok_s": by_threads[best], "threads": best, "tok_s_by_threads": by_threads}


def bench(args, tmp: Path, path: str) -> dict:
    import asyncio
    from learner.adapter import new_adapter
    adapter = str(new_adapter(path, tmp / "adapter", seed=1, noise=0.02))
    out = {"workload": {"concurrency": args.concurrency, "max_tokens": args.max_tokens,
                        "rounds": args.rounds, "model": path}}
    server = Server(tmp / "merged", path, "merged")
    try:
        server.wait_ready()
        gw, eng = (f"{server.gateway}/v1", "dynalign"), (server.engine, server.base_name)
        out["gateway_vs_engine"] = asyncio.run(compare("(a)", eng, gw, args))
        out["tiny_latency"] = asyncio.run(tiny_latency(gw, eng))
        version = server.admin("/adapters", {"path": adapter, "activate": True})["version"]
        switch = {"a": "/adapters/base/activate", "b": f"/adapters/{version}/activate"}
        out["merged_adapter_vs_base"] = asyncio.run(compare(
            "(b) merged", (gw[0], server.base_name), gw, args,
            before=lambda label: server.admin(switch[label])))
    finally:
        server.stop()
    server = Server(tmp / "lora", path, "lora")
    try:
        server.wait_ready()
        version = server.admin("/adapters", {"path": adapter})["version"]
        gw = f"{server.gateway}/v1"
        out["lora_adapter_vs_base"] = asyncio.run(compare(
            "(b) lora", (gw, server.base_name), (gw, f"dynalign-v{version}"), args))
    finally:
        server.stop()
    out["transformers"] = transformers_tok_s(path, args)
    vllm = statistics.mean(r["b"]["tok_s"] for r in out["gateway_vs_engine"]["rounds"])
    out["vllm_vs_transformers"] = {"vllm_tok_s": vllm, "ratio": vllm / out["transformers"]["tok_s"]}
    return out


def versus(args, tmp: Path, path: str) -> dict:
    """(d) the same workload on two servers, alternated: the base model's and `args.versus`'s,
    or (--dtypes A,B) the base model's with model.dtype A and with B."""
    import asyncio

    from dynalign.config import Config
    from dynalign.model import prepare
    if args.dtypes:
        sides = [(path, dtype) for dtype in args.dtypes.split(",")]
    else:
        sides = [(path, ""), (str(prepare(Config(state_dir=str(REPO / "state")),
                                             args.versus).resolve()), "")]
    servers = [Server(tmp / f"side-{i}", model, "merged", dtype) for i, (model, dtype)
               in enumerate(sides)]
    try:
        for server in servers:
            server.wait_ready()
        targets = [(f"{s.gateway}/v1", "dynalign") for s in servers]
        got = asyncio.run(compare("(d)", *targets, args))
        tiny = asyncio.run(tiny_latency(targets[1], targets[0])) if args.dtypes else None
    finally:
        for server in servers:
            server.stop()
    tok_s = {side: statistics.mean(r[side]["tok_s"] for r in got["rounds"]) for side in "ab"}
    return {"workload": {"concurrency": args.concurrency, "max_tokens": args.max_tokens,
                         "rounds": args.rounds}, "base": _label(sides[0]),
            "versus": _label(sides[1]), "base_tok_s": tok_s["a"], "versus_tok_s": tok_s["b"],
            "ratio": got["ratio"],
            "base_p50_ms": statistics.mean(r["a"]["p50_ms"] for r in got["rounds"]),
            "versus_p50_ms": statistics.mean(r["b"]["p50_ms"] for r in got["rounds"]),
            "one_token": tiny and {"base_p50_ms": tiny["engine_p50_ms"],
                                   "versus_p50_ms": tiny["gateway_p50_ms"],
                                   "ratio": tiny["gateway_p50_ms"] / tiny["engine_p50_ms"]}}


def _label(side: tuple[str, str]) -> str:
    model, dtype = side
    return f"{Path(model).name} ({dtype})" if dtype else Path(model).name


def versus_summary(out: dict) -> str:
    w = out["workload"]
    return (f"workload: {w['concurrency']} chats x {w['max_tokens']} tokens, {w['rounds']} round(s)\n"
            f"{out['base']}: {out['base_tok_s']:.1f} tok/s (p50 {out['base_p50_ms']:.0f} ms)\n"
            f"{out['versus']}: {out['versus_tok_s']:.1f} tok/s "
            f"(p50 {out['versus_p50_ms']:.0f} ms)\nratio versus / base: {out['ratio']:.3f}" +
            ("" if not out["one_token"] else
             f"\none-token chat p50: {out['one_token']['base_p50_ms']:.0f} ms vs "
             f"{out['one_token']['versus_p50_ms']:.0f} ms, ratio versus / base "
             f"{out['one_token']['ratio']:.3f}"))


def summary(out: dict) -> str:
    a, m, lo = out["gateway_vs_engine"], out["merged_adapter_vs_base"], out["lora_adapter_vs_base"]
    rows = [("(a) throughput gateway / engine", f"{a['ratio']:.3f}", ">= 0.95"),
            ("(a) p50 added latency under load (ms)", f"{a['p50_diff_ms']:.1f}", "<= 5"),
            ("(a) added latency, tiny request (ms)",
             f"{out['tiny_latency']['median_added_ms']:.2f}", "<= 5"),
            ("(b) merged: adapter / base throughput", f"{m['ratio']:.3f}", ">= 0.9"),
            ("(b) lora: adapter / base throughput", f"{lo['ratio']:.3f}", "~0.4 expected (CPU)"),
            ("(c) vLLM via gateway / transformers", f"{out['vllm_vs_transformers']['ratio']:.2f}",
             "> 1"),
            ("    vLLM via gateway tok/s (info)",
             f"{out['vllm_vs_transformers']['vllm_tok_s']:.1f}", ""),
            (f"    transformers tok/s, {out['transformers']['threads']} thread(s) (info)",
             f"{out['transformers']['tok_s']:.1f}", "")]
    w = out["workload"]
    head = f"workload: {w['concurrency']} chats x {w['max_tokens']} tokens, {w['rounds']} round(s)"
    notes = [f"gateway output == engine output: {a['same_output']}; adapter changes output: "
             f"merged {not m['same_output']}, lora {not lo['same_output']}"]
    return "\n".join([head] + [f"{n:<42}{v:>10}   {t}" for n, v, t in rows] + notes)


def main() -> int:
    args = parse_args()
    preamble()
    path = model_path(args)
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-") as tmp:
        paired = args.versus or args.dtypes
        out = versus(args, Path(tmp), path) if paired else bench(args, Path(tmp), path)
    print("\n" + (versus_summary(out) if paired else summary(out)))
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = ("serve-dtypes.json" if args.dtypes else "serve-versus.json" if args.versus
            else "serve.json")
    (results / name).write_text(json.dumps(out, indent=2))
    print(f"\nJSON: {results / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
