"""The promotion gate's decision: is a round's candidate better, and no worse at what it could do?

The round's own process measures (learner/gate_eval.py writes `gate.json` beside the candidate);
this module only decides, from those numbers and `[learn.gate]`, so every rule is testable with
hand-made reports. A candidate is promoted only if
1. the judge gave at least `min_judged` consistent pairwise judgments against the active version
   (a judge that cannot tell, like the 135M model judging itself, cannot vouch for anything);
   with `reading = "balanced"` and a judge that weighs its verdicts, the balanced reading's
   (dynalign/evaluate.py) decided pairs count instead,
2. its win rate is at least `min_win_rate`,
3. no capability score (IFEval prompt-level strict, math, multiple choice) fell by more than
   `max_drop` from the active version's, no aspect of CA's mean score (on the first
   `aspect_prompts` prompts) by more than `max_aspect_drop`, and
4. no drift monitor is past its limit, unless `on_drift = "flag"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CAPABILITY_KEYS = {"ifeval": "prompt_strict", "math": "accuracy", "mc": "accuracy"}


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    rollback: bool = False  # serve the last version whose round was not flagged for drift


def decide(gate, report: dict) -> Decision:
    failures, notes = [], []
    _pairwise(gate, report.get("pairwise") or {}, failures, notes)
    _capabilities(gate, report.get("capabilities") or {}, failures, notes)
    _aspects(gate, (report.get("aspects") or {}).get("means") or {}, failures, notes)
    flags = drift_flags(gate, report.get("drift") or {})
    if flags and gate.on_drift != "flag":
        failures += [f"drift: {f}" for f in flags]
    else:
        notes += [f"drift (flag only): {f}" for f in flags]
    summary = {"drift_flags": flags, "failures": failures}
    return Decision(not failures, failures + notes, summary,
                    rollback=bool(flags) and gate.on_drift == "rollback")


def _pairwise(gate, pair: dict, failures: list, notes: list) -> None:
    how = ""
    if gate.reading == "balanced" and "balanced" in pair:
        pair, how = pair["balanced"], "balanced over both orders: "
    judged, n = pair.get("judged", 0), pair.get("n", 0)
    counts = (f"{how}{pair.get('win', 0)} wins, {pair.get('loss', 0)} losses, {pair.get('tie', 0)} ties,"
              f" {pair.get('inconsistent', 0)} inconsistent, {pair.get('unreadable', 0)} unreadable")
    if judged < gate.min_judged:
        failures.append(f"the judge was consistent on {judged} of {n} pairs ({counts}); "
                        f"{gate.min_judged} needed: it cannot tell these apart (use a stronger "
                        "judge, eval.judge.url, or more learn.gate.prompts)")
    elif pair["win_rate"] < gate.min_win_rate:
        failures.append(f"win rate {pair['win_rate']:.2f} < {gate.min_win_rate} ({counts})")
    else:
        notes.append(f"win rate {pair['win_rate']:.2f} >= {gate.min_win_rate} ({counts})")


def _capabilities(gate, capabilities: dict, failures: list, notes: list) -> None:
    for name, sides in capabilities.items():
        key = CAPABILITY_KEYS.get(name, "accuracy")
        before, after = sides["active"][key], sides["candidate"][key]
        line = f"{name} {key} {before:.3f} -> {after:.3f}"
        if after < before - gate.max_drop:
            failures.append(f"{line}: fell by more than {gate.max_drop}")
        else:
            notes.append(line)


def _aspects(gate, means: dict, failures: list, notes: list) -> None:
    """No aspect of CA may fall by more than max_aspect_drop against the active version."""
    for name, sides in means.items():
        before, after = sides.get("active"), sides.get("candidate")
        if name == "holistic" or before is None or after is None:
            continue
        line = f"aspect {name} {before:.2f} -> {after:.2f}"
        if after < before - gate.max_aspect_drop:
            failures.append(f"{line}: fell by more than {gate.max_aspect_drop}")
        else:
            notes.append(line)


def drift_flags(gate, drift: dict) -> list[str]:
    flags = []
    top = drift.get("top_share")
    if top is not None and top > gate.max_top_share:
        flags.append(f"{top:.0%} of self-scores saturate at the top (limit {gate.max_top_share:.0%}):"
                     " a reward-hacking sign")
    kl = drift.get("kl")
    if kl is not None and kl > gate.max_kl:
        flags.append(f"KL to the base model {kl:.3f} > {gate.max_kl}")
    ratio = drift.get("length_ratio")
    if ratio and not 1 / gate.max_length_ratio <= ratio <= gate.max_length_ratio:
        flags.append(f"answers are {ratio:.2f}x the base model's length (limit "
                     f"{gate.max_length_ratio}x either way)")
    return flags


def last_good(adapters: list[dict], flagged: set[int]) -> int | None:
    """Walk back from the active version through its parents to the first one whose round was
    not flagged for drift; None = the base model. Lineage, not recency: a version an operator
    rolled back from, or one the gate rejected, is not on the path and never comes back."""
    by_version = {a["version"]: a for a in adapters}
    version = next((a["version"] for a in adapters if a["status"] == "active"), None)
    while version is not None and (version in flagged or version not in by_version):
        version = by_version[version]["parent"] if version in by_version else None
    return version
