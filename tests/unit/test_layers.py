"""The package's layers, read from the source: no import cycle, no upward import, and the
faces (CLI, MCP server) reach the core only through ``orchestrator.dispatch``.

Every import counts, also one inside a function: a lazy import that dodges a cycle is
still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

SHARED = {"orchestrator", "errors", "paths", "models", "results", "config", "configfile",
          "configerrors", "configyaml", "privilege", "redaction", "safefs", "textinput",
          "outcomes"}
RANK = {"runtime": 1, "state": 1, "claude": 1, "stub": 1, "gateway": 2, "run": 3,
        "dispatch": 4, "cli": 5, "server": 5}
"""Higher may import lower, never the reverse; shared values are rank 0."""
FACES = {"cli", "server"}
FACE_MAY_IMPORT = {"dispatch", "cli", "server", "stub"}
"""Besides shared values; of ``dispatch`` only the package itself (its ``__init__``)."""
FOREIGN_FORBIDDEN = {"dispatch": {"typer", "mcp", "docker"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> Iterator[str]:
    """Every module ``path`` imports (at any depth of the file), as full names; a
    ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in known else base


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports(path, known)) for name, path in found.items()}


def layer(name: str) -> str:
    """``orchestrator.run.pool`` -> ``run``; ``orchestrator.errors`` -> ``errors``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "orchestrator"


def rank(name: str) -> int:
    top = layer(name)
    return RANK.get(top, 0) if top not in SHARED else 0


def internal(target: str) -> bool:
    return target == "orchestrator" or target.startswith("orchestrator.")


def test_every_module_is_placed() -> None:
    unplaced = sorted(n for n in modules() if layer(n) not in SHARED and layer(n) not in RANK)
    assert not unplaced, f"put these in a layer (or the shared set): {unplaced}"


def test_no_upward_import() -> None:
    wrong = sorted(f"{src} -> {dst}" for src, targets in graph().items() for dst in targets
                   if internal(dst) and rank(dst) > rank(src))
    assert not wrong, "lower layers import higher ones:\n" + "\n".join(wrong)


def test_faces_reach_the_core_only_through_dispatch() -> None:
    wrong = []
    for src, targets in graph().items():
        if layer(src) not in FACES:
            continue
        for dst in filter(internal, targets):
            top = layer(dst)
            if top in SHARED or dst == "orchestrator.dispatch":
                continue
            if top not in FACE_MAY_IMPORT or top == "dispatch":
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "faces import below dispatch:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("package", sorted(FOREIGN_FORBIDDEN))
def test_the_core_imports_no_face_library(package: str) -> None:
    banned = FOREIGN_FORBIDDEN[package]
    wrong = sorted(f"{src} -> {dst}" for src, targets in graph().items()
                   if layer(src) == package for dst in targets
                   if dst.split(".")[0] in banned)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    full = graph()
    edges = {src: {d for d in dsts if d in full and d != src} for src, dsts in full.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
