"""Learner benchmark: seconds per GRPO step, split by phase, as a refresh round runs it.

Why: a round's cost is steps x seconds per step, on the one core the serving engine leaves free;
the split says which phase to work on, and the comparisons below price two of our choices.

Workload: one seed prompt, G = 8 candidates of 64 tokens (learn.num_generations = 8,
prompts_per_step = 1, max_completion_tokens = 64), self-reward, a fresh LoRA adapter (r 16) on
the embedded model, fp32, CPU, --threads torch threads (default 1, what a round gets beside the
engine). Trainers come from learner.trainer.build_trainer / load_policy, so candidates are sampled
with the CA system prompt and the loss sees the prompt without it, exactly as in a round (TRL's
default gradient_checkpointing = True included, which grpo_config leaves on). EOS is
suppressed (min_new_tokens = 64) so every candidate has exactly 64 tokens and the runs do the same
work (like bench/serve.py's ignore_eos); --natural-length lets candidates stop at EOS.
Two runs, ours and TRL defaults (c), each 1 warm-up step then --steps measured steps; figures are
per-phase medians. Both trainers live in one process and their steps alternate in lock-step
(ours, TRL, TRL, ours, ours, TRL, ...; each trainer in its own thread, only one computing at a
time), so drifting load from anything else on the machine hits both alike.

Phases (learner.progress.StepProgress): generation = the rollout (sampling); scoring = the reward
function; ref_logprobs = the rest of TRL's batch preparation (reference log-probs with the adapter
switched off, plus tokenising and advantages); update = the rest of the step (policy forward and
backward, optimiser step, logging). The median of each phase is taken separately, so the phase
medians need not add up to the median step. Each phase is reported twice: wall seconds (what
Phases records, what a round's metrics show) and CPU seconds of this process over the same spans
(time.process_time, from wrappers the bench puts around the rollout, the reward and TRL's batch
preparation). On a shared machine wall time includes waiting for a core; CPU time does not, so
the ratios are taken on CPU seconds and the wall ratios are shown beside them.

(a) our configured round ([learn] settings, paper defaults: beta 0.04, loss "grpo", fp32,
    lr 5e-6, self_score "expected"): seconds per phase and each phase's share of the step.
(b) self-scoring by one forward pass ("expected") vs generating the score ("greedy", the paper's
    way): right after each measured step of (a), outside its timing, the step's 8 completions are
    scored again by the greedy reading (learner.self_reward.SelfReward, mode "greedy", as a round
    with self_score = "greedy" calls it), so it sees the same completions as the step's expected
    scoring. Reported: the scoring phase (expected) and the greedy re-scoring, seconds per step
    (medians), the ratio greedy / expected, and the greedy answers that held no digit 0-5
    (unreadable, scored 0).
(c) our round vs TRL's GRPOConfig defaults for the settings the paper changes: beta 0.0,
    loss_type "dapo", use_bias_correction_kl True, learning_rate 1e-6 (same workload, same
    reward). TRL's default bf16 = True (mixed precision; transformers accepts it with use_cpu,
    as CPU autocast) is NOT applied: both runs stay fp32, as the learner trains on CPU
    (grpo_config sets bf16 only on CUDA with learn.dtype "bfloat16"; log-probs in bf16 make the
    KL term noise). Ratio TRL / ours per phase and per
    step, and the list of every GRPOConfig field where our grpo_config() differs from
    GRPOConfig's defaults. beta 0 also means no reference forward pass at all, and
    use_bias_correction_kl only changes the KL term, so it has no effect when beta is 0.

Usage: .venv/bin/python bench/learn.py [--steps 3] [--threads 1] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("generation", "scoring", "ref_logprobs", "update", "step")
WORKLOAD = {"num_generations": 8, "prompts_per_step": 1, "max_completion_tokens": 64}
TRL_DEFAULTS = {"beta": 0.0, "loss_type": "dapo", "use_bias_correction_kl": True,
                "learning_rate": 1e-6}
PLUMBING = {"output_dir", "report_to", "save_strategy", "logging_steps", "use_cpu", "max_steps",
            "per_device_train_batch_size", "num_generations", "max_completion_length", "seed",
            "dataloader_num_workers", "vllm_mode", "vllm_gpu_memory_utilization", "logging_dir"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, help="measured steps per run, after 1 warm-up "
                   "(default 3; quick 1)")
    p.add_argument("--tokens", type=int, help="tokens per candidate (default 64; quick 16)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: what a round gets beside the serving engine)")
    p.add_argument("--config", help="dynalign config whose [learn] section is 'ours' "
                   "(default: the repo's dynalign.toml)")
    p.add_argument("--model-path", help="base model (default: the config's, <state>/model)")
    p.add_argument("--natural-length", action="store_true",
                   help="let candidates stop at EOS (default: exactly --tokens tokens each)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 step of 16 tokens per run")
    p.add_argument("--out", help="also write the results to this JSON file")
    a = p.parse_args()
    a.steps = a.steps or (1 if a.quick else 3)
    a.tokens = a.tokens or (16 if a.quick else 64)
    if a.steps < 1 or a.tokens < 1 or a.threads < 1:
        p.error("--steps, --tokens and --threads must be at least 1")
    a.out = str(Path(a.out).resolve()) if a.out else None
    return a


def load(args):
    """The config ('ours', with the workload forced) and the model path."""
    from dynalign.config import load_config
    config = args.config or (str(REPO / "dynalign.toml") if (REPO / "dynalign.toml").exists()
                             else None)
    cfg = load_config(config, {f"learn.{k}": v for k, v in WORKLOAD.items()} | {
        "learn.max_completion_tokens": args.tokens, "learn.max_steps": args.steps + 1,
        "learn.reward": "self", "learn.threads": args.threads})
    path = args.model_path or cfg.model_path
    if not (Path(path) / "config.json").exists():
        sys.exit(f"error: no model at {path}: run `dynalign model prepare` or pass --model-path")
    return cfg, path


def trl_defaults(learn):
    """`learn` with TRL's GRPOConfig defaults for the settings the paper changes (TRL_DEFAULTS),
    all but the KL estimator: grpo_config() pins that one, so `trl_kl` sets it on the trainer."""
    return dataclasses.replace(learn, **{k: v for k, v in TRL_DEFAULTS.items()
                                         if k != "use_bias_correction_kl"})


def trl_kl(trainer) -> None:
    """TRL's default KL estimator on a built trainer (compute_loss reads it from the args)."""
    trainer.args.use_bias_correction_kl = TRL_DEFAULTS["use_bias_correction_kl"]


class CpuPhases:
    """CPU seconds of this process over the spans learner.progress.StepProgress times in wall s."""

    def __init__(self):
        self.seconds = {"generation": 0.0, "scoring": 0.0, "prepare": 0.0}

    def timed(self, name: str, func):
        def wrapper(*args, **kwargs):
            start = time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[name] += time.process_time() - start
        return wrapper

    def take(self, step: float) -> dict:
        s = self.seconds
        self.seconds = {"generation": 0.0, "scoring": 0.0, "prepare": 0.0}
        return {"generation": s["generation"], "scoring": s["scoring"],
                "ref_logprobs": max(0.0, s["prepare"] - s["generation"] - s["scoring"]),
                "update": max(0.0, step - s["prepare"]), "step": step}


class Recorder:
    """The round's reward, remembering the last batch it scored (re-scored in (b))."""

    __name__ = "self_reward"

    def __init__(self, reward, cpu: CpuPhases):
        self.reward, self.last = reward, None
        self.call = cpu.timed("scoring", reward)

    def bind(self, model) -> None:
        self.reward.bind(model)

    def __call__(self, prompts, completions, **kwargs):
        self.last = (prompts, completions)
        return self.call(prompts, completions, **kwargs)


class Turns:
    """Lock-step for the two runs: their steps alternate A B, B A, A B, ... so that both see the
    same machine (other load on a shared box drifts over minutes) and the ratios stay fair."""

    def __init__(self, labels: tuple[str, str], steps: int):
        a, b = labels
        self.order = [x for i in range(steps) for x in ((a, b) if i % 2 == 0 else (b, a))]
        self.pos, self.failed = 0, None
        self.cond = threading.Condition()

    def wait(self, label: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.failed or self.order[self.pos] == label)
            if self.failed:
                raise RuntimeError(f"stopped: the other run failed ({self.failed})")

    def done(self) -> None:
        with self.cond:
            self.pos = min(self.pos + 1, len(self.order) - 1)
            self.cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.cond:
            self.failed = f"{type(error).__name__}: {error}"
            self.cond.notify_all()


def step_timer(trainer, cpu: CpuPhases, label: str, turns: Turns, paired: dict | None):
    """Per logged step: the phase split; with `paired`, the other reading re-scores the step's
    batch (after the step is timed, before the other run's turn)."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        rows: list[dict] = []
        started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            turns.wait(label)
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "reward" not in (logs or {}):
                return
            seconds = time.perf_counter() - self.started
            cpu_seconds = time.process_time() - self.cpu_started
            phases = trainer.progress.end_step(logs["reward"])
            phases["seconds/step"] = seconds  # from on_step_begin, after the lock-step wait
            row = {"step": state.global_step, **{k.split("/")[1]: v for k, v in phases.items()
                                                 if k.startswith("seconds/")},
                   **{f"cpu_{k}": round(v, 3) for k, v in cpu.take(cpu_seconds).items()},
                   "completion_tokens": logs.get("completions/mean_length"),
                   "reward": logs["reward"], "kl": logs.get("kl"),
                   "torch_threads": torch.get_num_threads()}
            if paired and state.global_step > 1:  # not after the warm-up step
                row["rescoring"] = rescore(paired)
            self.rows.append(row)
            print(f"  {label} step {state.global_step}: " + ", ".join(
                f"{k} {row[k]:.1f}/{row['cpu_' + k]:.1f}" for k in PHASES) + " s wall/CPU; "
                f"{row['completion_tokens']:.0f} tokens/candidate" + (
                    f"; re-scored {row['rescoring']['reading']} {row['rescoring']['seconds']:.1f}"
                    f"/{row['rescoring']['cpu_seconds']:.1f} s" if "rescoring" in row else ""),
                flush=True)
            turns.done()

    return Timer()


def rescore(paired: dict) -> dict:
    """The step's batch scored again by the other reading, timed."""
    reward, before = paired["other"], paired["other"].unreadable
    start, cpu_start = time.perf_counter(), time.process_time()
    scores = reward(*paired["recorder"].last)
    return {"reading": reward.mode, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "scores": [round(x, 3) for x in scores],
            "unreadable": reward.unreadable - before, "items": len(scores)}


def build(label: str, cfg, learn, model_path: str, args, turns: Turns, tmp: str,
          paired: bool, after_build=None):
    """A trainer built as a round builds it (1 + steps steps), with the step timer added."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from transformers.trainer_callback import ProgressCallback

    from dynalign.dataset import SEED_FILE, read_rows
    from dynalign.rounds import system_prompt
    from learner.self_reward import SelfReward
    from learner.trainer import build_trainer, load_policy

    seed = next(r for r in read_rows(SEED_FILE) if r["split"] == "train")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": seed["prompt"]}]}])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    reading = lambda mode: SelfReward(tokenizer, cfg.prompts.reward,  # noqa: E731
                                      cfg.prompts.ca_definition, mode)
    cpu = CpuPhases()
    recorder = Recorder(reading(learn.self_score), cpu)
    trainer = build_trainer(load_policy(model_path, learn, None), tokenizer, dataset, learn,
                            system_prompt(cfg.prompts), recorder, str(Path(tmp) / label))
    trainer.remove_callback(ProgressCallback)  # the bar and the raw log dicts
    # CPU clocks around the spans Phases times (instance attributes; learner/ is unchanged)
    trainer.rollout_func = cpu.timed("generation", trainer.rollout_func)
    trainer._generate_and_score_completions = cpu.timed(
        "prepare", trainer._generate_and_score_completions)
    if not args.natural_length:
        trainer.generation_config.min_new_tokens = learn.max_completion_tokens
    if after_build:
        after_build(trainer)
    both = None
    if paired:
        other = "greedy" if learn.self_score == "expected" else "expected"
        both = {"recorder": recorder, "other": reading(other)}
        both["other"].bind(trainer.model)
    timer = step_timer(trainer, cpu, label, turns, both)
    trainer.add_callback(timer)
    return trainer, timer


def train_lockstep(trainers: dict, turns: Turns) -> None:
    """trainer.train() of each run in its own thread; Turns makes their steps alternate."""
    errors = {}

    def train(label, trainer):
        try:
            trainer.train()
        except BaseException as e:  # noqa: BLE001 - reported below, after both threads end
            errors[label] = e
            turns.fail(e)

    threads = [threading.Thread(target=train, args=item, name=item[0])
               for item in trainers.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        label, error = next(iter(errors.items()))
        raise RuntimeError(f"the {label} run failed: {error}") from error


def measured(label: str, timer, args) -> dict:
    rows = list(timer.rows)
    if len(rows) != args.steps + 1:
        raise RuntimeError(f"{label}: expected {args.steps + 1} logged steps, got {len(rows)}")
    kept = rows[1:]
    return {"steps": rows, "median": {k: statistics.median(r[k] for r in kept) for k in PHASES},
            "cpu_median": {k: statistics.median(r[f"cpu_{k}"] for r in kept) for k in PHASES},
            "cpu_share_of_wall": statistics.median(r["cpu_step"] / r["step"] for r in kept),
            "completion_tokens": statistics.mean(r["completion_tokens"] for r in kept)}


def config_diff(learn, model_path: str) -> list[dict]:
    """Every GRPOConfig field where grpo_config(ours) differs from GRPOConfig's defaults."""
    from trl import GRPOConfig

    from learner.trainer import grpo_config
    with tempfile.TemporaryDirectory() as tmp:
        ours = grpo_config(learn, tmp, cuda=False)
        default = GRPOConfig(output_dir=tmp, use_cpu=True)
    rows = []
    for f in dataclasses.fields(GRPOConfig):
        if f.name in PLUMBING or not f.init:
            continue
        a, b = (str(getattr(getattr(c, f.name, None), "value", getattr(c, f.name, None)))
                for c in (ours, default))
        if a != b:
            rows.append({"setting": f.name, "ours": a, "trl_default": b,
                         "in_trl_run": ("trl default" if f.name in TRL_DEFAULTS else
                                        "ours (kept fp32)" if f.name == "bf16" else "ours")})
    return rows


def paired_summary(steps: list[dict], in_step: str) -> dict:
    """Median seconds per step's scoring: `in_step` from the scoring phase, the other reading
    from the re-scoring of the same completions right after the step."""
    measured = steps[1:]
    other = measured[0]["rescoring"]["reading"]
    seconds = {in_step: statistics.median(r["scoring"] for r in measured),
               other: statistics.median(r["rescoring"]["seconds"] for r in measured)}
    cpu = {in_step: statistics.median(r["cpu_scoring"] for r in measured),
           other: statistics.median(r["rescoring"]["cpu_seconds"] for r in measured)}
    out = {"expected_s": seconds["expected"], "greedy_s": seconds["greedy"],
           "ratio_greedy_expected": seconds["greedy"] / seconds["expected"],
           "expected_cpu_s": cpu["expected"], "greedy_cpu_s": cpu["greedy"],
           "cpu_ratio_greedy_expected": cpu["greedy"] / cpu["expected"],
           "in_step": in_step, "rescored": other,
           "rescored_unreadable": sum(r["rescoring"]["unreadable"] for r in measured),
           "rescored_items": sum(r["rescoring"]["items"] for r in measured)}
    return out


def bench(args) -> dict:
    import torch
    from transformers.utils import logging
    torch.set_num_threads(args.threads)
    logging.disable_progress_bar()
    cfg, path = load(args)
    ours = cfg.learn
    trl = trl_defaults(ours)
    out = {"workload": {"prompts": 1, "candidates": ours.num_generations,
                        "tokens": ours.max_completion_tokens,
                        "length": "natural (EOS)" if args.natural_length else "exact",
                        "steps": args.steps, "warmup_steps": 1, "threads": args.threads,
                        "torch_threads": torch.get_num_threads(), "dtype": ours.dtype,
                        "model": path, "cpu_count": os.cpu_count()},
           "ours_settings": {"beta": ours.beta, "loss_type": ours.loss_type,
                             "learning_rate": ours.learning_rate, "dtype": ours.dtype,
                             "self_score": ours.self_score, "lora_rank": ours.lora_rank}}
    print(f"ours: beta {ours.beta}, loss {ours.loss_type}, lr {ours.learning_rate}, "
          f"{ours.dtype}, self_score {ours.self_score}; TRL defaults: " + ", ".join(
              f"{k} {v}" for k, v in TRL_DEFAULTS.items()) + "; steps alternate", flush=True)
    turns = Turns(("ours", "trl"), args.steps + 1)
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-learn-") as tmp:
        runs = {"ours": build("ours", cfg, ours, path, args, turns, tmp, paired=True),
                "trl": build("trl", cfg, trl, path, args, turns, tmp, paired=False,
                             after_build=trl_kl)}
        train_lockstep({k: v[0] for k, v in runs.items()}, turns)
    out["ours"] = measured("ours", runs["ours"][1], args)
    out["trl_defaults"] = measured("trl", runs["trl"][1], args)
    out["scoring"] = paired_summary(out["ours"]["steps"], ours.self_score)
    out["trl_vs_ours"] = {k: ratio(out["trl_defaults"]["median"][k], out["ours"]["median"][k])
                          for k in PHASES}
    out["trl_vs_ours_cpu"] = {k: ratio(out["trl_defaults"]["cpu_median"][k],
                                       out["ours"]["cpu_median"][k]) for k in PHASES}
    out["settings_differ"] = config_diff(ours, path)
    return out


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def summary(out: dict) -> str:
    w, o, t = out["workload"], out["ours"]["median"], out["trl_defaults"]["median"]
    oc, tc = out["ours"]["cpu_median"], out["trl_defaults"]["cpu_median"]
    s, la = out["scoring"], out["load_average"]
    other = s["rescored"]
    alt = oc["step"] - oc["scoring"] + s[f"{other}_cpu_s"]

    def r(x):
        return f"{x:.2f}" if x is not None else "-"

    lines = [f"workload: 1 prompt x {w['candidates']} candidates x {w['tokens']} tokens "
             f"({w['length']} length), median of {w['steps']} step(s) after 1 warm-up, "
             f"{w['torch_threads']} torch thread(s), {w['cpu_count']} CPUs, {w['dtype']}",
             f"machine: load average (1 min) {la['start'][0]:.2f} at start, {la['end'][0]:.2f} at "
             f"end; CPU/wall per step {out['ours']['cpu_share_of_wall']:.2f} (ours), "
             f"{out['trl_defaults']['cpu_share_of_wall']:.2f} (TRL); {out['wall_s']:.0f} s wall",
             f"ours: beta {out['ours_settings']['beta']}, loss {out['ours_settings']['loss_type']}"
             f", lr {out['ours_settings']['learning_rate']}, self_score "
             f"{out['ours_settings']['self_score']}",
             "",
             f"{'(a) s/step, median':<20}{'ours wall':>10}{'ours CPU':>10}{'CPU share':>10}"
             f"{'TRL wall':>10}{'TRL CPU':>10}{'TRL/ours':>10}{'(wall)':>8}"]
    for k in PHASES:
        lines.append(f"{k:<20}{o[k]:>10.2f}{oc[k]:>10.2f}{oc[k] / oc['step']:>10.0%}"
                     f"{t[k]:>10.2f}{tc[k]:>10.2f}{r(out['trl_vs_ours_cpu'][k]):>10}"
                     f"{r(out['trl_vs_ours'][k]):>8}")
    lines += [f"completion tokens/candidate: ours {out['ours']['completion_tokens']:.1f}, "
              f"TRL defaults {out['trl_defaults']['completion_tokens']:.1f}",
              "",
              f"(b) scoring a step's {w['candidates']} completions, median s/step (CPU; wall): "
              f"expected {s['expected_cpu_s']:.2f} ({s['expected_s']:.2f}), greedy "
              f"{s['greedy_cpu_s']:.2f} ({s['greedy_s']:.2f}); greedy/expected "
              f"{s['cpu_ratio_greedy_expected']:.2f} ({s['ratio_greedy_expected']:.2f})",
              f"    {s['in_step']} = the step's scoring phase; {other} = the same completions "
              f"re-scored right after the step" + (
                  f"; greedy unreadable {s['rescored_unreadable']}/{s['rescored_items']}"
                  if other == "greedy" else ""),
              f"    a step scoring by {other}: ~{alt:.1f} CPU s (ours step - scoring + {other})"
              f", {alt / oc['step']:.2f}x ours",
              "",
              f"(c) step TRL defaults / ours: {r(out['trl_vs_ours_cpu']['step'])} CPU, "
              f"{r(out['trl_vs_ours']['step'])} wall (both fp32: TRL's bf16 default not applied)",
              "    settings where our grpo_config differs from GRPOConfig defaults "
              "(ours, TRL default, what the TRL-defaults run used):"]
    lines += [f"    {d['setting']:<36}{d['ours']:>10}{d['trl_default']:>10}   {d['in_trl_run']}"
              for d in out["settings_differ"]]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    os.chdir(REPO)  # the config's relative state dir, as the server sees it
    preamble()
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    started, load_before = time.perf_counter(), os.getloadavg()
    out = bench(args)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["load_average"] = {"start": load_before, "end": os.getloadavg()}
    print("\n" + summary(out))
    print(json.dumps(out, separators=(",", ":")))
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
