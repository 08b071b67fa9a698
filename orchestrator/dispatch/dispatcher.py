"""The dispatcher: validation → limits → cache → run in a container → record (SPEC §2, §6).

No Typer, no MCP, no docker imports: the CLI and the MCP server are thin layers over it.
Runs execute in the service's own task group, so a caller that goes away loses nothing: the
run finishes and its record is readable later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from orchestrator.config import Agent, Config
from orchestrator.configfile import ConfigSnapshot
from orchestrator.dispatch import cachekey as cache
from orchestrator.dispatch.host import SandboxHost, docker_runtime
from orchestrator.errors import (
    AdSandboxError,
    AgentNotFound,
    BudgetExceeded,
    ContainerFailed,
    RecursionLimit,
    UsageError,
)
from orchestrator.gateway.lifecycle import DAY_S
from orchestrator.models import ExitReason, RunRecord, RunRequest
from orchestrator.results import DispatchResult, ProgressFn
from orchestrator.run.live import LiveRun, report_progress
from orchestrator.run.runner import execute
from orchestrator.run.sandbox import (
    agent_image,
    directory_owner,
    read_secrets,
)
from orchestrator.runtime.base import Runtime
from orchestrator.state import StateStore
from orchestrator.textinput import check_arguments

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 400_000
"""Task + context + goal. Beyond this the model's context window is the wrong channel."""
SLOT_RECHECK_S = 0.2
"""Waiting for a slot another process holds: local releases wake at once, others are re-read."""


def unavailable_features(agent: Agent) -> str | None:
    """Settings the config accepts (SPEC §3) that runs cannot honour yet: refused, never
    silently ignored, because each changes what the sandbox lets through."""
    if agent.network.egress != "gateway-only":
        return f"network.egress: {agent.network.egress}"
    if agent.allow_hosts:
        return "allow_hosts"
    if agent.dispatch_to:
        return "dispatch_to (nested dispatch)"
    return None


class Dispatcher(SandboxHost):
    """The core service. Create with :func:`open_dispatcher`."""

    # ---- dispatch --------------------------------------------------------------------

    def validate(self, request: RunRequest) -> Agent:
        """Reject bad input before anything runs or is recorded."""
        config = self.config
        agent = config.agent(request.agent)
        if not request.task.strip():
            raise UsageError("the task is empty", hint="Say what the agent should do.")
        size = len(request.task) + len(request.context) + len(request.goal)
        if size > MAX_PROMPT_CHARS:
            raise UsageError(
                f"task, context and goal are {size:,} characters; the limit is "
                f"{MAX_PROMPT_CHARS:,}",
                hint="Put large material in a file in the agent's project and name the file.",
            )
        if request.timeout is not None and request.timeout <= 0:
            raise UsageError(f"timeout must be positive, got {request.timeout}")
        if request.group is not None and request.group not in config.groups:
            known = ", ".join(sorted(config.groups)) or "none defined"
            raise AgentNotFound(f"unknown group {request.group!r} (known: {known})",
                                hint="Call list_groups, or leave group empty.")
        limit = config.settings.max_dispatch_depth
        if request.depth > limit:
            raise RecursionLimit(f"dispatch depth {request.depth} exceeds the limit {limit}")
        return agent

    def check(self, request: RunRequest) -> Agent:
        """Everything that can be known wrong before a container exists."""
        agent = self.validate(request)
        unavailable = unavailable_features(agent)
        if unavailable:
            raise UsageError(
                f"agent {request.agent!r} asks for {unavailable}, which this version does "
                "not provide yet (its runs get the gateway-only network and no nested dispatch)",
                hint=f"Remove it from the agent (`ad-sandbox describe {request.agent}`) to run "
                "with the defaults.",
            )
        directory_owner(request.agent, agent, self.state)
        read_secrets(request.agent, agent)
        return agent

    def submit(self, request: RunRequest) -> LiveRun:
        """Record ``request`` and validate it; the returned run has not started.

        Bad input still leaves a record (ended, with the error) before the error is raised;
        text that is not UTF-8 (a JSON ``\\udcff`` escape over MCP) cannot be recorded at all.
        """
        check_arguments(request.model_dump(include={"agent", "task", "context", "goal",
                                                    "session_id", "group", "caller"}))
        record = RunRecord(
            agent=request.agent,
            caller=request.caller,
            depth=request.depth,
            parent_id=request.parent_run_id,
            task=request.task[:2000],
            owner_pid=self.pid,
            adoptable=self.reattach,
            response_format=request.response_format,
        )
        if request.root_run_id:
            record.root_id = request.root_run_id
        self.state.insert_run(record)
        live = LiveRun(record)
        try:
            self.check(request)
        except AdSandboxError as exc:
            live.finish(self._end_with_error(record.run_id, exc))
            raise
        self._live[record.run_id] = live
        return live

    def _end_with_error(self, run_id: str, exc: AdSandboxError,
                        exit_reason: ExitReason = "crashed") -> RunRecord:
        return self.state.update_run(
            run_id, status="finished", success=False, exit_reason=exit_reason,
            error=exc.message, error_type=exc.error_type, hint=exc.hint,
            finished_at=time.time())

    async def dispatch(self, request: RunRequest, *, progress: ProgressFn | None = None,
                       cancel_on_abandon: bool = True) -> DispatchResult:
        """Run ``request`` to its end.

        A cancelled caller cancels (kills) the run when ``cancel_on_abandon``; otherwise the
        run goes on in the service's task group and its record is read later.
        """
        live = self.submit(request)
        assert self._tg is not None, "dispatcher not started"
        self._tg.start_soon(self._run, request, live)
        try:
            async with anyio.create_task_group() as tg:
                if progress is not None:
                    tg.start_soon(report_progress, live, progress)
                await live.wait_done()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            if cancel_on_abandon:
                with anyio.CancelScope(shield=True):
                    await self.cancel(live.run_id)
            raise
        return self.result_of(live.record)

    def start_async(self, request: RunRequest) -> str:
        live = self.submit(request)
        assert self._tg is not None, "dispatcher not started"
        self._tg.start_soon(self._run, request, live)
        return live.run_id

    def result_of(self, record: RunRecord) -> DispatchResult:
        return DispatchResult.from_record(record, cached=record.cached)

    async def idle(self) -> None:
        """Return once no run is in flight, clean-up included (containers removed)."""
        while self._busy:
            await self._idle.wait()

    async def _run(self, request: RunRequest, live: LiveRun) -> None:
        if not self._busy:
            self._idle = anyio.Event()
        self._busy += 1
        try:
            with anyio.CancelScope() as scope:
                live.scope = scope
                await self._run_inner(request, live)
            if scope.cancelled_caught and not live.done:
                live.finish(self._end_cancelled(live.run_id, "before its agent started"))
        except AdSandboxError as exc:  # e.g. the engine went away before the container
            if not live.done:
                live.finish(self._end_cancelled(live.run_id, "while it was being set up")
                            if live.cancel_requested else self._end_with_error(live.run_id, exc))
        except BaseException as exc:
            if live.abandoned:  # the process stops; the next one re-attaches the run
                raise
            with anyio.CancelScope(shield=True):
                if not live.done:
                    cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                    live.finish(self._end_cancelled(live.run_id, "by shutdown") if cancelled
                                else self._end_with_error(live.run_id, ContainerFailed(
                                    f"run ended by {type(exc).__name__}: {exc}"[:2000])))
            if not isinstance(exc, Exception):
                raise
            log.exception("run %s failed inside the orchestrator", live.run_id)
        finally:
            self._live.pop(live.run_id, None)
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def _end_cancelled(self, run_id: str, when: str) -> RunRecord:
        return self.state.update_run(
            run_id, status="finished", success=False, exit_reason="cancelled",
            error_type="cli_error", error=f"cancelled {when}",
            hint="Dispatch again if the task is still needed.", finished_at=time.time())

    async def _run_inner(self, request: RunRequest, live: LiveRun) -> None:
        config = self.config
        agent = config.agent(request.agent)
        key = await self._cache_key(config, request, agent)
        if key is not None and await self._from_cache(key, live):
            return
        leader = self._inflight.get(key) if key else None
        if leader is not None:
            await leader.wait_done()
            self._follow(live, leader.record)
            return
        if key:
            self._inflight[key] = live
        try:
            spent = self.state.spent_since(time.time() - DAY_S)
            if spent >= config.settings.budget.daily:
                raise BudgetExceeded(
                    f"the daily budget ${config.settings.budget.daily:.2f} is spent "
                    f"(${spent:.4f} in 24 h)")
            await self.ensure_sandbox()
            await self._acquire_slot(live, config.settings.max_concurrency)
            try:
                record = await execute(self._env(config), request, live)
            finally:
                self.state.release_slot(live.run_id)
                self._slot_freed.set()
                self._slot_freed = anyio.Event()
            if key and record.success and record.exit_reason == "completed":
                self.state.cache_put(key, record.run_id, config.settings.cache.ttl)
            if self._warm and self._tg is not None and config.settings.pool.warm_per_agent:
                self._tg.start_soon(self.fill_pool, request.agent, agent,
                                    config.settings.pool.warm_per_agent)
        except BudgetExceeded as exc:
            live.finish(self._end_with_error(live.run_id, exc, "budget"))
        except AdSandboxError as exc:  # e.g. Docker down when the sandbox is first needed
            live.finish(self._end_cancelled(live.run_id, "while it was being set up")
                        if live.cancel_requested else self._end_with_error(live.run_id, exc))
        finally:
            if key:
                self._inflight.pop(key, None)

    async def _acquire_slot(self, live: LiveRun, limit: int) -> None:
        """A machine-wide concurrency slot, first come first served across processes."""
        if self.state.acquire_slot(live.run_id, owner_pid=self.pid, limit=limit):
            return
        self.state.enqueue(live.run_id, self.pid)
        try:
            while not self.state.acquire_slot(live.run_id, owner_pid=self.pid, limit=limit):
                with live.lock:
                    live.queue_position = self.state.queue_position(live.run_id)
                live.poke()
                # A release in this process wakes us at once; other processes' are re-read.
                with anyio.move_on_after(SLOT_RECHECK_S):
                    await self._slot_freed.wait()
        finally:
            self.state.dequeue(live.run_id)
            with live.lock:
                live.queue_position = None

    # ---- cache -------------------------------------------------------------------------

    async def _cache_key(self, config: Config, request: RunRequest, agent: Agent) -> str | None:
        if not config.settings.cache.enabled or not cache.cacheable(request):
            return None
        image = agent_image(config, agent)
        image_id = await anyio.to_thread.run_sync(self._image_id, image)
        project = await anyio.to_thread.run_sync(cache.project_state, agent.path)
        if project is None:  # unreadable or odd project: uncacheable, never a stale hit
            return None
        return cache.cache_key(request, agent, image_id or image, project)

    async def _from_cache(self, key: str, live: LiveRun) -> bool:
        source = cache.lookup(self.state, key)
        if source is not None:
            live.finish(cache.answer_from(self.state, live.record, source))
        return source is not None

    def _follow(self, live: LiveRun, source: RunRecord) -> None:
        live.finish(cache.answer_from(self.state, live.record, source))

    # ---- jobs ----------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> RunRecord:
        """Kill the run's container now; the run ends ``cancelled``.

        A run of another process is flagged in its record and its container killed; its
        owner records the end.
        """
        live = self._live.get(run_id)
        if live is None:
            record = self.state.get_run(run_id)
            if record.status != "finished":
                self.state.update_run(run_id, cancel_requested=True)
                if record.container_id:
                    await anyio.to_thread.run_sync(self.runtime.kill, record.container_id)
            return self.state.get_run(run_id)
        with live.lock:
            live.cancel_requested = True
            container_id = live.container_id
        if container_id is not None:
            await anyio.to_thread.run_sync(self.runtime.kill, container_id)
        elif live.scope is not None:  # queued or starting: nothing to kill yet
            live.scope.cancel()
        await live.wait_done(10)
        return self.state.get_run(run_id)

    async def wait(self, run_id: str, timeout_s: float) -> RunRecord:
        live = self._live.get(run_id)
        if live is not None:
            await live.wait_done(timeout_s)
        return self.state.get_run(run_id)


@asynccontextmanager
async def open_dispatcher(*, warm: bool = False, runtime: Runtime | None = None,
                          state: StateStore | None = None,
                          gateway_host: str | None = None,
                          image_id: Callable[[str], str | None] | None = None,
                          reattach: bool = False,
                          wait_for_runs: bool = True,
                          ) -> AsyncIterator[Dispatcher]:
    """Start the dispatcher with its gateway, reaper and (optionally) warm pools."""
    if runtime is None:
        runtime = docker_runtime()
    owned_state = state is None
    store = StateStore() if state is None else state
    dispatcher = Dispatcher(snapshot=ConfigSnapshot(), state=store, runtime=runtime,
                            gateway_host=gateway_host, image_id=image_id,
                            reattach=reattach)
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            runs: TaskGroup = await tg.start(_shielded_task_group)
            await dispatcher.start(runs, warm=warm)
            try:
                yield dispatcher
            except Exception as exc:  # re-raised below, not wrapped in the group's exception
                failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await dispatcher.close(wait_for_runs=wait_for_runs)
                runs.cancel_scope.cancel()
                tg.cancel_scope.cancel()
    finally:
        if owned_state:
            store.close()
    if failure is not None:
        raise failure


async def _shielded_task_group(*, task_status: TaskStatus[TaskGroup]) -> None:
    """A task group for runs that whatever cancels the dispatcher's caller cannot reach:
    only :meth:`Dispatcher.close` decides, after it has waited for or abandoned them."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as runs:
            task_status.started(runs)
            await anyio.sleep_forever()


def open_service(*, warm: bool = True,
                 wait_for_runs: bool = True) -> AbstractAsyncContextManager[Any]:
    """The MCP-facing service (see :mod:`orchestrator.dispatch.service`)."""
    from orchestrator.dispatch.service import open_service as open_impl

    return open_impl(warm=warm, wait_for_runs=wait_for_runs)
