"""``group add|list|inspect|update|remove``: named sets of agents with shared context."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orchestrator.cli.agents import check_name
from orchestrator.cli.app import app, handles_errors, out
from orchestrator.config import Config, Group
from orchestrator.configfile import load_config, update_config, validate_config
from orchestrator.errors import UsageError

group_app = typer.Typer(no_args_is_help=True, help="Groups of agents with shared context.")
app.add_typer(group_app, name="group")

GroupName = Annotated[str, typer.Argument(help="Group name.")]
Description = Annotated[str | None, typer.Option(help="What the group is for.")]
SharedContext = Annotated[
    str | None, typer.Option("--shared-context", help="Context given to every member's task.")
]
Members = Annotated[
    list[str] | None,
    typer.Option("--member", help="AGENT or AGENT=what to use it for (repeatable)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _members(specs: list[str]) -> list[dict[str, str]]:
    members = []
    for spec in specs:
        agent, _, use_for = spec.partition("=")
        members.append({"agent": agent, "use_for": use_for} if use_for else {"agent": agent})
    return members


def _group(config: Config, name: str) -> Group:
    try:
        return config.groups[name]
    except KeyError:
        known = ", ".join(sorted(config.groups)) or "none defined"
        raise UsageError(
            f"unknown group {name!r} (known: {known})",
            hint="Run `ad-sandbox group list`, or create it with `ad-sandbox group add NAME`.",
        ) from None


def _with_group(config: Config, name: str, data: dict[str, Any] | None) -> Config:
    whole = config.model_dump(mode="json", exclude_unset=True)
    groups = whole.setdefault("groups", {})
    if data is None:
        groups.pop(name, None)
    else:
        groups[name] = data
    return validate_config(whole)


def _changes(
    description: str | None, shared: str | None, members: list[str] | None
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description
    if shared is not None:
        changes["shared_context"] = shared
    if members is not None:
        changes["members"] = _members(members)
    return changes


@group_app.command("add")
@handles_errors
def add_group(
    name: GroupName,
    description: Description = None,
    shared_context: SharedContext = None,
    member: Members = None,
) -> None:
    """Create a group of registered agents."""
    check_name(name, "group")
    changes = _changes(description, shared_context, member)

    def apply(config: Config) -> Config:
        if name in config.groups:
            raise UsageError(
                f"group {name!r} already exists",
                hint=f"Change it with `ad-sandbox group update {name} ...`.",
            )
        return _with_group(config, name, changes)

    update_config(apply)
    out(f"added group {name}")


@group_app.command("update")
@handles_errors
def update_group(
    name: GroupName,
    description: Description = None,
    shared_context: SharedContext = None,
    member: Members = None,
) -> None:
    """Change only the given fields of a group (--member replaces the member list)."""
    changes = _changes(description, shared_context, member)
    if not changes:
        raise UsageError(
            "nothing to update: no option given", hint="See `ad-sandbox group update --help`."
        )

    def apply(config: Config) -> Config:
        data = _group(config, name).model_dump(mode="json", exclude_unset=True)
        return _with_group(config, name, {**data, **changes})

    update_config(apply)
    out(f"updated group {name}")


@group_app.command("remove")
@handles_errors
def remove_group(name: GroupName) -> None:
    """Delete a group (its agents stay registered)."""

    def apply(config: Config) -> Config:
        _group(config, name)
        return _with_group(config, name, None)

    update_config(apply)
    out(f"removed group {name}")


@group_app.command("list")
@handles_errors
def list_groups(json_output: JsonFlag = False) -> None:
    """The groups and their members."""
    config = load_config()
    rows = [
        {"name": n, "description": g.description, "members": [m.agent for m in g.members]}
        for n, g in sorted(config.groups.items())
    ]
    if json_output:
        out(json.dumps(rows, indent=2))
        return
    if not rows:
        out("no groups defined — create one with `ad-sandbox group add NAME --member AGENT`")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        out(f"{r['name']:<{width}}  {', '.join(r['members']) or '-'}  {r['description']}".rstrip())


@group_app.command("inspect")
@handles_errors
def inspect_group(name: GroupName, json_output: JsonFlag = False) -> None:
    """Every field of one group, with each member's directory and description."""
    config = load_config()
    group = _group(config, name)
    data = {"name": name, **group.model_dump(mode="json")}
    for member in data["members"]:
        agent = config.agents[member["agent"]]
        member["directory"], member["description"] = agent.directory, agent.description
    if json_output:
        out(json.dumps(data, indent=2))
        return
    out(f"name:           {name}")
    out(f"description:    {group.description or '-'}")
    out(f"shared_context: {group.shared_context or '-'}")
    out("members:" + ("" if data["members"] else "        -"))
    for member in data["members"]:
        use_for = f" — {member['use_for']}" if member["use_for"] else ""
        out(f"  {member['agent']} ({member['directory']}){use_for}")
