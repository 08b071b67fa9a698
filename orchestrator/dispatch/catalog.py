"""What the agents and groups are, for callers deciding where to send a task.

Also the one place that decides which directories may become agents: over MCP the calling
model may only register directories under ``settings.allowed_roots`` (and never a root or a
home directory itself), so it cannot hand itself the whole disk.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from orchestrator.config import Agent, Config, Group
from orchestrator.configfile import validate_config
from orchestrator.dispatch.api import (
    AgentDetail,
    AgentInfo,
    GroupDetail,
    GroupInfo,
    GroupMemberInfo,
)
from orchestrator.errors import AgentNotFound, DirectoryChanged, PermissionDenied, UsageError
from orchestrator.run.dirpin import verify_directory
from orchestrator.run.sandbox import agent_image
from orchestrator.safefs import list_entries, read_head
from orchestrator.state import StateStore

PREVIEW_FILES = ("CLAUDE.md", "README.md", "README", "README.rst")
PREVIEW_BYTES = 256 * 1024
STACK_MARKERS = {
    "pyproject.toml": "python", "requirements.txt": "python", "setup.py": "python",
    "package.json": "node", "Cargo.toml": "rust", "go.mod": "go", "pom.xml": "java",
    "build.gradle": "java", "Gemfile": "ruby", "composer.json": "php",
    "Dockerfile": "docker", "compose.yaml": "docker", "docker-compose.yml": "docker",
    "Makefile": "make", "terraform.tf": "terraform", "main.tf": "terraform",
    ".mcp.json": "mcp",
}


def resolve_directory(raw: str, config: Config, *, from_mcp: bool = False) -> str:
    """The absolute directory an agent may use; refuses what it must not."""
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise UsageError(
            f"directory {raw} {state}",
            hint="Create it or give the path of the agent's project directory.",
        )
    roots = [Path(r).expanduser().resolve() for r in config.settings.allowed_roots]
    if from_mcp and not roots:
        raise PermissionDenied(
            "registering agents over MCP needs settings.allowed_roots",
            hint="Ask the user to set settings.allowed_roots, or to run `ad-sandbox add`.",
        )
    if roots and not any(path.is_relative_to(root) for root in roots):
        raise PermissionDenied(
            f"directory {path} is outside settings.allowed_roots "
            f"({', '.join(map(str, roots))})",
            hint="Choose a directory under an allowed root or extend settings.allowed_roots.",
        )
    if from_mcp and (path == Path(path.anchor) or path == Path.home().resolve()
                     or path in roots):
        raise PermissionDenied(
            f"directory {path} is too broad to become an agent",
            hint="Register a project directory below it.",
        )
    return str(path)


def agent_problem(config: Config, agent: Agent, image_present: bool | None) -> str | None:
    path = agent.path
    if not path.is_dir():
        return f"directory {path} does not exist"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"directory {path} is not readable"
    if image_present is False:
        return f"image {agent_image(config, agent)} is missing (run `ad-sandbox image build`)"
    return None


def agent_info(config: Config, name: str, image_present: bool | None = None) -> AgentInfo:
    agent = config.agent(name)
    problem = agent_problem(config, agent, image_present)
    return AgentInfo(
        name=name, description=agent.description, directory=str(agent.path),
        model=agent.model, timeout=agent.timeout, healthy=problem is None, problem=problem,
    )


def agent_detail(config: Config, state: StateStore, name: str, preview_lines: int,
                 image_present: bool | None = None) -> AgentDetail:
    info = agent_info(config, name, image_present)
    agent = config.agents[name]
    median_ms, median_cost = state.typical(name)
    swapped = _swapped(name, agent, state)
    if swapped is not None:
        # Read nothing from a directory that is not the one registered.
        info = info.model_copy(update={"healthy": False, "problem": swapped})
    return AgentDetail(
        **info.model_dump(),
        preview=_preview(agent.path, preview_lines) if swapped is None else "",
        stacks=detect_stacks(agent.path) if swapped is None else [],
        runs=len(state.list_runs(agent=name, limit=1000)),
        typical_duration_ms=median_ms,
        typical_cost_usd=median_cost,
        config=agent.model_dump(mode="json"),
    )


def _swapped(name: str, agent: Agent, state: StateStore) -> str | None:
    """Why ``agent``'s directory is not the one registered, if it is not."""
    try:
        verify_directory(name, agent, state)
    except DirectoryChanged as exc:
        return exc.message
    except UsageError:
        return None  # missing or unreadable: agent_problem says so
    return None


def detect_stacks(path: Path) -> list[str]:
    """Stacks named by marker files in the project's top level; a symlinked marker counts
    for nothing (names only: nothing in the project is opened)."""
    try:
        names = set(list_entries(path))
    except OSError:
        return []
    return sorted({stack for marker, stack in STACK_MARKERS.items() if marker in names})


def _preview(path: Path, lines: int) -> str:
    """The first ``lines`` lines of the first preview file that is a regular file (never a
    symlink: the agent could point one at any host file), read up to PREVIEW_BYTES."""
    for name in PREVIEW_FILES:
        try:
            data = read_head(path, name, limit=PREVIEW_BYTES)
        except OSError:  # a symlink, a FIFO, unreadable: as if absent
            continue
        if data is None:
            continue
        # newline=None: \r\n and \r end lines, as reading the file in text mode did.
        text = io.StringIO(data.decode("utf-8", errors="replace"), newline=None)
        return "".join(line for _, line in zip(range(max(lines, 0)), text, strict=False))
    return ""


def group_of(config: Config, name: str) -> Group:
    try:
        return config.groups[name]
    except KeyError:
        known = ", ".join(sorted(config.groups)) or "none defined"
        raise AgentNotFound(f"unknown group {name!r} (known: {known})",
                            hint="Call list_groups to see the groups.") from None


def group_info(config: Config, name: str) -> GroupInfo:
    group = group_of(config, name)
    return GroupInfo(name=name, description=group.description,
                     members=[m.agent for m in group.members])


def group_detail(config: Config, name: str) -> GroupDetail:
    group = group_of(config, name)
    return GroupDetail(
        name=name, description=group.description, shared_context=group.shared_context,
        members=[GroupMemberInfo(agent=m.agent, use_for=m.use_for) for m in group.members],
    )


def with_agent(config: Config, name: str, data: dict[str, Any]) -> Config:
    """A validated copy of ``config`` with agent ``name`` set to ``data``."""
    whole = config.model_dump(mode="json", exclude_unset=True)
    whole.setdefault("agents", {})[name] = data
    return validate_config(whole)


def without_agent(config: Config, name: str) -> tuple[Config, list[str]]:
    """``config`` minus agent ``name`` and every reference to it; also what was dropped."""
    config.agent(name)
    dropped: list[str] = []
    whole = config.model_dump(mode="json", exclude_unset=True)
    whole["agents"].pop(name)
    for other, agent in whole["agents"].items():
        if name in agent.get("dispatch_to", []):
            agent["dispatch_to"] = [t for t in agent["dispatch_to"] if t != name]
            dropped.append(f"agents.{other}.dispatch_to")
    for group_name, group in whole.get("groups", {}).items():
        members = group.get("members", [])
        if any(m["agent"] == name for m in members):
            group["members"] = [m for m in members if m["agent"] != name]
            dropped.append(f"groups.{group_name}.members")
    return validate_config(whole), dropped
