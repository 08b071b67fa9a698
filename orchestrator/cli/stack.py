"""`up`, `down`, `ps`, `logs`: provision agents the way compose provisions services."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.configfile import load_config
from orchestrator.dispatch.dispatcher import open_dispatcher
from orchestrator.errors import AdSandboxError, AgentNotFound, RunNotFound
from orchestrator.paths import config_path
from orchestrator.run.netguard import ensure_agents_network, guard_network
from orchestrator.run.runner import run_log_path
from orchestrator.run.sandbox import (
    AGENTS_NETWORK,
    LABEL_AGENT,
    LABEL_CONFIG,
    LABEL_RUN,
    config_identity,
    volume_name,
)
from orchestrator.runtime.base import Runtime
from orchestrator.runtime.docker_runtime import DockerRuntime
from orchestrator.runtime.images import ensure_images
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
    network = ensure_agents_network(runtime)
    status = guard_network(network, config)
    guard = status.detail if status else "host firewall off (settings.host_firewall)"
    out(f"network: {network.name} (internal, no inter-container traffic, gateway "
        f"{network.gateway_ip}; {guard})")
    target = config.settings.pool.warm_per_agent

    async def fill() -> None:
        async with open_dispatcher(runtime=runtime) as dispatcher:
            for name in names:
                agent = config.agents[name]
                made = await dispatcher.fill_pool(name, agent, target, detached=True)
                out(f"agent {name}: volume {volume_name(dispatcher.scope, name)}, "
                    f"{len(made)} warm container(s) started (pool target {target})")

    anyio.run(fill)


AllFlag = Annotated[bool, typer.Option(
    "--all", help="Every config's objects, not only this config's (AD_SANDBOX_CONFIG).")]


def _scope_filter(every: bool) -> dict[str, str]:
    """The label filter selecting this config's objects; empty with ``--all``."""
    return {} if every else {LABEL_CONFIG: config_identity(config_path())}


@app.command("down")
@handles_errors
def down(
    volumes: Annotated[bool, typer.Option("--volumes", help="Also remove agent volumes.")] = False,
    every: AllFlag = False,
) -> None:
    """Remove this config's containers (and volumes); the agents network once unused."""
    runtime = DockerRuntime()
    mine = _scope_filter(every)
    containers = runtime.list_managed(mine)
    for container in containers:
        runtime.remove(container.id)
    with StateStore() as state:
        for container in containers:
            state.remove_container(container.id)
    out(f"removed {len(containers)} container(s)")
    _remove_network(runtime)
    if volumes:
        for name in runtime.list_volumes(mine):
            try:
                runtime.remove_volume(name)
            except AdSandboxError as exc:
                out(f"kept volume {name}: {exc.one_line()}")
            else:
                out(f"removed volume {name}")


def _remove_network(runtime: Runtime) -> None:
    """The network is shared by every config: removed only when no container is left."""
    if runtime.list_managed():
        out(f"kept network {AGENTS_NETWORK} (other configs' containers use it)")
        return
    try:
        runtime.remove_network(AGENTS_NETWORK)
    except AdSandboxError as exc:
        out(f"kept network {AGENTS_NETWORK}: {exc.one_line()}")
    else:
        out(f"removed network {AGENTS_NETWORK}")


@app.command("ps")
@handles_errors
def ps(every: AllFlag = False) -> None:
    """This config's containers (every config's with --all) and the unfinished runs."""
    runtime = DockerRuntime()
    now = time.time()
    with StateStore() as state:
        leases = {lease.container_id: lease for lease in state.containers()}
        config_column = f"{'CONFIG':14}" if every else ""
        out(f"{'CONTAINER':14}{config_column}{'AGENT':16}{'STATE':10}{'RUN':18}STATUS")
        for container in runtime.list_managed(_scope_filter(every)):
            lease = leases.get(container.id)
            run = (lease.run_id if lease else None) or container.labels.get(LABEL_RUN) or "-"
            config = f"{container.labels.get(LABEL_CONFIG, '-'):14}" if every else ""
            out(f"{container.id[:12]:14}{config}{container.labels.get(LABEL_AGENT, '?'):16}"
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
