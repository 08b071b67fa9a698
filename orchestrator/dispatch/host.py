"""What one orchestrator process owns around its runs: the agents network, its gateway,
the warm pools, the housekeeping (reaper, leases), the runs in flight and the budget hooks
the gateway calls.

:class:`orchestrator.dispatch.dispatcher.Dispatcher` has one; nothing here decides about a run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVarTuple

import anyio
from anyio.abc import TaskGroup

from orchestrator.config import Agent, Config
from orchestrator.configfile import ConfigSnapshot
from orchestrator.errors import AdSandboxError, DockerUnavailable, UsageError
from orchestrator.gateway.lifecycle import ExtraRoutes, Gateway
from orchestrator.gateway.tokens import TokenInfo
from orchestrator.run.egress import EgressProxy
from orchestrator.run.live import LiveRun
from orchestrator.run.netguard import (
    GATEWAY_HOST_AUTO,
    ensure_agents_network,
    guard_network,
    guard_relay,
    proxy_guard,
)
from orchestrator.run.pool import WarmPool
from orchestrator.run.prepared import run_budget
from orchestrator.run.reaper import reap
from orchestrator.run.runner import GatewayHandle, RunEnv
from orchestrator.run.sandbox import agent_image, config_identity, directory_owner
from orchestrator.runtime.base import NetworkInfo, Runtime
from orchestrator.state import StateStore

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 30.0

Args = TypeVarTuple("Args")


class Host:
    """Everything of this process that runs share; see the module docstring.

    ``tasks`` is the task group runs live in (one their callers cannot cancel); ``warm``
    keeps the warm pools filled (a long-lived server; a one-shot CLI run does not);
    ``adoptable`` marks runs as re-attachable by the next process (the MCP service).
    """

    def __init__(self, *, snapshot: ConfigSnapshot, state: StateStore, runtime: Runtime,
                 tasks: TaskGroup, warm: bool = False, adoptable: bool = False,
                 gateway_host: str | None = None,
                 image_id: Callable[[str], str | None] | None = None) -> None:
        self.snapshot = snapshot
        self.scope = config_identity(snapshot.path)
        """This config's identity: the per-agent objects this process makes and reaps."""
        self.state = state
        self.runtime = runtime
        self.warm = warm
        self.adoptable = adoptable
        self.gateway_host = gateway_host
        """Bind the gateway here instead of the network's gateway address (tests only), or
        ``auto``: this process runs in a container and binds its own address on the agents
        network (``AD_SANDBOX_GATEWAY_HOST=auto``, compose)."""
        self.image_id = image_id or docker_image_id
        """An image reference's id (for cache keys), or None when there is no such image."""
        self.pid = os.getpid()
        self._tasks = tasks
        self._live: dict[str, LiveRun] = {}
        self._gateway: Gateway | None = None
        self._guarded: NetworkInfo | None = None
        """The network whose host firewall this process keeps in place."""
        self._pool: WarmPool | None = None
        self.egress = EgressProxy(
            runtime, proxy_guard(in_container=gateway_host == GATEWAY_HOST_AUTO))
        """Keeps the egress proxy for runs whose agent has ``network.egress``."""
        self._sandbox_lock = anyio.Lock()
        self.agent_mcp: ExtraRoutes | None = None
        """The agents' ``/mcp`` routes on the gateway (nested dispatch), when a face gave
        them (see :func:`orchestrator.dispatch.dispatcher.open_dispatcher`)."""

    @property
    def config(self) -> Config:
        """The config as it is now; a run uses the snapshot it was checked against instead."""
        return self.snapshot.get()

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Reap what dead processes left, start the housekeeping and (``warm``) the pools.

        Runs to re-attach are adopted before this, or the reaper would end them."""
        try:
            await anyio.to_thread.run_sync(self._reap)
        except AdSandboxError as exc:  # Docker down: runs will say so, with a record each
            log.info("start-up reap skipped: %s", exc.one_line())
        self._tasks.start_soon(self._housekeeping)
        if self.warm:
            try:
                await self.ensure_sandbox()
            except AdSandboxError as exc:  # each dispatch reports it, with a record
                log.warning("sandbox not ready: %s", exc.one_line())
            else:
                self._tasks.start_soon(self.fill_pools)

    async def ensure_sandbox(self) -> None:
        """The agents network, this process's gateway and the pool; made on first use."""
        async with self._sandbox_lock:
            if self._gateway is not None:
                return
            network = await anyio.to_thread.run_sync(lambda: ensure_agents_network(self.runtime))
            if self.gateway_host == GATEWAY_HOST_AUTO:  # in a container: see guard_relay
                relay_ip = await anyio.to_thread.run_sync(guard_relay, network, self.config)
                self._guarded = network
                network = replace(network, gateway_ip=relay_ip)
            elif self.gateway_host is not None:
                network = replace(network, gateway_ip=self.gateway_host)
            else:  # the gateway listens on the agents network: only it may answer there
                await anyio.to_thread.run_sync(lambda: guard_network(network, self.config))
                self._guarded = network
            gateway = Gateway(
                self.config, self.state, network,
                run_budget=self._run_budget, on_budget_refused=self._budget_refused,
                extra=self.agent_mcp,
            )
            await anyio.to_thread.run_sync(gateway.start)
            self._pool = WarmPool(runtime=self.runtime, state=self.state, network=network.name,
                                  scope=self.scope)
            self._gateway = gateway

    async def close(self, *, wait_for_runs: bool = True) -> None:
        """Stop what this process owns.

        With ``wait_for_runs`` the runs in flight end first (each within its deadline): a
        stdio server whose client left, a CLI. Without it (a server told to stop) they are
        abandoned as they are: containers keep running for the next process to re-attach.
        """
        for live in list(self._live.values()):
            if wait_for_runs:
                await live.wait_done()
            else:
                live.abandon()
        if self._pool is not None:
            self._pool.closed = True
            for lease in self.state.containers(state="warm"):
                if lease.owner_pid == self.pid:
                    await self._pool.release(lease.container_id)
        if self._gateway is not None:
            self._gateway.stop()

    async def _housekeeping(self) -> None:
        while True:
            await anyio.sleep(HOUSEKEEPING_S)
            try:
                for lease in self.state.containers(state="warm"):
                    if lease.owner_pid == self.pid:
                        self.state.renew_lease(lease.container_id, 3600)
                await anyio.to_thread.run_sync(self._reap)
                if self._guarded is not None:
                    await anyio.to_thread.run_sync(self._reguard)
            except Exception:  # housekeeping must never take the server down
                log.exception("housekeeping pass failed")

    def _reap(self) -> list[str]:
        """A reaper pass over this config's containers only."""
        return reap(self.runtime, self.state, scope=self.scope)

    def _reguard(self) -> None:
        """Re-assert the host firewall (a firewall reload drops it) for the network as it is
        now: rules for an address another process's network replaced would cut all off."""
        network = ensure_agents_network(self.runtime)
        if self.gateway_host == GATEWAY_HOST_AUTO:
            guard_relay(network, self.config)
            return
        if self._guarded is not None and network.gateway_ip != self._guarded.gateway_ip:
            log.warning("the agents network now has gateway %s, not %s: this process's "
                        "gateway is unreachable until it restarts", network.gateway_ip,
                        self._guarded.gateway_ip)
        guard_network(network, self.config)

    # ---- warm pools ----------------------------------------------------------------------

    async def fill_pools(self) -> None:
        config = self.config
        target = config.settings.pool.warm_per_agent
        for name, agent in config.agents.items():
            await self.fill_pool(name, agent, target)

    async def fill_pool(self, name: str, agent: Agent, target: int,
                        *, detached: bool = False, strict: bool = False) -> list[str]:
        """Warm containers for ``agent`` up to ``target``; ``detached`` ones outlive this
        process (`ad-sandbox up`). Returns the new containers' ids; what keeps the pool
        from filling is logged, or raised when ``strict``."""
        await self.ensure_sandbox()
        assert self._pool is not None
        try:
            owner = directory_owner(name, agent, self.state)
        except UsageError as exc:
            if strict:
                raise
            log.warning("no warm pool for %s: %s", name, exc.one_line())
            return []
        return await self._pool.fill(name, agent, agent_image(self.config, agent), owner,
                                     target, detached=detached, strict=strict)

    async def release_container(self, container_id: str) -> None:
        """Remove a run's container and its lease."""
        assert self._pool is not None, "sandbox not started"
        await self._pool.release(container_id)

    # ---- runs ------------------------------------------------------------------------------

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "sandbox not started"
        return self._gateway

    def run_env(self, config: Config) -> RunEnv:
        """What a run needs of this process, with the config snapshot the run was checked
        against (see :class:`orchestrator.run.prepared.Prepared`)."""
        assert self._gateway is not None and self._pool is not None, "sandbox not started"
        return RunEnv(config=config, state=self.state, runtime=self.runtime,
                      gateway=GatewayHandle(self._gateway.url, self._gateway.tokens,
                                            mcp_url=self._gateway.mcp_url),
                      pool=self._pool, egress=self.egress)

    def spawn(self, func: Callable[[*Args], Coroutine[Any, Any, Any]], *args: *Args) -> None:
        """Start ``func(*args)`` in the runs' task group: it outlives the caller that asked."""
        self._tasks.start_soon(func, *args)

    def track(self, live: LiveRun) -> None:
        """A run of this process, in flight: cancellable, waited for on close, budget-hooked."""
        self._live[live.run_id] = live

    def untrack(self, live: LiveRun) -> None:
        self._live.pop(live.run_id, None)

    def live(self, run_id: str) -> LiveRun | None:
        return self._live.get(run_id)

    def live_runs(self) -> list[LiveRun]:
        return list(self._live.values())

    # ---- budget hooks (called from the gateway's threads) ----------------------------------

    def _run_budget(self, info: TokenInfo) -> float:
        config = self.config
        agent = config.agents.get(info.agent)
        limit = config.settings.budget.per_run if agent is None else run_budget(config, agent)
        return limit if info.budget_usd is None else min(limit, info.budget_usd)

    def _budget_refused(self, info: TokenInfo, reason: str) -> None:
        live = self._live.get(info.run_id)
        if live is not None:
            live.refuse_budget(reason)


GATEWAY_HOST_ENV = "AD_SANDBOX_GATEWAY_HOST"


def gateway_host_from_env() -> str | None:
    """``auto`` when ``AD_SANDBOX_GATEWAY_HOST=auto`` (an orchestrator in a container), else
    None; any other value is refused: an arbitrary bind address would skip the firewall."""
    value = os.environ.get(GATEWAY_HOST_ENV, "").strip()
    if not value:
        return None
    if value != GATEWAY_HOST_AUTO:
        raise UsageError(f"{GATEWAY_HOST_ENV}={value!r} is not supported",
                         hint=f"Set it to {GATEWAY_HOST_AUTO} in a container (compose), or unset "
                         "it on the host.")
    return value


def docker_runtime() -> Runtime:
    from orchestrator.runtime.docker_runtime import DockerRuntime
    from orchestrator.runtime.unavailable import UnavailableRuntime

    try:
        return DockerRuntime()
    except DockerUnavailable as exc:
        log.info("%s", exc.one_line())
        return UnavailableRuntime(exc)


IMAGE_ID_TTL_S = 5.0
"""An image id is asked once per few seconds, not per dispatch (a rebuild shows up soon)."""
_image_ids: dict[str, tuple[float, str | None]] = {}


def docker_image_id(ref: str) -> str | None:
    now = time.monotonic()
    cached = _image_ids.get(ref)
    if cached is not None and now - cached[0] < IMAGE_ID_TTL_S:
        return cached[1]
    image_id = _lookup_image_id(ref)
    _image_ids[ref] = (now, image_id)
    return image_id


def _lookup_image_id(ref: str) -> str | None:
    from orchestrator.runtime.images import image_status

    status = image_status(ref)
    return status.id if status else None
