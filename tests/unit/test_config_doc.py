"""docs/config.md is generated from dynalign/config.py (tools/config_doc.py) and is up to date;
the check catches a stale copy; every key of the config tree is listed, with a meaning."""

import dataclasses
import typing
import subprocess
import sys
from pathlib import Path

from dynalign.config import Config

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "config_doc.py"
DOC = REPO / "docs" / "config.md"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=60)


def keys(instance, prefix: str = "") -> list[str]:
    """Every dotted key; an array of tables (`[[eval.judges]]`) also lists its item's keys as
    `eval.judges[].url`, ..."""
    out = []
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{prefix}{f.name}.")
            continue
        out.append(f"{prefix}{f.name}")
        item = typing.get_args(hints[f.name])
        if item and dataclasses.is_dataclass(item[0]):
            out += keys(item[0](), f"{prefix}{f.name}[].")
    return out


def test_docs_config_md_is_current():
    out = run_tool("--check")
    assert out.returncode == 0, out.stderr


def test_the_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "config.md"
    text = DOC.read_text()
    assert "| `engine.port` | integer | `8001` |" in text
    stale.write_text(text.replace("| `engine.port` | integer | `8001` |",
                                  "| `engine.port` | integer | `8002` |"))
    out = run_tool("--check", "--file", str(stale))
    assert out.returncode == 1
    assert "out of date" in out.stderr and "`8001`" in out.stderr
    out = run_tool("--check", "--file", str(tmp_path / "missing.md"))
    assert out.returncode == 1


def test_every_key_is_listed_once_with_its_default_and_a_meaning():
    out = run_tool()
    assert out.returncode == 0, out.stderr
    assert out.stdout == DOC.read_text()
    rows = {}
    for line in out.stdout.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[0].strip("`"), []).append(cells)
    assert sorted(rows) == sorted(keys(Config()))
    for key, found in rows.items():
        assert len(found) == 1, key
        name, type_, default, meaning = found[0]
        assert meaning, f"{key} has no comment in dynalign/config.py"
    # a section's own defaults show (the evaluator's temperature, the goal writer's max_tokens)
    assert rows["generate.evaluator.temperature"][0][2] == "`0.0`"
    assert rows["generate.goal_writer.max_tokens"][0][2] == "`48`"
    # continuation lines of a comment are read, and a long default is named by its source
    assert "the largest divisor" in rows["learn.micro_batch"][0][3]
    assert rows["prompts.reward"][0][2] == "the text of `prompts.REWARD`"
    # an array of tables is documented per item, inherited keys with their comments
    assert rows["eval.judges"][0][1] == "array of tables"
    assert "OpenAI-compatible" in rows["eval.judges[].url"][0][3]
    assert "environment variable" in rows["learn.judges[].api_key_env"][0][3]
