"""The pure parts of bench/load.py: percentiles, phase summaries, the swap plan, the log check and
the printed table. Standard library (and numpy, imported where used) only, so the unit tests load
this file without a server."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

RATIO_KEYS = ("p50_ms", "p99_ms", "req_s", "tok_s")


@dataclass
class Outcome:
    """One request as a client saw it."""
    start_s: float  # since the phase began
    seconds: float
    stream: bool
    model: str = ""  # the model name the answer carried
    tokens: int = 0  # completion tokens (usage)
    error: str | None = None  # None: completed

    def row(self) -> list:
        return [round(self.start_s, 3), round(self.seconds * 1000, 1), int(self.stream),
                self.model, self.tokens, self.error]


def percentile(values, q: float) -> float:
    """numpy's percentile (linear interpolation between the closest ranks), q in [0, 100]; nan
    for no values."""
    import numpy as np  # here, not at the top: `bench/load.py --help` stays fast

    values = list(values)
    return float(np.percentile(values, q)) if values else math.nan


def summarize(outcomes: list[Outcome], wall_s: float) -> dict:
    """Counts, throughput over the phase's wall time, and latency of the completed requests."""
    done = [o for o in outcomes if o.error is None]
    ms = [o.seconds * 1000 for o in done]
    rate = (lambda n: n / wall_s) if wall_s > 0 else (lambda n: math.nan)
    return {"completed": len(done), "failed": len(outcomes) - len(done),
            "wall_s": round(wall_s, 2), "req_s": rate(len(done)),
            "tok_s": rate(sum(o.tokens for o in done)), "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms, default=math.nan),
            "models": dict(Counter(o.model for o in done))}


def ratios(base: dict, other: dict) -> dict:
    """other / base for the latency and throughput figures (NaN where base is 0 or missing)."""
    def ratio(key):
        b, o = base.get(key), other.get(key)
        return o / b if b and o is not None and not math.isnan(b) else math.nan
    return {key: ratio(key) for key in RATIO_KEYS}


def swap_times(duration: float, swaps: int) -> list[float]:
    """Swaps evenly spaced inside the phase: at D/(K+1), 2D/(K+1), ..."""
    return [duration * (i + 1) / (swaps + 1) for i in range(swaps)]


def swap_plan(versions: list[int], swaps: int) -> list[int]:
    """The baseline serves versions[0]; the swaps cycle through the others and back, so every
    swap changes the weights (needs 2 versions or more)."""
    if swaps and len(versions) < 2:
        raise ValueError("swapping needs at least two versions")
    return [versions[(i + 1) % len(versions)] for i in range(swaps)]


def across_swaps(outcomes: list[Outcome], swaps: list[dict]) -> dict:
    """Median latency of the completed requests that were running when a swap began, against
    those that overlapped no swap (the same phase, so the same background load)."""
    done = [o for o in outcomes if o.error is None]

    def running(o: Outcome, w: dict) -> bool:
        return o.start_s < w["at_s"] + w.get("client_s", 0) and w["at_s"] < o.start_s + o.seconds

    hit = [[o for o in done if running(o, w)] for w in swaps]
    others = [o.seconds * 1000 for o in done if not any(running(o, w) for w in swaps)]
    return {"in_flight_p50_ms": [percentile([o.seconds * 1000 for o in h], 50) for h in hit],
            "in_flight_n": [len(h) for h in hit], "others_p50_ms": percentile(others, 50)}


def failure_digest(outcomes: list[Outcome], limit: int = 10) -> list[str]:
    """The distinct failure messages, most frequent first, with their counts."""
    counts = Counter(o.error for o in outcomes if o.error is not None)
    return [f"{n} x {message}" for message, n in counts.most_common(limit)]


def log_problems(phase: str, answered: dict, rows: list[dict]) -> list[str]:
    """The phase's log rows ({model_served, n, ...}) against the completed requests: as many rows
    as requests, and per model name as many rows as answers that carried that name."""
    logged = Counter()
    for r in rows:
        logged[r["model_served"]] += r["n"]
    problems = []
    if sum(logged.values()) != sum(answered.values()):
        problems.append(f"{phase}: {sum(logged.values())} log rows for "
                        f"{sum(answered.values())} completed requests")
    for model in sorted(set(logged) | set(answered)):
        if logged[model] != answered.get(model, 0):
            problems.append(f"{phase}: {logged[model]} log rows name {model}, "
                            f"{answered.get(model, 0)} answers did")
    return problems


def version_problems(outcomes: list[Outcome], swaps: list[dict],
                     first: str) -> tuple[list[str], list[str]]:
    """Requests that ran wholly between two swaps must name the version active then (`first`
    before the first swap). Returns (problems, notes); a note: no request ran wholly after a swap
    (the phase is too short for the latency), so that swap's version was not checked."""
    done = [o for o in outcomes if o.error is None]
    bounds = [(-math.inf, first)] + [(w["at_s"] + w.get("client_s", 0),
                                      f"dynalign-v{w['version']}") for w in swaps]
    problems, notes = [], []
    for i, (begin, name) in enumerate(bounds):
        until = swaps[i]["at_s"] if i < len(swaps) else math.inf
        inside = [o for o in done if o.start_s >= begin and o.start_s + o.seconds <= until]
        wrong = Counter(o.model for o in inside if o.model != name)
        if wrong:
            problems.append(f"{len(inside)} requests ran while {name} was active; "
                            f"answered as {dict(wrong)}")
        if not inside and i > 0:
            notes.append(f"no request ran wholly after the swap to {name}: not checked")
    return problems, notes


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(baseline: dict, swapped: dict) -> str:
    """The two phases side by side and the ratio swaps / baseline."""
    cols = [("completed", 0), ("failed", 0), ("req_s", 2), ("tok_s", 1), ("p50_ms", 0),
            ("p99_ms", 0), ("max_ms", 0)]
    lines = [f"{'phase':<18}" + "".join(f"{name:>11}" for name, _ in cols)]
    for label, s in (("baseline", baseline), ("with swaps", swapped)):
        lines.append(f"{label:<18}" + "".join(f"{_fmt(s[k], d):>11}" for k, d in cols))
    r = ratios(baseline, swapped)
    lines.append(f"{'swaps / baseline':<18}" + "".join(
        f"{_fmt(r[k], 3) if k in r else '':>11}" for k, _ in cols))
    return "\n".join(lines)
