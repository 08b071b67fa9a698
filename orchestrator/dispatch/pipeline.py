"""Pipelines (``ad-sandbox run --file``): a task list run in parallel through the Service.

Every task is checked before any runs (a bad one is a usage error naming its line and nothing
starts). Then up to ``settings.max_concurrency`` run at once, each reported as events while it
runs: ``run_started``, ``progress`` (queued / starting / running), ``tool_call``, ``usage``
and ``finished``, then one ``summary``. A task's events come in that order; tasks
interleave. An invocation budget (``--budget``) stops tasks from starting once the money
spent reaches it, and caps each one it starts at what is left (``RunRequest.max_budget_usd``,
which the gateway enforces). All of an invocation's tasks share one root whose budget is
``--budget`` (``RunRequest.root_budget_usd``): the gateway holds every request of every task
against it atomically, so tasks running at once cannot pass it between them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import anyio
from pydantic import BaseModel

from orchestrator import outcomes
from orchestrator.config import Config
from orchestrator.dispatch.taskfile import PipelineTask, TaskFile
from orchestrator.errors import AdSandboxError
from orchestrator.models import ErrorType, ExitReason, RunRequest
from orchestrator.results import DispatchResult, ProgressFn, ProgressUpdate

Event = dict[str, Any]
EventFn = Callable[[Event], None]
"""Called in the event loop for each event, in order; it must not block for long."""

CALLER = "cli-pipeline"


class Runs(Protocol):
    """What a pipeline needs of :class:`orchestrator.dispatch.Service`."""

    @property
    def config(self) -> Config: ...

    def check(self, request: RunRequest) -> object: ...

    async def run(self, req: RunRequest, *,
                  progress: ProgressFn | None = None) -> DispatchResult: ...


class TaskOutcome(BaseModel):
    """How one task of a pipeline ended: its run's result, judged against ``expect``."""

    index: int
    agent: str
    name: str
    task: str
    started: bool
    success: bool
    exit_reason: ExitReason | None = None
    error_type: ErrorType | None = None
    error: str | None = None
    hint: str | None = None
    answer: str = ""
    cost_usd: float = 0.0
    duration_ms: int = 0
    run_id: str = ""
    expect: str | None = None
    exit_code: int = 0

    def failure_message(self) -> str:
        """``exit_reason: hint`` (JUnit's failure message)."""
        return f"{self.exit_reason or 'not run'}: {self.hint or self.error or 'failed'}"


class PipelineResult(BaseModel):
    tasks: list[TaskOutcome]
    cost_usd: float
    budget_usd: float | None
    exit_code: int
    """The worst task's (SPEC §8): the highest of their exit codes."""


def judge(index: int, task: PipelineTask, result: DispatchResult) -> TaskOutcome:
    """The task's outcome: the run's, failed when it succeeded but misses ``expect``."""
    success, error_type = result.success, result.error_type
    error, hint = result.error, result.hint
    if success and task.expect is not None and not re.search(task.expect, result.result):
        success, error_type = False, "cli_error"
        error = f"the answer does not match expect {task.expect!r}"
        hint = f"{error}: read the answer, then fix the task or the pattern"
    return TaskOutcome(
        index=index, agent=task.agent, name=task.title(index), task=task.task, started=True,
        success=success, exit_reason=result.exit_reason, error_type=error_type, error=error,
        hint=hint, answer=result.result, cost_usd=result.cost_usd,
        duration_ms=result.duration_ms, run_id=result.run_id, expect=task.expect,
        exit_code=outcomes.exit_code(success, error_type, result.exit_reason))


def not_started(index: int, task: PipelineTask, budget: float, spent: float) -> TaskOutcome:
    error = f"not started: the invocation's budget ${budget:.2f} is spent (${spent:.4f})"
    return TaskOutcome(
        index=index, agent=task.agent, name=task.title(index), task=task.task, started=False,
        success=False, exit_reason="budget", error_type="budget", error=error,
        hint=f"{error}; raise --budget or run fewer tasks", expect=task.expect,
        exit_code=outcomes.exit_code(False, "budget", "budget"))


class Spending:
    """The invocation's money: finished runs' cost plus what runs in flight have spent."""

    def __init__(self, budget: float | None) -> None:
        self.budget = budget
        self.finished = 0.0
        self._live: dict[int, float] = {}

    @property
    def spent(self) -> float:
        return self.finished + sum(self._live.values())

    def start(self, index: int) -> float | None:
        """The cap of task ``index`` starting now (None: no budget); raises when spent."""
        if self.budget is None:
            return None
        left = self.budget - self.spent
        if left <= 0:
            raise _Spent(self.spent)
        self._live[index] = 0.0
        return left

    def running(self, index: int, cost: float) -> None:
        if index in self._live:
            self._live[index] = cost

    def done(self, index: int, cost: float) -> None:
        self._live.pop(index, None)
        self.finished += cost


class _Spent(Exception):
    def __init__(self, spent: float) -> None:
        super().__init__()
        self.spent = spent


class _Reporter:
    """Turns a run's progress updates into events, each only when its part changed."""

    def __init__(self, index: int, agent: str, emit: Callable[..., None],
                 spending: Spending) -> None:
        self.index, self.agent, self.emit, self.spending = index, agent, emit, spending
        self._state = ""
        self._action = ""
        self._usage = (0, 0, 0.0)

    async def __call__(self, update: ProgressUpdate) -> None:
        if update.state != self._state:
            self._state = update.state
            self.emit("progress", run_id=update.run_id, state=update.state,
                      queue_position=update.queue_position, elapsed_s=round(update.elapsed_s, 3))
        if update.last_action and update.last_action != self._action:
            self._action = update.last_action
            self.emit("tool_call", run_id=update.run_id, action=update.last_action)
        usage = (update.input_tokens, update.output_tokens, update.cost_usd)
        if usage != self._usage:
            self._usage = usage
            self.spending.running(self.index, update.cost_usd)
            self.emit("usage", run_id=update.run_id, input_tokens=update.input_tokens,
                      output_tokens=update.output_tokens, cost_usd=round(update.cost_usd, 6))


def check_all(service: Runs, taskfile: TaskFile) -> None:
    """Every task against the config before anything runs; the first bad one is raised,
    naming its line in the file."""
    for index, task in enumerate(taskfile.tasks):
        try:
            service.check(_request(task))
        except AdSandboxError as exc:
            raise type(exc)(f"{taskfile.where(index)}, agent {task.agent!r}: {exc.message}",
                            hint=f"Nothing was run. {exc.hint}") from exc


async def run_pipeline(service: Runs, taskfile: TaskFile, *, budget_usd: float | None = None,
                       on_event: EventFn | None = None) -> PipelineResult:
    """Run every task of ``taskfile`` (checked first, see :func:`check_all`); the outcomes
    in file order."""
    check_all(service, taskfile)
    tasks = taskfile.tasks
    spending = Spending(budget_usd)
    root = f"pipeline-{uuid.uuid4().hex[:16]}" if budget_usd is not None else None
    limiter = anyio.CapacityLimiter(service.config.settings.max_concurrency)
    results: list[TaskOutcome | None] = [None] * len(tasks)

    def emitter(index: int, agent: str) -> Callable[..., None]:
        def emit(event: str, **fields: Any) -> None:
            if on_event is not None:
                on_event({"event": event, "index": index, "agent": agent,
                          "time": round(time.time(), 3), **fields})
        return emit

    async def one(index: int, task: PipelineTask) -> None:
        emit = emitter(index, task.agent)
        async with limiter:
            try:
                cap = spending.start(index)
            except _Spent as spent:
                assert budget_usd is not None
                outcome = not_started(index, task, budget_usd, spent.spent)
            else:
                emit("run_started", task=task.task[:200], max_budget_usd=cap,
                     timeout=task.timeout, expect=task.expect)
                reporter = _Reporter(index, task.agent, emit, spending)
                result = await service.run(_request(task, cap, root, budget_usd),
                                           progress=reporter)
                spending.done(index, result.cost_usd)
                outcome = judge(index, task, result)
        results[index] = outcome
        emit("finished", run_id=outcome.run_id, started=outcome.started,
             success=outcome.success, exit_reason=outcome.exit_reason,
             error_type=outcome.error_type, error=outcome.error, hint=outcome.hint,
             cost_usd=round(outcome.cost_usd, 6), duration_ms=outcome.duration_ms,
             exit_code=outcome.exit_code)

    async with anyio.create_task_group() as tg:
        for index, task in enumerate(tasks):
            tg.start_soon(one, index, task)
    done = [r for r in results if r is not None]
    result = PipelineResult(
        tasks=done, cost_usd=round(sum(r.cost_usd for r in done), 6), budget_usd=budget_usd,
        exit_code=worst_exit_code(r.exit_code for r in done))
    if on_event is not None:
        on_event({"event": "summary", "time": round(time.time(), 3), "tasks": len(done),
                  "failed": sum(not r.success for r in done), "cost_usd": result.cost_usd,
                  "budget_usd": budget_usd, "exit_code": result.exit_code})
    return result


def worst_exit_code(codes: Iterable[int]) -> int:
    """The exit code of several tasks: the worst (highest, SPEC §8) of theirs; 0 for none."""
    return max(codes, default=outcomes.EXIT_OK)


def _request(task: PipelineTask, cap: float | None = None, root: str | None = None,
             budget_usd: float | None = None) -> RunRequest:
    """One task's request: its own cap is what was left when it started; all of the
    invocation's tasks share one root whose budget is ``--budget``, which the gateway
    enforces across them (so tasks started together cannot pass it between them)."""
    return RunRequest(agent=task.agent, task=task.task, timeout=task.timeout, caller=CALLER,
                      max_budget_usd=cap, root_run_id=root, root_budget_usd=budget_usd)


def describe_event(event: Event) -> str | None:
    """A one-line rendering of ``event`` for a terminal; None for events not shown."""
    kind = event["event"]
    head = f"[{event.get('index')}] {event.get('agent')}"
    if kind == "run_started":
        return f"{head}: started"
    if kind == "progress" and event["state"] == "queued":
        return f"{head}: queued (position {event.get('queue_position')})"
    if kind == "tool_call":
        return f"{head}: {str(event['action'])[:100]}"
    if kind == "finished":
        verdict = "ok" if event["success"] else f"FAILED ({event['exit_reason']})"
        return f"{head}: {verdict}, ${event['cost_usd']:.4f}, {event['duration_ms'] / 1000:.1f}s"
    if kind == "summary":
        return (f"{event['tasks']} task(s), {event['failed']} failed, "
                f"${event['cost_usd']:.4f}; exit {event['exit_code']}")
    return None
