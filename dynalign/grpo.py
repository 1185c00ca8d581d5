"""The bits of GRPO that dynalign decides itself; TRL's GRPOTrainer does the rest (advantages,
clipped loss, KL). `group_advantages` is the paper's formula, kept here as the reference that
tests and benchmarks read TRL's per-group statistics against."""

from __future__ import annotations

import statistics


def group_advantages(rewards: list[float], group: int, eps: float = 1e-4) -> list[float]:
    """(r - mean) / (std + eps) within each consecutive group of `group` rewards; a group whose
    rewards are all equal gets advantage 0 (it carries no signal)."""
    out = []
    for start in range(0, len(rewards), group):
        chunk = rewards[start:start + group]
        mean, std = statistics.fmean(chunk), statistics.pstdev(chunk)
        out += [0.0 if std == 0 else (r - mean) / (std + eps) for r in chunk]
    return out


def zero_spread_fraction(rewards: list[float], group: int) -> float:
    groups = [rewards[i:i + group] for i in range(0, len(rewards), group)]
    return sum(1 for g in groups if max(g) == min(g)) / len(groups) if groups else 0.0


def moving_average(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i + 1 - window): i + 1]) for i in range(len(values))]


def converged(rewards: list[float], window: int, tolerance: float) -> bool:
    """The reward has converged when its moving average over `window` steps moved by less than
    `tolerance` across the last `window` steps (so at least 2 x window steps are needed)."""
    if len(rewards) < 2 * window:
        return False
    averages = moving_average(rewards, window)
    return abs(averages[-1] - averages[-1 - window]) < tolerance
