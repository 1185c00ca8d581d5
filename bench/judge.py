"""A local judge's speed: scoring with the shared prefix computed once (learner/reading.py) vs the
plain left-padded batch (every row runs its whole prompt), same model, same answers, same run.

The answers are data/judge/calibration.jsonl's (good, off-topic, harmful per request), read with the
paper's reward prompt in the expected reading, --batch at a time (as a round's micro-batches are).
Prints seconds per judgement for both, the ratio plain / shared (> 1: sharing is faster) and the
largest score difference between the two (should be ~0).

Usage: .venv/bin/python bench/judge.py [--model qwen2.5-coder-1.5b] [--limit 4] [--batch 4] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _results import write_results  # bench/ is the script's folder: first on sys.path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="a prepared name or a folder")
    p.add_argument("--limit", type=int, default=4, help="calibration requests (3 answers each)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", help="also write the results to this JSON file")
    return p.parse_args()


def plain_scores(reward, texts: list[str]) -> list[float]:
    """The baseline: one left-padded forward over each row's whole prompt (no prefix sharing)."""
    import torch

    from learner.self_reward import expected_scores

    ids, mask = reward._encode(texts)
    with torch.no_grad():
        logits = reward.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
    return expected_scores(logits, reward.digits)


def timed(score, texts: list[str], batch: int) -> tuple[list[float], float]:
    started, out = time.perf_counter(), []
    for i in range(0, len(texts), batch):
        out += score(texts[i:i + batch])
    return out, time.perf_counter() - started


def main() -> None:
    import torch

    from dynalign.cli_judge import CALIBRATION, KINDS
    from dynalign.config import load_config
    from dynalign.model import prepare
    from dynalign.rewards import reward_prompt
    from learner.judge import open_judge

    args = parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(None, {"eval.judge.url": "local",
                             "eval.judge.model": str(prepare(load_config(None), args.model))})
    judge = open_judge(cfg.eval.judge, cfg, batch_size=args.batch)
    reward = judge.reward
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines()][:args.limit]
    texts = [reward_prompt(cfg.prompts.reward, cfg.prompts.ca_definition, r["prompt"], r[k])
             for r in rows for k in KINDS]
    plain, plain_s = timed(lambda t: plain_scores(reward, t), texts, args.batch)
    shared, shared_s = timed(reward.expected, texts, args.batch)
    out = {"judge": judge.label, "judgements": len(texts), "batch": args.batch,
           "threads": torch.get_num_threads(), "seconds_per_judgement_plain": plain_s / len(texts),
           "seconds_per_judgement_shared": shared_s / len(texts), "ratio_plain_shared":
           plain_s / shared_s, "max_score_difference": max(abs(a - b) for a, b in
                                                           zip(plain, shared))}
    print(f"{judge.label}: {len(texts)} judgements, batch {args.batch}, "
          f"{out['threads']} threads\n"
          f"  plain (whole prompt per row): {out['seconds_per_judgement_plain']:.2f} s each\n"
          f"  shared prefix:                {out['seconds_per_judgement_shared']:.2f} s each\n"
          f"  ratio plain / shared:         {out['ratio_plain_shared']:.2f}\n"
          f"  largest score difference:     {out['max_score_difference']:.2e}")
    write_results(out, args.out)


if __name__ == "__main__":
    main()
