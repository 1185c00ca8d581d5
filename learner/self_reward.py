"""Self-reward: the policy scores its own answers 0-5 with the paper's CA reward prompt.

Two readings of the same prompt, both deterministic (the paper disables sampling here):
- "greedy": the paper's way. Generate greedily; the answer must start with a digit 0-5 (the
  prompt asks for only that); any other answer scores 0 and is counted as unreadable.
- "expected": one forward pass; the next-token probabilities of the digit tokens "0".."5",
  renormalised, give the expected score. It always yields a score, is graded (so fewer groups
  have zero spread), and needs no generation. See docs/rounds.md for which is the default and why.
"""

from __future__ import annotations

import time

import torch

from dynalign.conversation import prompt_text
from dynalign.rewards import parse_score, reward_prompt, text_of
from learner.precision import frozen_weights_in
from learner.reading import PrefixCache, chat_ids, next_token_logits


class SelfReward:
    """Scores with `model`: the policy itself (bound by the trainer once it has wrapped it), or,
    with `reads_policy=False`, a local judge's own frozen model (learner/judge.py)."""

    __name__ = "self_reward"

    def __init__(self, tokenizer, template: str, definition: str, mode: str = "expected",
                 batch_size: int = 8, max_new_tokens: int = 8, reads_policy: bool = True):
        self.tokenizer, self.template, self.definition = tokenizer, template, definition
        self.mode, self.batch_size, self.max_new_tokens = mode, batch_size, max_new_tokens
        self.digits = digit_token_ids(tokenizer)
        self.reads_policy = reads_policy
        # the shared beginning's KV is kept between calls only for a frozen judge's model
        self.prefix_cache = None if reads_policy else PrefixCache()
        self.model = None  # the policy, bound once the trainer has wrapped it
        self.dtype = None  # its frozen weights' dtype while scoring (learner/precision.py)
        self.unreadable = self.scored = 0
        self.seconds = 0.0

    def bind(self, model) -> None:
        self.model = model

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [0.0 if s is None else s for s in self.read(prompts, completions)]

    def read(self, prompts, completions) -> list[float | None]:
        """The scores, None where a greedy answer starts with no digit (the reward counts those
        as 0; a panel leaves them out)."""
        start = time.perf_counter()
        texts = [reward_prompt(self.template, self.definition, prompt_text(p), text_of(c))
                 for p, c in zip(prompts, completions)]
        score = self.expected if self.mode == "expected" else self.greedy
        scores = []
        with frozen_weights_in(self.model, self.dtype):
            for i in range(0, len(texts), self.batch_size):
                scores += score(texts[i:i + self.batch_size])
        self.seconds += time.perf_counter() - start
        self.scored += len(scores)
        return scores

    @torch.no_grad()
    def expected(self, texts: list[str]) -> list[float]:
        logits = next_token_logits(self.model, self._rows(texts), self.prefix_cache)
        return expected_scores(logits, self.digits)

    @torch.no_grad()
    def greedy(self, texts: list[str]) -> list[float | None]:
        ids, mask = self._encode(texts)
        # In training mode with gradient checkpointing (TRL's default) transformers drops the
        # KV cache while generate() still feeds one token per step: every token after the first
        # would be generated without context. Generate in eval mode, then restore the mode.
        training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        finally:
            self.model.train(training)
        answers = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        scores = [parse_score(a, strict=True) for a in answers]
        self.unreadable += sum(s is None for s in scores)
        return [None if s is None else float(s) for s in scores]

    def _rows(self, texts: list[str]) -> list[list[int]]:
        """Each text as a chat-templated user turn, ready for the answer: token ids."""
        return [chat_ids(self.tokenizer, [{"role": "user", "content": t}]) for t in texts]

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded, so every row's last position is where the score goes."""
        rows = self._rows(texts)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)


def expected_scores(logits: torch.Tensor, digits: list[int]) -> list[float]:
    """The expected 0-5 score of each row of next-token logits: the digit tokens' probabilities,
    renormalised, times their values."""
    probs = torch.softmax(logits.float(), dim=-1)[:, digits]
    probs = probs / probs.sum(dim=-1, keepdim=True)
    values = torch.arange(len(digits), dtype=probs.dtype, device=probs.device)
    return (probs * values).sum(dim=-1).tolist()


def digit_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(6)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("self_score = 'expected' needs the digits 0-5 to be single tokens in "
                         "this tokenizer; use self_score = 'greedy'")
    return [i[0] for i in ids]
