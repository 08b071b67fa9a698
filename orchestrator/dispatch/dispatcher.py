"""The dispatcher: validation → limits → cache → run in a container → record (SPEC §2, §6).

No Typer, no MCP, no docker imports: the CLI and the MCP server are thin layers over it.
Runs execute in the host's task group, so a caller that goes away loses nothing: the run
finishes and its record is readable later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup, TaskStatus

from orchestrator.config import Agent, Config
from orchestrator.configfile import ConfigSnapshot
from orchestrator.dispatch import cachekey as cache
from orchestrator.dispatch.checks import check_request
from orchestrator.dispatch.host import Host, docker_runtime, gateway_host_from_env
from orchestrator.dispatch.nested import AgentCalls, AgentMcpFactory
from orchestrator.dispatch.reattach import adopt_orphans
from orchestrator.errors import AdSandboxError, BudgetExceeded, ContainerFailed, UsageError
from orchestrator.gateway.lifecycle import DAY_S, ExtraRoutes
from orchestrator.models import ExitReason, RunRecord, RunRequest
from orchestrator.outcomes import reason_error
from orchestrator.results import DispatchResult, ProgressFn
from orchestrator.run.live import LiveRun, report_progress
from orchestrator.run.prepared import Prepared
from orchestrator.run.runner import execute
from orchestrator.runtime.base import Runtime
from orchestrator.state import StateStore
from orchestrator.textinput import check_arguments

log = logging.getLogger(__name__)

SLOT_RECHECK_S = 0.2
"""Waiting for a slot another process holds: local releases wake at once, others are re-read."""


class Dispatcher:
    """The request flow over a :class:`Host`. Create with :func:`open_dispatcher`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.state = host.state
        self._busy = 0
        self._idle = anyio.Event()
        self._inflight: dict[str, LiveRun] = {}
        """Runs computing a cache key's answer: an identical request waits for theirs."""
        self._slot_freed = anyio.Event()

    @property
    def config(self) -> Config:
        """The config as it is now (for listings); a run keeps its :class:`Prepared` one."""
        return self.host.config

    async def start(self) -> None:
        """Re-attach orphaned runs (when adoptable), then start the host."""
        if self.host.adoptable:
            try:
                adopted = await adopt_orphans(self.host)
            except AdSandboxError as exc:
                log.warning("re-attach skipped: %s", exc.one_line())
            else:
                if adopted:
                    log.info("re-attached %d run(s): %s", len(adopted), ", ".join(adopted))
        await self.host.start()

    def live(self, run_id: str) -> LiveRun | None:
        """The in-memory side of a run of this process, while it is in flight."""
        return self.host.live(run_id)

    # ---- dispatch --------------------------------------------------------------------

    def check(self, request: RunRequest) -> Prepared:
        """Everything that can be known wrong before a container exists, against the config
        as it is now; the run then uses the returned value, not a later config."""
        prepared = check_request(self.host.config, request, self.state)
        if prepared.agent.dispatch_to and self.host.agent_mcp is None:
            raise UsageError(
                f"agent {request.agent!r} has dispatch_to, but this process does not serve "
                "nested dispatch (the gateway's /mcp)",
                hint="Run it through `ad-sandbox run`, `serve` or `demo`, or remove its "
                "dispatch_to.")
        return prepared

    def submit(self, request: RunRequest,
               prepared: Prepared | None = None) -> tuple[LiveRun, Prepared]:
        """Record ``request`` and check it (unless ``prepared`` is its check, done by the
        caller); the returned run has not started.

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
            owner_pid=self.host.pid,
            adoptable=self.host.adoptable,
            response_format=request.response_format,
        )
        if request.root_run_id:
            record.root_id = request.root_run_id
        self.state.insert_run(record)
        live = LiveRun(record)
        if prepared is None:
            try:
                prepared = self.check(request)
            except AdSandboxError as exc:
                live.finish(self._end_with_error(record.run_id, exc))
                raise
        self.host.track(live)
        return live, prepared

    def _end_with_error(self, run_id: str, exc: AdSandboxError,
                        exit_reason: ExitReason = "crashed") -> RunRecord:
        return self.state.update_run(
            run_id, status="finished", success=False, exit_reason=exit_reason,
            error=exc.message, error_type=exc.error_type, hint=exc.hint,
            finished_at=time.time())

    async def dispatch(self, request: RunRequest, *, prepared: Prepared | None = None,
                       progress: ProgressFn | None = None,
                       cancel_on_abandon: bool = True) -> DispatchResult:
        """Run ``request`` to its end (``prepared``: its :meth:`check`, already done).

        A cancelled caller cancels (kills) the run when ``cancel_on_abandon``; otherwise the
        run goes on in the host's task group and its record is read later.
        """
        live, prepared = self.submit(request, prepared)
        self.host.spawn(self._run, request, prepared, live)
        try:
            async with anyio.create_task_group() as tg:
                if progress is not None:
                    tg.start_soon(report_progress, live, progress)
                await live.wait_done()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            if cancel_on_abandon and not live.abandoned:  # abandoned: left to re-attach
                with anyio.CancelScope(shield=True):
                    await self.cancel(live.run_id)
                    if request.parent_run_id:  # its parent stopped waiting: it ended
                        self._note_parent_ended(live.run_id, request.parent_run_id)
            raise
        return self.result_of(live.record)

    def start_async(self, request: RunRequest) -> str:
        live, prepared = self.submit(request)
        self.host.spawn(self._run, request, prepared, live)
        return live.run_id

    def result_of(self, record: RunRecord) -> DispatchResult:
        return DispatchResult.from_record(record, cached=record.cached)

    async def idle(self) -> None:
        """Return once no run is in flight, clean-up included (containers removed)."""
        while self._busy:
            await self._idle.wait()

    async def _run(self, request: RunRequest, prepared: Prepared, live: LiveRun) -> None:
        if not self._busy:
            self._idle = anyio.Event()
        self._busy += 1
        try:
            with anyio.CancelScope() as scope:
                live.run_in(scope)
                await self._run_inner(request, prepared, live)
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
            if not live.abandoned:
                with anyio.CancelScope(shield=True):
                    await self._cancel_children(live.run_id)
            self.host.untrack(live)
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _cancel_children(self, run_id: str) -> None:
        """Kill the live children of a run that ended (cancelled, timed out, or done while
        a child still ran); theirs in turn end the same way."""
        children = [live for live in self.host.live_runs()
                    if live.record.parent_id == run_id and not live.done]
        if children:
            async with anyio.create_task_group() as tg:
                for child in children:
                    tg.start_soon(self.cancel, child.run_id)
        # Also the children a whole-process cancel (Ctrl-C) ended just before this parent
        # (not those cancelled on their own while it went on to finish).
        if self.state.get_run(run_id).exit_reason in ("cancelled", "timeout"):
            for record in self.state.child_runs(run_id):
                self._note_parent_ended(record.run_id, run_id)
        else:
            for child in children:
                self._note_parent_ended(child.run_id, run_id)

    def _note_parent_ended(self, run_id: str, parent_id: str) -> None:
        """A nested run cancelled because its parent ended says so in its record."""
        record = self.state.get_run(run_id)
        if record.exit_reason == "cancelled" and parent_id not in (record.error or ""):
            self.state.update_run(
                run_id, error=f"cancelled: its parent run {parent_id} ended",
                hint=f"The parent run {parent_id} was cancelled, timed out or finished before "
                f"this nested run; see `ad-sandbox job {parent_id}`.")

    def _end_cancelled(self, run_id: str, when: str) -> RunRecord:
        error_type, hint = reason_error("cancelled")
        return self.state.update_run(
            run_id, status="finished", success=False, exit_reason="cancelled",
            error_type=error_type, error=f"cancelled {when}", hint=hint,
            finished_at=time.time())

    async def _run_inner(self, request: RunRequest, prepared: Prepared, live: LiveRun) -> None:
        config = prepared.config
        key = await self._cache_key(request, prepared)
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
            await self.host.ensure_sandbox()
            # A nested run borrows its root's slot (the root waits on it): a tree deeper
            # than max_concurrency cannot deadlock. Its container still counts in `ps`.
            nested = request.parent_run_id is not None
            if not nested:
                await self._acquire_slot(live, config.settings.max_concurrency)
            try:
                record = await execute(self.host.run_env(config), request, prepared, live)
            finally:
                if not nested:
                    self.state.release_slot(live.run_id)
                    self._slot_freed.set()
                    self._slot_freed = anyio.Event()
            if key and record.success and record.exit_reason == "completed":
                self.state.cache_put(key, record.run_id, config.settings.cache.ttl)
            warm = config.settings.pool.warm_per_agent
            if self.host.warm and warm:
                self.host.spawn(self._refill, request.agent, prepared.agent, warm)
        except BudgetExceeded as exc:
            live.finish(self._end_with_error(live.run_id, exc, "budget"))
        except AdSandboxError as exc:  # e.g. Docker down when the sandbox is first needed
            live.finish(self._end_cancelled(live.run_id, "while it was being set up")
                        if live.cancel_requested else self._end_with_error(live.run_id, exc))
        finally:
            if key:
                self._inflight.pop(key, None)

    async def _refill(self, name: str, agent: Agent, target: int) -> None:
        await self.host.fill_pool(name, agent, target)

    async def _acquire_slot(self, live: LiveRun, limit: int) -> None:
        """A machine-wide concurrency slot, first come first served across processes."""
        pid = self.host.pid
        if self.state.acquire_slot(live.run_id, owner_pid=pid, limit=limit):
            return
        self.state.enqueue(live.run_id, pid)
        try:
            while not self.state.acquire_slot(live.run_id, owner_pid=pid, limit=limit):
                live.queued(self.state.queue_position(live.run_id))
                # A release in this process wakes us at once; other processes' are re-read.
                with anyio.move_on_after(SLOT_RECHECK_S):
                    await self._slot_freed.wait()
        finally:
            self.state.dequeue(live.run_id)
            live.queued(None)

    # ---- cache -------------------------------------------------------------------------

    async def _cache_key(self, request: RunRequest, prepared: Prepared) -> str | None:
        if not prepared.config.settings.cache.enabled or not cache.cacheable(request):
            return None
        image = prepared.image
        image_id = await anyio.to_thread.run_sync(self.host.image_id, image)
        project = await anyio.to_thread.run_sync(cache.project_state, prepared.agent.path)
        if project is None:  # unreadable or odd project: uncacheable, never a stale hit
            return None
        return cache.cache_key(request, prepared.agent, image_id or image, project)

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
        runtime = self.host.runtime
        live = self.host.live(run_id)
        if live is None:
            record = self.state.get_run(run_id)
            if record.status != "finished":
                self.state.update_run(run_id, cancel_requested=True)
                if record.container_id:
                    await anyio.to_thread.run_sync(runtime.kill, record.container_id)
            return self.state.get_run(run_id)
        container_id = live.request_cancel()
        # Its nested runs go at once, not after the parent's clean-up.
        self.host.spawn(self._cancel_children, run_id)
        if container_id is not None:
            await anyio.to_thread.run_sync(runtime.kill, container_id)
        elif live.scope is not None:  # queued or starting: nothing to kill yet
            live.scope.cancel()
        await live.wait_done(10)
        return self.state.get_run(run_id)

    async def wait(self, run_id: str, timeout_s: float) -> RunRecord:
        live = self.host.live(run_id)
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
                          agent_mcp: AgentMcpFactory | None = None,
                          ) -> AsyncIterator[Dispatcher]:
    """Start the dispatcher with its host: gateway, reaper and (``warm``) warm pools.

    ``reattach`` makes its runs adoptable by the next process and adopts the runs of dead
    ones; ``wait_for_runs``: see :meth:`Host.close`. The defaults are a CLI's: Docker, the
    state store of ``AD_SANDBOX_STATE_DIR``, no warm pools, runs waited for. ``agent_mcp``
    (from a face) serves nested dispatch on the gateway's ``/mcp``; without it agents with
    ``dispatch_to`` are refused.
    """
    if runtime is None:
        runtime = docker_runtime()
    if gateway_host is None:
        gateway_host = gateway_host_from_env()
    owned_state = state is None
    store = StateStore() if state is None else state
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            runs: TaskGroup = await tg.start(_shielded_task_group)
            host = Host(snapshot=ConfigSnapshot(), state=store, runtime=runtime, tasks=runs,
                        warm=warm, adoptable=reattach, gateway_host=gateway_host,
                        image_id=image_id)
            dispatcher = Dispatcher(host)
            if agent_mcp is not None:
                host.agent_mcp = _agent_routes(agent_mcp, host, dispatcher)
            try:
                await dispatcher.start()
                yield dispatcher
            except Exception as exc:  # re-raised below, not wrapped in the group's exception
                failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await host.close(wait_for_runs=wait_for_runs)
                runs.cancel_scope.cancel()
                tg.cancel_scope.cancel()
    finally:
        if owned_state:
            store.close()
    if failure is not None:
        raise failure


def _agent_routes(factory: AgentMcpFactory, host: Host, dispatcher: Dispatcher) -> ExtraRoutes:
    loop = asyncio.get_running_loop()  # the gateway's thread hands each call back to it
    return lambda tokens: factory(
        AgentCalls(tokens, lambda: host.config, dispatcher, host.state, loop))


async def _shielded_task_group(*, task_status: TaskStatus[TaskGroup]) -> None:
    """A task group for runs that whatever cancels the dispatcher's caller cannot reach:
    only :meth:`Host.close` decides, after it has waited for or abandoned them."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as runs:
            task_status.started(runs)
            await anyio.sleep_forever()
