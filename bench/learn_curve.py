"""Does a refresh round learn? A learnable signal through the whole pipeline, read off the server.

One `dynalign serve --no-ui` (merged mode) in a temp state dir. The signal is the rule reward
`brevity` (5 for a non-empty answer of <= 12 words, 5 x 12 / words above, scaled by 12 / 48
for a candidate that ran into the 48-token limit), which the embedded model can learn; self-reward with it is noise, so this measures the loop, not alignment. The
learning rate is raised from the paper's 5e-6 (which does not move a 135M model in a few steps)
to --lr. Held-out seed prompts (never trained on) are answered greedily (temperature 0, 48 tokens)
by the active version before the round and by the version the round promoted; the ratio
after / before of their mean brevity reward is the result, with the round's per-step reward.

Usage: .venv/bin/python bench/learn_curve.py [--steps 8] [--lr 1.5e-3] [--heldout 12] [--quick]
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--heldout", type=int, default=12, help="held-out prompts answered")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-path")
    p.add_argument("--quick", action="store_true", help="4 steps, 4 held-out prompts")
    args = p.parse_args()
    if args.quick:
        args.steps, args.heldout = 4, 4
    return args


def heldout_prompts(n: int) -> list[str]:
    from dynalign.dataset import SEED_FILE, read_rows
    return [r["prompt"] for r in read_rows(SEED_FILE) if r["split"] == "heldout"][:n]


def served_reward(server: Server, prompts: list[str]) -> tuple[float, str, int]:
    import httpx

    from dynalign.rewards import brevity
    answers, cut, model, stopped = [], [], "", 0
    for prompt in prompts:
        body = {"model": "dynalign", "max_tokens": 48, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        r = httpx.post(f"{server.gateway}/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        answers.append(r.json()["choices"][0]["message"]["content"])
        finish = r.json()["choices"][0]["finish_reason"]
        stopped += finish == "stop"
        cut.append([0] * 48 if finish == "length" else [])  # stands for the completion ids
        model = r.json()["model"]
    rewards = brevity(12, 48)(prompts, answers, completion_ids=cut)  # the round's own reward
    return statistics.fmean(rewards), model, stopped


def run_round(server: Server, args) -> dict:
    import httpx
    overrides = {"reward": "rule", "rule": "brevity", "rule_words": 12, "max_steps": args.steps,
                 "learning_rate": args.lr, "prompts": 16, "num_generations": 8,
                 "prompts_per_step": 1, "max_completion_tokens": 48, "threads": args.threads,
                 "converge_window": args.steps}
    row = server.admin("/refresh", overrides)
    while row["status"] not in ("promoted", "rejected", "failed", "cancelled"):
        time.sleep(5)  # a round takes minutes; this only paces the polling
        row = httpx.get(f"{server.gateway}/admin/rounds/{row['id']}", timeout=30,
                        headers=server.admin_headers).json()
    if row["status"] != "promoted":
        raise RuntimeError(f"round ended {row['status']}: {row.get('error')}")
    return row


def main() -> int:
    args = parse_args()
    prompts = heldout_prompts(args.heldout)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "s", model_path(args), "merged")
        try:
            server.wait_ready()
            before, model_before, stopped_before = served_reward(server, prompts)
            row = run_round(server, args)
            after, model_after, stopped_after = served_reward(server, prompts)
        finally:
            server.stop()
    curve = [round(s["reward"], 2) for s in row["steps"]]
    seconds = statistics.median(s["seconds/step"] for s in row["steps"])
    print(f"brevity rule reward, lr {args.lr}, {args.steps} steps x 1 prompt x 8 candidates x 48 "
          f"tokens, {args.threads} thread(s), median {seconds:.1f} s/step")
    print(f"round reward per step: {curve}")
    print(f"held-out ({len(prompts)} prompts, greedy, served): {model_before} {before:.2f} -> "
          f"{model_after} {after:.2f}; after / before = {after / before:.2f}; answers that "
          f"stopped on their own: {stopped_before} -> {stopped_after} of {len(prompts)}")
    print(json.dumps({"before": before, "after": after, "ratio": after / before, "curve": curve,
                      "stopped": [stopped_before, stopped_after],
                      "seconds_per_step": seconds, "round": row["id"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
