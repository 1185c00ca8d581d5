"""One refresh round, run as its own process: `python -m learner.round CONFIG --round-id N`.

The process that triggered the round (the gateway, or `dynalign learn`) wrote CONFIG (the
resolved config with the round's overrides) into the round's folder and watches this process:
it decides failed / cancelled from the exit, and promotes the candidate or not (dynalign/gate.py).
This process trains and measures: select prompts, answer the gate's prompts with the active
weights, run GRPO, save the adapter, answer them again with the candidate (learner/gate_eval.py),
and write the per-step metrics and a summary. It can be killed at any moment; a round that did
not finish publishes nothing.

<state>/rounds/NNNN/: config.toml, prompts.jsonl, metrics.jsonl (one line per step),
rollouts.jsonl (each batch's first prompt as sampled, with the CA system prompt, and as the loss
sees it),
summary.json, gate.json (the gate's measurements), learner.log, adapter/ (the candidate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from contextlib import closing
from pathlib import Path

from dynalign import conversation, reviews
from dynalign.config import Config, load_config
from dynalign.conversation import token_counter
from dynalign.dataset import read_rows, seed_path
from dynalign.erasure import drop_missing
from dynalign.errors import DynalignError, RoundError
from dynalign.grpo import converged
from dynalign.rounds import prompt_messages, select_prompts, system_prompt
from dynalign.store import Store
from learner.progress import StepProgress

STEP_KEYS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "loss": "loss",
             "frac_reward_zero_std": "frac_reward_zero_std",
             "completions/mean_length": "completion_length", "entropy": "entropy",
             "learning_rate": "learning_rate", "clip_ratio/region_mean": "clip_ratio"}


def make_reward(cfg: Config, tokenizer):
    learn = cfg.learn
    if learn.reward == "self":
        from learner.self_reward import SelfReward
        return SelfReward(tokenizer, cfg.prompts.reward, cfg.prompts.ca_definition,
                          learn.self_score, batch_size=learn.micro_batch)
    if learn.reward == "rule":
        from dynalign.rewards import rule_reward
        return rule_reward(learn)
    from learner.panel_judge import open_judges
    return open_judges(cfg, "learn", learn.self_score, learn.micro_batch, tokenizer).reward


def step_callback(cfg: Config, store: Store, round_id: int, steps: StepProgress,
                  metrics_path: Path, reward=None):
    """Per logged step: one metrics line (TRL's figures, seconds and peak memory per phase), the
    progress in the store, and the convergence stop. A judge that has not given one readable
    score in the first step fails the round there, rather than train on zeros.

    With learn.iterations > 1 only the steps that generate have a reward (TRL logs the batch's
    reward once, when it scores it): the steps that reuse the batch get a line without reward,
    reward_std, zero-spread fraction or completion length, and each line names its `batch`.
    Convergence reads one reward per scored batch, never a repeated one."""
    from transformers import TrainerCallback

    learn = cfg.learn

    class RoundCallback(TrainerCallback):
        rewards: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            # a step's log has its loss (the end of training logs train_loss)
            if not state.is_world_process_zero or "loss" not in (logs or {}):
                return
            scored = logs.get("reward") is not None  # this step generated and scored a batch
            if scored:
                self.rewards.append(logs["reward"])
                check_readable(reward, state.global_step)
            row = {"step": state.global_step, "batch": len(self.rewards),
                   **{v: logs[k] for k, v in STEP_KEYS.items() if k in logs},
                   **steps.end_step(logs["reward"] if scored else None)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            stop = scored and converged(self.rewards, learn.converge_window,
                                        learn.converge_tolerance)
            store.update_round(round_id, progress={
                **steps.snapshot(), "phase": "converged" if stop else "training"})
            control.should_training_stop = control.should_training_stop or stop

    return RoundCallback()


def check_readable(reward, step: int) -> None:
    from dynalign.rewards import none_readable

    if step == 1 and none_readable(reward):
        raise RoundError(f"the judge gave no readable score (an answer starting with a digit "
                         f"0-5) for any of the {reward.scored} answers of step 1: use a judge that "
                         f"follows the reward prompt, or learn.self_score = \"expected\" (digit "
                         f"probabilities, always readable) with a local or self judge")


def live_progress(store: Store, round_id: int, learn) -> StepProgress:
    """A StepProgress that writes the running step's progress to the store (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return StepProgress(max_steps=learn.max_steps, iterations=learn.iterations)
    return StepProgress(lambda p: store.update_round(round_id, progress={**p, "phase": "training"}),
                        max_steps=learn.max_steps, iterations=learn.iterations)


def run_round(cfg: Config, round_id: int) -> dict:
    import torch

    learn = cfg.learn
    torch.set_num_threads(learn.threads)
    store = Store(cfg.db_path)
    out = cfg.round_dir(round_id)
    selection = select_prompts(store.training_exchanges(store.consumed_upto()),
                               read_rows(seed_path(cfg)), learn, salt=round_id,
                               count=token_counter(cfg.model_path))
    if not selection.prompts:
        raise RoundError("no prompts to train on: the log has none and the seed set is empty")
    _write_jsonl(out / "prompts.jsonl", selection.prompts)
    drop_missing(out / "prompts.jsonl", store)  # deleted while it was being selected
    parent = store.active_version() if learn.from_active else None
    store.update_round(round_id, exchanges_upto=selection.exchanges_upto,
                       progress={"phase": "loading", "step": 0, "max_steps": learn.max_steps})
    trainer, tokenizer, reward = _trainer(cfg, store, round_id, selection.prompts, parent, out)
    gate = _gate_before(cfg, store, round_id, trainer.model, tokenizer, parent is not None)
    started = time.perf_counter()
    _set_phase(store, round_id, "training")
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    _set_phase(store, round_id, "saved")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = summarize(steps, selection.summary(), parent, time.perf_counter() - started,
                        getattr(reward, "unreadable", None), learn)
    if hasattr(reward, "disagreements"):  # a judge panel: how often its members parted
        summary["panel"] = {"disagreements": reward.disagreements, "scored": reward.scored,
                            "failures": reward.failures[:5]}
    if gate is not None:
        summary["gate_eval"] = _gate_after(cfg, store, round_id, trainer.model, tokenizer, gate,
                                           steps, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    store.update_round(round_id, metrics=summary, candidate=str(out / "adapter"))
    store.close()
    return summary


def _trainer(cfg: Config, store: Store, round_id: int, prompts: list[dict], parent, out: Path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from learner.trainer import build_trainer, load_policy

    learn = dataclasses.replace(cfg.learn, prompts_per_step=min(cfg.learn.prompts_per_step,
                                                                len(prompts)))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    policy = load_policy(cfg.model_path, learn, store.adapter(parent)["path"] if parent else None)
    reward = make_reward(cfg, tokenizer)
    dataset = Dataset.from_list([{"prompt": prompt_messages(p)} for p in prompts])
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    steps = live_progress(store, round_id, learn)
    trainer = build_trainer(policy, tokenizer, dataset, learn, system_prompt(cfg.prompts), reward,
                            str(out / "trainer"), progress=steps,
                            record=rollout_recorder(out / "rollouts.jsonl", prompts, store))
    trainer.add_callback(step_callback(cfg, store, round_id, steps, metrics_path, reward))
    return trainer, tokenizer, reward


def rollout_recorder(path: Path, prompts: list[dict], store: Store):
    """Appends {"id", "sampled", "loss"} to `path` for a batch's first prompt (its id found by
    its messages, so erasure can drop the line with the prompt: dynalign/erasure.py); not for
    an exchange deleted since the round selected it."""
    ids = {conversation.key(prompt_messages(p)): p["id"] for p in prompts}
    path.unlink(missing_ok=True)

    def record(messages: list[dict], sampled: str, loss: str) -> None:
        prompt_id = ids.get(conversation.key(messages)) or ""
        if prompt_id.startswith("exchange-") and not store.existing_exchange_ids(
                [int(prompt_id.removeprefix("exchange-"))]):
            return
        row = {"id": prompt_id or None, "sampled": sampled, "loss": loss}
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return record


def _gate_before(cfg: Config, store: Store, round_id: int, model, tokenizer, has_parent: bool):
    """The active version's answers, taken before training changes the weights (None: no gate)."""
    if not (cfg.learn.gate.enabled and cfg.learn.promote):
        return None
    from learner.gate_eval import before_training, gate_items

    _set_phase(store, round_id, "evaluating the active version")
    items = gate_items(cfg)
    return items, before_training(model, tokenizer, items, cfg, has_parent)


def _gate_after(cfg: Config, store: Store, round_id: int, model, tokenizer, gate, steps,
                out: Path) -> dict:
    """The candidate's side, the judge, the drift monitors: gate.json, and its headline."""
    from dynalign.evaluate import headline
    from learner.gate_eval import after_training

    _set_phase(store, round_id, "evaluating the candidate")
    items, before = gate
    report = after_training(model, tokenizer, items, cfg, before, steps)
    (out / "gate.json").write_text(json.dumps(report, indent=2))
    queued = reviews.queue_gate(store, round_id, report)  # what its judges disagreed on
    return {"pairwise": headline(report["pairwise"]), "reviews": queued,
            "capabilities": {name: {side: headline(r) for side, r in sides.items()}
                             for name, sides in report["capabilities"].items()},
            "drift": {k: v for k, v in report["drift"].items() if k != "self_scores"},
            "judge": report["judge"], "seconds": report["seconds"]}


def _set_phase(store: Store, round_id: int, phase: str) -> None:
    store.update_round(round_id, progress={**json.loads(store.round(round_id)["progress"] or "{}"),
                                           "phase": phase})


def summarize(steps: list[dict], selection: dict, parent, seconds: float, unreadable, learn) -> dict:
    """The round's summary; rewards are one per scored batch (steps that reused a batch, with
    learn.iterations > 1, have none)."""
    rewards = [s["reward"] for s in steps if s.get("reward") is not None]
    window = max(1, min(learn.converge_window, len(rewards)))
    return {"steps": len(steps), "max_steps": learn.max_steps, "parent": parent,
            "iterations": learn.iterations, "batches": len(rewards),
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "reward_last_window": sum(rewards[-window:]) / window if rewards else None,
            "converged": len(steps) < learn.max_steps, "seconds": round(seconds, 1),
            "peak_rss_mb": max((s.get("peak_rss_mb") or 0 for s in steps), default=None) or None,
            "unreadable_scores": unreadable, "reward": learn.reward,
            "self_score": learn.self_score if learn.reward == "self" else None,
            "selection": selection}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learner.round", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the round's resolved config (TOML)")
    parser.add_argument("--round-id", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    cfg = load_config(args.config)
    try:
        run_round(cfg, args.round_id)
    except DynalignError as e:  # a clear message for the round's error field, not a log tail
        print(f"error: {e}", file=sys.stderr)
        with closing(Store(cfg.db_path)) as store:
            store.update_round(args.round_id, error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
