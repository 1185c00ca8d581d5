"""Reading a model without gradients: greedy answers, and the next-token logits of many prompts
that share a long beginning.

Why a shared prefix: every judgement with the paper's prompts starts with the same instruction and
CA definition (and the chat template's system turn), most of its tokens. `next_token_logits`
runs that common beginning once, then only each row's own tokens on top of it, with the same
logits (a test compares them with row-by-row forwards): 1.25x faster for the 1.5B judge on the
calibration set, batches of 4 (bench/judge.py). A frozen judge keeps the prefix's KV between
calls (`PrefixCache`); a policy that trains must not, since its weights change between steps.
"""

from __future__ import annotations

import copy

import torch

from learner.precision import frozen_weights_in


class PrefixCache:
    """The KV of the last prefix, for a model whose weights do not change. A new prefix reuses
    the part it shares with the last one (cropped) and runs only the rest: single-row calls,
    like pairwise verdicts, still share the judge prompt's fixed beginning."""

    def __init__(self):
        self.ids: tuple[int, ...] = ()
        self.kv = None

    def get(self, model, prefix: list[int]):
        prefix = tuple(prefix)
        if prefix == self.ids:
            return self.kv
        keep = _shared_length(self.ids, prefix)
        if self.kv is None or keep == 0:
            self.kv = _prefix_kv(model, list(prefix))
        else:
            self.ids = ()  # until extended: an interrupted extension leaves no stale prefix
            drop = self.kv.get_seq_length() - keep
            if drop:
                self.kv.crop(-drop)  # the last `drop` tokens
            self.kv = _extend_kv(model, self.kv, list(prefix[keep:]))
        self.ids = prefix
        return self.kv


def _shared_length(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _extend_kv(model, kv, ids: list[int]):
    if not ids:
        return kv
    return model(input_ids=torch.tensor([ids], device=_device(model)), past_key_values=kv,
                 use_cache=True).past_key_values


@torch.no_grad()
def next_token_logits(model, rows: list[list[int]], cache: PrefixCache | None = None) -> torch.Tensor:
    """Logits (fp32, rows x vocab) of the token after each row of ids, in eval mode; the rows'
    common beginning is computed once."""
    training = model.training
    model.eval()
    try:
        prefix = _common_prefix(rows)
        kv = cache.get(model, prefix) if cache else _prefix_kv(model, prefix)
        return _suffix_logits(model, rows, len(prefix), kv)
    finally:
        model.train(training)


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest beginning all rows share, leaving each row at least one token of its own."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return list(rows[0][:n])


def _prefix_kv(model, prefix: list[int]):
    if not prefix:
        return None
    ids = torch.tensor([prefix], device=_device(model))
    return model(input_ids=ids, use_cache=True).past_key_values


def _suffix_logits(model, rows: list[list[int]], start: int, kv) -> torch.Tensor:
    """Each row's own tokens, right-padded, after a copy of the prefix's KV; the logits at each
    row's last real token only (full-vocabulary logits of every position would be GBs)."""
    suffixes = [r[start:] for r in rows]
    width = max(len(s) for s in suffixes)
    device = _device(model)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in suffixes], device=device)
    mask = torch.tensor([[1] * (start + len(s)) + [0] * (width - len(s)) for s in suffixes],
                        device=device)
    if kv is not None:
        kv = copy.deepcopy(kv)
        kv.batch_repeat_interleave(len(rows))
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, past_key_values=kv,
                                 use_cache=kv is not None).last_hidden_state
    last = hidden[torch.arange(len(rows), device=device),
                  torch.tensor([len(s) - 1 for s in suffixes], device=device)]
    return model.get_output_embeddings()(last).float()


@torch.no_grad()
def answer(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
           batch_size: int = 8, dtype=None) -> list[str]:
    """Greedy answers, batched, left-padded, in eval mode, the frozen weights in `dtype`
    (learner/precision.py). Eval mode: in training mode with gradient checkpointing (TRL's
    default) transformers drops the KV cache while generate() still feeds one token per step."""
    training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    out = []
    try:
        with frozen_weights_in(model, dtype):
            for i in range(0, len(conversations), batch_size):
                out += _greedy(model, tokenizer, conversations[i:i + batch_size], max_new_tokens)
    finally:
        model.train(training)
    return out


def _greedy(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
             for c in conversations]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = enc.to(_device(model))
    ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A conversation chat-templated and tokenized, ready for the assistant's answer."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device
