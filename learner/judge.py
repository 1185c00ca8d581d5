"""A judge: the configured endpoint, or a model loaded in this process (`url = "local"`).

Every judging role (the learner's reward, the gate's and `dynalign eval pairwise`'s pairwise
judge, `dynalign judge score | check`) opens its judge here from an EndpointConfig, so a judge
is configured the same way everywhere. A local judge is a frozen causal LM read with the paper's
prompts: a 0-5 score as the expected value of the digit tokens' probabilities (or the greedy
digit, `reading = "greedy"`), batched, by the same code that reads self-rewards
(learner/self_reward.py), and a pairwise verdict by greedy decoding with the probabilities of
"A" and "B" beside it (the balanced reading, dynalign/evaluate.py). Why in-process by default
on a CPU: two cores cannot hold a second engine beside the serving one and the learner.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from dynalign.catalog import resolve
from dynalign.endpoint import Endpoint
from dynalign.errors import ModelError
from dynalign.prompts import ASPECTS, aspect_template
from dynalign.rewards import JudgeReward

LOCAL = "local"


@dataclass
class Judge:
    """What judges (`label`: exactly which model, where), its chat call and its 0-5 reward."""

    label: str
    chat: object  # (messages, seed=None) -> str
    reward: object  # TRL reward: (prompts, completions, **kwargs) -> list[float]
    workers: int  # concurrent chat calls worth making
    weigh: object = None  # (messages) -> (verdict text, {"A": p, "B": p}); local judges only
    aspect_rewards: dict = field(default_factory=dict)  # aspect -> its 0-5 reward (prompts.ASPECT)
    pairwise_template: str = ""  # its own pairwise prompt (a panel member's); "" = the config's

    def aspects(self, prompts: list, completions: list) -> dict[str, list[float | None]]:
        """Each answer's 0-5 score on each aspect of CA (knowledge, power, vitality, benevolence),
        read like the holistic reward, None where unreadable; one judgement per aspect."""
        return {name: self.aspect(name, prompts, completions) for name in self.aspect_rewards}

    def aspect(self, name: str, prompts: list, completions: list) -> list[float | None]:
        """Each answer's 0-5 score on one aspect."""
        return self.aspect_rewards[name].read(prompts, completions)

    def pairwise(self, cfg, prompts: list[str], answers_a: list[str], answers_b: list[str],
                 progress=None) -> dict:
        """A vs B with the configured pairwise prompt and bootstrap (dynalign/evaluate.py), with
        the balanced reading when this judge can weigh its verdicts."""
        from dynalign.evaluate import pairwise

        return pairwise(prompts, answers_a, answers_b, self.chat,
                        self.pairwise_template or cfg.prompts.pairwise,
                        cfg.prompts.ca_definition, workers=self.workers,
                        resamples=cfg.eval.bootstrap, level=cfg.eval.level, seed=cfg.eval.seed,
                        progress=progress, weigh=self.weigh)


def open_judge(endpoint, cfg, reading: str = "expected", batch_size: int = 4,
               template: str = "") -> Judge:
    """`endpoint` (an EndpointConfig) as a Judge; `cfg` gives the prompts, paths and dtypes;
    `template`, a reward prompt of its own (a panel member's), else prompts.reward."""
    template, definition = template or cfg.prompts.reward, cfg.prompts.ca_definition
    aspects = {name: aspect_template(cfg.prompts.aspect, name) for name in ASPECTS}
    if endpoint.url == LOCAL:
        local = LocalJudge(endpoint.model, resolve(endpoint.model, cfg.home), cfg.learn, reading,
                           batch_size, endpoint.max_tokens, template, definition)
        return Judge(local.label, local.chat, local.reward, workers=1, weigh=local.weigh,
                     aspect_rewards={n: local.scorer(t) for n, t in aspects.items()})
    remote = Endpoint.from_config("judge", endpoint, cfg.generate, cfg.gateway_url)
    return Judge(f"{remote.model} at {remote.url}", remote.chat,
                 JudgeReward(remote, template, definition), workers=cfg.eval.concurrency,
                 aspect_rewards={n: JudgeReward(remote, t, definition) for n, t in aspects.items()})


class LocalJudge:
    def __init__(self, name: str, path: str, learn, reading: str, batch_size: int,
                 max_new_tokens: int, template: str, definition: str):
        from learner.precision import rollout_dtype

        self.dtype = rollout_dtype(learn)
        self.model, self.tokenizer = load_frozen(path, self.dtype)
        self.max_new_tokens, self.definition = max_new_tokens, definition
        self.reading, self.batch_size = reading, batch_size
        where = "" if name == path else f"{path}, "
        self.label = f"{name} ({where}local, {str(self.dtype).removeprefix('torch.')})"
        self.reward = self.scorer(template)
        self.verdict_ids = verdict_ids(self.tokenizer)

    def scorer(self, template: str):
        """A 0-5 reward reading this judge's frozen model with `template` (the reward prompt, or
        one aspect's); each keeps the KV of its own prompt's shared beginning."""
        from learner.self_reward import SelfReward

        reward = SelfReward(self.tokenizer, template, self.definition, self.reading,
                            self.batch_size, self.max_new_tokens, reads_policy=False)
        reward.__name__ = "judge_reward"
        reward.bind(self.model)
        return reward

    def chat(self, messages: list[dict], seed: int | None = None) -> str:
        return self.weigh(messages)[0]

    def weigh(self, messages: list[dict]) -> tuple[str, dict]:
        """The greedy answer, and the probabilities of the verdict tokens "A" and "B" at its
        first token. That first token comes from one forward over the cached prefix (pairwise
        verdicts are one token: "A", "B", "tie"); only when it alone is not a verdict does the
        answer go on to full greedy decoding."""
        from dynalign.evaluate import parse_verdict
        from learner.reading import answer, chat_ids, next_token_logits

        row = chat_ids(self.tokenizer, messages)
        logits = next_token_logits(self.model, [row], self.reward.prefix_cache)[0]
        probs = logits.softmax(-1)
        weights = {v: probs[self.verdict_ids[v]].item() for v in ("A", "B")}
        text = self.tokenizer.decode([logits.argmax().item()], skip_special_tokens=True)
        if parse_verdict(text) is None:
            text = answer(self.model, self.tokenizer, [messages], self.max_new_tokens)[0]
        return text, weights


def verdict_ids(tokenizer) -> dict[str, int]:
    """The token of "A" and of "B" as the first token of an answer."""
    ids = {v: tokenizer.encode(v, add_special_tokens=False) for v in ("A", "B")}
    if any(len(i) != 1 for i in ids.values()):
        raise ModelError(f"local judge: its tokenizer splits a verdict letter ({ids})")
    return {v: i[0] for v, i in ids.items()}


@functools.lru_cache(maxsize=2)
def load_frozen(path: str, dtype) -> tuple:
    """The model and tokenizer at `path`, frozen, in eval mode, on the GPU if there is one; loaded
    once per process (the reward and the gate's judge are often the same model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise ModelError(f"local judge {path}: cannot load it ({e}); prepare a named model with "
                         f"`dynalign model prepare NAME`, or give a model folder") from None
    model.requires_grad_(False).eval()
    return model.to("cuda") if torch.cuda.is_available() else model, tokenizer
