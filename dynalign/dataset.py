"""Task-prompt datasets: the JSONL format, the mechanically checkable criteria, and diversity stats.

A row is {"id", "goal", "prompt", "split", "source"} (more keys are kept). `split` is "train" or
"heldout"; the learner never trains on "heldout". `check_rows` flags what a program can see of the
paper's criteria: length, words that name CA or its aspects, requested output formats, phrases
that hint at what to consider, and duplicates. Whether a prompt is open-ended and needs decisions
stays a human (or evaluator) judgment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dynalign.errors import DataError
from dynalign.rouge import RougeIndex

SPLITS = ("train", "heldout")
REQUIRED = ("id", "goal", "prompt", "split", "source")
SEED_FILE = Path(__file__).resolve().parent.parent / "data" / "seed.jsonl"
MAX_WORDS = 100
MIN_WORDS = 15  # fewer leaves no room for the scenario details the criteria ask for
NEAR_DUPLICATE = 0.7  # ROUGE-L F1, the threshold Self-Instruct and the paper's Figure 3 use

CA_WORDS = re.compile(r"\b((?i:collective agency|knowledge\w*|power\w*|empower\w*|vitality|"
                      r"benevolen\w*)|CA)\b")
FORMATS = re.compile(
    r"\b(json|csv|yaml|xml|markdown|html|tabular|spreadsheet format|numbered list|"
    r"bullet(ed)?[- ]?(points?|list)|(in|as|into) an? (table|list|chart|grid)|"
    r"table format|(in|within|under|using) (exactly |at most |no more than )?\d+ "
    r"(words|sentences|paragraphs|bullets|steps))\b", re.IGNORECASE)
HINTS = re.compile(r"\b(taking into account|take into account|keep in mind|bear in mind|"
                   r"make sure (to|that)|be sure to|while (considering|balancing|ensuring)|"
                   r"answer while|should minimi[sz]e|should maximi[sz]e)\b", re.IGNORECASE)


@dataclass
class Flag:
    row_id: str
    reason: str


def seed_path(cfg) -> Path:
    return Path(cfg.data.seed) if cfg.data.seed else SEED_FILE


def read_rows(path: str | Path, strict: bool = True) -> list[dict]:
    """Rows of a JSONL file, each checked for the required keys; errors name the line. Not
    strict: only "prompt" is required, and a row without an id is named by its line number."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such dataset file: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            rows.append(_parse_line(path, number, line, strict))
    return rows


def json_object(path: Path, number: int, line: str) -> dict:
    """One JSONL line as a JSON object; errors name the file and the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not JSON: {e}") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{number}: a row must be a JSON object")
    return row


def _parse_line(path: Path, number: int, line: str, strict: bool) -> dict:
    row = json_object(path, number, line)
    if not strict:
        row.setdefault("id", f"line {number}")
    missing = [key for key in (REQUIRED if strict else ("id", "prompt"))
               if not isinstance(row.get(key), str)]
    if missing:
        raise DataError(f"{path}:{number}: missing or non-string key: {missing[0]}")
    if strict and row["split"] not in SPLITS:
        raise DataError(f"{path}:{number}: split must be one of {SPLITS}, got {row['split']!r}")
    return row


def word_count(text: str) -> int:
    return len(text.split())


def rule_flags(prompt: str) -> list[str]:
    """Why one prompt breaks the checkable criteria (empty when it does not)."""
    reasons = []
    words = word_count(prompt)
    if words > MAX_WORDS:
        reasons.append(f"{words} words (at most {MAX_WORDS})")
    if words < MIN_WORDS:
        reasons.append(f"{words} words (at least {MIN_WORDS}: give scenario details)")
    for label, pattern in (("names CA or an aspect", CA_WORDS), ("asks for a format", FORMATS),
                           ("hints at what to consider", HINTS)):
        found = pattern.search(prompt)
        if found:
            reasons.append(f"{label}: {found.group(0)!r}")
    return reasons


def check_rows(rows: list[dict], threshold: float = NEAR_DUPLICATE) -> list[Flag]:
    flags = [Flag(row["id"], reason) for row in rows for reason in rule_flags(row["prompt"])]
    seen_ids = set()
    index = RougeIndex()
    for row in rows:
        if row["id"] in seen_ids:
            flags.append(Flag(row["id"], "duplicate id"))
        seen_ids.add(row["id"])
        reason = near_duplicate(index, rows, row["prompt"], threshold)
        if reason:
            flags.append(Flag(row["id"], reason))
        index.add(row["prompt"])
    return flags


def near_duplicate(index: RougeIndex, rows: list[dict], prompt: str,
                   threshold: float) -> str | None:
    """Why `prompt` is a near-duplicate of an indexed prompt (rows[i] is index entry i), or
    None when its closest ROUGE-L stays under `threshold`."""
    score, position = index.nearest(prompt)
    if score >= threshold:
        return f"near-duplicate of {rows[position]['id']} (ROUGE-L {score:.2f})"
    return None
