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
- micro-batches: the step's 32 completions go through the loss, the reference pass and
  self-scoring a few sequences at a time (gradient accumulation), still one optimiser step per 32;
- `learn.iterations` (TRL's `num_iterations`, the GRPO paper's mu): each generated and scored
  batch feeds that many optimiser steps. TRL generates when its micro-step counter is a multiple
  of steps_per_generation x num_iterations (here: at optimiser steps 0, mu, 2 mu, ...), repeats
  each batch of prompts mu x steps_per_generation times in its sampler, and, because generation
  then no longer follows every optimiser step, computes the policy's "old" log-probs of the
  batch right after the rollout (on the prompt ids we hand back, without the system prompt) for
  the clipped ratio of the steps that reuse it. Those steps have only an update phase;
- the no-grad phases (rollouts, self-scoring) in bf16 where that is faster (learner/precision.py);
- per-phase seconds, peak memory and live progress of each step (learner/progress.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from dynalign import conversation
from learner.adapter import TARGETS
from learner.precision import frozen_weights_in, rollout_dtype
from learner.progress import StepProgress


def system_rollout(system_prompt: str, progress: StepProgress, dtype=None, record=None):
    """A `rollout_func`: sample with the system prompt (frozen weights in `dtype`), hand back ids
    without it. Ends the generation phase and starts the reference phase (TRL's next: the
    policy's old log-probs when it will reuse the batch, then the reference log-probs).
    `record` ((prompt, sampled text, loss text) -> None) gets each batch's first prompt, as
    sampled and as the loss sees it, decoded: what the model was shown, checkable."""
    def rollout(prompts, trainer) -> dict:
        with_system = [conversation.with_system(system_prompt, list(p)) for p in prompts]
        sample_ids, _, _ = trainer._tokenize_prompts(with_system)
        width = max(len(ids) for ids in sample_ids)  # left-padded to the longest: the prefill
        progress.phase("generation", len(sample_ids) * (width + trainer.max_completion_length),
                       "tokens")  # TRL hands over each prompt G times: one row per sequence
        with frozen_weights_in(trainer.model, dtype):
            completion_ids, _ = trainer._generate_single_turn(sample_ids, None, {},
                                                              trainer.num_generations)
        loss_ids, _, _ = trainer._tokenize_prompts(prompts)
        if record:
            decode = trainer.processing_class.decode
            record(prompts[0], decode(sample_ids[0]), decode(loss_ids[0]))
        passes = (trainer.num_iterations > 1) + (trainer.beta != 0.0)  # old, reference log-probs
        progress.phase("reference", passes * -(-len(sample_ids)
                                                // trainer.args.per_device_train_batch_size),
                       "micro-batches")
        return {"prompt_ids": loss_ids, "completion_ids": completion_ids, "logprobs": None}
    return rollout


def chunked_reward(func, progress: StepProgress, chunk: int, accumulation: int):
    """The reward called `chunk` candidates at a time (the scoring phase's progress, and its
    memory bound); then the update phase begins. Rewards score each candidate on its own, so
    chunking changes no score."""
    size = getattr(func, "batch_size", chunk)

    def reward(prompts, completions, **kwargs):
        progress.phase("scoring", len(completions), "candidates")
        scores = []
        # a reward that reads the policy (SelfReward) gets its bf16 copy once for the phase,
        # not once per chunk (its own swap then finds the weights already in that dtype)
        with frozen_weights_in(getattr(func, "model", None), getattr(func, "dtype", None)):
            for i in range(0, len(completions), size):
                part = {k: v[i:i + size] if isinstance(v, list) and len(v) == len(completions)
                        else v for k, v in kwargs.items()}
                scores += func(prompts[i:i + size], completions[i:i + size], **part)
                progress.tick(len(completions[i:i + size]))
        progress.phase("update", accumulation, "micro-batches")
        return scores
    reward.__name__ = getattr(func, "__name__", "reward")
    return reward


def batches(learn) -> tuple[int, int]:
    """(micro-batch, accumulation steps): this process's completions per optimiser step
    (prompts_per_step x G, the paper's batch 32, split over the processes `accelerate launch`
    starts) run through the loss `micro` sequences at a time, `accumulation` times, before one
    optimiser step. `micro` is the largest divisor of the completions not above learn.micro_batch,
    so every micro-batch is the same size and the accumulated gradient is the full batch's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    completions = -(-learn.prompts_per_step * learn.num_generations // world)
    micro = max(d for d in range(1, min(learn.micro_batch, completions) + 1) if completions % d == 0)
    return micro, completions // micro


class StepCallback(TrainerCallback):
    """Opens each optimiser step on the trainer's StepProgress (round.py's callback closes it).
    A step that reuses the last batch (learn.iterations > 1: TRL generates at optimiser steps
    0, mu, 2 mu, ...) has neither rollout nor reward to start its phases: it is all update."""

    def __init__(self, progress: StepProgress):
        self.progress = progress

    def on_step_begin(self, args, state, control, **kwargs):
        self.progress.begin_step()
        if state.global_step % args.num_iterations:
            self.progress.phase("update", args.gradient_accumulation_steps, "micro-batches")


def grpo_config(learn, out_dir: str, cuda: bool) -> GRPOConfig:
    micro, accumulation = batches(learn)
    return GRPOConfig(
        output_dir=out_dir, report_to=[], save_strategy="no", logging_steps=1,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=learn.num_generations,
        max_completion_length=learn.max_completion_tokens, temperature=learn.temperature,
        top_p=learn.top_p, top_k=0, learning_rate=learn.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, epsilon=learn.epsilon, beta=learn.beta,
        loss_type=learn.loss_type, use_bias_correction_kl=False, scale_rewards="group",
        max_steps=learn.max_steps, num_iterations=learn.iterations, seed=learn.seed,
        disable_dropout=True,
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
    return Policy(base, fresh_lora(learn), None)


def fresh_lora(learn):
    """The LoRA config of a new adapter: learn's rank and alpha on TARGETS (those of them that
    are linear layers of the model: on gpt-oss the experts are 3-D parameters, left alone)."""
    from peft import LoraConfig

    return LoraConfig(r=learn.lora_rank, lora_alpha=learn.lora_alpha, target_modules=TARGETS,
                      lora_dropout=0.0, task_type="CAUSAL_LM")


def build_trainer(policy: Policy, tokenizer, dataset, learn, system_prompt: str, reward,
                  out_dir: str, callbacks=(), progress: StepProgress | None = None,
                  record=None) -> GRPOTrainer:
    """TRL's GRPOTrainer as a round runs it; `trainer.progress` times and reports each step;
    `record`: gets each batch's first prompt as sampled and as the loss sees it (system_rollout)."""
    from peft import set_peft_model_state_dict

    progress = progress or StepProgress(max_steps=learn.max_steps, iterations=learn.iterations)
    dtype = rollout_dtype(learn)
    if getattr(reward, "reads_policy", False):  # self-reward: the rollout dtype too
        reward.dtype = dtype
    args = grpo_config(learn, out_dir, torch.cuda.is_available())
    trainer = GRPOTrainer(
        model=policy.base, peft_config=policy.lora, processing_class=tokenizer,
        train_dataset=dataset, callbacks=[StepCallback(progress), *callbacks], args=args,
        reward_funcs=[chunked_reward(reward, progress, args.per_device_train_batch_size,
                                     args.gradient_accumulation_steps)],
        rollout_func=system_rollout(system_prompt, progress, dtype, record))
    trainer.progress = progress
    decoder = trainer.model.get_base_model().get_decoder()
    progress.watch(getattr(decoder, "layers", [decoder]))
    if policy.start is not None:
        result = set_peft_model_state_dict(trainer.model, policy.start)
        if result.unexpected_keys:
            raise ValueError(f"the active adapter does not fit: {result.unexpected_keys[:3]}")
    if getattr(reward, "reads_policy", False):
        reward.bind(trainer.model)
    return trainer
