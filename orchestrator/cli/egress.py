"""`egress suggest`: an ``allow_hosts`` block from what an agent's runs reached."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.configfile import load_config
from orchestrator.dispatch import suggest_allow_hosts
from orchestrator.errors import UsageError

egress_app = typer.Typer(no_args_is_help=True, help="What agents reach through the proxy.")
app.add_typer(egress_app, name="egress")


@egress_app.command("suggest")
@handles_errors
def suggest(
    agent: Annotated[str, typer.Argument(help="The agent whose runs to read.")],
    last: Annotated[int, typer.Option(help="How many of its latest runs to read.")] = 20,
) -> None:
    """Print a ready `allow_hosts` block from the hosts the agent's last runs reached
    (run it with `network: {egress: learn}` first; denied hosts are listed too)."""
    load_config().agent(agent)
    found = suggest_allow_hosts(agent, last=last)
    if not found.runs:
        raise UsageError(
            f"no run of {agent!r} went through the egress proxy",
            hint=f"Set `network: {{egress: learn}}` for {agent}, run it, then ask again.")
    if not found.hosts:
        out(f"# {found.runs} run(s) of {agent} reached no host through the proxy")
        return
    counts = ", ".join(f"{host} ({n})" for host, n in found.hosts.items())
    block = {"agents": {agent: {"network": {"egress": "allowlist"},
                                "allow_hosts": sorted(found.hosts)}}}
    out(f"# from {found.runs} run(s) of {agent}: {counts}")
    out(yaml.safe_dump(block, sort_keys=False).rstrip())
