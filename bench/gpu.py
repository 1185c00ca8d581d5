"""GPU evidence (issue 19): the learner's refresh step and the gpt-oss-20b profile's learner side,
measured on one CUDA GPU in one call (aimed at under ~8 minutes), with random weights.

Why random weights: the GPU machine lent to this work has no internet and only 64 MiB can be
carried to it, so no weights travel. A step's time and memory depend on the architecture, the
shapes and the settings, not on the weights' values, so each model is built from its config
(bench/configs/*.json, the published config.json values) with random weights. What that
simplifies, and what it changes:
- rewards and KL values are noise (a random model's self-scores); every phase's work is real;
- completions are forced to their full length (EOS suppressed, as bench/learn.py does), so every
  run does the same work and the paper's 256 tokens are the tokens measured;
- one tokenizer for both models: Qwen2.5's (the prepared qwen2.5-coder-1.5b's, same vocabulary of
  151,936; `make gpu-bundle` copies it to bench/device/tokenizer). gpt-oss keeps its own
  vocabulary size (201,088: the embedding and the logits are their real size), but its prompts
  are tokenized and templated Qwen's way, not with o200k_harmony and the harmony template;
- gpt-oss-20b's MXFP4 quantization_config is left out: the learner trains on bf16 weights.

Runs, each in a fresh process (a process's peak memory is its own, and one failing run does not
lose the others: bench/learn_memory.py does the same), all built with the trainer set-up a round
uses (learner.trainer: fresh_lora, build_trainer; the reward as learner.round.make_reward builds a
self-reward, not imported from there: that module needs the store's sqlite-utils):
  qwen-ours  Qwen2.5-1.5B's architecture, bf16, the paper's step: 4 prompts x G 8 x 256 tokens, CA
             system prompt in rollouts only, self-reward "expected", beta 0.04, loss "grpo", lr
             5e-6, micro-batches of 8; one warm-up step, then one measured step
  qwen-trl   the same with TRL's GRPOConfig defaults for the settings the paper changes
             (bench/learn.py's TRL_DEFAULTS: beta 0, so no reference pass; loss "dapo";
             bias-corrected KL; lr 1e-6); ratio TRL / ours
  oss        gpt-oss-20b with learner/profiles/gpt-oss-20b-h100.toml's [learn] (LoRA r 16 on the
             attention projections, micro-batches of 8, bf16): one step (--oss-tokens completion
             tokens, default the profile's 256); peak CUDA memory per phase against the README's
             computed table, and whether the profile's split (engine share + learner) fits an
             H100's 79.2 GiB
Per run and phase (learner.progress.StepProgress, as a round's metrics): seconds, peak CUDA memory
allocated and reserved; tokens/s: generation (completion tokens / generation s), trainer (prompt +
completion tokens / update s: what prime-rl's trainer-only 13.3k tok/s counts) and step.

--smoke: the same code on tiny configs of both architectures, on CPU (CUDA hidden), in about a
minute (fp32, 2 prompts x G 2 x 8 tokens, the tokenizer's vocabulary); tests/integration runs it.
Without CUDA and without --smoke the script exits 1.

Usage: .venv/bin/python bench/gpu.py [--out DIR] [--part all|qwen|oss] [--oss-tokens N]
                                     [--tokenizer DIR] [--smoke]
Writes DIR/gpu.json and DIR/gpu.md (--smoke: gpu-smoke.*), after each run. DIR: bench/results.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "bench" / "configs"
PROFILE = REPO / "learner" / "profiles" / "gpt-oss-20b-h100.toml"
BUNDLED_TOKENIZER = REPO / "bench" / "device" / "tokenizer"
GIB = 2**30
KIND_NAMES = {"cuda": "CUDA allocated", "cuda_reserved": "CUDA reserved", "rss": "RSS"}
PHASES = {"generation": "generation", "reference": "ref_logprobs", "scoring": "scoring",
          "update": "update"}  # StepProgress's phase -> its seconds key
LOGGED = ("num_tokens", "completions/mean_length", "reward", "kl", "loss")
# the paper's step, explicit so that a changed default does not change what is measured
PAPER_STEP = {"prompts_per_step": 4, "num_generations": 8, "max_completion_tokens": 256,
              "reward": "self", "self_score": "expected", "beta": 0.04, "loss_type": "grpo",
              "learning_rate": 5e-6}
GPU_LEARN = {"dtype": "bfloat16", "micro_batch": 8, "threads": 4}  # the profile's compute keys
SMOKE_LEARN = {"prompts_per_step": 2, "num_generations": 2, "max_completion_tokens": 8,
               "dtype": "float32", "micro_batch": 2, "threads": 1}
SMOKE_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
               "num_local_experts": 4, "num_experts_per_tok": 2, "experts_per_token": 2}
H100_USABLE_GIB = 79.2  # what CUDA reports usable on an H100 80 GB (the profile's figure)
# the README's gpt-oss-20b table (computed from shapes, not measured), GiB
README_OSS = {"learner": "~43-44", "weights": 39.0, "lora": 0.15, "context": 1.0,
              "saved_inputs": 0.4, "logits": "1.5-2.3", "engine": 19.8, "total": "~63-64"}
# what a run imports: the GPU machine lacks some (docs/gpu.md: `make gpu-bundle` carries them)
NEEDED = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pandas", "pyarrow",
          "tomli_w", "rapidfuzz")
PRIME_RL = {"model": "Qwen3-0.6B, LoRA", "gpu": "one H100", "trainer_tok_s": 13_300,
            "s_step": 2.45}  # published trainer-only figure


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "bench" / "results"),
                   help="folder for gpu.json and gpu.md (default bench/results)")
    p.add_argument("--part", choices=("all", "qwen", "oss"), default="all",
                   help="qwen: the refresh step, ours and TRL's defaults; oss: gpt-oss-20b")
    p.add_argument("--oss-tokens", type=int, default=256,
                   help="completion tokens in the gpt-oss step (default 256, the profile's)")
    p.add_argument("--tokenizer", help="tokenizer folder (default bench/device/tokenizer, else "
                   "the prepared qwen2.5-coder-1.5b; --smoke: the embedded model's)")
    p.add_argument("--smoke", action="store_true", help="tiny configs on CPU: the code, not "
                   "the measurement")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one spec (JSON) here
    return p.parse_args()


# --- the child: one run in this process -----------------------------------------------------

def one(spec: dict) -> dict:
    """One run as `spec` says: the trainer a round builds, on a random model; its steps' rows."""
    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_callback import ProgressCallback

    from dynalign.rounds import system_prompt
    from learn import trl_kl  # bench/learn.py
    from learner.progress import StepProgress
    from learner.self_reward import SelfReward
    from learner.trainer import Policy, build_trainer, fresh_lora

    cfg, learn = run_config(spec)
    torch.set_num_threads(learn.threads)
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    started = time.perf_counter()
    base = random_model(spec["model"], tokenizer, learn.dtype, spec["smoke"])
    built_s = time.perf_counter() - started
    params = sum(p.numel() for p in base.parameters())  # before the adapter joins them
    reward = SelfReward(tokenizer, cfg.prompts.reward, cfg.prompts.ca_definition,
                        learn.self_score, batch_size=learn.micro_batch)
    progress, rows = StepProgress(max_steps=learn.max_steps), []
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-gpu-") as tmp:
        trainer = build_trainer(Policy(base, fresh_lora(learn), None), tokenizer,
                                seed_prompts(learn), learn, system_prompt(cfg.prompts), reward,
                                tmp, progress=progress)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(step_recorder(progress, rows, spec["label"]))
        trainer.generation_config.min_new_tokens = learn.max_completion_tokens
        if spec["trl"]:
            trl_kl(trainer)
        trainer.train()
        lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        cuda = cuda_state()
    return {"steps": rows, "cuda": cuda, "build_s": round(built_s, 1),
            "params_b": params / 1e9,
            "lora_params_m": lora / 1e6, "batch": learn.prompts_per_step * learn.num_generations,
            "learn": {k: getattr(learn, k) for k in (*PAPER_STEP, *GPU_LEARN, "lora_rank",
                                                     "lora_alpha", "max_steps")}}


def run_config(spec: dict):
    """The run's config ([learn] overridden by the spec) and its [learn], checked as a round's."""
    from dynalign.config import load_config
    from dynalign.checks import check
    from learn import trl_defaults  # bench/learn.py

    cfg = load_config(spec["config"], {f"learn.{k}": v for k, v in spec["learn"].items()})
    learn = trl_defaults(cfg.learn) if spec["trl"] else cfg.learn
    check(dataclasses.replace(cfg, learn=learn))
    return cfg, learn


def random_model(config_file: str, tokenizer, dtype: str, smoke: bool):
    """A model of the config's architecture with random weights (seed 0) in `dtype`, built where
    it runs (on the GPU when there is one: 39 GiB of gpt-oss never passes through host memory).
    Special token ids are the tokenizer's; --smoke shrinks it to SMOKE_SHAPE."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = json.loads(Path(config_file).read_text())
    if smoke:
        values = tiny(values, len(tokenizer))
    if len(tokenizer) > values["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model "
                         f"{values['vocab_size']}: token ids would fall outside the embedding")
    values.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(**values)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))


def tiny(values: dict, vocab: int) -> dict:
    """The same architecture at SMOKE_SHAPE (the keys the config has) with `vocab` tokens."""
    out = {**values, **{k: v for k, v in SMOKE_SHAPE.items() if k in values}, "vocab_size": vocab}
    if "layer_types" in out:
        out["layer_types"] = out["layer_types"][:out["num_hidden_layers"]]
    return out


def seed_prompts(learn):
    """The first prompts_per_step prompts of the seed set's train split, as a round's dataset."""
    from datasets import Dataset

    from dynalign.dataset import SEED_FILE, read_rows

    rows = [r for r in read_rows(SEED_FILE) if r["split"] == "train"][:learn.prompts_per_step]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]}
                              for r in rows])


def step_recorder(progress, rows: list, label: str):
    """Per logged step: StepProgress's row (seconds, peak memory per phase) and TRL's figures;
    what a round's callback (learner.round.step_callback) does, without the store."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "reward" not in (logs or {}):
                return
            row = {**progress.end_step(logs["reward"]), "step": state.global_step,
                   **{k: logs[k] for k in LOGGED if k in logs}}
            rows.append(row)
            print(f"  {label} step {state.global_step}: " + ", ".join(
                f"{p} {row['seconds/' + key]:.1f} s" for p, key in PHASES.items())
                + f", step {row['seconds/step']:.1f} s" + "".join(
                f", peak {kind} {row[f'peak_{kind}_mb'] / 1024:.1f} GiB"
                for kind in ("cuda", "rss") if f"peak_{kind}_mb" in row), flush=True)

    return Recorder()


def cuda_state() -> dict | None:
    """The device, and the memory the process holds outside torch's allocator (CUDA context,
    cuBLAS workspaces): the part of the learner's share no torch counter sees."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    return {"device": torch.cuda.get_device_name(), "total_gib": round(total / GIB, 2),
            "outside_torch_gib": round((total - free - reserved) / GIB, 2)}


# --- the parent: which runs, each in a fresh process ---------------------------------------

def specs(args) -> list[dict]:
    """The runs of --part, each a JSON-able spec for `one`."""
    learn = {**PAPER_STEP, **(SMOKE_LEARN if args.smoke else GPU_LEARN)}
    qwen = {"model": str(CONFIGS / "qwen2.5-1.5b.json"), "config": None,
            "learn": {**learn, "max_steps": 2}}
    oss_learn = SMOKE_LEARN if args.smoke else {"max_completion_tokens": args.oss_tokens}
    oss = {"model": str(CONFIGS / "gpt-oss-20b.json"), "config": str(PROFILE),
           "learn": {**oss_learn, "max_steps": 1}}
    runs = {"qwen": [{**qwen, "label": "qwen-ours", "trl": False},
                     {**qwen, "label": "qwen-trl", "trl": True}],
            "oss": [{**oss, "label": "oss", "trl": False}]}
    chosen = [s for part in ("qwen", "oss") if args.part in ("all", part) for s in runs[part]]
    return [{**s, "tokenizer": args.tokenizer, "smoke": args.smoke} for s in chosen]


def spawn(spec: dict) -> dict:
    """`one(spec)` in a fresh process (CUDA hidden for --smoke), its output shown as it comes;
    its result, or how it failed (exit status and the output's last lines)."""
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if spec["smoke"] else {})}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dynalign-bench-gpu-") as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.Popen([sys.executable, __file__, "--one",
                                 json.dumps({**spec, "result": str(result)})], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        tail = collections.deque(maxlen=12)
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
        code = proc.wait()
        out = json.loads(result.read_text()) if code == 0 else {
            "failed": f"exit {code}: " + "\n".join(tail)}
    return {**out, "label": spec["label"], "wall_s": round(time.perf_counter() - started, 1)}


def environment(args) -> dict:
    from importlib.metadata import version

    return {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
            "command": " ".join(["python", "bench/gpu.py", *sys.argv[1:]]),
            "tokenizer": args.tokenizer, "cpu_count": os.cpu_count(),
            "versions": {p: version(p) for p in ("torch", "transformers", "trl", "peft",
                                                 "accelerate")}}


# --- figures from the runs ---------------------------------------------------------------------

def figures(run: dict) -> dict:
    """The measured (last) step: seconds, tokens/s and peak memory per phase (CUDA when there
    is a GPU, else the process's RSS), in GiB."""
    rows = run["steps"]
    last = rows[-1]
    tokens = last["num_tokens"] - (rows[-2]["num_tokens"] if len(rows) > 1 else 0)
    completion = last["completions/mean_length"] * run["batch"]
    seconds = {p: last["seconds/" + key] for p, key in PHASES.items()}
    seconds["step"] = last["seconds/step"]
    kinds = ("cuda", "cuda_reserved") if run["cuda"] else ("rss",)
    peaks = {p: {k: last[f"peak_{k}_mb/{p}"] / 1024 for k in kinds} for p in PHASES}
    peaks["step"] = {k: max(peaks[p][k] for p in PHASES) for k in kinds}
    return {"seconds": seconds, "tokens_per_step": tokens, "completion_tokens": completion,
            "tok_s": {"generation": completion / seconds["generation"],
                      "trainer": tokens / seconds["update"], "step": tokens / seconds["step"]},
            "peak_gib": peaks, "memory": "CUDA" if run["cuda"] else "RSS (no GPU)",
            "steps_run": len(rows)}


def comparison(ours: dict, trl: dict) -> dict:
    """TRL's defaults / ours: seconds per phase and the step's peak memory."""
    a, b = figures(ours), figures(trl)
    kind = next(iter(a["peak_gib"]["step"]))
    return {"seconds": {p: b["seconds"][p] / a["seconds"][p] if a["seconds"][p] else None
                        for p in a["seconds"]},
            "peak_memory": b["peak_gib"]["step"][kind] / a["peak_gib"]["step"][kind]}


def profile_fit(run: dict) -> dict:
    """Does the profile's split fit an H100? Its engine share (gpu_memory_utilization of the
    usable memory) + the learner: the highest peak over the phases (reserved: what the GPU lost,
    on a GPU) + what the process holds outside torch."""
    from dynalign.config import load_config

    f = figures(run)
    step = f["peak_gib"]["step"]
    peak = step.get("cuda_reserved", step.get("cuda", step.get("rss")))
    outside = (run["cuda"] or {}).get("outside_torch_gib", 0.0)
    engine = load_config(str(PROFILE)).engine.gpu_memory_utilization * H100_USABLE_GIB
    total = engine + peak + outside
    return {"engine_gib": round(engine, 2), "learner_gib": round(peak + outside, 2),
            "total_gib": round(total, 2), "usable_gib": H100_USABLE_GIB,
            "fits": total <= H100_USABLE_GIB, "headroom_gib": round(H100_USABLE_GIB - total, 2)}


def summarize(out: dict) -> None:
    """Figures of every run that finished, the TRL ratio and the profile's fit where they can."""
    runs = {r["label"]: r for r in out["runs"]}
    done = {k: r for k, r in runs.items() if "failed" not in r}
    out["figures"] = {k: figures(r) for k, r in done.items()}
    if {"qwen-ours", "qwen-trl"} <= done.keys():
        out["trl_over_ours"] = comparison(done["qwen-ours"], done["qwen-trl"])
    if "oss" in done:
        out["profile_fit"] = profile_fit(done["oss"])


# --- the markdown ------------------------------------------------------------------------------

def markdown(out: dict) -> str:
    env = out["environment"]
    device = next((r["cuda"]["device"] for r in out["runs"] if r.get("cuda")), "no GPU (CPU)")
    smoke = " --smoke (tiny configs, CPU: not a measurement)" if env["smoke"] else ""
    lines = [f"# bench/gpu.py{smoke}, {env['date']}", "",
             f"- command: `{env['command']}`; machine: {device}, {env['cpu_count']} CPUs",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             "- random weights from the published configs (bench/configs); completions forced "
             "to full length; see the script's docstring for what that changes", ""]
    for run in out["runs"]:
        if "failed" in run:
            lines += [f"**{run['label']} failed** after {run['wall_s']} s:", "```",
                      run["failed"], "```", ""]
    lines += qwen_table(out) + oss_table(out)
    return "\n".join(lines) + "\n"


def phase_rows(f: dict, kinds) -> list[str]:
    return [f"| {p} | {f['seconds'][p]:.2f} | " + " | ".join(
        f"{f['peak_gib'][p][k]:.2f}" for k in kinds) + " |" for p in (*PHASES, "step")]


def qwen_table(out: dict) -> list[str]:
    figs = out["figures"]
    if "qwen-ours" not in figs:
        return []
    o, t = figs["qwen-ours"], figs.get("qwen-trl")
    learn = next(r for r in out["runs"] if r["label"] == "qwen-ours")["learn"]
    kind = next(iter(o["peak_gib"]["step"]))  # CUDA allocated, or RSS without a GPU
    lines = ["## (a) The refresh step, Qwen2.5-1.5B's architecture", "",
             f"{learn['prompts_per_step']} prompts x G {learn['num_generations']} x "
             f"{learn['max_completion_tokens']} tokens, {learn['dtype']}, micro-batch "
             f"{learn['micro_batch']}, beta {learn['beta']}, loss {learn['loss_type']}, "
             f"self-reward {learn['self_score']}; step {o['steps_run']} (after a warm-up step); "
             f"peak memory: {o['memory']}{', allocated' if kind == 'cuda' else ''}, GiB", "",
             "| phase | ours s | TRL defaults s | TRL / ours | ours peak | TRL peak |",
             "|---|---|---|---|---|---|"]
    for p in (*PHASES, "step"):
        theirs = (f"{t['seconds'][p]:.2f} | {out['trl_over_ours']['seconds'][p] or 0:.2f}"
                  if t else "- | -")
        lines.append(f"| {p} | {o['seconds'][p]:.2f} | {theirs} | {o['peak_gib'][p][kind]:.2f} | "
                     + (f"{t['peak_gib'][p][kind]:.2f} |" if t else "- |"))
    return lines + ["", throughput(o, t),
                    f"prime-rl's published trainer-only figure ({PRIME_RL['model']}, "
                    f"{PRIME_RL['gpu']}): {PRIME_RL['trainer_tok_s']:,} tok/s, "
                    f"{PRIME_RL['s_step']} s/step", ""]


def throughput(o: dict, t: dict | None) -> str:
    return (f"tokens/s (ours): generation {o['tok_s']['generation']:,.0f} "
            f"({o['completion_tokens']:.0f} completion tokens), trainer "
            f"{o['tok_s']['trainer']:,.0f} ({o['tokens_per_step']:.0f} prompt + completion "
            f"tokens / update s), step {o['tok_s']['step']:,.0f}" + (
                f"; TRL defaults: trainer {t['tok_s']['trainer']:,.0f}, step "
                f"{t['tok_s']['step']:,.0f}" if t else ""))


def oss_table(out: dict) -> list[str]:
    figs = out["figures"]
    if "oss" not in figs:
        return []
    f, fit = figs["oss"], out["profile_fit"]
    run = next(r for r in out["runs"] if r["label"] == "oss")
    kinds = tuple(f["peak_gib"]["step"])
    r = README_OSS
    lines = ["## (b) gpt-oss-20b, learner/profiles/gpt-oss-20b-h100.toml's learner side", "",
             f"{run['params_b']:.3g} B parameters, LoRA {run['lora_params_m']:.3g} M; one step of "
             f"{run['learn']['prompts_per_step']} prompts x G {run['learn']['num_generations']} x "
             f"{run['learn']['max_completion_tokens']} tokens (the profile: 256), micro-batch "
             f"{run['learn']['micro_batch']}; no warm-up step: its times include first-call "
             f"costs", "",
             "| phase | s | " + " | ".join(f"peak {KIND_NAMES[k]} GiB" for k in kinds) + " |",
             "|---|---|" + "---|" * len(kinds)]
    lines += phase_rows(f, kinds)
    lines += ["", f"README (computed, not measured): learner {r['learner']} GiB = weights "
              f"{r['weights']} + LoRA {r['lora']} + context ~{r['context']} + saved inputs "
              f"{r['saved_inputs']} + logits {r['logits']}; engine {r['engine']}; total "
              f"{r['total']} of {H100_USABLE_GIB}",
              ("" if run["cuda"] else "(no GPU: the RSS of a tiny model, not meaningful) ")
              + f"measured split: engine share {fit['engine_gib']} + learner {fit['learner_gib']}"
              f" (highest phase peak + {(run['cuda'] or {}).get('outside_torch_gib', 0)} outside "
              f"torch) = {fit['total_gib']} GiB of {fit['usable_gib']}: "
              + ("fits" if fit["fits"] else "does NOT fit")
              + f" (headroom {fit['headroom_gib']} GiB)", ""]
    return lines


# --- main --------------------------------------------------------------------------------------

def default_tokenizer(smoke: bool) -> str:
    """--smoke: the embedded model's; else bench/device/tokenizer (`make gpu-bundle`), else the
    prepared qwen2.5-coder-1.5b's (Qwen2.5's tokenizer)."""
    from dynalign import catalog
    from dynalign.config import load_config

    if not smoke and BUNDLED_TOKENIZER.is_dir():
        return str(BUNDLED_TOKENIZER)
    return catalog.resolve("" if smoke else "qwen2.5-coder-1.5b", load_config(None).home)


def preflight(args) -> str | None:
    """Why the runs cannot start here (None: they can), found in seconds rather than minutes
    into a run; sets args.tokenizer."""
    from importlib.util import find_spec

    missing = [m for m in NEEDED if find_spec(m) is None]
    if missing:
        return (f"missing here: {', '.join(missing)} (on the GPU machine: install the wheels "
                f"`make gpu-bundle` put in bench/device/wheels; see docs/gpu.md)")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        return ("bench/gpu.py measures on a CUDA GPU and none is visible here; --smoke runs "
                "the same code on tiny configs on CPU")
    args.tokenizer = args.tokenizer or default_tokenizer(args.smoke)
    if not (Path(args.tokenizer) / "tokenizer_config.json").is_file():
        return (f"no tokenizer in {args.tokenizer}: `make gpu-bundle` copies Qwen2.5's to "
                f"bench/device/tokenizer, or pass --tokenizer")
    return None


def bench(args) -> dict:
    name = "gpu-smoke" if args.smoke else "gpu"
    paths = [Path(args.out) / f"{name}.{ext}" for ext in ("json", "md")]
    out = {"environment": environment(args), "runs": []}
    started = time.perf_counter()
    for spec in specs(args):
        print(f"[{time.perf_counter() - started:.0f} s] {spec['label']}", flush=True)
        out["runs"].append(spawn(spec))
        summarize(out)
        write_results(out, str(paths[0]))
        paths[1].write_text(markdown(out))
    out["wall_s"] = round(time.perf_counter() - started, 1)
    write_results(out, str(paths[0]))
    return out


def main() -> int:
    args = parse_args()
    preamble()
    if args.one:
        spec = json.loads(args.one)
        Path(spec["result"]).write_text(json.dumps(one(spec)))
        return 0
    problem = preflight(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    out = bench(args)
    print("\n" + markdown(out))
    return 1 if any("failed" in r for r in out["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
