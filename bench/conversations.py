"""Conversations as training prompts (issue 30): what they cost and whether context matters.

(a) Prompt lengths in tokens (the model's tokenizer): each logged exchange of a state dir (default
    the continual benchmark's, whose simulated users hold 2-3-turn conversations) as a round
    took it before (its last user turn alone) and now (its conversation up to that turn, cut to
    learn.max_prompt_tokens): min / median / p90 / max / mean, and the ratio of the means.
(b) One GRPO step (bench/learn_memory.py's harness, each in a fresh process, EOS suppressed) on
    the gate's multi-turn probes with their earlier turns vs their last user turns alone: seconds
    per phase and peak RSS, ratio context / alone.
(c) Does the context change the answer? The 135M answers the 20 multi-turn probes greedily with
    the conversation and with its last user turn alone; the judge (default the offline 1.5B,
    loaded here) scores both answers with the conversation shown (dynalign/conversation.py's
    format): mean scores, the paired difference with a bootstrap 95 % interval, and how often
    the answer with context scored higher.

(d) The client's system message, kept or dropped (learn.client_system): the same probes, each
    opened by one of four client system messages of our own (a persona, a product's
    instructions); the 135M answers with it and without it; the judge scores both, the
    conversation shown and the system message not (as in a round): does keeping it cost CA score?

Usage: .venv/bin/python bench/conversations.py [--db FILE] [--judge NAME] [--parts a,b,c,d]
       [--quick]
       (--quick: 4 probes, 8 tokens, the embedded model judging: a smoke run, not the measurement)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from contextlib import closing
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
DB = REPO / "bench" / "results" / "continual-run" / "state" / "dynalign.db"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default=str(DB), help="a state dir's dynalign.db for (a)")
    p.add_argument("--judge", default="qwen2.5-coder-1.5b", help="the judge in (c): name or folder")
    p.add_argument("--tokens", type=int, default=128, help="answer and candidate length")
    p.add_argument("--parts", default="a,b,c,d", help="which of (a)-(d) to run; results of "
                   "the others are kept from --out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "conversations.json"))
    a = p.parse_args()
    if a.quick:
        a.tokens, a.judge = 8, None
    return a


def spread(values: list[int]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": values[0], "median": statistics.median(values),
            "p90": values[int(0.9 * (len(values) - 1))], "max": values[-1],
            "mean": round(statistics.fmean(values), 1)}


def lengths(db: str, cfg) -> dict:
    """(a): every ok exchange of `db`, its last user turn alone vs its conversation."""
    from dynalign import conversation
    from dynalign.store import Store

    count = conversation.token_counter(cfg.model_path)
    with closing(Store(db)) as store:
        rows = store.training_exchanges(0)
    before, after, multi = [], [], 0
    for row in rows:
        messages = conversation.training_messages(row["messages"], cfg.learn.client_system)
        fitted = messages and conversation.fit(messages, cfg.learn.max_prompt_tokens, count)
        if fitted:
            before.append(count(fitted[-1:]))
            after.append(count(fitted))
            multi += len(conversation.user_turns(fitted)) > 1
    out = {"db": db, "exchanges": len(rows), "multi_turn": multi,
           "last_turn_alone": spread(before), "conversation": spread(after)}
    if before:
        out["ratio_of_means"] = round(statistics.fmean(after) / statistics.fmean(before), 2)
    return out


def step(tokens: int) -> dict:
    """(b): one step on 2 probes x G 8, with their context and without."""
    from learn_memory import SECONDS, run

    from dynalign.procs import preload_tcmalloc

    learn = {"prompts_per_step": 2, "num_generations": 8, "max_completion_tokens": tokens,
             "max_steps": 1, "micro_batch": 2}
    env = preload_tcmalloc({})
    out = {"context": run("context", learn, env, "probes"),
           "alone": run("alone", learn, env, "probes-last"), "workload": learn}
    if "failed" not in out["context"] and "failed" not in out["alone"]:
        c, a = out["context"]["row"], out["alone"]["row"]
        keys = ["seconds/step", *(f"seconds/{v}" for v in SECONDS.values()), "peak_rss_mb"]
        out["ratio_context_over_alone"] = {k: round(c[k] / a[k], 2) for k in keys if a.get(k)}
    return out


def context_matters(cfg, judge_name: str | None, tokens: int, limit: int | None) -> dict:
    """(c): greedy answers with and without the earlier turns, both judged with them shown."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynalign.conversation import load_probes
    from learner.judge import open_judge
    from learner.reading import answer

    probes = [p["messages"] for p in load_probes(limit=limit)]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path)
    with_context = answer(model, tokenizer, probes, tokens)
    alone = answer(model, tokenizer, [p[-1:] for p in probes], tokens)
    endpoint = dataclasses.replace(cfg.eval.judge, url="local",
                                   model=judge_name or cfg.model_path, max_tokens=8)
    judge = open_judge(endpoint, cfg)
    started = time.perf_counter()
    scores = judge.reward(probes + probes, with_context + alone)
    seconds = time.perf_counter() - started
    n = len(probes)
    diffs = [c - a for c, a in zip(scores[:n], scores[n:])]
    return {"judge": judge.label, "probes": n, "tokens": tokens,
            "mean_with_context": round(statistics.fmean(scores[:n]), 3),
            "mean_alone": round(statistics.fmean(scores[n:]), 3),
            "mean_difference": round(statistics.fmean(diffs), 3),
            "difference_ci95": bootstrap(diffs), "context_higher": sum(d > 0 for d in diffs),
            "judge_seconds_per_answer": round(seconds / (2 * n), 2),
            "examples": [{"request": p[-1]["content"], "with_context": c, "alone": a}
                         for p, c, a in list(zip(probes, with_context, alone))[:3]]}


CLIENT_SYSTEMS = (
    "You are Pip, the friendly assistant of Greenway, a neighbourhood food co-op. Keep answers "
    "short and practical.",
    "You are a helpful assistant for a city council's residents' line. Be polite and concise.",
    "You are Sol, a cheerful assistant. Always answer in a warm, encouraging tone.",
    "You answer for a family help desk. Give concrete next steps.")


def client_system(cfg, judge_name: str | None, tokens: int, limit: int | None) -> dict:
    """(d): answers with a client's system message and without, both judged without it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynalign.conversation import load_probes
    from learner.judge import open_judge
    from learner.reading import answer

    probes = [p["messages"] for p in load_probes(limit=limit)]
    systems = [[{"role": "system", "content": CLIENT_SYSTEMS[i % len(CLIENT_SYSTEMS)]}, *p]
               for i, p in enumerate(probes)]
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_path)
    kept = answer(model, tokenizer, systems, tokens)
    dropped = answer(model, tokenizer, probes, tokens)
    endpoint = dataclasses.replace(cfg.eval.judge, url="local",
                                   model=judge_name or cfg.model_path, max_tokens=8)
    scores = open_judge(endpoint, cfg).reward(probes + probes, kept + dropped)
    n = len(probes)
    diffs = [k - d for k, d in zip(scores[:n], scores[n:])]
    return {"probes": n, "mean_kept": round(statistics.fmean(scores[:n]), 3),
            "mean_dropped": round(statistics.fmean(scores[n:]), 3),
            "mean_difference": round(statistics.fmean(diffs), 3),
            "difference_ci95": bootstrap(diffs), "kept_higher": sum(d > 0 for d in diffs),
            "system_tokens": [len(tokenizer.encode(t)) for t in CLIENT_SYSTEMS]}


def bootstrap(diffs: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return [round(means[int(0.025 * resamples)], 3), round(means[int(0.975 * resamples)], 3)]


def main() -> int:
    args = parse_args()
    preamble()
    from dynalign.config import load_config

    cfg = load_config(None)
    parts, limit = args.parts.split(","), 4 if args.quick else None
    out = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    out[f"command_{'_'.join(parts)}"] = " ".join([".venv/bin/python", "bench/conversations.py",
                                                  *sys.argv[1:]])
    out["date"] = time.strftime("%Y-%m-%d")
    if "a" in parts:
        out["lengths"] = lengths(args.db, cfg) if Path(args.db).exists() else {"db": "absent"}
    if "b" in parts:
        out["step"] = step(args.tokens)
    if "c" in parts:
        out["context"] = context_matters(cfg, args.judge, args.tokens, limit)
    if "d" in parts:
        out["client_system"] = client_system(cfg, args.judge, args.tokens, limit)
    print(json.dumps({k: v for k, v in out.items() if k in ("lengths", "client_system")}))
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
