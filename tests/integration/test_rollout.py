"""The paper's split between sampling and the loss, on the real TRL trainer and the embedded model:
candidates are sampled WITH the CA system prompt, the prompt ids TRL trains on are WITHOUT it.
Also: a step's phases as a round times, measures and reports them, and micro-batching (bounded
memory) changing nothing of the step the paper specifies; learn.iterations (TRL's mu) reusing
each scored batch for several optimiser steps.

Sampling runs at a temperature of 1e-4 (greedy in effect), so what the rollout generated can be
compared with a plain greedy `generate` of the same prompt with and without the system prompt."""

import json
import os

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dynalign.config import load_config  # noqa: E402
from dynalign.rounds import system_prompt  # noqa: E402
from learner.progress import StepProgress  # noqa: E402
from learner.self_reward import SelfReward  # noqa: E402
from learner.trainer import build_trainer, load_policy, system_rollout  # noqa: E402

PROMPT = "My neighbour's garden is overgrown and she is unwell. What should I do this weekend?"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model_path = os.environ.get("DYNALIGN_TEST_MODEL") or str(
        __import__("pathlib").Path(__file__).resolve().parents[2] / "state" / "model")
    cfg = load_config(None, {"learn.max_steps": 1, "learn.num_generations": 2,
                             "learn.prompts_per_step": 1, "learn.max_completion_tokens": 12,
                             "learn.temperature": 1e-4})
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    policy = load_policy(model_path, cfg.learn, None)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": PROMPT}]}])
    reports = []
    progress = StepProgress(reports.append, max_steps=1, every_s=0.0)
    reward = SelfReward(tokenizer, cfg.prompts.reward, cfg.prompts.ca_definition,
                        batch_size=cfg.learn.micro_batch)  # the paper's reward: scoring takes time
    trainer = build_trainer(policy, tokenizer, dataset, cfg.learn, system_prompt(cfg.prompts),
                            reward, str(tmp_path_factory.mktemp("trainer")), progress=progress)
    trainer.reports = reports
    return cfg, tokenizer, trainer


def greedy(trainer, tokenizer, messages, n_tokens):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = trainer.model.generate(**ids, max_new_tokens=n_tokens, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_rollout_samples_with_the_system_prompt_and_trains_without_it(setup):
    cfg, tokenizer, trainer = setup
    user = [{"role": "user", "content": PROMPT}]
    out = system_rollout(system_prompt(cfg.prompts), StepProgress())([user, user], trainer)

    loss_prompt = tokenizer.decode(out["prompt_ids"][0])
    assert PROMPT in loss_prompt
    assert "Collective Agency" not in loss_prompt  # the CA system prompt is not in the loss
    assert "Knowledge: the expansion" in system_prompt(cfg.prompts)  # its definition is filled in
    assert out["prompt_ids"][0] == tokenizer.apply_chat_template(
        user, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert out["logprobs"] is None  # sampling log-probs under the system prompt are not reused

    completion = out["completion_ids"][0][:8]
    with_system = greedy(trainer, tokenizer, [{"role": "system", "content": system_prompt(cfg.prompts)}]
                         + user, 8)
    without = greedy(trainer, tokenizer, user, 8)
    assert with_system != without  # the test can tell the two apart
    assert completion == with_system


def test_one_step_times_measures_and_reports_every_phase(setup):
    cfg, tokenizer, trainer = setup
    trainer.reports.clear()
    trainer.train()
    row = trainer.progress.end_step(reward=None)
    phases = ("generation", "ref_logprobs", "scoring", "update")
    assert all(row[f"seconds/{p}"] > 0 for p in phases), row
    assert sum(row[f"seconds/{p}"] for p in phases) <= row["seconds/step"]
    for phase in ("generation", "reference", "scoring", "update"):
        assert row[f"peak_rss_mb/{phase}"] > 100, row  # a process holding torch and a model
    assert row["peak_rss_mb"] == max(row[f"peak_rss_mb/{p}"] for p in
                                     ("generation", "reference", "scoring", "update"))

    seen = [r["step_phase"] for r in trainer.reports]
    order = [p for i, p in enumerate(seen) if i == 0 or seen[i - 1] != p]
    assert order == ["generation", "reference", "scoring", "update"], seen
    generation = [r for r in trainer.reports if r["step_phase"] == "generation"]
    prompt = len(tokenizer.apply_chat_template(
        [{"role": "system", "content": system_prompt(cfg.prompts)},
         {"role": "user", "content": PROMPT}], add_generation_prompt=True, return_dict=True)["input_ids"])
    assert generation[0]["done"] == 0 and generation[0]["total"] == 2 * (prompt + 12)
    assert generation[-1]["done"] >= 2 * prompt and generation[-1]["unit"] == "tokens"
    scoring = [r for r in trainer.reports if r["step_phase"] == "scoring"]
    assert scoring[-1]["done"] == scoring[-1]["total"] == 2
    # a projected ETA exists before the first step ends
    assert any(r["eta_s"] is not None for r in trainer.reports if r["step_phase"] == "generation")


# micro-batching bounds memory and changes nothing else
def tiny_policy(folder, tokenizer, learn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return load_policy(str(folder), learn, None)


def length_reward(prompts, completions, **kwargs):
    """Characters of each answer / 10: random tokens give every candidate a different reward."""
    return [len(c[0]["content"] if isinstance(c, list) else c) / 10 for c in completions]


def two_steps(tmp_path, tokenizer, micro_batch: int) -> dict:
    """Two optimiser steps of 2 prompts x G 4 on a tiny random model: the completions sampled,
    and per step the loss TRL logged and the LoRA gradients just before the optimiser step. The
    first step is on-policy at the base (LoRA B = 0): its loss is ~0 (-mean advantage, KL 0)
    whatever the batching; the second's is beta x the KL to the base after the first update (5e-4
    at this learning rate; at the default 5e-6 it is lost in float noise, -4e-7), and its samples
    and gradients follow from that update."""
    from transformers import TrainerCallback

    cfg = load_config(None, {"learn.max_steps": 2, "learn.num_generations": 4,
                             "learn.prompts_per_step": 2, "learn.max_completion_tokens": 8,
                             "learn.micro_batch": micro_batch, "learn.rollout_dtype": "float32",
                             "learn.learning_rate": 5e-2})
    policy = tiny_policy(tmp_path / f"model-{micro_batch}", tokenizer, cfg.learn)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]}
                                 for text in ("Name a river.", "Name a mountain.")])
    seen = {"completions": [], "grads": [], "loss": []}

    def reward(prompts, completions, completion_ids, **kwargs):
        seen["completions"] += [list(ids) for ids in completion_ids]
        return length_reward(prompts, completions)

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen["grads"].append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                  if p.requires_grad})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in (logs or {}):
                seen["loss"].append(logs["loss"])

    trainer = build_trainer(policy, tokenizer, dataset, cfg.learn, system_prompt(cfg.prompts),
                            reward, str(tmp_path / f"out-{micro_batch}"), callbacks=[Capture()])
    seen["batches"] = (trainer.args.per_device_train_batch_size,
                       trainer.args.gradient_accumulation_steps)
    trainer.train()
    return seen


def grad_norm(grads: dict) -> float:
    """The L2 norm of all the gradients together."""
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])).item()


def test_a_micro_batched_step_has_the_loss_and_gradients_of_the_whole_batch(setup, tmp_path):
    """Step by step the same samples, gradients and loss, micro-batched or not: the first step
    shows the gradient is accumulated to the whole batch's, the second that the update made
    from it was the same and that the loss (nonzero there) is the whole batch's mean."""
    _, tokenizer, _ = setup
    whole = two_steps(tmp_path, tokenizer, micro_batch=8)
    micro = two_steps(tmp_path, tokenizer, micro_batch=2)
    assert whole["batches"] == (8, 1) and micro["batches"] == (2, 4)  # 8 completions, one step
    assert len(whole["completions"]) == 16  # two steps of 8
    assert whole["completions"] == micro["completions"]  # the same samples, step by step
    assert len(set(map(tuple, whole["completions"]))) > 1
    assert len(whole["grads"]) == len(micro["grads"]) == 2
    for step, grads in enumerate(whole["grads"]):
        assert grad_norm(grads) > 1e-2, step  # far above the tolerance: something to compare
        assert micro["grads"][step].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(micro["grads"][step][name], g, rtol=1e-4, atol=1e-7,
                                       msg=f"step {step + 1}: {name}")
    assert abs(whole["loss"][1]) > 1e-4  # the second step's KL term: a loss to compare
    assert micro["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-7)


# learn.iterations: TRL's num_iterations (mu), each scored batch feeding mu optimiser steps
def test_with_iterations_2_one_rollout_and_one_scoring_feed_two_optimiser_steps(tmp_path):
    """Four optimiser steps at learn.iterations = 2 on a tiny random model (the embedded
    tokenizer): two rollouts and two reward calls. Steps 1 and 2 train on rollout 1's batch,
    steps 3 and 4 on rollout 2's; the loss's inputs carry TRL's old log-probs, taken once after
    the rollout (the same at the reuse step, while the policy moved), and prompt ids without the
    CA system prompt. Through round.py's callback: a metrics line per step, rewards only at the
    scoring steps; the reuse steps show one update phase in the progress."""
    from transformers import TrainerCallback

    from learner.round import step_callback

    model_path = os.environ.get("DYNALIGN_TEST_MODEL") or str(
        __import__("pathlib").Path(__file__).resolve().parents[2] / "state" / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    cfg = load_config(None, {"learn.max_steps": 4, "learn.iterations": 2,
                             "learn.num_generations": 2, "learn.prompts_per_step": 1,
                             "learn.max_completion_tokens": 6, "learn.micro_batch": 1,
                             "learn.rollout_dtype": "float32", "learn.learning_rate": 5e-2,
                             "learn.converge_window": 10})
    policy = tiny_policy(tmp_path / "model", tokenizer, cfg.learn)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]}
                                 for text in ("Name a river.", "Name a mountain.")])
    seen = {"rewards": 0, "rollouts": [], "losses": [], "optimiser_steps": 0}

    def reward(prompts, completions, **kwargs):
        seen["rewards"] += 1
        return length_reward(prompts, completions)
    reward.batch_size = 100  # one call per scored batch

    class Count(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            seen["optimiser_steps"] += 1

    reports = []
    progress = StepProgress(reports.append, max_steps=4, every_s=0.0, iterations=2)
    trainer = build_trainer(policy, tokenizer, dataset, cfg.learn, system_prompt(cfg.prompts),
                            reward, str(tmp_path / "out"), callbacks=[Count()], progress=progress)

    class Store:
        def update_round(self, round_id, **fields):
            pass

    metrics = tmp_path / "metrics.jsonl"
    trainer.add_callback(step_callback(cfg, Store(), 1, progress, metrics))
    rollout, compute_loss = trainer.rollout_func, trainer.compute_loss

    def counted_rollout(prompts, trainer_):
        out = rollout(prompts, trainer_)
        seen["rollouts"].append(out)
        return out

    def kept_loss(model, inputs, *args, **kwargs):
        seen["losses"].append({k: inputs[k].detach().clone() for k in
                               ("prompt_ids", "completion_ids", "old_per_token_logps")
                               if inputs.get(k) is not None})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.rollout_func, trainer.compute_loss = counted_rollout, kept_loss
    trainer.train()

    assert trainer.state.global_step == seen["optimiser_steps"] == 4
    assert len(seen["rollouts"]) == 2 and seen["rewards"] == 2  # one per two optimiser steps
    for out in seen["rollouts"]:
        for ids in out["prompt_ids"]:
            text = tokenizer.decode(ids)
            assert "Name a" in text and "Collective Agency" not in text
    steps = [seen["losses"][i:i + 2] for i in range(0, 8, 2)]  # 2 micro-batches a step
    assert len(seen["losses"]) == 8
    for micro in seen["losses"]:
        assert "old_per_token_logps" in micro  # TRL computed them at generation (mu > 1)
        assert "Collective Agency" not in tokenizer.decode(micro["prompt_ids"][0])

    def rows(step):  # completion row -> its old log-probs, over a step's micro-batches
        return {tuple(m["completion_ids"][0].tolist()): m["old_per_token_logps"][0]
                for m in step}

    first, reused, second = rows(steps[0]), rows(steps[1]), rows(steps[2])
    assert first.keys() == reused.keys() and first.keys() != second.keys()
    assert rows(steps[3]).keys() == second.keys()
    for completion, old in first.items():
        torch.testing.assert_close(reused[completion], old, rtol=0, atol=0)  # taken once

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and [r["batch"] for r in lines] == [1, 1, 2, 2]
    assert [r.get("reward") is not None for r in lines] == [True, False, True, False]
    assert all("kl" in r and "clip_ratio" in r for r in lines)
    assert lines[1]["seconds/generation"] == lines[1]["seconds/scoring"] == 0.0
    assert lines[1]["seconds/update"] > 0
    during = {}  # the phases each step showed (its "step" is the steps done before it)
    for r in reports:
        if "step_phase" in r:
            during.setdefault(r["step"], []).append(r["step_phase"])
    assert set(during[0]) == set(during[2]) == {"generation", "reference", "scoring", "update"}
    assert set(during[1]) == set(during[3]) == {"update"}
    reference = [r for r in reports if r.get("step_phase") == "reference" and r["step"] == 0]
    assert reference[-1]["total"] == 4  # old and reference log-probs: 2 passes x 2 micro-batches
    assert reference[-1]["done"] == 4
    assert all(r["eta_s"] is not None for r in reports if r["step"] >= 1)
