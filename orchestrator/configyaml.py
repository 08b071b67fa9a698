"""Composing the agents file within budgets, so a hostile YAML cannot hang the orchestrator.

YAML aliases let a few hundred bytes stand for billions of nodes ("billion laughs"): the
loader shares the aliased objects, but every walk over the result (duplicate-key check,
validation, error messages) pays for the expanded tree. The agents file is refused before
any such walk when it uses more than :data:`MAX_ALIASES` aliases, when its tree would expand
to more than :data:`MAX_NODES` nodes, when an alias refers to the node that contains it, or
when it nests deeper than the parser can follow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError

MAX_ALIASES = 100
"""Aliases (``*name``) one file may use; a hand-written config needs a few at most."""
MAX_NODES = 100_000
"""Nodes the file may stand for once every alias is expanded (100 agents use ~5,000)."""


class _TooManyAliases(Exception):
    def __init__(self, mark: yaml.Mark | None) -> None:
        super().__init__()
        self.mark = mark


class BoundedLoader(yaml.SafeLoader):
    """A safe loader that stops composing at the :data:`MAX_ALIASES` + 1st alias."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _TooManyAliases(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        node: yaml.Node | None = super().compose_node(parent, index)
        return node


def compose(loader: BoundedLoader, path: Path) -> yaml.Node | None:
    """The node tree ``loader`` reads, checked against the budgets.

    Raises :class:`ConfigError` for a refused file; YAML syntax errors pass through.
    """
    try:
        node: yaml.Node | None = loader.get_single_node()
    except _TooManyAliases as exc:
        raise _refused(path, exc.mark, f"more than {MAX_ALIASES} YAML aliases (*name)") from None
    except RecursionError:
        raise _refused(path, None, "YAML nested too deeply") from None
    if node is not None:
        check_expansion(node, path)
    return node


def check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse a tree that expands past :data:`MAX_NODES` or contains itself through an alias.

    Each distinct node is sized once (aliases share node objects), so this is linear in the
    file, not in the expansion.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _refused(path, node.start_mark, "a YAML alias refers to a node containing it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for child_key, child_value in node.value:
                total += size(child_key) + size(child_value)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > MAX_NODES:
                    break
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_NODES:
            raise _refused(path, node.start_mark,
                           f"YAML aliases expand it past {MAX_NODES:,} values")
        return total

    try:
        size(root)
    except RecursionError:
        raise _refused(path, None, "YAML nested too deeply") from None


def _refused(path: Path, mark: yaml.Mark | None, reason: str) -> ConfigError:
    where = f" line {mark.line + 1}" if mark is not None else ""
    return ConfigError(
        f"{path.name}{where}: refused: {reason}",
        hint=f"Simplify {path}: write values out instead of repeating them through aliases "
        "(&name / *name), and nest less; then try again.",
        path=str(path),
    )
