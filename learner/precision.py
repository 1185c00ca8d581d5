"""The no-grad phases (rollouts, self-scoring, the gate's answers) in bf16 on a policy that trains
in fp32.

Why a swap and not autocast: CPU autocast re-casts every frozen weight at every forward pass (the
cast cache keeps only weights that require grad), which a token-by-token decode repeats hundreds
of times. Instead the frozen weights are swapped to a bf16 copy for the span of a no-grad phase
and the fp32 tensors put back afterwards, bit for bit: the loss, the reference log-probs and the
KL never see bf16. The LoRA weights stay fp32 (peft casts its input to their dtype). Cost: half
the frozen weights again while the copy exists. learn.rollout_dtype chooses; "auto" is bf16
where the hardware computes it natively (a CUDA GPU, or a CPU with AVX512-BF16 or AMX), where
bench/learn.py measured it faster, and the training dtype elsewhere.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from dynalign.memory import rollout_dtype_name


def rollout_dtype(learn) -> torch.dtype:
    """The dtype of the no-grad phases for `learn` (a LearnConfig) on this machine."""
    return getattr(torch, rollout_dtype_name(learn, torch.cuda.is_available()))


@contextmanager
def frozen_weights_in(model, dtype: torch.dtype | None):
    """Within the block, `model`'s frozen floating-point weights are `dtype` copies."""
    saved = []
    if dtype is not None:
        for param in model.parameters():
            if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
                saved.append((param, param.data))
                param.data = param.data.to(dtype)
    try:
        yield
    finally:
        for param, data in saved:
            param.data = data
