"""`up`, `down`, `ps`, `logs`: provision agents the way compose provisions services."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.configfile import load_config
from orchestrator.dispatch import (
    agent_volume,
    ensure_images,
    follow_log,
    list_machine,
    open_command_service,
    provision_network,
    provision_proxy,
    take_down,
    target_run,
)


def _progress(line: str) -> None:
    typer.echo(f"  {line}", err=True)


@app.command("up")
@handles_errors
def up(
    agents: Annotated[list[str] | None, typer.Argument(help="Agents to provision (all).")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Return only once every warm pool is full and its containers run; "
        "exit 4 with the reason otherwise.")] = False,
) -> None:
    """Build missing images, create the network and volumes, fill the warm pool."""
    config = load_config()
    names = agents or sorted(config.agents)
    for name in names:
        config.agent(name)
    built = ensure_images(_progress)
    out(f"images: {'built ' + ', '.join(built) if built else 'present'}")
    network = provision_network(config)
    out(f"network: {network.name} (internal, no inter-container traffic, gateway "
        f"{network.gateway_ip}; {network.guard})")
    proxy = provision_proxy(config)
    if proxy is not None:
        out(f"egress proxy: {proxy}:3128 (squid; allow_hosts and learn per agent)")
    target = config.settings.pool.warm_per_agent

    async def fill() -> None:
        async with open_command_service() as service:
            for name in names:
                made = await service.fill_pool(name, wait=wait)
                out(f"agent {name}: volume {agent_volume(name)}, "
                    f"{len(made)} warm container(s) started (pool target {target})")
            if wait:
                out(f"ready: {len(names)} agent(s), {target} warm container(s) each")

    anyio.run(fill)


AllFlag = Annotated[bool, typer.Option(
    "--all", help="Every config's objects, not only this config's (AD_SANDBOX_CONFIG).")]


@app.command("down")
@handles_errors
def down(
    volumes: Annotated[bool, typer.Option("--volumes", help="Also remove agent volumes.")] = False,
    every: AllFlag = False,
) -> None:
    """Remove this config's containers (and volumes); the agents network once unused."""
    done = take_down(volumes=volumes, every_config=every)
    out(f"removed {len(done.containers)} container(s)")
    for removal in done.removals:
        out(removal.line())


@app.command("ps")
@handles_errors
def ps(every: AllFlag = False) -> None:
    """This config's containers (every config's with --all) and the unfinished runs."""
    now = time.time()
    listing = list_machine(every_config=every)
    config_column = f"{'CONFIG':14}" if every else ""
    out(f"{'CONTAINER':14}{config_column}{'AGENT':16}{'STATE':10}{'RUN':18}STATUS")
    for row in listing.containers:
        config = f"{row.config:14}" if every else ""
        out(f"{row.id[:12]:14}{config}{row.agent:16}{row.state:10}{row.run:18}{row.status}")
    out(f"\n{len(listing.runs)} run(s) not finished")
    for record in listing.runs:
        out(f"  {record.run_id}  {record.agent:14} {record.status:8} "
            f"{now - record.created_at:6.0f}s  {record.last_action[:60]}")


@app.command("logs")
@handles_errors
def logs(
    target: Annotated[str, typer.Argument(help="A run id (or prefix) or an agent name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    net: Annotated[bool, typer.Option(
        "--net", help="The egress proxy's decisions for the run instead.")] = False,
) -> None:
    """A run's output (stream-json lines, secrets redacted); for an agent, its latest run."""
    if net:
        _egress_of(target)
        return
    for chunk in follow_log(target, follow=follow):
        typer.echo(chunk, nl=False)


def _egress_of(target: str) -> None:
    record = target_run(target)
    egress = record.egress
    if egress is None:
        out(f"run {record.run_id} ({record.agent}) had no egress: network.egress is none "
            "(or the run ended before its proxy policy was set)")
        return
    out(f"run {record.run_id} ({record.agent}), egress {egress.mode}")
    rows = [("allowed", egress.allowed), ("denied", egress.denied)]
    if not egress.complete:
        out("  the proxy was lost during the run: what it decided before is not known")
    elif not egress.allowed and not egress.denied:
        out("  no request went through the proxy")
    for verdict, hosts in rows:
        for host, count in sorted(hosts.items(), key=lambda item: (-item[1], item[0])):
            out(f"  {verdict:8} {count:5}  {host}")
