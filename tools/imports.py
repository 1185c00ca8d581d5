"""The project's import graph, read with stdlib `ast` (every import, module- or function-level,
absolute or relative): prints each cycle between our modules and each import that runs against
the layers; exit 1 if there is any.

The layers: `dynalign/` is the library and imports nothing from `server/`, `learner/` or `ui/`,
except its command line (`dynalign/cli*.py`), which dispatches to them; `ui/` talks to the
server over HTTP only, so it imports neither `server/` nor `learner/`.

Usage: python tools/imports.py [REPO]   (default: this file's repository)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("dynalign", "server", "learner", "ui")
FORBIDDEN = {"dynalign": ("server", "learner", "ui"), "ui": ("server", "learner")}


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, package):
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def _targets(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import may load (`from m import x`: m, or its submodule m.x). A
    relative import is resolved against `package`, the importing module's package (the module
    itself for an `__init__.py`), as Python resolves it: `from . import b` in dynalign/a.py is
    dynalign.b, `from ..x import y` in dynalign/sub/c.py is dynalign.x(.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    module = node.module or ""
    if node.level:
        parts = package.split(".") if package else []
        if node.level > len(parts):  # beyond the top-level package: Python refuses it too
            return []
        base = ".".join(parts[:len(parts) - node.level + 1])
        module = f"{base}.{module}" if module else base
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in sorted(edges.items()):
        layer = source.split(".")[0]
        if source.startswith("dynalign.cli"):
            continue
        for target in sorted(targets):
            if target.split(".")[0] in FORBIDDEN.get(layer, ()):
                out.append(f"{source} imports {target}")
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    edges = graph(root)
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    problems += [f"layer: {v}" for v in layer_violations(edges)]
    for line in problems:
        print(line)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
