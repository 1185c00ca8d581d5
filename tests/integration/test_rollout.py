"""The paper's split between sampling and the loss, on the real TRL trainer and the embedded model:
candidates are sampled WITH the CA system prompt, the prompt ids TRL trains on are WITHOUT it.

Sampling runs at a temperature of 1e-4 (greedy in effect), so what the rollout generated can be
compared with a plain greedy `generate` of the same prompt with and without the system prompt."""

import os

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from dynalign.config import load_config  # noqa: E402
from dynalign.rewards import brevity  # noqa: E402
from dynalign.rounds import system_prompt  # noqa: E402
from learner.trainer import build_trainer, load_policy, system_rollout, Phases  # noqa: E402

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
    trainer = build_trainer(policy, tokenizer, dataset, cfg.learn, system_prompt(cfg.prompts),
                            brevity(12), str(tmp_path_factory.mktemp("trainer")))
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
    out = system_rollout(system_prompt(cfg.prompts), Phases())([user, user], trainer)

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


def test_one_step_logs_every_phase(setup):
    cfg, tokenizer, trainer = setup
    trainer.train()
    seconds = trainer.phases.take(step_seconds=1.0)
    assert set(seconds) == {"seconds/generation", "seconds/scoring", "seconds/ref_logprobs",
                            "seconds/update", "seconds/step"}
