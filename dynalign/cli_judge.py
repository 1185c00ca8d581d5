"""`dynalign judge score | check`: what a judge says, and whether it can tell, before it is trusted.

`score` reads JSONL rows with `response` and `prompt` (or `messages`: a conversation, its earlier
turns shown to the judge as context) and prints each row back with `score` (0-5,
the paper's reward prompt). `check` scores a calibration set of our own making
(data/judge/calibration.jsonl: for each prompt a good, an off-topic and a harmful answer) and
prints how often good beats each of the others and the mean scores; it exits 1 when good does not
beat both in at least `--min-share` of the prompts, by at least `--min-gap` on average.
`--aspects` adds each aspect of CA's 0-5 score (prompts.ASPECT): per row with `score`, and per
aspect in `check`'s report (which still passes or fails on the holistic score). The judge
is `eval.judge` unless `--model` (a prepared name or a folder, loaded in this process) or `--url`
says otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dynalign.conversation import training_messages
from dynalign.errors import DataError

CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "judge" / "calibration.jsonl"
KINDS = ("good", "off_topic", "harmful")


def add_parser(sub) -> None:
    judge = sub.add_parser("judge", help="score answers with a judge, or check its calibration")
    actions = judge.add_subparsers(dest="action", required=True)
    score = actions.add_parser("score", help="print each row of --data with its 0-5 score")
    score.add_argument("--data", required=True, help="JSONL with 'response' and 'prompt' (or "
                       "'messages': a conversation)")
    check = actions.add_parser("check", help="does it rank good answers above off-topic and "
                               "harmful ones? (exit 1 if not)")
    check.add_argument("--data", help=f"JSONL with prompt, {', '.join(KINDS)} "
                       "(default: dynalign's own calibration set)")
    check.add_argument("--min-share", type=float, default=0.8, help="share of prompts where good "
                       "must beat each of the others (default 0.8)")
    check.add_argument("--min-gap", type=float, default=0.75, help="and by at least this much on "
                       "average, on the 0-5 scale (default 0.75): a judge whose scores all sit "
                       "within a few tenths cannot tell, even when the order is right")
    for parser in (score, check):
        parser.add_argument("--model", help="judge model: a prepared name (qwen2.5-coder-1.5b) or a "
                            "folder, loaded in this process; with --url, a served model name")
        parser.add_argument("--url", help="an OpenAI-compatible judge endpoint instead")
        parser.add_argument("--reading", choices=["expected", "greedy"], default="expected",
                            help="expected score from the digit probabilities, or the greedy digit "
                            "(local judges; an endpoint's answer is always read greedily)")
        parser.add_argument("--aspects", action="store_true", help="also score each aspect of "
                            "CA (knowledge, power, vitality, benevolence) 0-5: 5 judgements an "
                            "answer instead of 1")
        parser.add_argument("--limit", type=int, help="first N rows only")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def judge_command(cfg, args) -> int:
    import dataclasses

    from learner.judge import open_judge

    endpoint = cfg.eval.judge
    if args.model or args.url:
        endpoint = dataclasses.replace(endpoint, url=args.url or "local",
                                       model=args.model or endpoint.model)
    if args.action == "score":
        rows = _score_rows(args.data, args.limit)
        judge = open_judge(endpoint, cfg, args.reading)
        reward = with_progress(judge.reward, not args.no_progress)
        asked, responses = [_asked(r) for r in rows], [r["response"] for r in rows]
        scores = reward(asked, responses)
        aspects = _aspects(judge, args, asked, responses)
        for i, (row, score) in enumerate(zip(rows, scores)):
            extra = {"aspects": {k: round(v[i], 4) for k, v in aspects.items()}} if aspects else {}
            print(json.dumps({**row, "score": round(score, 4), **extra}))
        return max(_unreadable(r) for r in (judge.reward, *judge.aspect_rewards.values()))
    rows = _rows(args.data or CALIBRATION, ("prompt", *KINDS), args.limit)
    judge = open_judge(endpoint, cfg, args.reading)
    report = calibration(rows, with_progress(judge.reward, not args.no_progress))
    if args.aspects:
        report["aspects"] = {name: _aspect_summary(calibration(rows, with_progress(
            reward, not args.no_progress))) for name, reward in judge.aspect_rewards.items()}
    print(json.dumps({"judge": judge.label, "reading": args.reading, **report}, indent=2))
    if _unreadable(judge.reward):
        return 1
    failures = failed(report, args.min_share, args.min_gap)
    if failures:
        print(f"judge check: FAIL: {'; '.join(failures)}", file=sys.stderr)
        return 1
    print("judge check: pass", file=sys.stderr)
    return 0


def _aspects(judge, args, asked: list, responses: list) -> dict[str, list[float]]:
    """Each aspect's scores of the rows (empty without --aspects)."""
    if not args.aspects:
        return {}
    return {name: with_progress(reward, not args.no_progress)(asked, responses)
            for name, reward in judge.aspect_rewards.items()}


def _aspect_summary(report: dict) -> dict:
    """One aspect's calibration, without the per-prompt scores: does good beat the others?"""
    return {k: v for k, v in report.items() if k not in ("scores", "prompts")}


def _unreadable(reward) -> int:
    """1 (with a message) when the judge gave no readable score at all; some unreadable ones are
    reported, scored 0."""
    from dynalign.rewards import none_readable

    if none_readable(reward):
        print(f"error: the judge gave no readable score (a digit 0-5) for any of the "
              f"{reward.scored} answers: use a judge that follows the reward prompt, or "
              f"--reading expected with a local model", file=sys.stderr)
        return 1
    if reward.unreadable:
        print(f"note: {reward.unreadable} of {reward.scored} answers got no readable score "
              f"(scored 0)", file=sys.stderr)
    return 0


def with_progress(reward, show: bool, chunk: int = 4):
    """`reward` called `chunk` answers at a time under a progress bar (a 1.5B judge on a CPU takes
    seconds an answer); scores are per answer, so chunking changes none."""
    from tqdm import tqdm

    def scored(prompts: list, responses: list) -> list[float]:
        out = []
        with tqdm(total=len(responses), desc="judging", file=sys.stderr, disable=not show) as bar:
            for i in range(0, len(responses), chunk):
                out += reward(prompts[i:i + chunk], responses[i:i + chunk])
                bar.update(len(responses[i:i + chunk]))
        return out
    return scored


def failed(report: dict, min_share: float, min_gap: float) -> list[str]:
    out = []
    for other in KINDS[1:]:
        share = report[f"good_beats_{other}"]
        gap = report["mean"]["good"] - report["mean"][other]
        if share < min_share:
            out.append(f"good beat {other} in {share:.0%} of the prompts (needs {min_share:.0%})")
        if gap < min_gap:
            out.append(f"good scored {gap:.2f} above {other} on average (needs {min_gap:.2f})")
    return out


def calibration(rows: list[dict], reward) -> dict:
    """Each row's three answers scored; how often good beats each other kind; mean per kind."""
    prompts = [r["prompt"] for r in rows for _ in KINDS]
    scores = reward(prompts, [r[kind] for r in rows for kind in KINDS])
    per_row = [dict(zip(KINDS, scores[i:i + len(KINDS)])) for i in range(0, len(scores), len(KINDS))]
    n = len(per_row)

    def share(other: str) -> float:
        return sum(s["good"] > s[other] for s in per_row) / n

    return {"prompts": n,
            "good_beats_off_topic": share("off_topic"), "good_beats_harmful": share("harmful"),
            "harmful_below_off_topic": sum(s["harmful"] < s["off_topic"] for s in per_row) / n,
            "mean": {k: round(sum(s[k] for s in per_row) / n, 3) for k in KINDS},
            "scores": [{"id": r["id"], **{k: round(v, 3) for k, v in s.items()}}
                       for r, s in zip(rows, per_row)]}


def _score_rows(path, limit: int | None) -> list[dict]:
    """Rows to score: a text `response`, and a text `prompt` or a conversation in `messages`
    (ending on the user turn answered; earlier turns are shown to the judge as context)."""
    from dynalign.dataset import json_object

    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = {"id": f"line {number}", **json_object(path, number, line)}
        asked = isinstance(row.get("prompt"), str) or (
            isinstance(row.get("messages"), list) and training_messages(row["messages"], "drop"))
        if not asked or not isinstance(row.get("response"), str):
            raise DataError(f"{path}:{number}: needs a text 'response' and a text 'prompt' or "
                            "'messages' (a conversation ending on a user turn with text)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows[:limit]


def _asked(row: dict):
    """What the judge is shown as the request: the prompt, or the conversation."""
    return row["prompt"] if isinstance(row.get("prompt"), str) else \
        training_messages(row["messages"], "drop")


def _rows(path, keys: tuple[str, ...], limit: int | None) -> list[dict]:
    from dynalign.dataset import read_rows

    rows = read_rows(path, strict=False)[:limit]  # every row has a text "prompt", and an id
    for row in rows:
        missing = [k for k in keys if not isinstance(row.get(k), str)]
        if missing:
            raise DataError(f"{path}, {row['id']}: needs the text field(s) {', '.join(missing)}")
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
