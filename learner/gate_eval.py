"""The gate's measurements, taken inside the round's own process on the weights it trains.

Why here and not through the server: a candidate must not reach the serving engine before it
passes (and with engine.swap = "merged" the engine serves one version only). Before training,
the policy holds the active version's weights (or a fresh, zero-effect adapter = the base), so
the active side is answered then; the candidate side after training. Both sides are greedy
`generate` by the same code, so the comparison is like for like. The judge is the configured
endpoint (default: this server). Writes `gate.json`; dynalign/gate.py decides from it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field


from dynalign.dataset import read_rows, seed_path
from learner.precision import rollout_dtype
from learner.reading import answer


@dataclass
class GateItems:
    prompts: list[list[dict]]  # conversations: held-out prompts (one user turn each), then the
    #                            multi-turn probes; the pairwise set and the drift probe
    checks: dict[str, list[dict]] = field(default_factory=dict)  # capability rows with "messages"


def gate_items(cfg) -> GateItems:
    from dynalign import conversation, exact, ifeval

    gate = cfg.learn.gate
    heldout = [_user(r["prompt"]) for r in read_rows(seed_path(cfg)) if r.get("split") == "heldout"]
    probes = [p["messages"] for p in conversation.load_probes(limit=gate.multiturn)]
    checks = {}
    if gate.limit > 0:
        checks["ifeval"] = ifeval.load_ifeval(gate.ifeval or ifeval.SAMPLE_FILE, gate.limit)
        if gate.math:
            checks["math"] = exact.load_math(gate.math, gate.limit)
        if gate.mc:
            checks["mc"] = exact.load_mc(gate.mc, gate.limit, cfg.eval.seed)
    return GateItems(heldout[:gate.prompts] + (probes if gate.multiturn else []), checks)


def answer_side(model, tokenizer, items: GateItems, cfg, adapter: bool = True) -> dict:
    """One version's answers to the held-out prompts and to every capability check."""
    off = model.disable_adapter() if not adapter else nullcontext()
    max_tokens, dtype = cfg.learn.gate.max_tokens, rollout_dtype(cfg.learn)
    with off:
        side = {"answers": answer(model, tokenizer, items.prompts, max_tokens, dtype=dtype)}
        if adapter:
            side["checks"] = {name: answer(model, tokenizer, [r["messages"] for r in rows],
                                           max_tokens, dtype=dtype)
                              for name, rows in items.checks.items()}
    return side


def before_training(model, tokenizer, items: GateItems, cfg, has_parent: bool) -> dict:
    """The active version's side, and the base model's answers (for the length drift)."""
    start = time.perf_counter()
    active = answer_side(model, tokenizer, items, cfg)
    base = (answer_side(model, tokenizer, items, cfg, adapter=False)["answers"]
            if has_parent else active["answers"])
    return {"active": active, "base_answers": base, "seconds": time.perf_counter() - start}


def after_training(model, tokenizer, items: GateItems, cfg, before: dict,
                   steps: list[dict]) -> dict:
    from learner.panel_judge import open_judges

    start = time.perf_counter()
    candidate = answer_side(model, tokenizer, items, cfg)
    judge = open_judges(cfg, "eval")
    pair = judge.pairwise(cfg, items.prompts, candidate["answers"], before["active"]["answers"])
    return {"pairwise": pair, "capabilities": capabilities(items, before["active"], candidate),
            "aspects": aspects(judge, items, cfg, candidate, before),
            "drift": drift(model, tokenizer, items, cfg, candidate, before, steps),
            "judge": judge.label,
            "seconds": {"before_training": round(before["seconds"], 1),
                        "after_training": round(time.perf_counter() - start, 1)}}


def aspects(judge, items: GateItems, cfg, candidate: dict, before: dict) -> dict:
    """Each aspect's mean 0-5 score of the candidate's, the active version's and the base's
    answers to the first `learn.gate.aspect_prompts` prompts, with the holistic score beside
    them; per item, whether the holistic score and the aspects moved in opposite directions from
    the active version (dynalign/panel.py). {} when off."""
    from dynalign.panel import sign_conflict
    from dynalign.scoreboard import mean

    n = min(cfg.learn.gate.aspect_prompts, len(items.prompts))
    if n == 0:
        return {}
    prompts = items.prompts[:n]
    sides = {"candidate": candidate["answers"][:n], "active": before["active"]["answers"][:n],
             "base": before["base_answers"][:n]}
    scored = _score_once(judge, prompts, sides)
    means = {name: {side: mean(scored[side][name]) for side in sides}
             for name in scored["candidate"]}
    conflicts = [{"prompt": prompts[i], "a": sides["candidate"][i], "b": sides["active"][i],
                  "scores": {side: {k: v[i] for k, v in scored[side].items()}
                             for side in ("candidate", "active")}}
                 for i in range(n) if sign_conflict(*_deltas(scored, i))]
    return {"prompts": n, "means": means, "scores": scored, "conflicts": conflicts}


def _score_once(judge, prompts: list, sides: dict) -> dict:
    """side -> {"holistic": [...], aspect: [...]}, each distinct (prompt, answer) judged once: a
    candidate often answers some prompts as the active version did, and the first round's
    active version is the base."""
    unique = list(dict.fromkeys((i, a) for answers in sides.values() for i, a in enumerate(answers)))
    asked, answers = [prompts[i] for i, _ in unique], [a for _, a in unique]
    scores = {"holistic": judge.reward.read(asked, answers), **judge.aspects(asked, answers)}
    at = {key: j for j, key in enumerate(unique)}
    return {side: {name: [values[at[(i, a)]] for i, a in enumerate(texts)]
                   for name, values in scores.items()} for side, texts in sides.items()}


def _deltas(scored: dict, i: int) -> tuple[float, dict]:
    """Item i's holistic and per-aspect score changes, candidate minus active (an aspect no
    judge could read on either side is left out)."""
    new, old = scored["candidate"], scored["active"]
    if new["holistic"][i] is None or old["holistic"][i] is None:
        return 0.0, {}  # no holistic direction to disagree with
    return (new["holistic"][i] - old["holistic"][i],
            {a: new[a][i] - old[a][i] for a in new if a != "holistic"
             and new[a][i] is not None and old[a][i] is not None})


def capabilities(items: GateItems, active: dict, candidate: dict) -> dict:
    from dynalign import exact, ifeval

    scorers = {"ifeval": ifeval.score_ifeval, "math": exact.score_math, "mc": exact.score_mc}
    return {name: {side: scorers[name](rows, answers["checks"][name])
                   for side, answers in (("active", active), ("candidate", candidate))}
            for name, rows in items.checks.items()}


def drift(model, tokenizer, items: GateItems, cfg, candidate: dict, before: dict,
          steps: list[dict]) -> dict:
    """Self-scores of the candidate's own answers (saturation), KL to the base, length vs base."""
    from learner.self_reward import SelfReward

    scorer = SelfReward(tokenizer, cfg.prompts.reward, cfg.prompts.ca_definition, "expected",
                        batch_size=cfg.learn.micro_batch)
    scorer.bind(model)
    scorer.dtype = rollout_dtype(cfg.learn)
    scores = scorer(items.prompts, candidate["answers"]) if items.prompts else []
    window = steps[-max(1, cfg.learn.converge_window):]
    kls = [s["kl"] for s in window if s.get("kl") is not None]
    lengths = {"candidate": mean_tokens(tokenizer, candidate["answers"]),
               "active": mean_tokens(tokenizer, before["active"]["answers"]),
               "base": mean_tokens(tokenizer, before["base_answers"])}
    return {"self_scores": scores, "top_share": _share(scores, 4.5),
            "mean_self_score": sum(scores) / len(scores) if scores else None,
            "kl": sum(kls) / len(kls) if kls else None, "lengths": lengths,
            "length_ratio": lengths["candidate"] / lengths["base"] if lengths["base"] else None}


def _user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def mean_tokens(tokenizer, texts: list[str]) -> float:
    """Mean answer length in tokens (the gate's drift, the scoreboard, bench/align.py)."""
    tokens = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    return sum(tokens) / max(1, len(tokens))


def _share(scores: list[float], at_least: float) -> float | None:
    return sum(s >= at_least for s in scores) / len(scores) if scores else None
