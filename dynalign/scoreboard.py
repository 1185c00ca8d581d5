"""The scoreboard: one served version against the base model, on the same held-out prompts.

Every version is measured the same way (greedy answers of both, the configured eval judge), so
versions from different rounds can be compared with each other through the base they share.
What it simplifies: answers and judgements are cached in SQLite (`eval_cache`) under a digest of
everything that determines them (which weights, the conversation, the judge and its prompts, the
settings), so the base model is answered and judged once per judge, a rerun computes only what
changed, and a scoreboard stopped half-way resumes where it was.

The readings, version vs base on each prompt:
- pointwise: the judge's 0-5 score of the version's answer above the base's is a win, below a
  loss, within TIE_GAP a tie; the win rate over the prompts judged, with its bootstrap interval;
- pairwise: the two answers judged side by side in both orders (dynalign/evaluate.py: the paper's
  strict rule, and the balanced reading when the judge gives its probabilities);
- length-controlled: the same readings over the pairs within 20 % of each other's length;
- mean answer tokens, IFEval prompt-level strict accuracy on a sample, and the mean per-token KL
  of the version's own answers to the base model.
This module is the pure part (keys, prompts, statistics, the report); learner/scoreboard.py
answers, judges and measures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dynalign.catalog import EMBEDDED, resolve
from dynalign.config import PREPARED_MARKER
from dynalign.dataset import read_rows, seed_path
from dynalign.errors import DataError
from dynalign.evaluate import length_controlled, summarise

TIE_GAP = 0.01  # two 0-5 scores closer than this are a tie
LENGTH_TOLERANCE = 0.2


def digest(value) -> str:
    """A stable key for any JSON value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def answer_key(weights: dict, conversation: list[dict], settings: dict) -> str:
    """`weights`: which model and adapter (by content digest) answered; `settings`: how."""
    return digest({"kind": "answer", "weights": weights, "conversation": conversation,
                   "settings": settings})


def score_key(judge: dict, prompt: str, answer: str) -> str:
    return digest({"kind": "score", "judge": judge, "prompt": prompt, "answer": answer})


def pair_key(judge: dict, prompt: str, answer_a: str, answer_b: str) -> str:
    return digest({"kind": "pair", "judge": judge, "prompt": prompt, "a": answer_a,
                   "b": answer_b})


def judge_identity(label: str, cfg) -> dict:
    """What makes a judge's verdicts what they are: the model (its label says which and where),
    the prompts it reads and how its scores are read."""
    p = cfg.prompts
    return {"label": label, "reward": digest(p.reward), "pairwise": digest(p.pairwise),
            "definition": digest(p.ca_definition), "reading": cfg.learn.self_score,
            "max_tokens": cfg.eval.judge.max_tokens}


def load_prompts(cfg, path: str | None = None) -> tuple[list[str], str]:
    """The prompts and where they came from: a JSONL file with "prompt" per row (a bad row is
    refused, naming its line), else the seed set's held-out split."""
    if path:
        rows = read_rows(path, strict=False)
        for number, row in enumerate(rows, start=1):
            if not row["prompt"].strip():
                raise DataError(f"{path}: row {number} ({row['id']}): the prompt is empty")
        prompts, source = [r["prompt"] for r in rows], str(Path(path).resolve())
    else:
        prompts = [r["prompt"] for r in read_rows(seed_path(cfg)) if r.get("split") == "heldout"]
        source = "seed held-out split"
    if not prompts:
        raise DataError(f"no prompts in {path or seed_path(cfg)}")
    return prompts, source


def pointwise_items(prompts: list[str], version: list[str], base: list[str],
                    version_scores: list, base_scores: list) -> list[dict]:
    """One item per prompt with both answers, both scores and the pointwise outcome."""
    items = []
    for prompt, a, b, sa, sb in zip(prompts, version, base, version_scores, base_scores):
        if sa is None or sb is None:
            outcome = "unreadable"
        else:
            outcome = "tie" if abs(sa - sb) < TIE_GAP else "win" if sa > sb else "loss"
        items.append({"prompt": prompt, "a": a, "b": b, "score_a": sa, "score_b": sb,
                      "pointwise": outcome})
    return items


def readings(items: list[dict], cfg, balanced: bool) -> dict:
    """Every win-rate reading of the items: pointwise, pairwise (outcome; balanced when the judge
    weighs), each also length-controlled."""
    boot = (cfg.eval.bootstrap, cfg.eval.level, cfg.eval.seed)
    keys = ["pointwise", "outcome"] + (["balanced"] if balanced else [])
    out = {key: summarise(items, key, *boot) for key in keys}
    out["length_controlled"] = {key: length_controlled(items, LENGTH_TOLERANCE, *boot, key=key)
                                for key in keys}
    return out


def mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def headline(result: dict) -> dict:
    """The numbers a table, a plot or /metrics shows (the per-item lists left out)."""
    r = result["readings"]
    out = {"pointwise": _rate(r["pointwise"]), "pairwise": _rate(r["outcome"]),
           "length_controlled": _rate(r["length_controlled"]["pointwise"]),
           "scores": result["scores"], "tokens": result["tokens"], "kl": result.get("kl"),
           "ifeval": result.get("ifeval"), "aspects": result.get("aspects") or {}}
    if "balanced" in r:
        out["balanced"] = _rate(r["balanced"])
    return out


def _rate(tally: dict) -> dict:
    return {"win_rate": tally["win_rate"], "ci": tally["ci"], "judged": tally["judged"],
            "n": tally["n"]}


def markdown(row: dict) -> str:
    """A scoreboard row (Store.scoreboards) as a short report."""
    h = row["summary"]
    lines = [f"# scoreboard: dynalign-v{row['version']} vs base", "",
             f"- judge: `{row['judge']}`", f"- prompts: {row['prompts']} "
             f"({h['pointwise']['n']})", f"- measured: {row['created']}", "",
             "| reading (version vs base) | win rate [95 % CI] | judged |", "|---|---|---|"]
    names = [("pointwise: judge's 0-5 score higher", "pointwise"),
             ("pairwise, both orders (the paper's rule)", "pairwise"),
             ("pairwise, balanced over both orders", "balanced"),
             ("pointwise, pairs within 20 % length", "length_controlled")]
    lines += [f"| {label} | {_fmt_rate(h[key])} | {h[key]['judged']} / {h[key]['n']} |"
              for label, key in names if key in h]
    s, t = h["scores"], h["tokens"]
    lines += ["", f"- judge's mean score: base {_num(s['base'])} -> version {_num(s['version'])}",
              f"- mean answer tokens: base {t['base']:.0f} -> version {t['version']:.0f}",
              f"- KL to the base (per token, the version's answers): {_num(h['kl'], 4)}"]
    if h["ifeval"]:
        f = h["ifeval"]
        lines.append(f"- IFEval prompt-level strict ({f['prompts']} prompts): "
                     f"base {f['base']:.1%} -> version {f['version']:.1%}")
    return "\n".join(lines) + "\n"


def _fmt_rate(rate: dict) -> str:
    if rate["win_rate"] is None:
        return "n/a"
    ci = f" [{rate['ci'][0]:.0%}, {rate['ci'][1]:.0%}]" if rate["ci"] else ""
    return f"{rate['win_rate']:.0%}{ci}"


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def enabled(cfg) -> bool:
    """Whether `eval.scoreboard` runs after each promotion. "auto": yes, unless the eval judge is
    the embedded 135M model (this server's own, or loaded locally; by name, or a folder that
    `dynalign model prepare` made of it, wherever it is), which cannot tell."""
    if cfg.eval.scoreboard != "auto":
        return bool(cfg.eval.scoreboard)
    judge = cfg.eval.judge
    if judge.url == "":  # this server's own model judges
        return not _embedded(cfg.model.path, cfg.home)
    return judge.url != "local" or not _embedded(judge.model, cfg.home)


def _embedded(setting: str, home: Path) -> bool:
    """A model setting names the embedded model, or a folder prepared from it."""
    if (setting or EMBEDDED) == EMBEDDED:
        return True
    marker = Path(resolve(setting, home)) / PREPARED_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("name") == EMBEDDED
