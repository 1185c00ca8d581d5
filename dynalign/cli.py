"""The `dynalign` command. Arguments are parsed before anything heavy is imported, so `--help` is
fast; library errors become a one-line message and exit code 1 here and nowhere else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dynalign.admin_client import admin_request
from dynalign.catalog import MODELS
from dynalign.cli_eval import add_parser as add_eval_parser
from dynalign.cli_judge import add_parser as add_judge_parser
from dynalign.cli_logs import add_parser as add_logs_parser
from dynalign.cli_reviews import add_parser as add_reviews_parser
from dynalign.config import load_config, resolved_toml
from dynalign.errors import DynalignError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynalign", description=__doc__.split(".")[0])
    parser.add_argument("--config", metavar="PATH", help="TOML config (default: ./dynalign.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", help="print the resolved config as TOML")
    model = sub.add_parser("model", help="the base model").add_subparsers(dest="action", required=True)
    prep = model.add_parser("prepare", help="make a model a loadable folder in the state dir: the "
                            "configured one (model.path), or NAME (idempotent)")
    prep.add_argument("name", nargs="?", help="a model dynalign prepares by name: "
                      + ", ".join(MODELS) + " (default: model.path, else the embedded one)")
    serve = sub.add_parser("serve", help="start engine, gateway and chat UI")
    serve.add_argument("--port", type=int, help="gateway port (server.port)")
    serve.add_argument("--swap", choices=["auto", "lora", "merged"], help="engine.swap")
    serve.add_argument("--no-ui", action="store_true", help="do not start the Gradio UI")
    _adapter_parser(sub)
    _data_parsers(sub)
    _round_parsers(sub)
    add_eval_parser(sub)
    add_judge_parser(sub)
    add_logs_parser(sub)
    add_reviews_parser(sub)
    return parser


def _round_options(parser) -> None:
    parser.add_argument("--max-steps", type=int, help="learn.max_steps for this round")
    parser.add_argument("--prompts", type=int, help="learn.prompts for this round")
    parser.add_argument("--reward", choices=["self", "rule", "judge"], help="learn.reward")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other [learn] key for this round (TOML value), repeatable")


def _round_parsers(sub) -> None:
    refresh = sub.add_parser("refresh", help="start a refresh round now on the running server")
    _round_options(refresh)
    refresh.add_argument("--wait", action="store_true", help="follow its progress to the end")
    rounds = sub.add_parser("rounds", help="list refresh rounds, show one, or cancel one")
    rounds.add_argument("action", nargs="?", choices=["list", "show", "cancel"], default="list")
    rounds.add_argument("id", nargs="?", type=int)
    learn = sub.add_parser("learn", help="run refresh rounds without the server's scheduler: one "
                           "round now, or --schedule; candidates are published to the running "
                           "server's admin API")
    _round_options(learn)
    learn.add_argument("--schedule", action="store_true", help="run [learn.schedule] until Ctrl-C")


def _data_parsers(sub) -> None:
    gen = sub.add_parser("generate", help="grow a task-prompt set with the paper's goal -> prompt "
                         "-> critique -> revision loop (resumes where it stopped)")
    gen.add_argument("--count", type=int, help="accepted prompts wanted in total (generate.count)")
    gen.add_argument("--out", help="JSONL output (generate.out)")
    gen.add_argument("--url", help="one endpoint for all three roles (generate.*.url)")
    gen.add_argument("--model", help="one model for all three roles (generate.*.model)")
    gen.add_argument("--seed", type=int, help="generate.seed")
    gen.add_argument("--concurrency", type=int,
                     help="attempts in flight at once (generate.concurrency)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    data = sub.add_parser("data", help="check or describe a task-prompt set")
    actions = data.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="flag rows that break the checkable criteria")
    check.add_argument("file", nargs="?", help="JSONL (default: the seed set, data.seed)")
    stats = actions.add_parser("stats", help="pairwise ROUGE-L and length distributions, "
                               "as numbers and PNG plots")
    stats.add_argument("file", nargs="?", help="JSONL (default: the seed set, data.seed)")
    stats.add_argument("--out", help="folder for stats.json and plots (default: "
                       "<state>/reports/data-stats)")


def _adapter_parser(sub) -> None:
    adapters = sub.add_parser("adapters", help="list, register, activate adapter versions "
                              "(through the running gateway's admin API)")
    actions = adapters.add_subparsers(dest="action", required=True)
    actions.add_parser("list")
    register = actions.add_parser("register", help="register an adapter folder made elsewhere")
    register.add_argument("path")
    register.add_argument("--activate", action="store_true")
    register.add_argument("--note", default="")
    activate = actions.add_parser("activate", help="promote or roll back (VERSION or 'base')")
    activate.add_argument("version")
    activate.add_argument("--force", action="store_true", help="activate a version the gate "
                          "rejected")
    rollback = actions.add_parser("rollback", help="serve the active version's parent (or --to)")
    rollback.add_argument("--to", help="VERSION or 'base'")
    show = actions.add_parser("show", help="one version, with its round and the gate's reasons")
    show.add_argument("version")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args) or 0
    except DynalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args) -> int | None:
    cfg = load_config(args.config, _overrides(args))
    if args.command == "config":
        print(resolved_toml(cfg), end="")
    elif args.command == "model":
        from dynalign.model import prepare
        prepare(cfg, args.name)
    elif args.command == "serve":
        from server.main import serve
        return serve(cfg)
    elif args.command == "adapters":
        return adapters_command(cfg, args)
    elif args.command == "generate":
        return generate_command(cfg, args)
    elif args.command == "data":
        return data_command(cfg, args)
    elif args.command == "eval":
        from dynalign.cli_eval import eval_command
        return eval_command(cfg, args)
    elif args.command == "judge":
        from dynalign.cli_judge import judge_command
        return judge_command(cfg, args)
    elif args.command == "logs":
        from dynalign.cli_logs import logs_command
        return logs_command(cfg, args)
    elif args.command == "reviews":
        from dynalign.cli_reviews import reviews_command
        return reviews_command(cfg, args)
    elif args.command in ("refresh", "rounds", "learn"):
        from dynalign import cli_rounds
        return getattr(cli_rounds, f"{args.command}_command")(cfg, args)


def _overrides(args) -> dict:
    if args.command == "serve":
        pairs = {"server.port": args.port, "engine.swap": args.swap,
                 "ui.enabled": False if args.no_ui else None}
    elif args.command == "generate":
        pairs = {"generate.count": args.count, "generate.out": args.out,
                 "generate.seed": args.seed, "generate.concurrency": args.concurrency}
        for role in ("goal_writer", "prompt_writer", "evaluator"):
            pairs |= {f"generate.{role}.url": args.url, f"generate.{role}.model": args.model}
    elif args.command == "eval":
        pairs = {"eval.max_tokens": getattr(args, "max_tokens", None),  # not the scoreboard's
                 "eval.judge.url": getattr(args, "judge_url", None),  # pairwise, scoreboard
                 "eval.judge.model": getattr(args, "judge_model", None)}
    else:
        pairs = {}
    return {k: v for k, v in pairs.items() if v is not None}


def generate_command(cfg, args) -> int:
    from dynalign.generate import open_generator

    generator = open_generator(cfg)
    try:
        tally = generator.run(cfg.generate.count, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted: {len(generator.rows)} prompts in {generator.out}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{len(generator.rows)} prompts in {generator.out} (this run: {tally.accepted} "
          f"accepted, {tally.rejected} rejected, {tally.revised} revisions); "
          f"every attempt in {generator.trace}")
    return 0


def data_command(cfg, args) -> int:
    from dynalign.dataset import check_rows, read_rows, seed_path

    path = args.file or seed_path(cfg)
    rows = read_rows(path, strict=False)
    if args.action == "check":
        flags = check_rows(rows)
        for flag in flags:
            print(f"{flag.row_id}: {flag.reason}")
        bad = len({flag.row_id for flag in flags})
        print(f"{path}: {len(rows)} rows, {bad} flagged", file=sys.stderr)
        return 1 if flags else 0
    from dynalign.datastats import format_summary, write_report

    out = Path(args.out) if args.out else cfg.home / "reports" / "data-stats"
    print(format_summary(write_report(rows, out)))
    print(f"plots and stats.json in {out}", file=sys.stderr)
    return 0


def adapters_command(cfg, args) -> int:
    if args.action == "list":
        request = ("GET", "/adapters", None)
    elif args.action == "register":
        body = {"path": os.path.abspath(args.path), "activate": args.activate, "note": args.note}
        request = ("POST", "/adapters", body)
    elif args.action == "show":
        request = ("GET", f"/adapters/{args.version}", None)
    elif args.action == "rollback":
        request = ("POST", "/rollback", {"to": args.to} if args.to else None)
    else:
        request = ("POST", f"/adapters/{args.version}/activate",
                   {"force": True} if args.force else None)
    print(json.dumps(admin_request(cfg, *request), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
