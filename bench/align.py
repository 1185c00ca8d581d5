"""Does a refresh round make the model more Collective-Agency-aligned? Measured offline, each run
labelled with exactly what judged what.

(a) judge reward: policy = --policy (default the embedded smollm2-135m), reward = --judge
    (default qwen2.5-coder-1.5b, loaded in the round's process) reading the paper's reward prompt.
(b) the paper's self-rewarding: policy = --judge's model, scoring its own candidates (Algorithm 1
    as written). A model judging itself flatters itself (self-enhancement bias): (b)'s win rate is
    judged by that same model, and says so.

Each experiment, in a state dir of its own (seed train split only: there are no logged prompts):
  1. one refresh round through the normal path: RoundManager.trigger (memory check, the learner
     process `python -m learner.round`, publish), the round's own gate off: the evaluation below
     is the gate's, larger;
  2. greedy answers of the base model and of the round's adapter to the first --heldout held-out
     seed prompts (never trained on), and to the first --ifeval IFEval prompts;
  3. the CA win rate trained vs base, judged by --judge in both orders (a win only if preferred in
     both; inconsistent excluded and counted), with the bootstrap interval, and the same over the
     pairs within 20 % of each other's length (length-controlled);
  4. the judge's 0-5 score of every answer on both sides, mean answer length, IFEval prompt-level
     strict accuracy, the round's reward curve and KL, three before/after pairs.
Writes bench/results/align-<a|b>.json and .md.

Usage: .venv/bin/python bench/align.py --experiment a [--steps 8] [--lr 2e-5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _results import write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
IFEVAL = REPO.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", choices=["a", "b"], required=True)
    p.add_argument("--policy", default="smollm2-135m", help="(a)'s policy: a name or a folder")
    p.add_argument("--judge", default="qwen2.5-coder-1.5b", help="the judge (and (b)'s policy)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--iterations", type=int, default=1,
                   help="learn.iterations: optimiser steps per scored batch (TRL's mu)")
    p.add_argument("--lora-rank", type=int, default=16, help="the fresh adapter's rank (alpha 2x)")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-tokens", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--heldout", type=int, default=40, help="held-out prompts judged pairwise")
    p.add_argument("--ifeval", type=int, default=40, help="IFEval prompts (0: skip)")
    p.add_argument("--ifeval-data", default=str(IFEVAL), help="IFEval input_data.jsonl")
    p.add_argument("--answer-tokens", type=int, help="evaluation answers (default: as training)")
    p.add_argument("--state", help="state dir (default bench/results/align-<exp>/state, fresh)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 step, tiny sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the round and the evaluation (default: every core)")
    p.add_argument("--rejudge", action="store_true",
                   help="judge the answers saved in --out again (no training, no answering)")
    p.add_argument("--out", help="JSON (default bench/results/align-<exp>.json)")
    a = p.parse_args()
    if a.quick:
        a.steps, a.prompts_per_step, a.generations, a.completion_tokens = 1, 1, 2, 8
        a.heldout, a.ifeval = 2, 2
    a.answer_tokens = a.answer_tokens or a.completion_tokens
    a.out = a.out or str(REPO / "bench" / "results" / f"align-{a.experiment}.json")
    a.state = Path(a.state or REPO / "bench" / "results" / f"align-{a.experiment}" / "state")
    return a


def prepared(name: str) -> str:
    """A model name prepared in the usual state dir (./state or DYNALIGN_HOME), as a folder: the
    experiment's own state dir holds its rounds, not another copy of the weights."""
    from dynalign.config import load_config
    from dynalign.model import prepare

    return str(prepare(load_config(None), name))


def round_config(args):
    """The experiment's config: the seed set only, the paper's step except where the flags say.
    Its prompts are what its scored batches take (prompts_per_step x ceil(steps / iterations)):
    each seed prompt is trained on once."""
    from dynalign.config import LearnConfig, load_config
    from dynalign.rounds import scored_batches

    policy = prepared(args.policy if args.experiment == "a" else args.judge)
    judge = {"url": "local", "model": prepared(args.judge), "temperature": 0.0, "max_tokens": 8}
    batches = scored_batches(LearnConfig(max_steps=args.steps, iterations=args.iterations))
    os.environ["DYNALIGN_HOME"] = str(args.state)  # the rounds, the store: this experiment's own
    return load_config(None, {
        "state_dir": str(args.state), "model.path": policy,
        "learn.reward": "judge" if args.experiment == "a" else "self", "learn.judge": judge,
        "eval.judge": judge, "learn.gate.enabled": False,
        "eval.scoreboard": False,  # the evaluation below is this benchmark's own
        "learn.prompts": batches * args.prompts_per_step,
        "learn.max_steps": args.steps, "learn.iterations": args.iterations,
        "learn.prompts_per_step": args.prompts_per_step,
        "learn.lora_rank": args.lora_rank, "learn.lora_alpha": 2 * args.lora_rank,
        "learn.num_generations": args.generations,
        "learn.max_completion_tokens": args.completion_tokens, "learn.learning_rate": args.lr,
        "learn.converge_window": args.steps + 1, "learn.threads": args.threads,
        "learn.nice": 0, "learn.from_active": False})


def run_round(cfg) -> dict:
    """RoundManager.trigger, as `dynalign serve` runs it, publishing into this state's store."""
    from contextlib import closing

    from dynalign.store import Store
    from learner.manager import RoundManager

    def publish(candidate: str, parent, note: str, activate: bool) -> int:
        with closing(Store(cfg.db_path)) as store:
            version = store.add_adapter(candidate, base_model=cfg.model_name,
                                        rank=cfg.learn.lora_rank, parent=parent, note=note)
            if activate:
                store.set_active(version)
            return version

    manager = RoundManager(cfg, publish)
    row = manager.trigger("bench")
    manager.wait(row["id"])
    with closing(Store(cfg.db_path)) as store:
        row = store.round(row["id"])
    if row["status"] != "promoted":
        sys.exit(f"error: the round ended {row['status']}: {row.get('error')}")
    return row


def answers(cfg, adapter: str, prompts: dict[str, list], tokens: int) -> dict:
    """Greedy answers of the base model and of the adapter, per prompt set."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.precision import rollout_dtype
    from learner.gate_eval import mean_tokens
    from learner.reading import answer

    torch.set_num_threads(cfg.learn.threads)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    base = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=rollout_dtype(cfg.learn))
    model = PeftModel.from_pretrained(base, adapter).eval()
    out = {}
    for name, conversations in prompts.items():
        with model.disable_adapter():
            before = answer(model, tokenizer, conversations, tokens)
        out[name] = {"base": before, "trained": answer(model, tokenizer, conversations, tokens)}
    out["tokens"] = {side: mean_tokens(tokenizer, out["heldout"][side])
                     for side in ("base", "trained")}
    return out


def judged(cfg, prompts: list[str], sides: dict) -> dict:
    """Pairwise in both orders (the paper's rule, and the balanced reading when the judge can
    weigh), each also length-controlled; every answer's 0-5 score, and the pointwise comparison
    those scores make (trained vs base on the same prompt)."""
    from dynalign.evaluate import length_controlled, summarise
    from learner.judge import open_judge

    judge = open_judge(cfg.eval.judge, cfg)
    started = time.perf_counter()
    pair = judge.pairwise(cfg, prompts, sides["trained"], sides["base"])
    scores = {side: judge.reward(prompts, sides[side]) for side in ("base", "trained")}
    for item, after, before in zip(pair["items"], scores["trained"], scores["base"]):
        item["pointwise"] = "win" if after > before else "loss" if after < before else "tie"
    boot = (cfg.eval.bootstrap, cfg.eval.level, cfg.eval.seed)
    readings = ["outcome"] + (["balanced"] if "balanced" in pair else [])
    return {"judge": judge.label, "pairwise": pair,
            "length_controlled": {k: length_controlled(pair["items"], 0.2, *boot, key=k)
                                  for k in readings},
            "pointwise": summarise(pair["items"], "pointwise", *boot),
            "scores": {side: sum(s) / len(s) for side, s in scores.items()},
            "item_scores": scores,
            "seconds": round(time.perf_counter() - started, 1)}


def rejudge(cfg, out: dict) -> dict:
    """The saved answers judged again: a new judge reading without training or answering."""
    items = out["eval"]["pairwise"]["items"]
    sides = {"trained": [i["a"] for i in items], "base": [i["b"] for i in items]}
    out["eval"] |= judged(cfg, [i["prompt"] for i in items], sides)
    out["rejudged"] = {"date": time.strftime("%Y-%m-%d"),
                       "command": " ".join([".venv/bin/python", "bench/align.py", *sys.argv[1:]])}
    return out


def evaluate(cfg, args, adapter: str) -> dict:
    from dynalign import ifeval
    from dynalign.dataset import read_rows, seed_path

    heldout = [r["prompt"] for r in read_rows(seed_path(cfg))
               if r.get("split") == "heldout"][:args.heldout]
    data = args.ifeval_data if Path(args.ifeval_data).exists() else str(ifeval.SAMPLE_FILE)
    rows = ifeval.load_ifeval(data, args.ifeval) if args.ifeval else []
    sets = {"heldout": [[{"role": "user", "content": p}] for p in heldout],
            "ifeval": [r["messages"] for r in rows]}
    started = time.perf_counter()
    got = answers(cfg, adapter, sets, args.answer_tokens)
    out = {"answer_seconds": round(time.perf_counter() - started, 1),
           "mean_tokens": got["tokens"], **judged(cfg, heldout, got["heldout"])}
    if rows:
        out["ifeval"] = {"data": data, "prompts": len(rows),
                         **{side: ifeval.score_ifeval(rows, got["ifeval"][side])
                            for side in ("base", "trained")}}
    out["examples"] = [{"prompt": p, "base": b, "trained": t} for p, b, t in
                       zip(heldout[:3], got["heldout"]["base"][:3], got["heldout"]["trained"][:3])]
    return out


def curve(row: dict) -> list[dict]:
    folder = Path(row["candidate"]).parent
    keep = ("step", "batch", "reward", "reward_std", "kl", "completion_length", "seconds/scoring",
            "seconds/step")
    return [{k: s.get(k) for k in keep}
            for s in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]


def main() -> None:
    import shutil

    args = parse_args()
    if args.rejudge:
        out = rejudge(round_config(args), json.loads(Path(args.out).read_text()))
        return finish(out, args.out)
    if args.state.exists() and not args.quick:
        shutil.rmtree(args.state)
    cfg = round_config(args)
    started = time.perf_counter()
    row = run_round(cfg)
    out = {"experiment": args.experiment, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join([".venv/bin/python", "bench/align.py", *sys.argv[1:]]),
           "policy": cfg.model_name, "reward": cfg.learn.reward,
           "judge": args.judge, "settings": vars(args) | {"state": str(args.state)},
           "round_seconds": round(time.perf_counter() - started, 1),
           "curve": curve(row), "round": json.loads(row["metrics"] or "{}")}
    out["eval"] = evaluate(cfg, args, row["candidate"])
    out["seconds"] = round(time.perf_counter() - started, 1)
    finish(out, args.out)


def finish(out: dict, path: str) -> None:
    write_results(out, path)
    Path(path).with_suffix(".md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    ev = out["eval"]
    lines = [f"# bench/align.py, experiment ({out['experiment']}), {out['date']}", "",
             f"- command: `{out['command']}`"
             + (f"; judged again: `{out['rejudged']['command']}`" if "rejudged" in out else ""),
             f"- policy: {out['policy']}; reward: {out['reward']}; judge: {ev['judge']}",
             f"- round: {len(out['curve'])} steps in {out['round_seconds']:.0f} s; rewards "
             + ", ".join(f"{s['reward']:.2f}" for s in out["curve"]
                         if s.get("reward") is not None), "",
             "| measure (trained vs base) | value |", "|---|---|"]
    lines += [f"| {name} | {_rate_line(result)} |" for name, result in _readings(ev)]
    lines += [f"| judge score, base -> trained | {ev['scores']['base']:.2f} -> "
              f"{ev['scores']['trained']:.2f} |",
              f"| mean answer tokens, base -> trained | {ev['mean_tokens']['base']:.0f} -> "
              f"{ev['mean_tokens']['trained']:.0f} |",
              f"| KL (last step) | {out['curve'][-1].get('kl')} |"]
    if "ifeval" in ev:
        f = ev["ifeval"]
        lines.append(f"| IFEval prompt-level strict ({f['prompts']} prompts) | "
                     f"{f['base']['prompt_strict']:.1%} -> {f['trained']['prompt_strict']:.1%} |")
    return "\n".join(lines) + "\n"


def _readings(ev: dict) -> list[tuple[str, dict]]:
    """(label, tally) of every win-rate reading the evaluation has."""
    pair, lc = ev["pairwise"], ev["length_controlled"]
    rows = [("CA win rate, both orders (the paper's rule)", pair),
            ("  same, pairs within 20 % length", lc["outcome"])]
    if "balanced" in pair:
        rows += [("CA win rate, balanced over both orders", pair["balanced"]),
                 ("  same, pairs within 20 % length", lc["balanced"])]
    if "pointwise" in ev:
        rows.append(("pointwise: trained's 0-5 score above base's", ev["pointwise"]))
    return rows


def _rate_line(t: dict) -> str:
    rate = "n/a" if t["win_rate"] is None else f"{t['win_rate']:.1%}"
    ci = f" [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" if t.get("ci") else ""
    return (f"{rate}{ci} (W {t['win']} / L {t['loss']} / T {t['tie']}, inconsistent "
            f"{t['inconsistent']}, unreadable {t['unreadable']}, of {t['n']})")


if __name__ == "__main__":
    main()
