"""The layers hold: no import cycle between our modules, the library imports nothing of the
server, learner or UI (but its command line), and importing it loads no heavy framework."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "imports.py"
HEAVY = ("torch", "vllm", "gradio", "transformers", "trl", "server", "learner", "ui")


def run_tool(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True,
                          text=True, timeout=60)


def test_no_import_cycle_and_no_import_against_the_layers():
    out = run_tool(REPO)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("0 problem(s)")


def test_the_tool_finds_a_cycle_and_a_library_module_importing_the_server(tmp_path):
    for package in ("dynalign", "server"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "dynalign" / "a.py").write_text("def f():\n    from dynalign import b\n")
    (tmp_path / "dynalign" / "b.py").write_text("import dynalign.a\nimport server.gateway\n")
    (tmp_path / "server" / "gateway.py").write_text("")
    out = run_tool(tmp_path)
    assert out.returncode == 1
    assert "cycle: dynalign.a <-> dynalign.b" in out.stdout
    assert "layer: dynalign.b imports server.gateway" in out.stdout


def test_the_tool_resolves_relative_imports(tmp_path):
    """`from . import b` and `from ..pkg import h` are edges like their absolute spelling: a cycle
    made of relative imports is found, and in a package's `__init__.py` `.` is that package."""
    (tmp_path / "dynalign" / "pkg").mkdir(parents=True)
    (tmp_path / "dynalign" / "__init__.py").write_text("")
    (tmp_path / "dynalign" / "a.py").write_text("from . import b\n")
    (tmp_path / "dynalign" / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "dynalign" / "pkg" / "__init__.py").write_text("from .c import h\n")
    (tmp_path / "dynalign" / "pkg" / "c.py").write_text("from ..pkg import h\n")
    out = run_tool(tmp_path)
    assert out.returncode == 1
    assert "cycle: dynalign.a <-> dynalign.b" in out.stdout
    assert "cycle: dynalign.pkg <-> dynalign.pkg.c" in out.stdout


def test_importing_the_library_loads_no_framework_nor_other_layer():
    names = sorted(".".join(p.relative_to(REPO).with_suffix("").parts)
                   for p in (REPO / "dynalign").glob("*.py")
                   if not p.name.startswith("cli") and p.name != "__init__.py")
    code = (f"import importlib, json, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert len(names) > 20
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
