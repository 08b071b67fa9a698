"""`up`, `down`, `ps`, `logs`: provision agents the way compose provisions services."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.configfile import load_config
from orchestrator.dispatch import open_dispatcher
from orchestrator.errors import AgentNotFound, RunNotFound
from orchestrator.runner import run_log_path
from orchestrator.runtime.docker_runtime import DockerRuntime
from orchestrator.runtime.images import ensure_images
from orchestrator.sandbox import AGENTS_NETWORK, LABEL_AGENT, LABEL_RUN, MANAGED, volume_name
from orchestrator.state import StateStore

FOLLOW_POLL_S = 0.5


def _progress(line: str) -> None:
    typer.echo(f"  {line}", err=True)


@app.command("up")
@handles_errors
def up(
    agents: Annotated[list[str] | None, typer.Argument(help="Agents to provision (all).")] = None,
) -> None:
    """Build missing images, create the network and volumes, fill the warm pool."""
    config = load_config()
    names = agents or sorted(config.agents)
    for name in names:
        config.agent(name)
    built = ensure_images(progress=_progress)
    out(f"images: {'built ' + ', '.join(built) if built else 'present'}")
    runtime = DockerRuntime()
    network = runtime.ensure_network(AGENTS_NETWORK, internal=True, labels=MANAGED)
    out(f"network: {network.name} (internal, gateway {network.gateway_ip})")
    target = config.settings.pool.warm_per_agent

    async def fill() -> None:
        async with open_dispatcher(runtime=runtime) as dispatcher:
            for name in names:
                agent = config.agents[name]
                runtime.ensure_volume(volume_name(name), labels={**MANAGED, LABEL_AGENT: name})
                made = await dispatcher.fill_pool(name, agent, target, detached=True)
                out(f"agent {name}: volume {volume_name(name)}, "
                    f"{len(made)} warm container(s) started (pool target {target})")

    anyio.run(fill)


@app.command("down")
@handles_errors
def down(
    volumes: Annotated[bool, typer.Option("--volumes", help="Also remove agent volumes.")] = False,
) -> None:
    """Remove every ad-sandbox container and the agents network."""
    runtime = DockerRuntime()
    containers = runtime.list_managed()
    for container in containers:
        runtime.remove(container.id)
    with StateStore() as state:
        for lease in state.containers():
            state.remove_container(lease.container_id)
    out(f"removed {len(containers)} container(s)")
    runtime.remove_network(AGENTS_NETWORK)
    out(f"removed network {AGENTS_NETWORK}")
    if volumes:
        for name in load_config().agents:
            runtime.remove_volume(volume_name(name))
            out(f"removed volume {volume_name(name)}")


@app.command("ps")
@handles_errors
def ps() -> None:
    """Containers and running runs."""
    runtime = DockerRuntime()
    now = time.time()
    with StateStore() as state:
        leases = {lease.container_id: lease for lease in state.containers()}
        out(f"{'CONTAINER':14}{'AGENT':16}{'STATE':10}{'RUN':18}STATUS")
        for container in runtime.list_managed():
            lease = leases.get(container.id)
            run = (lease.run_id if lease else None) or container.labels.get(LABEL_RUN) or "-"
            out(f"{container.id[:12]:14}{container.labels.get(LABEL_AGENT, '?'):16}"
                f"{lease.state if lease else '?':10}{run:18}{container.status}")
        running = [r for r in state.unfinished_runs()]
        out(f"\n{len(running)} run(s) not finished")
        for record in running:
            out(f"  {record.run_id}  {record.agent:14} {record.status:8} "
                f"{now - record.created_at:6.0f}s  {record.last_action[:60]}")


@app.command("logs")
@handles_errors
def logs(
    target: Annotated[str, typer.Argument(help="A run id (or prefix) or an agent name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """A run's output (stream-json lines, secrets redacted); for an agent, its latest run."""
    with StateStore() as state:
        try:
            record = state.find_run(target)
        except RunNotFound:
            runs = state.list_runs(agent=target, limit=1)
            if not runs:
                raise AgentNotFound(f"no run or agent matches {target!r}",
                                    hint="See `ad-sandbox jobs` for run ids.") from None
            record = runs[0]
        path = run_log_path(record.run_id)
        offset = 0
        while True:
            if path.exists():
                with path.open(encoding="utf-8") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                if chunk:
                    typer.echo(chunk, nl=False)
            if not follow or state.get_run(record.run_id).status == "finished":
                break
            time.sleep(FOLLOW_POLL_S)
