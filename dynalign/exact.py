"""Exact-match benchmarks: math answers (AIME, GSM8K, MATH style) and multiple choice (GPQA style).

A reply is scored by what it states last: for math the last closed \\boxed{}, else a stated
"answer is X" / "answer: X", else the last number; for multiple choice the last "Answer: X". Math
answers compare as numbers when both sides read as one (0.5, 1/2 and \\frac{1}{2} agree; no
rounding), else as text after LaTeX and formatting noise is stripped. Multiple-choice options are
shuffled per row with a seed and the row's position in the file, so a row's letters never depend
on --limit.
"""

from __future__ import annotations

import csv
import functools
import random
import re
from fractions import Fraction
from pathlib import Path

from dynalign.dataset import json_object
from dynalign.errors import DataError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "eval"
MATH_PROMPT = ("{problem}\n\nPlease reason step by step, and put your final answer within "
               "\\boxed{{}}.")
MC_PROMPT = ("Answer the following multiple choice question. Think it through, then end with a "
             "last line of the form 'Answer: X', where X is one of {letters}.\n\n{question}\n\n"
             "{options}")
MC_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
              "Incorrect Answer 3")
LETTERS = "ABCD"

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_STATED = re.compile(r"answer\s*(?:is\b|:)\s*:?(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)|-?\d+/0*[1-9]\d*")
_FRAC = re.compile(r"(-?)\\frac(?:\{(-?\d+)\}|(\d))(?:\{(-?\d+)\}|(\d))")
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\displaystyle", "$", " ", "^{\\circ}",
          "^\\circ", "\\%", "%")


def _lines(path: Path, kind: str) -> list[tuple[int, str]]:
    if not path.exists():
        raise DataError(f"no such {kind} file: {path}")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: no rows")
    return lines


def load_math(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows {"id", "problem", "answer", "messages"} (other keys kept) of a JSONL file with
    "problem" (or "question") and "answer"; a GSM8K answer keeps only what follows "####"."""
    path = Path(path)
    rows = [_math_row(path, n, json_object(path, n, line)) for n, line in _lines(path, "math")]
    return rows[:limit]


def _math_row(path: Path, number: int, row: dict) -> dict:
    problem = row.get("problem", row.get("question"))
    answer = row.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        raise DataError(f"{path}:{number}: missing or non-string key: problem (or question)")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"{path}:{number}: missing key: answer (a string or a number)")
    answer = str(answer).split("####")[-1].strip()
    if not answer:
        raise DataError(f"{path}:{number}: empty answer")
    messages = [{"role": "user", "content": MATH_PROMPT.format(problem=problem.strip())}]
    return {**row, "id": str(row.get("id", f"line {number}")), "problem": problem,
            "answer": answer, "messages": messages}


def last_boxed(text: str) -> str | None:
    """What the last closed \\boxed{...} holds, nested braces and all (a reply cut off inside its
    box falls back to the box before)."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for end in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[match.end():end].strip()
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a math reply gives, or None when it gives none."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    stated = [_tidy(found) for found in _STATED.findall(text)]
    if stated and stated[-1]:
        return stated[-1]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _tidy(stated: str) -> str:
    """"**42** apples." -> "42": markdown and a trailing full stop off, a leading number kept."""
    text = stated.strip(" *_$").rstrip(".").strip(" *_$")
    lead = re.match(rf"({_NUMBER.pattern})(?=\s|$)", text)
    return lead.group(1) if lead else text


def normalise(answer: str) -> str:
    """An answer with formatting that does not change its value removed (units after a number
    too: "5 \\text{cm}" is "5")."""
    text = answer.strip()
    text = re.sub(r"^(.+?)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}$", r"\1", text)
    text = re.sub(r"\\(?:text|mbox|mathrm)\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for noise in _NOISE:
        text = text.replace(noise, "")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text).rstrip(".")
    return re.sub(r"^[a-zA-Z]=(?=.)", "", text)


def as_number(text: str) -> Fraction | None:
    """An int, decimal, a/b or \\frac{a}{b} as an exact fraction; None for anything else."""
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text)
    frac = _FRAC.fullmatch(text)
    if not frac:
        return None
    sign, top = frac.group(1), frac.group(2) or frac.group(3)
    bottom = frac.group(4) or frac.group(5)
    if int(bottom) == 0:
        return None
    return Fraction(int(top), int(bottom)) * (-1 if sign else 1)


def same_answer(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    pred, gold = normalise(pred), normalise(str(gold))
    pred_number, gold_number = as_number(pred), as_number(gold)
    if pred_number is not None and gold_number is not None:
        return pred_number == gold_number
    return pred == gold


def score_math(rows: list[dict], responses: list[str | None]) -> dict:
    items = [{"id": row["id"], "gold": row["answer"], "extracted": extract_answer(response)}
             for row, response in _pairs(rows, responses)]
    for item in items:
        item["correct"] = same_answer(item["extracted"], item["gold"])
    return _summary(items)


def load_mc(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows {"id", "question", "options" (letter -> text), "answer" (the correct letter),
    "messages"} of a GPQA-style CSV; errors name the line a record starts on."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such multiple-choice file: {path}")
    rows = [_mc_row(f"{path}:{line}", index, record, seed)
            for index, (line, record) in enumerate(_csv_records(path))]
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows[:limit]


def _csv_records(path: Path):
    """(line it starts on, record) per CSV record: GPQA's questions span several lines."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [column for column in MC_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}:1: no column {missing[0]!r} (need {', '.join(MC_COLUMNS)})")
        line = reader.line_num + 1
        for record in reader:
            yield line, record
            line = reader.line_num + 1


def _mc_row(where: str, index: int, record: dict, seed: int) -> dict:
    texts = [(record.get(column) or "").strip() for column in MC_COLUMNS]
    if not all(texts):
        raise DataError(f"{where}: empty {MC_COLUMNS[texts.index('')]!r}")
    order = list(range(4))  # 0 is the correct answer
    random.Random(f"{seed}:{index}").shuffle(order)
    options = {letter: texts[1 + i] for letter, i in zip(LETTERS, order)}
    listed = "\n".join(f"{letter}) {text}" for letter, text in options.items())
    content = MC_PROMPT.format(letters=LETTERS, question=texts[0], options=listed)
    return {"id": (record.get("Record ID") or "").strip() or f"row {index + 1}",
            "question": texts[0], "options": options, "answer": LETTERS[order.index(0)],
            "messages": [{"role": "user", "content": content}]}


@functools.lru_cache(maxsize=None)
def _choice_patterns(letters: str) -> tuple[re.Pattern, ...]:
    """Most to least explicit: a stated answer, a boxed letter, a lone letter on the last line,
    a letter in parentheses."""
    one = f"[{re.escape(letters)}]"
    return (re.compile(rf"(?i:answer)(?:\s+is)?\s*:?[\s*_$]*(?:\\(?:boxed|text|textbf)\{{)?"
                       rf"[(\[]?({one})(?![A-Za-z0-9])"),
            re.compile(rf"\\boxed\{{\s*\(?({one})\)?\s*\}}"),
            re.compile(rf"[\s*_$(\[]*({one})[)\].:*_$\s]*"),
            re.compile(rf"\(({one})\)"))


def extract_choice(text: str | None, letters: str = LETTERS) -> str | None:
    """The option letter a reply picks last, or None when it picks none."""
    if not text:
        return None
    stated, boxed, lone, bracketed = _choice_patterns(letters)
    found = stated.findall(text) or boxed.findall(text)
    last_line = ([line for line in text.splitlines() if line.strip()] or [""])[-1]
    alone = lone.fullmatch(last_line)
    if not found and alone:
        return alone.group(1)
    found = found or bracketed.findall(text)
    return found[-1] if found else None


def score_mc(rows: list[dict], responses: list[str | None]) -> dict:
    items = [{"id": row["id"], "gold": row["answer"], "extracted": extract_choice(response)}
             for row, response in _pairs(rows, responses)]
    for item in items:
        item["correct"] = item["extracted"] == item["gold"]
    return _summary(items)


def _pairs(rows: list[dict], responses: list) -> zip:
    if len(rows) != len(responses):
        raise ValueError(f"{len(rows)} rows but {len(responses)} responses")
    return zip(rows, responses)


def _summary(items: list[dict]) -> dict:
    correct = sum(item["correct"] for item in items)
    return {"accuracy": correct / len(items) if items else 0.0, "n": len(items),
            "correct": correct, "unreadable": sum(item["extracted"] is None for item in items),
            "items": items}
