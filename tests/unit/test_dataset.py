"""The dataset format and the checkable criteria."""

import json

import pytest

from dynalign.dataset import check_rows, read_rows, rule_flags
from dynalign.errors import DataError

GOOD = ("My brother and I inherited our late father's small bakery in Tunis. Neither of us has "
        "run a business, the ovens are old, and three long-time workers are waiting to hear "
        "what happens next. Work out what we do in the first month.")


def _row(i, prompt=GOOD, **extra):
    return {"id": f"ca-{i:04d}", "goal": "Decide the future of a bakery", "prompt": prompt,
            "split": "train", "source": "test", **extra}


def test_a_good_prompt_has_no_flags():
    assert rule_flags(GOOD) == []


@pytest.mark.parametrize("prompt, reason", [
    ("word " * 101, "101 words"),
    ("Plan a move.", "3 words"),
    (GOOD + " Think about collective agency.", "names CA"),
    (GOOD + " Aim for the most CA.", "names CA"),
    (GOOD + " Share your knowledge.", "names CA"),
    (GOOD + " Empower them.", "names CA"),
    (GOOD + " Put it in a table.", "asks for a format"),
    (GOOD + " Answer as JSON.", "asks for a format"),
    (GOOD + " Use bullet points.", "asks for a format"),
    (GOOD + " Answer in 50 words.", "asks for a format"),
    (GOOD + " Keep in mind their feelings.", "hints at what to consider"),
    (GOOD + " Make sure to save money.", "hints at what to consider"),
])
def test_rule_flags(prompt, reason):
    assert any(reason in flag for flag in rule_flags(prompt))


def test_lowercase_ca_and_words_inside_others_are_not_flagged():
    assert rule_flags(GOOD + " We sit at the kitchen table; ca. 20 people come.") == []


def test_check_rows_flags_duplicates_and_near_duplicates():
    near = GOOD.replace("Tunis", "Sfax")
    rows = [_row(1), _row(2, "A quiet street in Lyon needs a plan for its empty lot, and the "
                            "residents have met twice without agreeing on anything at all."),
            _row(3, near), _row(1, "Yet another prompt about planning a small garden for the "
                                   "school with the help of parents and two teachers.")]
    reasons = {(f.row_id, f.reason.split(" (")[0]) for f in check_rows(rows)}
    assert ("ca-0003", "near-duplicate of ca-0001") in reasons
    assert ("ca-0001", "duplicate id") in reasons
    assert len(reasons) == 2


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_rows_strict_and_lenient(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": GOOD}])
    with pytest.raises(DataError, match=r"d.jsonl:1: missing or non-string key: id"):
        read_rows(path)
    assert read_rows(path, strict=False)[0]["id"] == "line 1"


@pytest.mark.parametrize("content, message", [
    ("{not json\n", "not JSON"),
    ("[1, 2]\n", "a row must be a JSON object"),
    (json.dumps(_row(1, split="test")) + "\n", "split must be one of"),
])
def test_read_rows_errors_name_the_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text("\n" + content)
    with pytest.raises(DataError, match=f"d.jsonl:2: {message}"):
        read_rows(tmp_path / "d.jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such dataset file"):
        read_rows(tmp_path / "nope.jsonl")
