"""A panel of judges: several judges' scores of one answer (or verdicts on one pair) become one,
and the judgements they disagree on are marked for a person.

Why a panel: a model judging its own answers can reinforce its own drift (the paper's Future
Work, Section 5); a jury of different models is less biased than one (Verga et al., 2024), and
the conservative aggregates, the panel's minimum or its mean less its spread, curb
over-optimising one judge's quirks (Coste et al., ICLR 2024, reward-model ensembles).

The rules, all here so that they are testable on hand-made numbers:
- A member with no readable score (None: it failed, or named no digit) is left out of that
  judgement, never counted as 0. With fewer than `min_judges` members left there is no score.
- "mean" is weighted by the members' weights; "min" is the lowest score; "mean_minus_std" is the
  weighted mean less the weighted standard deviation, floored at 0.
- A pair's verdicts become A's preference per member (1 win, 0 loss, 0.5 tie, or the balanced
  reading's share when the judge weighs its verdicts), aggregated the same way: above 0.5 A
  wins, below it loses.
- A disagreement, for a person to review: members' scores further apart than `review_gap`; on
  a pair, one member calling it a win and another a loss; or the holistic score and the mean of
  the aspects moving in opposite directions between two answers.
"""

from __future__ import annotations

import math
from typing import Sequence

AGGREGATES = ("mean", "min", "mean_minus_std")
PREFERENCE = {"win": 1.0, "loss": 0.0, "tie": 0.5}


def aggregate(scores: Sequence[float | None], weights: Sequence[float], how: str = "mean",
              min_judges: int = 1) -> float | None:
    """One score from the members' readable ones; None when fewer than `min_judges` are."""
    kept = [(s, w) for s, w in zip(scores, weights) if s is not None]
    if not kept or len(kept) < min_judges:
        return None
    total = sum(w for _, w in kept)
    mean = sum(s * w for s, w in kept) / total
    if how == "mean":
        return mean
    if how == "min":
        return min(s for s, _ in kept)
    if how == "mean_minus_std":
        spread = math.sqrt(sum(w * (s - mean) ** 2 for s, w in kept) / total)
        return max(0.0, mean - spread)
    raise ValueError(f"unknown aggregate {how!r}: one of {', '.join(AGGREGATES)}")


def preference(item: dict, balanced: bool) -> float | None:
    """A's preference in [0, 1] from one member's judged pair (dynalign/evaluate.py's item): the
    balanced share where the member weighs its verdicts and `balanced`, else its outcome; None
    when inconsistent or unreadable."""
    if balanced and "a_share" in item:
        shares = item["a_share"]
        return None if None in shares else sum(shares) / len(shares)
    return PREFERENCE.get(item["outcome"])


def pair_outcome(preferences: Sequence[float | None], weights: Sequence[float], how: str,
                 min_judges: int = 1) -> str:
    """The panel's outcome for A: win, loss or tie; "unreadable" with too few members."""
    value = aggregate(preferences, weights, how, min_judges)
    if value is None:
        return "unreadable"
    return "win" if value > 0.5 else "loss" if value < 0.5 else "tie"


def scores_disagree(scores: Sequence[float | None], gap: float) -> bool:
    """Two readable members' scores further apart than `gap` (0-5 scale)."""
    readable = [s for s in scores if s is not None]
    return len(readable) >= 2 and max(readable) - min(readable) > gap


def pair_disagrees(preferences: Sequence[float | None]) -> bool:
    """One member prefers A and another B."""
    readable = [p for p in preferences if p is not None]
    return any(p > 0.5 for p in readable) and any(p < 0.5 for p in readable)


def sign_conflict(holistic: float, aspects: dict[str, float], tolerance: float = 0.0) -> bool:
    """Between two answers: the holistic score's difference and the aspects' mean difference
    point in opposite directions (each beyond `tolerance`)."""
    if not aspects:
        return False
    mean = sum(aspects.values()) / len(aspects)
    return (holistic > tolerance and mean < -tolerance) or (holistic < -tolerance and
                                                            mean > tolerance)
