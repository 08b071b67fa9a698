"""The :class:`~orchestrator.dispatch.api.DispatchService` the MCP server uses, over the dispatcher.

A caller that goes away (an MCP client disconnecting) does not cancel its runs here: they
finish in the service's task group and stay readable; only an explicit cancel kills them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from orchestrator.config import Agent, Config
from orchestrator.configfile import update_config
from orchestrator.dispatch import catalog, fanout
from orchestrator.dispatch.api import (
    AgentArgs,
    AgentDetail,
    AgentInfo,
    BudgetLeft,
    ContainerInfo,
    DialogueResult,
    GroupDetail,
    GroupInfo,
    JobStatus,
    ParallelResult,
    PoolInfo,
    SandboxStatus,
)
from orchestrator.dispatch.dispatcher import Dispatcher, open_dispatcher
from orchestrator.dispatch.nested import AgentMcpFactory
from orchestrator.errors import AdSandboxError, ContainerFailed, UsageError
from orchestrator.gateway.lifecycle import DAY_S
from orchestrator.models import RunRecord, RunRequest
from orchestrator.results import DispatchResult, ProgressFn
from orchestrator.run.dirpin import forget_directory, pin_directory
from orchestrator.run.reaper import reap
from orchestrator.runtime.base import Runtime
from orchestrator.state import StateStore

log = logging.getLogger(__name__)

GC_AFTER_S = 7 * DAY_S
FOREIGN_WAIT_MAX_S = 1.0
"""Waiting on a run another process owns: its record is re-read, backing off to this."""
STATUSES = ("queued", "running", "finished")


@dataclass(frozen=True)
class Collected:
    """What one garbage collection removed."""

    runs: int
    """Finished run records past retention."""
    containers: list[str]
    """Leftover containers reaped (ids)."""


class Service:
    """Implements :class:`orchestrator.dispatch.api.DispatchService`."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.state = dispatcher.state

    @property
    def config(self) -> Config:
        return self.dispatcher.config

    def management_tools_enabled(self) -> bool:
        return self.config.settings.agent_management_tools

    # ---- runs -----------------------------------------------------------------------------

    async def dispatch(self, req: RunRequest, *, progress: ProgressFn | None = None,
                       return_ref: bool = False, summary_chars: int = 0) -> DispatchResult:
        result = await self.dispatcher.dispatch(req, progress=progress, cancel_on_abandon=False)
        if return_ref:
            result = result.model_copy(update={"ref": result.run_id,
                                               "result": result.result[:summary_chars]})
        return result

    async def dispatch_parallel(self, reqs: list[RunRequest], *, aggregate: str | None,
                                progress: ProgressFn | None) -> ParallelResult:
        return await fanout.parallel(self.dispatcher, reqs, aggregate=aggregate,
                                     progress=progress, cancel_on_abandon=False)

    async def dialogue(self, requester: str, responder: str, topic: str, *, max_rounds: int,
                       caller: str, progress: ProgressFn | None) -> DialogueResult:
        return await fanout.dialogue(self.dispatcher, requester, responder, topic,
                                     max_rounds=max_rounds, caller=caller, progress=progress,
                                     cancel_on_abandon=False)

    async def run(self, req: RunRequest, *, progress: ProgressFn | None = None) -> DispatchResult:
        """Run ``req`` tied to its caller (a CLI command): cancelling the caller (Ctrl-C)
        kills the run, where :meth:`dispatch`'s runs outlive an MCP client that left."""
        return await self.dispatcher.dispatch(req, progress=progress, cancel_on_abandon=True)

    def check(self, req: RunRequest) -> None:
        """Raise what is wrong with ``req`` before anything runs (see
        :meth:`~orchestrator.dispatch.dispatcher.Dispatcher.check`); nothing is recorded."""
        self.dispatcher.check(req)

    async def start_async(self, req: RunRequest) -> str:
        return self.dispatcher.start_async(req)

    # ---- jobs -----------------------------------------------------------------------------

    def _status(self, record: RunRecord) -> JobStatus:
        status = JobStatus.from_record(record)
        live = self.dispatcher.live(record.run_id)
        if live is not None and record.status != "finished":
            status.last_action = live.snapshot().last_action
        return status

    async def status(self, job_id: str) -> JobStatus:
        return self._status(self.state.find_run(job_id))

    async def wait(self, job_id: str, timeout_s: float) -> JobStatus:
        record = self.state.find_run(job_id)
        deadline = time.monotonic() + max(0.0, timeout_s)
        live = self.dispatcher.live(record.run_id)
        if live is not None:
            await live.wait_done(timeout_s)
        else:
            pause = 0.05
            while record.status != "finished" and time.monotonic() < deadline:
                await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, FOREIGN_WAIT_MAX_S)
                record = self.state.get_run(record.run_id)
        return self._status(self.state.get_run(record.run_id))

    async def cancel(self, job_id: str) -> JobStatus:
        record = self.state.find_run(job_id)
        return self._status(await self.dispatcher.cancel(record.run_id))

    async def jobs(self, *, status: str | None, limit: int, agent: str | None) -> list[JobStatus]:
        if status is not None and status not in STATUSES:
            raise UsageError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        return [self._status(r)
                for r in self.state.list_runs(status=status, agent=agent, limit=limit)]

    async def fetch_result(self, ref: str, max_chars: int | None) -> str:
        record = self.state.find_run(ref)
        if record.status != "finished":
            raise UsageError(f"run {record.run_id} has not finished",
                             hint="Call dispatch_wait first.")
        text = record.result if record.success else (record.error or record.result)
        return text if max_chars is None else text[:max_chars]

    async def gc(self) -> int:
        return (await self.collect()).runs

    async def collect(self, older_than_s: float = GC_AFTER_S, *,
                      every_config: bool = False) -> Collected:
        """Reap leftover containers (this config's; every config's with ``every_config``),
        then remove finished run records older than ``older_than_s``: ``gc`` of both faces.

        Records are cleaned even while the engine is away, unless every config's containers
        were asked for explicitly: then the engine's error is the answer.
        """
        host = self.dispatcher.host
        scope = None if every_config else host.scope
        try:
            reaped = await anyio.to_thread.run_sync(
                lambda: reap(host.runtime, self.state, scope=scope))
        except AdSandboxError as exc:
            if every_config:
                raise
            log.warning("gc: leftover containers not reaped: %s", exc.one_line())
            reaped = []
        return Collected(runs=self.state.gc_runs(older_than_s), containers=reaped)

    async def fill_pool(self, name: str, *, wait: bool = False) -> list[str]:
        """Start warm containers for agent ``name`` up to the pool target, detached from this
        process (``up``: they outlive the command); the ids started.

        With ``wait`` (``up --wait``) it returns only once the target's containers are
        running, and raises the reason when one cannot be started or is not running."""
        config = self.config
        host = self.dispatcher.host
        target = config.settings.pool.warm_per_agent
        made = await host.fill_pool(name, config.agent(name), target, detached=True,
                                    strict=wait)
        if wait:
            await self._check_pool(name, target)
        return made

    async def _check_pool(self, name: str, target: int) -> None:
        runtime = self.dispatcher.host.runtime
        running = 0
        for lease in self.state.containers(agent=name, state="warm"):
            found = await anyio.to_thread.run_sync(runtime.inspect, lease.container_id)
            if found is not None and found.running:
                running += 1
            elif found is not None:
                logs = await anyio.to_thread.run_sync(runtime.logs, lease.container_id, 20)
                last = " | ".join(logs.strip().splitlines()[-3:])[:300]
                raise ContainerFailed(
                    f"warm container {found.name or lease.container_id[:12]} of agent {name!r} "
                    f"is {found.status} (exit code {found.exit_code})"
                    + (f"; its last log lines: {last}" if last else ""),
                    hint="Check the image and the mounts (`ad-sandbox doctor`); the last "
                    "log lines are attached.", container=lease.container_id, last_logs=logs)
        if running < target:
            raise ContainerFailed(
                f"agent {name!r}: {running} of {target} warm container(s) running",
                hint="Run `ad-sandbox -v up --wait` to see why, or `ad-sandbox doctor`.")

    # ---- agents and groups --------------------------------------------------------------

    async def list_agents(self) -> list[AgentInfo]:
        config = self.config
        return [catalog.agent_info(config, name) for name in sorted(config.agents)]

    async def inspect_agent(self, name: str, preview_lines: int) -> AgentDetail:
        return catalog.agent_detail(self.config, self.state, name, preview_lines)

    async def list_groups(self) -> list[GroupInfo]:
        config = self.config
        return [catalog.group_info(config, name) for name in sorted(config.groups)]

    async def inspect_group(self, name: str) -> GroupDetail:
        return catalog.group_detail(self.config, name)

    async def add_agent(self, name: str, args: AgentArgs) -> AgentInfo:
        changes = args.changes()
        if "directory" not in changes:
            raise UsageError("add_agent needs a directory")

        def apply(config: Config) -> Config:
            if name in config.agents:
                raise UsageError(f"agent {name!r} exists", hint="Use update_agent.")
            changes["directory"] = catalog.resolve_directory(changes["directory"], config,
                                                             from_mcp=True)
            return catalog.with_agent(config, name, changes)

        config = await anyio.to_thread.run_sync(update_config, apply)
        pin_directory(self.state, name, config.agents[name])
        return catalog.agent_info(config, name)

    async def update_agent(self, name: str, args: AgentArgs) -> AgentInfo:
        changes = args.changes()

        def apply(config: Config) -> Config:
            current: Agent = config.agent(name)
            if "directory" in changes:
                changes["directory"] = catalog.resolve_directory(changes["directory"], config,
                                                                 from_mcp=True)
            return catalog.with_agent(
                config, name, {**current.model_dump(mode="json", exclude_unset=True), **changes})

        config = await anyio.to_thread.run_sync(update_config, apply)
        if "directory" in changes:
            pin_directory(self.state, name, config.agents[name])
        return catalog.agent_info(config, name)

    async def remove_agent(self, name: str) -> None:
        await anyio.to_thread.run_sync(
            update_config, lambda config: catalog.without_agent(config, name)[0])
        forget_directory(self.state, name)

    # ---- cache and sandbox ----------------------------------------------------------------

    async def cache_stats(self) -> dict[str, Any]:
        return dict(self.state.cache_stats())

    async def cache_clear(self) -> int:
        return self.state.cache_clear()

    async def sandbox_status(self) -> SandboxStatus:
        config = self.config
        try:
            await anyio.to_thread.run_sync(self.dispatcher.host.runtime.list_managed)
            docker_ok = True
        except AdSandboxError as exc:  # reported as docker: false; the log says why
            log.info("sandbox_status: the engine is not reachable: %s", exc.one_line())
            docker_ok = False
        warm: dict[str, int] = {}
        for lease in self.state.containers(state="warm"):
            warm[lease.agent] = warm.get(lease.agent, 0) + 1
        target = config.settings.pool.warm_per_agent
        now = time.time()
        budget = config.settings.budget
        return SandboxStatus(
            docker=docker_ok,
            max_concurrency=config.settings.max_concurrency,
            pool=[PoolInfo(agent=name, warm=warm.get(name, 0), target=target)
                  for name in sorted(config.agents)],
            running=[ContainerInfo(run_id=r.run_id, agent=r.agent, container_id=r.container_id,
                                   elapsed_s=round(now - r.created_at, 3))
                     for r in self.state.unfinished_runs()],
            budget=BudgetLeft(
                per_run=budget.per_run, per_root=budget.per_root,
                daily=max(0.0, budget.daily - self.state.spent_since(now - DAY_S))),
        )


@asynccontextmanager
async def open_command_service(*, agent_mcp: AgentMcpFactory | None = None,
                               ) -> AsyncIterator[Service]:
    """The service for one CLI command: no warm pools, runs not adoptable (they end with
    the command, and :meth:`Service.run` kills them on Ctrl-C); opening it reaps this
    config's leftovers. ``agent_mcp``: see :func:`open_service`."""
    async with open_service(warm=False, reattach=False, agent_mcp=agent_mcp) as service:
        yield service


@asynccontextmanager
async def open_service(*, warm: bool = True, wait_for_runs: bool = True,
                       reattach: bool = True, runtime: Runtime | None = None,
                       state: StateStore | None = None, gateway_host: str | None = None,
                       image_id: Callable[[str], str | None] | None = None,
                       agent_mcp: AgentMcpFactory | None = None,
                       ) -> AsyncIterator[Service]:
    """The service over a started dispatcher. The defaults are the MCP server's: Docker,
    warm pools filled, runs adoptable by the next process; the rest is
    :func:`~orchestrator.dispatch.dispatcher.open_dispatcher`'s (tests pass a runtime).
    ``agent_mcp`` (``orchestrator.server.agentmcp.agent_mcp_routes``) serves nested
    dispatch on the gateway; without it agents with ``dispatch_to`` are refused."""
    async with open_dispatcher(warm=warm, reattach=reattach, wait_for_runs=wait_for_runs,
                               runtime=runtime, state=state, gateway_host=gateway_host,
                               image_id=image_id, agent_mcp=agent_mcp) as dispatcher:
        yield Service(dispatcher)
