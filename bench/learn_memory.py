"""Learner memory and no-grad precision: peak RSS and seconds per phase of one GRPO step, each
configuration in a fresh process (a process's peak memory is its own; freed memory that the
allocator kept would leak into the next run).

(a) The README's tiny round (`dynalign refresh --max-steps 2 --prompts 2`: 2 prompts x G 8 x 256
    tokens a step, self-reward, fp32 training, 1 torch thread), one step, EOS suppressed so that
    every candidate has 256 tokens and both runs do the same work:
      before  the settings before micro-batching: the whole step's 16 sequences in one
              forward/backward (micro_batch 16), no allocator setting, rollouts fp32
      after   the defaults now: micro_batch 2, rollout_dtype "auto", and tcmalloc preloaded
              where it is installed (what the round manager gives the learner)
    Ratio after / before of each phase's seconds and peak RSS, and the estimate dynalign/memory.py
    makes for the same round beside the measured peak.
(b) bf16 vs fp32 for the no-grad phases: the same step with rollout_dtype "bfloat16" and
    "float32" (both micro_batch 2), 1 prompt x G 8 x --short-tokens tokens: generation and scoring
    seconds, ratio fp32 / bf16 (> 1: bf16 faster). Also the CPU flags that decide "auto".

Usage: .venv/bin/python bench/learn_memory.py [--quick] [--out FILE]
       (--quick: 32 tokens in (a), 8 in (b); a smoke run, not the measurement)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("generation", "reference", "scoring", "update")
SECONDS = {"generation": "generation", "reference": "ref_logprobs", "scoring": "scoring",
           "update": "update"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: short completions")
    p.add_argument("--tokens", type=int, help="tokens per candidate in (a) (default 256)")
    p.add_argument("--short-tokens", type=int, help="tokens per candidate in (b) (default 32)")
    p.add_argument("--out", help="also write the results to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON)
    a = p.parse_args()
    a.tokens = a.tokens or (32 if a.quick else 256)
    a.short_tokens = a.short_tokens or (8 if a.quick else 32)
    return a


def one(spec: dict) -> dict:
    """One GRPO step of `spec["learn"]` as a round builds it; its metrics row."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_callback import ProgressCallback

    from dynalign.config import load_config
    from dynalign.conversation import token_counter
    from dynalign.memory import (BYTES, GLIBC_FRAGMENTATION, estimate, model_shape,
                                 rollout_dtype_name)
    from dynalign.rounds import system_prompt
    from learner.progress import StepProgress
    from learner.self_reward import SelfReward
    from learner.trainer import build_trainer, load_policy

    torch.set_num_threads(1)
    cfg = load_config(None, {f"learn.{k}": v for k, v in spec["learn"].items()})
    learn, path = cfg.learn, cfg.model_path
    prompts = step_prompts(spec.get("prompts", "seed"), learn.prompts_per_step)
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    tokenizer = AutoTokenizer.from_pretrained(path)
    reward = SelfReward(tokenizer, cfg.prompts.reward, cfg.prompts.ca_definition,
                        batch_size=learn.micro_batch)
    progress = StepProgress(max_steps=1)
    trainer = build_trainer(load_policy(path, learn, None), tokenizer, dataset, learn,
                            system_prompt(cfg.prompts), reward, spec["out"], progress=progress)
    trainer.remove_callback(ProgressCallback)
    trainer.generation_config.min_new_tokens = learn.max_completion_tokens
    trainer.train()
    row = progress.end_step(None)
    rollout = rollout_dtype_name(learn, torch.cuda.is_available())
    tcmalloc = "tcmalloc" in os.environ.get("LD_PRELOAD", "")
    est = estimate(model_shape(path), learn, BYTES[rollout],
                   max(token_counter(path)(p) for p in prompts),
                   1.0 if tcmalloc else GLIBC_FRAGMENTATION)
    return {"row": row, "rollout_dtype": rollout, "estimate_mb": round(est.peak / 2**20),
            "estimate_terms_mb": {k: round(v / 2**20) for k, v in est.terms.items()}}


def step_prompts(kind: str, n: int) -> list[list[dict]]:
    """A step's prompts as messages: "seed" (the seed set's first train prompts), "probes" (the
    gate's multi-turn probes, each with its earlier turns) or "probes-last" (their last user
    turns alone)."""
    from dynalign.conversation import load_probes
    from dynalign.dataset import SEED_FILE, read_rows

    if kind == "seed":
        rows = [r for r in read_rows(SEED_FILE) if r["split"] == "train"][:n]
        return [[{"role": "user", "content": r["prompt"]}] for r in rows]
    probes = [p["messages"] for p in load_probes(limit=n)]
    return probes if kind == "probes" else [p[-1:] for p in probes]


def run(label: str, learn: dict, env: dict, prompts: str = "seed") -> dict:
    """`one` in a fresh process with `env` added; its result, or the reason it failed."""
    import tempfile

    print(f"{label}: {learn} {env or ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-mem-") as tmp:
        spec = json.dumps({"learn": learn, "out": tmp, "prompts": prompts})
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", spec], cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-5:])
        return {"label": label, "failed": f"exit {proc.returncode}: {tail}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(label=label, learn=learn, env=env, wall_s=round(time.perf_counter() - started, 1))
    r = out["row"]
    print(f"  step {r['seconds/step']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB; " + ", ".join(
        f"{p} {r['seconds/' + SECONDS[p]]:.1f} s / {r['peak_rss_mb/' + p]:.0f} MB"
        for p in PHASES), flush=True)
    return out


def bench(args) -> dict:
    from dynalign.memory import cpu_flags
    from dynalign.procs import preload_tcmalloc

    tiny = {"prompts_per_step": 2, "num_generations": 8, "max_completion_tokens": args.tokens,
            "max_steps": 1}
    learner_env = preload_tcmalloc({})
    short = {"prompts_per_step": 1, "num_generations": 8,
             "max_completion_tokens": args.short_tokens, "max_steps": 1, "micro_batch": 2}
    return {
        "before": run("before", {**tiny, "micro_batch": 16, "rollout_dtype": "float32"}, {}),
        "after": run("after", {**tiny, "micro_batch": 2, "rollout_dtype": "auto"}, learner_env),
        "fp32": run("fp32", {**short, "rollout_dtype": "float32"}, learner_env),
        "bf16": run("bf16", {**short, "rollout_dtype": "bfloat16"}, learner_env),
        "cpu_bf16_flags": sorted({"avx512_bf16", "amx_bf16"} & cpu_flags()),
        "workload": {"a": tiny, "b": short, "threads": 1, "cpu_count": os.cpu_count()}}


def table(out: dict) -> str:
    b, a = out["before"], out["after"]
    if "failed" in b or "failed" in a:
        return f"(a) failed: {b.get('failed') or a.get('failed')}"
    lines = [f"(a) the README's tiny round, one step ({out['workload']['a']}), 1 thread",
             f"{'phase':<12}{'s before':>10}{'s after':>10}{'ratio':>8}"
             f"{'MB before':>12}{'MB after':>12}{'ratio':>8}"]
    for p in (*PHASES, "step"):
        sk = "seconds/" + SECONDS.get(p, p)
        mk = "peak_rss_mb" + ("" if p == "step" else "/" + p)
        lines.append(f"{p:<12}{b['row'][sk]:>10.1f}{a['row'][sk]:>10.1f}"
                     f"{a['row'][sk] / b['row'][sk]:>8.2f}{b['row'][mk]:>12.0f}"
                     f"{a['row'][mk]:>12.0f}{a['row'][mk] / b['row'][mk]:>8.2f}")
    lines.append(f"estimate (dynalign/memory.py): before {b['estimate_mb']} MB, after "
                 f"{a['estimate_mb']} MB; rollout dtype after: {a['rollout_dtype']}")
    f, h = out["fp32"], out["bf16"]
    if "failed" in f or "failed" in h:
        lines.append(f"(b) failed: {f.get('failed') or h.get('failed')}")
        return "\n".join(lines)
    lines.append(f"(b) no-grad phases, {out['workload']['b']}; CPU bf16 flags: "
                 f"{out['cpu_bf16_flags'] or 'none'}")
    for p in ("generation", "scoring"):
        k = "seconds/" + p
        lines.append(f"{p:<12} fp32 {f['row'][k]:.1f} s, bf16 {h['row'][k]:.1f} s, "
                     f"fp32/bf16 {f['row'][k] / h['row'][k]:.2f}")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    preamble()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0
    out = bench(args)
    out["date"] = time.strftime("%Y-%m-%d")
    print("\n" + table(out))
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
