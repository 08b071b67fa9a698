"""``add``, ``update``, ``remove``, ``list``, ``describe``: the agents in the config file."""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any

import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.config import NAME_PATTERN, Agent, Config
from orchestrator.configfile import load_config, update_config
from orchestrator.dispatch import (
    forget_agent,
    pin_agent,
    resolve_directory,
    with_agent,
    without_agent,
)
from orchestrator.errors import UsageError
from orchestrator.paths import config_path, stored_directory

Description = Annotated[str | None, typer.Option(help="What the agent knows; shown to callers.")]
Model = Annotated[str | None, typer.Option(help="Model alias or id, e.g. sonnet.")]
Timeout = Annotated[float | None, typer.Option(help="Seconds before the run is killed.")]
MaxBudget = Annotated[float | None, typer.Option("--max-budget-usd", help="USD cap per run.")]
PermissionModeOpt = Annotated[
    str | None, typer.Option(help="acceptEdits|auto|bypassPermissions|manual|dontAsk|plan.")
]
AllowedTools = Annotated[
    list[str] | None, typer.Option("--allowed-tool", help="Tool claude may use (repeatable).")
]
DisallowedTools = Annotated[
    list[str] | None, typer.Option("--disallowed-tool", help="Tool to deny (repeatable).")
]
Capabilities = Annotated[
    list[str] | None, typer.Option("--capability", help="Capability tag (repeatable).")
]
Instructions = Annotated[str | None, typer.Option(help="Appended to the system prompt.")]
MountOpt = Annotated[str | None, typer.Option("--mount", help="rw or ro.")]
Image = Annotated[str | None, typer.Option(help="Own image built FROM the agent image.")]
Cpus = Annotated[float | None, typer.Option(help="CPU limit, e.g. 1.5.")]
Memory = Annotated[str | None, typer.Option(help="Memory limit, e.g. 2g.")]
Pids = Annotated[int | None, typer.Option(help="Process limit.")]
TmpSize = Annotated[str | None, typer.Option("--tmp-size", help="Size of /tmp, e.g. 256m.")]
EgressOpt = Annotated[str | None, typer.Option(help="none, allowlist, learn or open.")]
AllowHosts = Annotated[
    list[str] | None, typer.Option("--allow-host", help="Host for egress allowlist (repeatable).")
]
Secrets = Annotated[
    list[str] | None,
    typer.Option("--secret", help="NAME=env:VAR or NAME=file:PATH (repeatable)."),
]
DispatchTo = Annotated[
    list[str] | None,
    typer.Option("--dispatch-to", help="Agent this one may call; * for all (repeatable)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
UserOpt = Annotated[
    str | None,
    typer.Option("--user", help="UID[:GID] the agent runs as (never 0); default: the "
                 "directory's owner, or 65532 where that is root."),
]


def check_name(name: str, what: str = "agent") -> None:
    """Raise :class:`UsageError` unless ``name`` can become a container name."""
    # fullmatch: with re.match, `$` also matches before a trailing newline.
    if not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(
            f"{what} name {name!r} is not valid: use letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters",
            hint="Pick a name like infra or web-api.",
        )


def _directory(raw: str, config: Config) -> str:
    """The checked directory as the file stores it: relative to the file when given relative
    and below it (a repository's own agents file), else absolute."""
    return stored_directory(raw, resolve_directory(raw, config), config_path())


def _secret(spec: str) -> tuple[str, dict[str, str]]:
    name, sep, source = spec.partition("=")
    kind, colon, value = source.partition(":")
    if not sep or not colon or kind not in ("env", "file") or not value or not name:
        raise UsageError(
            f"--secret {spec!r} is not NAME=env:VAR or NAME=file:PATH",
            hint="Write it like DB_URL=env:INFRA_DB_URL or KUBECONFIG=file:~/.kube/config.",
        )
    return name, {kind: value}


def _changes(**given: Any) -> dict[str, Any]:
    """Agent fields from the options actually given (None = not given)."""
    changes: dict[str, Any] = {}
    resources = {k: given.pop(k) for k in ("cpus", "memory", "pids", "tmp_size")}
    egress = given.pop("egress")
    secrets = given.pop("secrets")
    for key, value in given.items():
        if value is not None:
            changes[key] = value
    if any(v is not None for v in resources.values()):
        changes["resources"] = {k: v for k, v in resources.items() if v is not None}
    if egress is not None:
        changes["network"] = {"egress": egress}
    if secrets is not None:
        changes["secrets"] = dict(_secret(spec) for spec in secrets)
    return changes


def _agent_data(config: Config, name: str) -> dict[str, Any]:
    return config.agent(name).model_dump(mode="json", exclude_unset=True)


@app.command()
@handles_errors
def add(
    name: Annotated[str, typer.Argument(help="Agent name (becomes part of container names).")],
    directory: Annotated[str, typer.Argument(help="The agent's project directory.")],
    description: Description = None,
    model: Model = None,
    timeout: Timeout = None,
    max_budget_usd: MaxBudget = None,
    permission_mode: PermissionModeOpt = None,
    allowed_tool: AllowedTools = None,
    disallowed_tool: DisallowedTools = None,
    capability: Capabilities = None,
    instructions: Instructions = None,
    mount: MountOpt = None,
    image: Image = None,
    cpus: Cpus = None,
    memory: Memory = None,
    pids: Pids = None,
    tmp_size: TmpSize = None,
    egress: EgressOpt = None,
    allow_host: AllowHosts = None,
    secret: Secrets = None,
    dispatch_to: DispatchTo = None,
    user: UserOpt = None,
) -> None:
    """Register an agent: a project directory Claude Code runs in, in its own container."""
    check_name(name)
    changes = _changes(
        description=description, model=model, timeout=timeout, max_budget_usd=max_budget_usd,
        permission_mode=permission_mode, allowed_tools=allowed_tool,
        disallowed_tools=disallowed_tool, capabilities=capability, instructions=instructions,
        mount=mount, image=image, cpus=cpus, memory=memory, pids=pids, tmp_size=tmp_size,
        egress=egress, allow_hosts=allow_host, secrets=secret, dispatch_to=dispatch_to,
        user=user,
    )  # fmt: skip

    def apply(config: Config) -> Config:
        if name in config.agents:
            raise UsageError(
                f"agent {name!r} already exists",
                hint=f"Change it with `ad-sandbox update {name} ...` or remove it first.",
            )
        return with_agent(config, name, {"directory": _directory(directory, config), **changes})

    config = update_config(apply)
    _pin_and_warn(config, name)
    out(f"added agent {name} ({config.agents[name].directory})")


@app.command()
@handles_errors
def update(
    name: Annotated[str, typer.Argument(help="Agent name.")],
    directory: Annotated[str | None, typer.Option(help="New project directory.")] = None,
    description: Description = None,
    model: Model = None,
    timeout: Timeout = None,
    max_budget_usd: MaxBudget = None,
    permission_mode: PermissionModeOpt = None,
    allowed_tool: AllowedTools = None,
    disallowed_tool: DisallowedTools = None,
    capability: Capabilities = None,
    instructions: Instructions = None,
    mount: MountOpt = None,
    image: Image = None,
    cpus: Cpus = None,
    memory: Memory = None,
    pids: Pids = None,
    tmp_size: TmpSize = None,
    egress: EgressOpt = None,
    allow_host: AllowHosts = None,
    secret: Secrets = None,
    dispatch_to: DispatchTo = None,
    user: UserOpt = None,
) -> None:
    """Change only the given fields of an agent (a repeatable option replaces its list)."""
    changes = _changes(
        description=description, model=model, timeout=timeout, max_budget_usd=max_budget_usd,
        permission_mode=permission_mode, allowed_tools=allowed_tool,
        disallowed_tools=disallowed_tool, capabilities=capability, instructions=instructions,
        mount=mount, image=image, cpus=cpus, memory=memory, pids=pids, tmp_size=tmp_size,
        egress=egress, allow_hosts=allow_host, secrets=secret, dispatch_to=dispatch_to,
        user=user,
    )  # fmt: skip

    def apply(config: Config) -> Config:
        data = _agent_data(config, name)
        if directory is not None:
            data["directory"] = _directory(directory, config)
        for key in ("resources", "network"):
            if key in changes:
                changes[key] = {**data.get(key, {}), **changes[key]}
        return with_agent(config, name, {**data, **changes})

    if not changes and directory is None:
        raise UsageError(
            "nothing to update: no option given",
            hint=f"See `ad-sandbox update --help`; e.g. `ad-sandbox update {name} --timeout 600`.",
        )
    config = update_config(apply)
    if directory is not None:
        _pin_and_warn(config, name)
    out(f"updated agent {name}")


@app.command()
@handles_errors
def remove(name: Annotated[str, typer.Argument(help="Agent name.")]) -> None:
    """Unregister an agent (its directory is left alone); drops references to it."""
    dropped: list[str] = []

    def apply(config: Config) -> Config:
        updated, names = without_agent(config, name)
        dropped[:] = names
        return updated

    update_config(apply)
    forget_agent(name)
    out(f"removed agent {name}" + (f" (also from {', '.join(dropped)})" if dropped else ""))


def _pin_and_warn(config: Config, name: str) -> None:
    """Pin the agent's directory as it is now (every run checks it is still that one), and
    warn when it lies inside another agent's directory or holds one."""
    for warning in pin_agent(config, name):
        typer.echo(f"warning: {warning}", err=True)


def health(agent: Agent) -> str:
    """``ok``, ``missing`` or ``unreadable`` for the agent's directory."""
    path = agent.path
    if not path.is_dir():
        return "missing"
    return "ok" if os.access(path, os.R_OK | os.X_OK) else "unreadable"


@app.command("list")
@handles_errors
def list_agents(json_output: JsonFlag = False) -> None:
    """The registered agents with the health of their directories."""
    config = load_config()
    rows = [
        {
            "name": name,
            "directory": agent.directory,
            "health": health(agent),
            "description": agent.description,
        }
        for name, agent in sorted(config.agents.items())
    ]
    if json_output:
        out(json.dumps(rows, indent=2))
        return
    if not rows:
        out("no agents registered — add one with `ad-sandbox add NAME DIR`")
        return
    width = max(len(r["name"]) for r in rows)
    dir_width = max(len(r["directory"]) for r in rows)
    for r in rows:
        out(f"{r['name']:<{width}}  {r['directory']:<{dir_width}}  {r['health']:<10}  "
            f"{r['description']}".rstrip())  # fmt: skip


@app.command()
@handles_errors
def describe(
    name: Annotated[str, typer.Argument(help="Agent name.")], json_output: JsonFlag = False
) -> None:
    """Every field of one agent; secrets are shown by their source, never their value."""
    config = load_config()
    agent = config.agent(name)
    data: dict[str, Any] = {"name": name, "health": health(agent)}
    data |= agent.model_dump(mode="json")
    # Only the source ({env: VAR} / {file: PATH}) is in the config; make that explicit.
    data["secrets"] = {k: _source(v) for k, v in data["secrets"].items()}
    if json_output:
        out(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        out(f"{key + ':':<18}{'-' if value in (None, '') else value}")


def _source(source: dict[str, str]) -> str:
    kind, value = next(iter(source.items()))
    return f"{kind}:{value}"
