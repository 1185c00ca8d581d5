"""Held-out judge-score gain per judge-second for learn.iterations (TRL's mu) = 1, 2, 4, at an
equal judge budget; optionally the learning rate and the LoRA rank likewise.

The judge is the expensive part of a round on a CPU (a 1.5B judgement ~9 s here, ~60 % of a
step): more learning per judgement is the lever. Each setting is one refresh round of
bench/align.py's experiment (a) (policy --policy, reward --judge loaded in the round's process,
the normal RoundManager path, gate off) with the same number of judged batches (--batches x
--prompts-per-step prompts x G --generations candidates each); mu optimiser steps per batch, so
steps = batches x mu and every setting sees the same prompts. Then the policy's greedy answers
to the first --heldout held-out seed prompts (never trained on), base and trained, are scored
0-5 by the same judge (the base's once per run: greedy, the same every setting).

Per setting it prints the judge's mean score base -> trained, the gain (with its 95 % interval
over prompts, paired), the judge seconds the round spent (its scoring phases: the reward calls),
gain per judge-second, and the ratio to mu = 1 at the same learning rate and rank (the same run,
the same results file). Each finished setting is written to --out at once; a restart skips the
settings already there (same run settings, else it refuses: --fresh starts over).

Usage: .venv/bin/python bench/learn_iterations.py [--iterations 1 2 4] [--batches 8]
       [--lrs 2e-4 ...] [--ranks 16 ...] [--quick] [--fresh]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _results import preamble  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# what a setting's numbers depend on besides its own mu, lr and rank: a results file holds one
RUN_KEYS = ("policy", "judge", "batches", "prompts_per_step", "generations", "completion_tokens",
            "heldout", "threads")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 4], help="mu values")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-4],
                   help="learning rates (the first with every mu, the others at mu 1)")
    p.add_argument("--ranks", type=int, nargs="+", default=[16],
                   help="LoRA ranks, alpha 2x (the first with every mu, the others at mu 1)")
    p.add_argument("--batches", type=int, default=8, help="judged batches per setting (equal)")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-tokens", type=int, default=128)
    p.add_argument("--heldout", type=int, default=40, help="held-out prompts scored")
    p.add_argument("--policy", default="smollm2-135m", help="a name or a folder")
    p.add_argument("--judge", help="a name or a folder (default qwen2.5-coder-1.5b; with "
                                   "--quick the policy)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", help="JSON (default bench/results/learn-iterations.json; "
                                 "learn-iterations-quick.json with --quick)")
    p.add_argument("--work", help="state dirs of the rounds (default: beside --out)")
    p.add_argument("--fresh", action="store_true", help="discard the results file's settings")
    p.add_argument("--quick", action="store_true",
                   help="mechanics only: the embedded model judging, 1 batch, mu 1 and 2, tiny")
    a = p.parse_args(argv)
    if a.quick:
        a.iterations, a.lrs, a.ranks = [1, 2], [1e-2], [16]  # lr that moves the answers at once
        a.batches, a.prompts_per_step, a.generations, a.completion_tokens = 1, 1, 2, 8
        a.heldout, a.judge = 2, a.judge or a.policy
    a.judge = a.judge or "qwen2.5-coder-1.5b"
    a.out = Path(a.out or RESULTS / f"learn-iterations{'-quick' if a.quick else ''}.json")
    a.work = Path(a.work or a.out.with_suffix(""))
    return a


def settings(iterations: list[int], lrs: list[float], ranks: list[int]) -> list[dict]:
    """Every mu at the first lr and rank, then the other lrs and ranks at mu 1."""
    out = [{"iterations": mu, "lr": lrs[0], "rank": ranks[0]} for mu in iterations]
    out += [{"iterations": 1, "lr": lr, "rank": ranks[0]} for lr in lrs[1:]]
    out += [{"iterations": 1, "lr": lrs[0], "rank": r} for r in ranks[1:]]
    unique = []
    for s in out:
        if s not in unique:
            unique.append(s)
    return unique


def key(setting: dict) -> str:
    return f"mu{setting['iterations']}-lr{setting['lr']:g}-r{setting['rank']}"


def run_settings(args) -> dict:
    return {k: getattr(args, k) for k in RUN_KEYS}


def load_results(path: Path, run: dict, fresh: bool) -> dict:
    """The results file of this run (its finished settings), or a new one."""
    if path.exists() and not fresh:
        results = json.loads(path.read_text())
        if results.get("run") != run:
            sys.exit(f"error: {path} holds a run with other settings ({results.get('run')}): "
                     f"--fresh to start over, or --out another file")
        return results
    return {"run": run, "base": None, "settings": {}}


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)  # a run killed while writing leaves the last whole file


def judge_seconds(curve: list[dict]) -> float:
    """Seconds the round's judge spent: its scoring phases (the reward calls), every step."""
    return sum(step.get("seconds/scoring") or 0.0 for step in curve)


def gain(base: list[float], trained: list[float]) -> dict:
    """Mean score base -> trained and the gain with a normal 95 % interval over the prompts'
    paired differences."""
    diffs = [t - b for b, t in zip(base, trained)]
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"base": statistics.fmean(base), "trained": statistics.fmean(trained),
            "gain": statistics.fmean(diffs), "gain_ci95": half}


def table(results: dict) -> str:
    """One line per finished setting, with gain per judge-second and its ratio to mu 1 at the
    same lr and rank."""
    rows = results["settings"]
    lines = ["| setting | steps | judge score base -> trained | gain (95 %) | judge s | "
             "gain per judge-s | vs mu 1 |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ref = rows.get(key({**r["setting"], "iterations": 1}))
        ratio = "n/a"
        if ref is not None and ref["gain_per_judge_s"] > 0:
            ratio = f"{r['gain_per_judge_s'] / ref['gain_per_judge_s']:.2f}x"
        ci = f" +-{r['gain_ci95']:.2f}" if r.get("gain_ci95") is not None else ""
        lines.append(f"| {name} | {r['steps']} | {r['base']:.2f} -> {r['trained']:.2f} | "
                     f"{r['gain']:+.3f}{ci} | {r['judge_seconds']:.0f} | "
                     f"{r['gain_per_judge_s']:.2e} | {ratio} |")
    return "\n".join(lines)


def heldout_prompts(n: int) -> list[str]:
    from dynalign.dataset import SEED_FILE, read_rows

    return [r["prompt"] for r in read_rows(SEED_FILE) if r["split"] == "heldout"][:n]


def scores(cfg, prompts: list[str], texts: list[str]) -> list[float]:
    """The judge's 0-5 score of each answer (the round's reward reading), then the judge's
    weights let go: the next round loads its own copy."""
    from learner.judge import load_frozen, open_judge

    try:
        return open_judge(cfg.eval.judge, cfg).reward(prompts, texts)
    finally:
        load_frozen.cache_clear()
        gc.collect()


def run_one(args, setting: dict, results: dict) -> dict:
    """One setting: its round, its held-out answers, their scores (the base's once per run)."""
    import align  # bench/align.py: its config, round and answers

    state = args.work / key(setting) / "state"
    shutil.rmtree(state, ignore_errors=True)  # a setting that did not finish starts over
    exp = argparse.Namespace(
        experiment="a", policy=args.policy, judge=args.judge, state=state,
        steps=args.batches * setting["iterations"], iterations=setting["iterations"],
        lora_rank=setting["rank"], lr=setting["lr"], prompts_per_step=args.prompts_per_step,
        generations=args.generations, completion_tokens=args.completion_tokens,
        threads=args.threads)
    cfg = align.round_config(exp)
    started = time.perf_counter()
    row = align.run_round(cfg)
    round_seconds = time.perf_counter() - started
    curve = align.curve(row)
    prompts = heldout_prompts(args.heldout)
    got = align.answers(cfg, row["candidate"], {"heldout": [[{"role": "user", "content": p}]
                                                            for p in prompts]},
                        args.completion_tokens)["heldout"]
    base = results["base"]
    if base is None or base["answers"] != got["base"]:
        base = {"answers": got["base"], "scores": scores(cfg, prompts, got["base"])}
        if results["base"] is None:
            results["base"] = base
    trained = scores(cfg, prompts, got["trained"])
    seconds = judge_seconds(curve)
    result = gain(base["scores"], trained)
    return {"setting": setting, "steps": exp.steps, "batches": args.batches,
            "judged_answers": args.batches * args.prompts_per_step * args.generations,
            **result, "judge_seconds": round(seconds, 1),
            "gain_per_judge_s": result["gain"] / seconds if seconds else float("nan"),
            "round_seconds": round(round_seconds, 1),
            "rewards": [s["reward"] for s in curve if s.get("reward") is not None],
            "kl_last": curve[-1].get("kl") if curve else None,
            "base_answers_differ": base is not results["base"],
            "answers": got["trained"], "scores": trained, "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> None:
    preamble()
    args = parse_args(argv)
    import align

    # names to folders once: each round's config points DYNALIGN_HOME at its own state dir
    args.policy, args.judge = align.prepared(args.policy), align.prepared(args.judge)
    results = load_results(args.out, run_settings(args), args.fresh)
    results["command"] = " ".join([".venv/bin/python", "bench/learn_iterations.py",
                                   *(sys.argv[1:] if argv is None else argv)])
    for setting in settings(args.iterations, args.lrs, args.ranks):
        if key(setting) in results["settings"]:
            print(f"{key(setting)}: done in {args.out}, skipped")
            continue
        print(f"{key(setting)}: {args.batches} judged batches x mu {setting['iterations']} = "
              f"{args.batches * setting['iterations']} steps", flush=True)
        results["settings"][key(setting)] = run_one(args, setting, results)
        save(results, args.out)
        print(table(results), flush=True)
    print(f"\n{table(results)}\nJSON: {args.out}")


if __name__ == "__main__":
    main()
