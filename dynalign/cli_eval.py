"""`dynalign eval pairwise | ifeval | math | mc`: evaluate served versions through the server.

Answers come from the running server's OpenAI API (greedy, `eval.max_tokens`), by version name:
3, v3 or dynalign-v3, `active`, or `base`; any other name is sent as is (with --url, any
OpenAI-compatible server). Requests carry the opt-out header, so they are never trained on,
and the admin key: the server answers chats by name only from the versions serving (the active
one, a canary's, the base), but for the admin key, so an operator can measure a candidate.
With engine.swap = "merged" only the active version is served: compare other versions in "lora"
mode (the gate compares a round's candidate inside the round, in either mode).
Each run writes report.json and summary.md under <state>/reports/eval/ and prints the summary.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor

from dynalign.errors import DataError


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="pairwise CA win rate, IFEval, math, multiple choice "
                        "against served versions").add_subparsers(dest="kind", required=True)
    pair = ev.add_parser("pairwise", help="A vs B on held-out prompts, judged in both orders")
    pair.add_argument("--a", required=True, help="version (3, v3, dynalign-v3, active, base)")
    pair.add_argument("--b", default="base", help="version to compare with (default: base)")
    pair.add_argument("--data", help="JSONL with 'prompt' (default: the seed set's held-out split)")
    for kind, what in (("ifeval", "IFEval input_data.jsonl (default: our 40-prompt sample)"),
                       ("math", "JSONL with problem, answer"),
                       ("mc", "GPQA-style CSV (Question, Correct Answer, Incorrect Answer 1-3)")):
        bench = ev.add_parser(kind, help=what.split(" (")[0])
        bench.add_argument("--data", required=kind != "ifeval", help=what)
        bench.add_argument("--model", default="active", help="version or model name")
    for parser in ev.choices.values():
        parser.add_argument("--limit", type=int, help="first N items only")
        parser.add_argument("--max-tokens", type=int, help="answer length (eval.max_tokens)")
        parser.add_argument("--url", help="server answering (default: this dynalign server)")
        parser.add_argument("--no-progress", action="store_true")
    board = ev.add_parser("scoreboard", help="a version vs the base model on held-out prompts: "
                          "win rates with intervals, IFEval, tokens, KL (stored, cached)")
    board.add_argument("--version", help="version to measure (3, v3; default: the active one)")
    board.add_argument("--prompts", help="JSONL with 'prompt' per row (default: the seed set's "
                       "held-out split)")
    board.add_argument("--list", action="store_true", help="show the stored scoreboards only")
    for parser in (pair, board):
        parser.add_argument("--judge-url", help="judge endpoint (eval.judge.url; default this "
                            "server; 'local': --judge-model is loaded in this process)")
        parser.add_argument("--judge-model", help="judge model (eval.judge.model): a served name, "
                            "or with --judge-url local a prepared name (qwen2.5-coder-1.5b) or a "
                            "folder")


def served_name(cfg, spec: str) -> str:
    if spec == "base":
        return cfg.model_name
    if spec == "active":
        return "dynalign"
    number = _version_digits(spec)
    return f"dynalign-v{number}" if number else spec


def _version_digits(spec: str) -> str | None:
    """The digits of 3, v3 or dynalign-v3 (at most 19: a version id's limit), else None."""
    m = re.fullmatch(r"(?:dynalign-)?v?(\d{1,19})", spec)
    return m.group(1) if m else None


def eval_command(cfg, args) -> int:
    from dynalign.evaluate import markdown, write_report

    if args.kind == "scoreboard":
        return scoreboard_command(cfg, args)
    report = pairwise_command(cfg, args) if args.kind == "pairwise" else benchmark(cfg, args)
    folder = write_report(cfg.home, args.kind, report)
    print(markdown(args.kind, report), end="")
    print(f"report: {folder}/report.json", file=sys.stderr)
    return 0


def answers(cfg, args, model: str, conversations: list[list[dict]], label: str) -> list[str]:
    from tqdm import tqdm

    from dynalign.config import EndpointConfig
    from dynalign.endpoint import Endpoint
    from dynalign.keys import read_admin_key

    answering = EndpointConfig(url=args.url or "", model=model, temperature=0.0,
                               api_key_env=cfg.eval.judge.api_key_env,
                               max_tokens=cfg.eval.max_tokens)
    endpoint = Endpoint.from_config("answers", answering, cfg.generate, cfg.gateway_url,
                                    api_key=None if args.url else read_admin_key(cfg))
    with tqdm(total=len(conversations), desc=label, file=sys.stderr,
              disable=args.no_progress) as bar, ThreadPoolExecutor(cfg.eval.concurrency) as pool:
        def one(messages):
            text = endpoint.chat(messages)
            bar.update()
            return text
        return list(pool.map(one, conversations))


def pairwise_command(cfg, args) -> dict:
    from tqdm import tqdm

    from dynalign.dataset import read_rows, seed_path
    from learner.panel_judge import open_judges

    rows = read_rows(args.data or seed_path(cfg), strict=False)
    prompts = [r["prompt"] for r in rows if args.data or r.get("split") == "heldout"][:args.limit]
    if not prompts:
        raise DataError(f"no prompts in {args.data or seed_path(cfg)}")
    a, b = served_name(cfg, args.a), served_name(cfg, args.b)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    answers_a, answers_b = answers(cfg, args, a, convs, a), answers(cfg, args, b, convs, b)
    judge = open_judges(cfg, "eval")
    with tqdm(total=len(prompts), desc="judge", file=sys.stderr, disable=args.no_progress) as bar:
        report = judge.pairwise(cfg, prompts, answers_a, answers_b, progress=bar.update)
    return {"a": a, "b": b, "judge": judge.label, **report}


def benchmark(cfg, args) -> dict:
    from dynalign import exact, ifeval

    data = args.data or str(ifeval.SAMPLE_FILE)
    if args.kind == "ifeval":
        rows, score = ifeval.load_ifeval(data, args.limit), ifeval.score_ifeval
    elif args.kind == "math":
        rows, score = exact.load_math(data, args.limit), exact.score_math
    else:
        rows, score = exact.load_mc(data, args.limit, cfg.eval.seed), exact.score_mc
    model = served_name(cfg, args.model)
    responses = answers(cfg, args, model, [r["messages"] for r in rows], model)
    return {"model": model, "data": data, **score(rows, responses)}


def scoreboard_command(cfg, args) -> int:
    """Measure a version (in this process: it loads torch and the judge), or --list the stored
    scoreboards, one line per version and judge."""
    from contextlib import closing

    from dynalign.scoreboard import markdown
    from dynalign.store import Store

    version = None if args.version is None else version_number(args.version)
    if not args.list:
        from learner.scoreboard import run

        print(markdown(run(cfg, version, args.prompts)), end="")
        return 0
    with closing(Store(cfg.db_path)) as store:
        if version is not None:
            store.adapter(version)  # unknown: an error naming it
        rows = store.scoreboards(version)
    if not rows:
        print("no scoreboards yet: `dynalign eval scoreboard --version N` measures one")
    for row in rows:
        h = row["summary"]
        rate, ci = h["pointwise"]["win_rate"], h["pointwise"]["ci"]
        shown = "n/a" if rate is None else f"{rate:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]"
                                                             if ci else "")
        print(f"v{row['version']}\tpointwise {shown}\tjudge {row['judge']}\t{row['created']}")
    return 0


def version_number(spec: str) -> int:
    number = _version_digits(spec)
    if number is None:
        raise DataError(f"--version: not a version number: {spec!r} (3, v3 or dynalign-v3)")
    return int(number)
