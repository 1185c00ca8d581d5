"""Reward functions with TRL's signature: `(prompts, completions, **kwargs) -> list[float]`.

Three built-ins, chosen by `learn.reward`:
- "self" (the paper): the policy scores its own answers with the CA rubric. It needs the model,
  so it lives in learner/self_reward.py; the prompt it reads is `reward_prompt` below.
- "rule": a learnable, checkable signal (brevity, or a keyword), used to prove that a round
  learns at all; it says nothing about alignment.
- "judge": any OpenAI-compatible endpoint scores with the same CA rubric.
All score on the paper's 0-5 scale. An unreadable judge answer scores 0 and is counted.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from dynalign import prompts as paper
from dynalign.conversation import prompt_text

SCORE = re.compile(r"(?<![\d.])([0-5])(?!\.?\d)")
WORD = re.compile(r"\w+")


def text_of(item) -> str:
    """A TRL prompt or completion, conversational (a list of messages) or plain text."""
    if isinstance(item, str):
        return item
    if isinstance(item, list):
        turns = [m for m in item if m.get("role") in ("user", "assistant")]
        return (turns[-1].get("content") or "") if turns else ""
    return str(item)


def reward_prompt(template: str, definition: str, prompt: str, response: str) -> str:
    return paper.fill(template, definition=definition, prompt=prompt, response=response)


def parse_score(text: str, strict: bool = False) -> int | None:
    """The first stand-alone digit 0-5 in a judge's answer ("4", "Score: 4", "4/5"); None if none.
    `strict`: only an answer that starts with the digit, as the reward prompt asks, counts; a
    small model's echo of the question cut off at "... at 1" is not a score."""
    text = (text or "").strip()
    match = SCORE.match(text) if strict else SCORE.search(text)
    return int(match.group(1)) if match else None


def none_readable(reward) -> bool:
    """True when a reading reward (JudgeReward, SelfReward) has scored answers and could read a
    score from none of them: every score so far is the unreadable 0, not a judgement."""
    scored = getattr(reward, "scored", 0)
    return bool(scored) and getattr(reward, "unreadable", 0) == scored


def brevity(target_words: int, max_tokens: int | None = None):
    """5 for a non-empty answer of at most `target_words` words, falling as target / words above.
    A completion cut off at `max_tokens` (TRL passes `completion_ids`) did not stop: its score is
    scaled by target / max_tokens, so it stays graded (a group of cut-off answers still carries
    a signal) but below any answer that stops within the budget, and filling the budget with few
    words (emoji, repeated short phrases) cannot pass for brevity."""
    def brevity_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        scores = []
        for i, completion in enumerate(completions):
            words = len(WORD.findall(text_of(completion)))
            score = 0.0 if words == 0 else 5.0 * min(1.0, target_words / words)
            if max_tokens and completion_ids is not None and len(completion_ids[i]) >= max_tokens:
                score *= target_words / max_tokens
            scores.append(score)
        return scores
    return brevity_reward


def keyword(word: str):
    """5 when the answer contains `word` (case-insensitive), else 0."""
    def keyword_reward(prompts, completions, **kwargs) -> list[float]:
        return [5.0 if word.lower() in text_of(c).lower() else 0.0 for c in completions]
    return keyword_reward


def rule_reward(learn):
    if learn.rule == "brevity":
        return brevity(learn.rule_words, learn.max_completion_tokens)
    return keyword(learn.rule_keyword)


class JudgeReward:
    """Scores each answer by asking an external endpoint with the CA reward prompt."""

    __name__ = "judge_reward"

    def __init__(self, endpoint, template: str, definition: str, workers: int = 8):
        self.endpoint, self.template, self.definition = endpoint, template, definition
        self.workers = workers
        self.batch_size = workers  # a round hands it this many candidates at a time
        self.unreadable = self.scored = 0

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [0.0 if s is None else s for s in self.read(prompts, completions)]

    def read(self, prompts, completions) -> list[float | None]:
        """The scores, None where the answer names no digit (the reward counts those as 0; a
        panel leaves them out)."""
        asks = [reward_prompt(self.template, self.definition, prompt_text(p), text_of(c))
                for p, c in zip(prompts, completions)]
        with ThreadPoolExecutor(self.workers) as pool:
            answers = list(pool.map(self._ask, asks))
        scores = [parse_score(a) for a in answers]
        self.unreadable += sum(s is None for s in scores)
        self.scored += len(scores)
        return [None if s is None else float(s) for s in scores]

    def _ask(self, text: str) -> str:
        return self.endpoint.chat([{"role": "user", "content": text}])
