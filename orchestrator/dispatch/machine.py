"""Machine operations a command runs without opening a service: the engine objects
(``up``'s network, ``down``, ``ps``) and the images.

``ps`` must not open a service: opening one reaps, and ``ps`` is how leftovers are seen.
``down`` removes containers through the reaper's code path, so leases and the records of
runs whose owner is gone are handled exactly as when the reaper removes a leftover.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import Config
from orchestrator.dispatch.host import gateway_host_from_env
from orchestrator.errors import AdSandboxError
from orchestrator.models import RunRecord
from orchestrator.paths import config_path
from orchestrator.run.egress import (
    EGRESS_NETWORK,
    LABEL_ROLE,
    PROXY_NAME,
    PROXY_VOLUME,
    EgressProxy,
)
from orchestrator.run.egress import ROLE as PROXY_ROLE
from orchestrator.run.netguard import (
    GATEWAY_HOST_AUTO,
    ensure_agents_network,
    guard_network,
    proxy_guard,
)
from orchestrator.run.reaper import reap
from orchestrator.run.sandbox import (
    AGENTS_NETWORK,
    LABEL_AGENT,
    LABEL_CONFIG,
    LABEL_RUN,
    config_identity,
    volume_name,
)
from orchestrator.runtime import engine_image, images, orchestrator_image
from orchestrator.runtime.base import Runtime
from orchestrator.runtime.docker_runtime import DockerRuntime
from orchestrator.state import StateStore

ImageStatus = images.ImageStatus
Progress = images.Progress


def engine() -> Runtime:
    """The Docker engine; raises :class:`~orchestrator.errors.DockerUnavailable` (with what
    to do) when it does not answer."""
    return DockerRuntime()


def this_config() -> str:
    """The identity of the config in use (``AD_SANDBOX_CONFIG``): the label on its objects."""
    return config_identity(config_path())


def agent_volume(agent_name: str) -> str:
    """The volume holding agent ``agent_name``'s sessions under this config."""
    return volume_name(this_config(), agent_name)


# ---- up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkReady:
    name: str
    gateway_ip: str
    guard: str
    """How the host firewall keeps the network gateway-only (or that it is off)."""


def provision_network(config: Config) -> NetworkReady:
    """The agents network with its isolation options and host firewall in place."""
    network = ensure_agents_network(engine())
    status = guard_network(network, config)
    guard = status.detail if status else "host firewall off (settings.host_firewall)"
    return NetworkReady(network.name, network.gateway_ip, guard)


def provision_proxy(config: Config) -> str | None:
    """The egress proxy, when an agent of ``config`` has ``network.egress`` other than none;
    its address on the agents network."""
    if not any(agent.network.proxied for agent in config.agents.values()):
        return None
    in_container = gateway_host_from_env() == GATEWAY_HOST_AUTO
    runtime = engine()
    keeper = EgressProxy(runtime, proxy_guard(in_container=in_container))
    return keeper.ensure(ensure_agents_network(runtime)).address


# ---- down -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """One shared object ``down`` removed, or kept and why."""

    kind: str
    name: str
    kept: str | None = None

    def line(self) -> str:
        return f"removed {self.kind} {self.name}" if self.kept is None else (
            f"kept {self.kind} {self.name}{self.kept}")


@dataclass(frozen=True)
class TakenDown:
    containers: list[str]
    """Ids of the containers removed."""
    removals: list[Removal]
    """The network, then each volume (with ``volumes``)."""


def take_down(*, volumes: bool, every_config: bool) -> TakenDown:
    """Remove this config's containers (every config's with ``every_config``), the agents
    network once no container of any config is left, and (``volumes``) the agent volumes."""
    runtime = engine()
    with StateStore() as state:
        removed = reap(runtime, state, scope=None if every_config else this_config(),
                       every_container=True)
    removals = _remove_shared(runtime)
    if volumes:
        mine = {} if every_config else {LABEL_CONFIG: this_config()}
        names = runtime.list_volumes(mine)
        if not any(r.kept for r in removals):  # the proxy is gone: its volume may go too
            names += [v for v in runtime.list_volumes({}) if v == PROXY_VOLUME]
        for name in names:
            try:
                runtime.remove_volume(name)
            except AdSandboxError as exc:
                removals.append(Removal("volume", name, f": {exc.one_line()}"))
            else:
                removals.append(Removal("volume", name))
    return TakenDown(removed, removals)


def _remove_shared(runtime: Runtime) -> list[Removal]:
    """The proxy and the networks are shared by every config: removed only when no agent
    container of any config is left."""
    left = [c for c in runtime.list_managed() if c.labels.get(LABEL_ROLE) != PROXY_ROLE]
    if left:
        kept = " (other configs' containers use it)"
        return [Removal("network", AGENTS_NETWORK, kept), Removal("network", EGRESS_NETWORK, kept)]
    removals = []
    for proxy in runtime.list_managed({LABEL_ROLE: PROXY_ROLE}):
        runtime.remove(proxy.id)
        removals.append(Removal("container", f"{PROXY_NAME} (egress proxy)"))
    for network in (AGENTS_NETWORK, EGRESS_NETWORK):
        try:
            runtime.remove_network(network)
        except AdSandboxError as exc:
            removals.append(Removal("network", network, f": {exc.one_line()}"))
        else:
            removals.append(Removal("network", network))
    return removals


# ---- ps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRow:
    id: str
    config: str
    agent: str
    state: str
    """The lease's state (``warm``, ``busy``), ``?`` when no lease names it."""
    run: str
    status: str
    """The engine's status of the container."""


@dataclass(frozen=True)
class Listing:
    containers: list[ContainerRow]
    runs: list[RunRecord]
    """The runs not finished, of any config."""


def list_machine(*, every_config: bool) -> Listing:
    """This config's containers (every config's with ``every_config``) with their leases,
    and the unfinished runs."""
    runtime = engine()
    mine = {} if every_config else {LABEL_CONFIG: this_config()}
    with StateStore() as state:
        leases = {lease.container_id: lease for lease in state.containers()}
        rows = []
        for container in runtime.list_managed(mine):
            lease = leases.get(container.id)
            labels = container.labels
            rows.append(ContainerRow(
                id=container.id,
                config=labels.get(LABEL_CONFIG, "-"),
                agent=labels.get(LABEL_AGENT, "?"),
                state=lease.state if lease else "?",
                run=(lease.run_id if lease else None) or labels.get(LABEL_RUN) or "-",
                status=container.status,
            ))
        return Listing(rows, list(state.unfinished_runs()))


# ---- images ---------------------------------------------------------------------------
# Looked up on the module at each call, so a test that replaces the engine's answers
# (``runtime.images.image_status``) reaches every face.


def ensure_images(progress: Progress) -> list[str]:
    """Build the images only when the agent image is missing; the refs built."""
    return images.ensure_images(progress=progress)


def build_images(*, offline_base: bool, claude_version: str, force: bool,
                 progress: Progress) -> list[str]:
    """Build the base and agent images unless up to date (``force``: anyway)."""
    return images.build_images(offline_base=offline_base, claude_version=claude_version,
                               force=force, progress=progress)


def build_orchestrator(*, force: bool, progress: Progress) -> list[str]:
    """Build the orchestrator image (compose) unless up to date; needs the base image."""
    return orchestrator_image.build_orchestrator(force=force, progress=progress)


def build_engine(*, force: bool, progress: Progress) -> list[str]:
    """Build the engine image (compose/compose.dind.yaml) unless up to date; needs the
    orchestrator image."""
    return engine_image.build_engine(force=force, progress=progress)


def image_status(ref: str) -> ImageStatus | None:
    return images.image_status(ref)


def agent_ref(claude_version: str) -> str:
    """The agent image's reference for a claude version."""
    return images.agent_ref(claude_version)


def list_images() -> list[ImageStatus]:
    return images.list_images()
