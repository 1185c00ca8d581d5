"""IFEval: does a reply follow instructions a program can check ("no commas", "3 bullet points")?

The checkers are lm-eval's maintained port of Google's (`lm_eval.tasks.ifeval`), imported only when
needed: they pull in nltk and langdetect, and lm-eval's `instructions_util` calls
`nltk.download("punkt_tab")` at import time when the data is missing, which fails (or hangs)
without internet. So the data is looked for first, and `make eval-data` (part of `make install`)
puts it into `<venv>/nltk_data`, which NLTK searches by default, from the copy that ships inside the
llama-index-core wheel: no NLTK downloader, nothing fetched at run time.

Rows are Google's `input_data.jsonl`: {"key", "prompt", "instruction_id_list", "kwargs"}, one
kwargs dict per instruction. Scores are Google's four: prompt-level (every instruction followed)
and instruction-level accuracy, strict and loose (loose also accepts the reply without its first
or last line, or without markdown asterisks, so "Sure! Here it is:" does not fail "all lowercase").
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import shutil
import sys
import zipfile
from pathlib import Path

from dynalign.dataset import json_object
from dynalign.errors import DataError

SAMPLE_FILE = Path(__file__).resolve().parent.parent / "data" / "eval" / "ifeval_sample.jsonl"
PUNKT_IN_WHEEL = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
PUNKT_WANTED = re.compile(r"README|english/\w+\.(txt|tab)")  # the checkers split English only


def checker_modules():
    """lm-eval's (instructions_registry, utils). Imported only once NLTK's punkt_tab is known to be
    findable: otherwise the import itself would try to download it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise DataError('IFEval needs lm-eval: pip install -e ".[eval]" (or run `make install`)')
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        raise DataError("IFEval needs NLTK's punkt_tab data, found nowhere in "
                        f"{nltk.data.path}: run `make eval-data` (or `make install`)") from None
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # langdetect samples at random: the same reply could flip verdicts
    from lm_eval.tasks.ifeval import instructions_registry, utils

    return instructions_registry, utils


def load_ifeval(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a Google-format IFEval JSONL file, each checked against lm-eval's instruction
    registry, with "messages" (the prompt as one user turn) added; errors name the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such IFEval file: {path}")
    known = checker_modules()[0].INSTRUCTION_DICT
    rows = [_ifeval_row(path, number, json_object(path, number, line), known)
            for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows[:limit]


def _ifeval_row(path: Path, number: int, row: dict, known: dict) -> dict:
    where = f"{path}:{number}"
    _check_fields(where, row)
    kwargs = [{} if k is None else k for k in row["kwargs"]]
    for instruction_id, arguments in zip(row["instruction_id_list"], kwargs):
        _check_instruction(where, instruction_id, arguments, known)
    prompt_turn = [{"role": "user", "content": row["prompt"]}]
    return {**row, "kwargs": kwargs, "messages": prompt_turn}


def _check_fields(where: str, row: dict) -> None:
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(row.get("key"), int) or isinstance(row.get("key"), bool):
        raise DataError(f"{where}: key must be an integer")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise DataError(f"{where}: missing or empty string: prompt")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: instruction_id_list must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"{where}: kwargs must be a list with one object per instruction")


def _check_instruction(where: str, instruction_id: str, arguments, known: dict) -> None:
    """An unknown id or argument name would only fail (a TypeError) in the middle of scoring."""
    if instruction_id not in known:
        raise DataError(f"{where}: unknown instruction id {instruction_id!r} (not one of "
                        f"lm-eval's {len(known)} IFEval instructions)")
    if not isinstance(arguments, dict):
        raise DataError(f"{where}: kwargs for {instruction_id} must be an object")
    accepted = inspect.signature(known[instruction_id].build_description).parameters
    unknown = [name for name, value in arguments.items()
               if value is not None and name not in accepted]
    if unknown:
        raise DataError(f"{where}: {instruction_id} takes no argument {unknown[0]!r}")


def score_ifeval(rows: list[dict], responses: list[str | None]) -> dict:
    """Google's four accuracies over rows from `load_ifeval` and one reply each (None: no reply,
    which follows nothing), plus the per-row verdicts."""
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    utils = checker_modules()[1]
    items = [_score_row(utils, row, response or "") for row, response in zip(rows, responses)]
    strict = [verdict for item in items for verdict in item["follow_strict"]]
    loose = [verdict for item in items for verdict in item["follow_loose"]]
    return {"prompt_strict": _mean([all(i["follow_strict"]) for i in items]),
            "prompt_loose": _mean([all(i["follow_loose"]) for i in items]),
            "instruction_strict": _mean(strict), "instruction_loose": _mean(loose),
            "n_prompts": len(items), "n_instructions": len(strict), "items": items}


def _score_row(utils, row: dict, response: str) -> dict:
    example = utils.InputExample(key=row["key"], instruction_id_list=row["instruction_id_list"],
                                 prompt=row["prompt"], kwargs=row["kwargs"])
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
    return {"key": row["key"], "instruction_id_list": row["instruction_id_list"],
            "response": response, "follow_strict": strict.follow_instruction_list,
            "follow_loose": loose.follow_instruction_list}


def _mean(verdicts: list[bool]) -> float:
    return sum(verdicts) / len(verdicts) if verdicts else 0.0


def extract_punkt(wheel_path: str | Path, dest_dir: str | Path) -> Path:
    """Copy NLTK's English punkt_tab out of a llama-index-core wheel into
    `dest_dir/tokenizers/punkt_tab`. Staged, then renamed into place, so an interrupted copy never
    looks finished (the Makefile's target is the README inside it)."""
    wheel_path, target = Path(wheel_path), Path(dest_dir) / "tokenizers" / "punkt_tab"
    if not zipfile.is_zipfile(wheel_path):
        raise DataError(f"{wheel_path}: no such wheel, or not a zip file")
    staging = target.with_name("punkt_tab.partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, relative in _punkt_members(wheel_path, wheel.namelist()):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(wheel.read(name))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _punkt_members(wheel_path: Path, names: list[str]) -> list[tuple[str, str]]:
    """(name in the wheel, path under punkt_tab/) of the files wanted; a fixed pattern, so no
    member can write outside the destination."""
    members = [(name, name[len(PUNKT_IN_WHEEL):]) for name in names
               if name.startswith(PUNKT_IN_WHEEL)
               and PUNKT_WANTED.fullmatch(name[len(PUNKT_IN_WHEEL):])]
    if not any(relative.startswith("english/") for _, relative in members):
        raise DataError(f"{wheel_path}: no {PUNKT_IN_WHEEL}english/ in this wheel")
    return members


def main(argv: list[str] | None = None) -> int:
    """`python -m dynalign.ifeval install-punkt --wheel W --dest D`, for the Makefile (before the
    `dynalign` command has any reason to know about NLTK)."""
    parser = argparse.ArgumentParser(prog="python -m dynalign.ifeval")
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install-punkt", help="NLTK's English punkt_tab from a "
                             "llama-index-core wheel into DEST/tokenizers/punkt_tab")
    install.add_argument("--wheel", required=True, help="a llama_index_core-*.whl")
    install.add_argument("--dest", required=True, help="an NLTK data folder (<venv>/nltk_data)")
    args = parser.parse_args(argv)
    try:
        target = extract_punkt(args.wheel, args.dest)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"NLTK punkt_tab (English) -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
