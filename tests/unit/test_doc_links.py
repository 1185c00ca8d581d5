"""Every relative link of README.md, docs/*.md and data/README.md leads somewhere
(tools/doc_links.py), and the tool does catch a missing file and a missing heading."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "doc_links.py"


def run_tool(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True,
                          timeout=60)


def test_the_docs_links_resolve():
    out = run_tool(REPO)
    assert out.returncode == 0, out.stdout


def test_the_tool_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The `[learn.gate]` keys\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#the-learngate-keys) [ok too](#top) [web](https://example.com)\n"
        "# Top\n[gone](docs/b.md) [no heading](docs/a.md#nowhere)\n"
        "```\n[in a fence](docs/c.md)\n```\n`[in code](docs/d.md)`\n")
    out = run_tool(tmp_path)
    assert out.returncode == 1
    assert "README.md: (docs/b.md): no such file" in out.stdout
    assert "no heading #nowhere in docs/a.md" in out.stdout
    assert "2 broken link(s)" in out.stdout
