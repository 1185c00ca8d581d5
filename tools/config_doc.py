"""docs/config.md, generated from dynalign/config.py so that it cannot drift from the code.

Walks the dataclass tree of `dynalign.config.Config`: for every key its dotted name, type, default
(from a default instance, so a section's own defaults show, such as the evaluator's temperature)
and the comment written beside the field in dynalign/config.py (read with `ast` and `tokenize`:
the trailing `# comment`, plus the comment-only lines under it whose text is indented past the
`#`, which continue it). A comment-only line above a field starts a group: it is printed before the
rows that follow it. Each section's class docstring is its introduction.

Usage: python tools/config_doc.py > docs/config.md     (regenerate)
       python tools/config_doc.py --check [--file F]   (exit 1 when F, default docs/config.md,
                                                        differs from what would be generated)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import io
import json
import re
import sys
import tokenize
import types
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's dynalign, not whichever one is installed

from dynalign import config  # noqa: E402

DOC = REPO / "docs" / "config.md"
LONG = 60  # a default string longer than this (or multi-line) is shown by its source expression
TYPES = {str: "string", int: "integer", float: "float", bool: "boolean"}


@dataclasses.dataclass
class Field:
    name: str
    comment: str  # trailing comment and its continuation lines, joined
    group: str  # the comment-only lines just above the field ("" if none)
    source: str  # the default's source text


def read_source(path: Path) -> dict[str, tuple[str, dict[str, Field]]]:
    """class name -> (docstring, field name -> Field), from the module's source."""
    text = path.read_text()
    lines = text.splitlines()
    comments: dict[int, str] = {}  # line number -> comment text (without '#')
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:]

    def comment_only(n: int) -> bool:
        return n in comments and lines[n - 1].lstrip().startswith("#")

    def continuation(n: int) -> bool:  # "#   more text": indented past the '#'
        return comment_only(n) and comments[n].startswith("  ")

    classes = {}
    for node in ast.parse(text).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            trailing = [comments[n].strip() for n in range(item.lineno, item.end_lineno + 1)
                        if n in comments and not comment_only(n)]
            n = item.end_lineno + 1
            while continuation(n):
                trailing.append(comments[n].strip())
                n += 1
            group = []
            n = item.lineno - 1
            while comment_only(n) and not continuation(n):
                group.insert(0, comments[n].strip())
                n -= 1
            source = ast.get_source_segment(text, item.value) if item.value else ""
            fields[item.target.id] = Field(item.target.id, " ".join(trailing), " ".join(group),
                                           source or "")
        classes[node.name] = (ast.get_docstring(node) or "", fields)
    return classes


def table_list(hint):
    """The dataclass of a `list[SomeConfig]` hint (an array of tables), else None."""
    args = typing.get_args(hint) if typing.get_origin(hint) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def type_name(hint) -> str:
    if table_list(hint):
        return "array of tables"
    if typing.get_origin(hint) is list:
        return "list of strings"
    if isinstance(hint, types.UnionType):
        return " or ".join(type_name(h) for h in typing.get_args(hint))
    return TYPES.get(hint, getattr(hint, "__name__", str(hint)))


def default_text(value, source: str) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str) and (len(value) > LONG or "\n" in value):
        return f"the text of `{source}`"
    if isinstance(value, (str, list)):
        return f"`{json.dumps(value, ensure_ascii=False)}`"
    return f"`{value!r}`"


def text_md(text: str) -> str:
    """Comment text as Markdown: `<` outside code spans escaped (`<state>` is no HTML tag)."""
    parts = text.split("`")
    return "`".join(p if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p)
                    for i, p in enumerate(parts))


def cell(text: str) -> str:
    return text_md(text).replace("|", "\\|")


def paragraph(text: str) -> str:
    """A docstring as one Markdown paragraph per blank-line-separated block."""
    blocks = [text_md(" ".join(b.split())) for b in text.split("\n\n")]
    return "\n\n".join(b for b in blocks if b)


def sentence(text: str) -> str:
    """A field's comment as a sentence of its own: capitalised, with a full stop."""
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?)" else text + "."


def section(instance, prefix: str, classes, title: str, intro: str) -> list[str]:
    cls = type(instance)
    doc, fields = classes[cls.__name__]
    for base in cls.__mro__[1:]:  # inherited fields keep their comments
        fields = {**classes.get(base.__name__, ("", {}))[1], **fields}
    hints = typing.get_type_hints(cls)
    out = [f"## {title}", ""] if title else []
    for text in (intro, paragraph(doc)):
        if text:
            out += [text, ""]
    children = []
    table_open = False
    for f in dataclasses.fields(instance):
        meta = fields[f.name]
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            children.append((f.name, value, meta, False))
            continue
        if table_list(hints[f.name]):
            children.append((f.name, table_list(hints[f.name])(), meta, True))
        if meta.group:
            if table_open:
                out.append("")
            out += [f"*{text_md(meta.group)}*", ""]
            table_open = False
        if not table_open:
            out += ["| key | type | default | meaning |", "|---|---|---|---|"]
            table_open = True
        out.append(f"| `{prefix}{f.name}` | {type_name(hints[f.name])} | "
                   f"{cell(default_text(value, meta.source))} | {cell(meta.comment)} |")
    if table_open:
        out.append("")
    for name, value, meta, many in children:
        intro = sentence(text_md(" ".join(t for t in (meta.group, meta.comment) if t)))
        title = f"`[[{prefix}{name}]]`, each" if many else f"`[{prefix}{name}]`"
        out += section(value, f"{prefix}{name}{'[].' if many else '.'}", classes, title, intro)
    return out


def render() -> str:
    classes = read_source(Path(config.__file__))
    head = ["# Configuration reference", "",
            "Every key of dynalign's config file: its dotted name, type, default and meaning. "
            "This page is generated from `dynalign/config.py` (the dataclasses, the comments "
            "beside their fields and their docstrings) by `tools/config_doc.py`; do not edit it "
            "by hand: change the code's comments and run "
            "`python tools/config_doc.py > docs/config.md`.", ""]
    return "\n".join(head + section(config.Config(), "", classes, "", "")).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when the file differs from what would be generated")
    ap.add_argument("--file", type=Path, default=DOC, help="the file --check compares")
    args = ap.parse_args(argv)
    text = render()
    if not args.check:
        sys.stdout.write(text)
        return 0
    current = args.file.read_text() if args.file.exists() else ""
    if current == text:
        return 0
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.file),
                                     "generated", lineterm="", n=1))
    sys.stderr.write("\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "") + "\n")
    sys.stderr.write(f"{args.file} is out of date: run python tools/config_doc.py > "
                     f"docs/config.md\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
