"""The shape of the code: no import cycles among nonrobust's modules, no long module without a stated reason, no script that guesses
at an abbreviated option."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nonrobust"
LONG = 500
"""A module longer than this says why in its docstring, in a paragraph that starts "Why one module:"."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The nonrobust modules ``name`` imports, at module level or inside functions (imports only for type checking left out)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of its modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 50  # the graph was read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(_modules()))
def test_a_long_module_says_why_it_is_one_module(name):
    path = _modules()[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > LONG:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert "Why one module:" in doc, f"{path.name} has {lines} lines and no 'Why one module:' paragraph in its docstring"


def test_readme_names_every_module():
    """README's module table names every top-level module and package, so the map of the code cannot drift from it."""
    text = (SRC.parents[1] / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| module | owns |"):]
    table = table[: table.index("\n\n")]
    named = {m for row in table.splitlines()[2:] for m in re.findall(r"`(\w+)`", row.split("|")[1])}
    top = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
           if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("_")}
    assert top - named == set(), f"README's module table lacks {sorted(top - named)}"
    assert named - top == set(), f"README's module table names {sorted(named - top)}, which do not exist"


def test_every_script_and_benchmark_refuses_abbreviated_options():
    """As the CLI's parser does: ``--pgd`` is an error, not a guess at ``--pgd-n`` (argparse's default allows the guess)."""
    root = SRC.parents[1]
    for path in sorted([*(root / "scripts").glob("*.py"), *(root / "benchmarks").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("ArgumentParser", "add_parser")):
                given = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert given.get("allow_abbrev") == "False", f"{path.name}:{node.lineno}: pass allow_abbrev=False"
