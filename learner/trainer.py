"""TRL's GRPOTrainer set up as the paper's self-improving phase (Algorithm 1).

What TRL does unchanged: sampling G candidates per prompt, group-normalised advantages, the
clipped objective, the KL term to the base model (the LoRA adapter switched off: see `Policy`), the optimiser.
What dynalign adds:
- `rollout`: candidates are sampled WITH the CA system prompt, but the prompt ids handed back to
  TRL (which the loss and the reference log-probs use) are the same prompt WITHOUT it. TRL has no
  option for this; `rollout_func` is its public (experimental) hook. The sampling log-probs,
  conditioned on the system prompt, are not returned: they are not the policy's "old" log-probs
  for the prompt the loss sees.
- the settings where TRL's defaults differ from the paper (beta, loss type, KL estimator, lr,
  fp32), all from `[learn]`;
- per-phase seconds (generation, scoring, reference log-probs, update) for each step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from trl import GRPOConfig, GRPOTrainer

from learner.adapter import TARGETS


class Phases:
    """Seconds per phase of the current step; `take()` returns them and starts a new step."""

    def __init__(self):
        self.seconds = {"generation": 0.0, "scoring": 0.0, "prepare": 0.0}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def take(self, step_seconds: float) -> dict:
        s = self.seconds
        ref = max(0.0, s["prepare"] - s["generation"] - s["scoring"])
        out = {"generation": s["generation"], "scoring": s["scoring"], "ref_logprobs": ref,
               "update": max(0.0, step_seconds - s["prepare"]), "step": step_seconds}
        self.seconds = {"generation": 0.0, "scoring": 0.0, "prepare": 0.0}
        return {f"seconds/{k}": round(v, 3) for k, v in out.items()}


class PhaseTimedTrainer(GRPOTrainer):
    """GRPOTrainer that times its batch preparation (rollouts + rewards + reference log-probs)."""

    phases: Phases

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self.phases.add("prepare", time.perf_counter() - start)


def system_rollout(system_prompt: str, phases: Phases):
    """A `rollout_func`: sample with the system prompt, hand back ids without it."""
    def rollout(prompts, trainer) -> dict:
        start = time.perf_counter()
        with_system = [[{"role": "system", "content": system_prompt}] + list(p) for p in prompts]
        sample_ids, _, _ = trainer._tokenize_prompts(with_system)
        completion_ids, _ = trainer._generate_single_turn(sample_ids, None, {}, trainer.num_generations)
        loss_ids, _, _ = trainer._tokenize_prompts(prompts)
        phases.add("generation", time.perf_counter() - start)
        return {"prompt_ids": loss_ids, "completion_ids": completion_ids, "logprobs": None}
    return rollout


def timed_reward(func, phases: Phases):
    def reward(prompts, completions, **kwargs):
        start = time.perf_counter()
        try:
            return func(prompts, completions, **kwargs)
        finally:
            phases.add("scoring", time.perf_counter() - start)
    reward.__name__ = getattr(func, "__name__", "reward")
    return reward


def per_device_batch(learn) -> int:
    """Completions per step (prompts_per_step x G, the paper's batch 32) split over the processes
    `accelerate launch` starts, so the global batch stays the configured one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return -(-learn.prompts_per_step * learn.num_generations // world)


def grpo_config(learn, out_dir: str, cuda: bool) -> GRPOConfig:
    return GRPOConfig(
        output_dir=out_dir, report_to=[], save_strategy="no", logging_steps=1,
        per_device_train_batch_size=per_device_batch(learn),
        gradient_accumulation_steps=1, num_generations=learn.num_generations,
        max_completion_length=learn.max_completion_tokens, temperature=learn.temperature,
        top_p=learn.top_p, top_k=0, learning_rate=learn.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, epsilon=learn.epsilon, beta=learn.beta,
        loss_type=learn.loss_type, use_bias_correction_kl=False, scale_rewards="group",
        max_steps=learn.max_steps, seed=learn.seed, disable_dropout=True,
        gradient_checkpointing=cuda,  # saves GPU memory; on CPU it only costs ~15 % of a step
        bf16=cuda and learn.dtype == "bfloat16", use_cpu=not cuda,
        use_vllm=learn.use_vllm, vllm_mode="colocate",
        vllm_gpu_memory_utilization=learn.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=False, dataloader_num_workers=0,
    )


@dataclass
class Policy:
    """The base model, the LoRA config to train, and the weights to start from (None: fresh).

    The adapter is created by TRL from `lora` and the starting weights loaded into it afterwards,
    rather than handing TRL a PeftModel: for a PeftModel TRL anchors the KL term to a frozen copy
    of the starting adapter, while the paper (and a loop that must not drift round after round)
    wants it anchored to the base model, which is what TRL's adapter-disabled reference gives."""

    base: object
    lora: object
    start: dict | None


def load_policy(model_path: str, learn, adapter_path: str | None) -> Policy:
    from peft import LoraConfig
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, learn.dtype))
    if adapter_path:
        lora = LoraConfig.from_pretrained(adapter_path)
        lora.inference_mode = False
        return Policy(base, lora, load_file(f"{adapter_path}/adapter_model.safetensors"))
    lora = LoraConfig(r=learn.lora_rank, lora_alpha=learn.lora_alpha, target_modules=TARGETS,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return Policy(base, lora, None)


def build_trainer(policy: Policy, tokenizer, dataset, learn, system_prompt: str, reward,
                  out_dir: str, callbacks=()) -> PhaseTimedTrainer:
    from peft import set_peft_model_state_dict

    phases = Phases()
    trainer = PhaseTimedTrainer(
        model=policy.base, peft_config=policy.lora, processing_class=tokenizer,
        train_dataset=dataset, reward_funcs=[timed_reward(reward, phases)],
        callbacks=list(callbacks), args=grpo_config(learn, out_dir, torch.cuda.is_available()),
        rollout_func=system_rollout(system_prompt, phases))
    trainer.phases = phases
    if policy.start is not None:
        result = set_peft_model_state_dict(trainer.model, policy.start)
        if result.unexpected_keys:
            raise ValueError(f"the active adapter does not fit: {result.unexpected_keys[:3]}")
    if hasattr(reward, "bind"):
        reward.bind(trainer.model)
    return trainer
