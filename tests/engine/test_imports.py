"""Imports run one way inside asyncfl/ (imports inside functions count): no cycle, and the
engine never imports an algorithm, a task, the app or the tools."""

import ast
from pathlib import Path

import asyncfl

PACKAGE = Path(asyncfl.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The asyncfl modules `path` imports anywhere in its body (a `from a import b` counts as
    a.b where a.b is a module, else as a)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_the_import_walk_sees_imports_inside_functions():
    edges = graph()
    assert "asyncfl.engine.checkpoint" in edges["asyncfl.engine.event_loop"]
    assert len(edges) > 40


def test_no_import_cycle_inside_asyncfl():
    edges = graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_engine_imports_only_itself_and_the_protocol():
    edges = graph()
    engine = {name for name in edges if name.startswith("asyncfl.engine")}
    allowed = engine | {"asyncfl.protocol"}
    outside = {name: sorted(edges[name] - allowed) for name in engine if edges[name] - allowed}
    assert not outside, outside
