"""The MCP tools (SPEC §7): thin async adapters over the DispatchService."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

from mcp.types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, Field

from orchestrator.config import Mount, PermissionMode
from orchestrator.dispatch import (
    AgentArgs,
    AgentDetail,
    AgentInfo,
    AgentList,
    AgentRemoved,
    Count,
    DialogueResult,
    DispatchArgs,
    FetchedResult,
    GroupDetail,
    GroupList,
    JobList,
    JobStarted,
    JobStatus,
    ParallelResult,
    SandboxStatus,
)
from orchestrator.models import RunStatus
from orchestrator.results import DispatchResult
from orchestrator.server.results import (
    Ctx,
    _answer,
    _long,
    _parallel_failed,
    _run_failed,
    _service,
    refused_run,
)

logger = logging.getLogger(__name__)

# --- tools -------------------------------------------------------------------------

Agent = Annotated[str, Field(description="Agent name (see list_agents).")]
Task = Annotated[str, Field(description="What the agent should do (plain text, never a flag).")]
ContextArg = Annotated[str, Field(description="Background the agent needs (files, findings).")]
Caller = Annotated[str, Field(description="Who is dispatching, shown to the agent.")]
Goal = Annotated[str, Field(description="The larger goal this task serves.")]
Format = Annotated[
    Literal["text", "json"], Field(description="json: the answer is parsed into parsed_result.")
]
Timeout = Annotated[
    float | None, Field(gt=0, description="Kill the run after this many seconds.")
]
Group = Annotated[str | None, Field(description="Group whose shared context joins the prompt.")]


async def dispatch(
    agent: Agent,
    task: Task,
    ctx: Ctx,
    context: ContextArg = "",
    caller: Caller = "",
    goal: Goal = "",
    response_format: Format = "text",
    return_ref: Annotated[bool, Field(description="Store the full result; return a ref.")] = False,
    summary_chars: Annotated[int, Field(ge=0, description="With return_ref: inline chars.")] = 0,
    timeout_seconds: Timeout = None,
    group: Group = None,
) -> Annotated[CallToolResult, DispatchResult]:
    """Hand a task to an agent; it runs as `claude -p` in its own container. Returns its result."""
    req = DispatchArgs(
        agent=agent, task=task, context=context, caller=caller, goal=goal,
        response_format=response_format, timeout_seconds=timeout_seconds, group=group,
    ).to_request()
    service = _service(ctx)
    return await _long(
        ctx,
        lambda p: service.dispatch(
            req, progress=p, return_ref=return_ref, summary_chars=summary_chars
        ),
        _run_failed,
        partial(refused_run, agent),
    )


async def dispatch_stream(
    agent: Agent,
    task: Task,
    ctx: Ctx,
    context: ContextArg = "",
    caller: Caller = "",
    goal: Goal = "",
    response_format: Format = "text",
    return_ref: bool = False,
    summary_chars: Annotated[int, Field(ge=0)] = 0,
    timeout_seconds: Timeout = None,
    group: Group = None,
) -> Annotated[CallToolResult, DispatchResult]:
    """Like dispatch, for clients that show progress: the last tool call, tokens and cost stream
    as progress notifications while the agent works."""
    return await dispatch(
        agent, task, ctx, context, caller, goal, response_format,
        return_ref, summary_chars, timeout_seconds, group,
    )


async def dispatch_session(
    agent: Agent,
    task: Task,
    session_id: Annotated[str, Field(min_length=1, description="session_id of an earlier run.")],
    ctx: Ctx,
    context: ContextArg = "",
    caller: Caller = "",
    goal: Goal = "",
    response_format: Format = "text",
    timeout_seconds: Timeout = None,
) -> Annotated[CallToolResult, DispatchResult]:
    """Continue an earlier run's conversation (e.g. one that timed out) with a follow-up task."""
    req = DispatchArgs(
        agent=agent, task=task, context=context, caller=caller, goal=goal,
        response_format=response_format, timeout_seconds=timeout_seconds,
    ).to_request().model_copy(update={"session_id": session_id})
    service = _service(ctx)
    return await _long(
        ctx, lambda p: service.dispatch(req, progress=p), _run_failed, partial(refused_run, agent)
    )


async def dispatch_parallel(
    dispatches: Annotated[
        list[DispatchArgs], Field(min_length=1, description="Each: agent, task, options.")
    ],
    ctx: Ctx,
    aggregate: Annotated[
        str | None, Field(description="Agent that merges all results into one answer.")
    ] = None,
) -> Annotated[CallToolResult, ParallelResult]:
    """Run several dispatches at once; all are validated before any runs; results in input order."""
    reqs = [d.to_request() for d in dispatches]
    service = _service(ctx)
    return await _long(
        ctx, lambda p: service.dispatch_parallel(reqs, aggregate=aggregate, progress=p),
        _parallel_failed,
    )


async def dispatch_dialogue(
    requester: Annotated[str, Field(description="Agent that opens and asks.")],
    responder: Annotated[str, Field(description="Agent that answers.")],
    topic: Annotated[str, Field(description="What they should settle.")],
    ctx: Ctx,
    max_rounds: Annotated[int, Field(ge=1, le=10)] = 5,
    caller: Caller = "",
) -> Annotated[CallToolResult, DialogueResult]:
    """Let two agents talk in turns until one ends a message with [RESOLVED] or rounds run out."""
    service = _service(ctx)
    return await _long(
        ctx,
        lambda p: service.dialogue(
            requester, responder, topic, max_rounds=max_rounds, caller=caller, progress=p
        ),
        lambda _: False,
    )


async def dispatch_async(
    agent: Agent,
    task: Task,
    ctx: Ctx,
    context: ContextArg = "",
    caller: Caller = "",
    goal: Goal = "",
    response_format: Format = "text",
    timeout_seconds: Timeout = None,
    group: Group = None,
) -> Annotated[CallToolResult, JobStarted]:
    """Start a dispatch in the background and return its job_id at once (see dispatch_wait)."""
    req = DispatchArgs(
        agent=agent, task=task, context=context, caller=caller, goal=goal,
        response_format=response_format, timeout_seconds=timeout_seconds, group=group,
    ).to_request()

    async def start() -> JobStarted:
        return JobStarted(job_id=await _service(ctx).start_async(req), agent=req.agent)

    return await _answer(start())


JobId = Annotated[str, Field(min_length=1, description="job_id from dispatch_async.")]


async def dispatch_status(job_id: JobId, ctx: Ctx) -> Annotated[CallToolResult, JobStatus]:
    """The job's state, last action and, once finished, its result."""
    return await _answer(_service(ctx).status(job_id))


async def dispatch_wait(
    job_id: JobId,
    ctx: Ctx,
    timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 60,
) -> Annotated[CallToolResult, JobStatus]:
    """Wait until the job finishes or timeout_seconds pass; returns its status either way."""
    return await _answer(_service(ctx).wait(job_id, timeout_seconds))


async def dispatch_cancel(job_id: JobId, ctx: Ctx) -> Annotated[CallToolResult, JobStatus]:
    """Cancel a job: its container is killed."""
    return await _answer(_service(ctx).cancel(job_id))


async def dispatch_jobs(
    ctx: Ctx,
    status: RunStatus | None = None,
    limit: Annotated[int, Field(ge=1, le=1000)] = 20,
    agent: str | None = None,
) -> Annotated[CallToolResult, JobList]:
    """Recent jobs, newest first."""

    async def jobs() -> JobList:
        return JobList(jobs=await _service(ctx).jobs(status=status, limit=limit, agent=agent))

    return await _answer(jobs())


async def fetch_result(
    ref: Annotated[str, Field(min_length=1, description="ref from a dispatch with return_ref.")],
    ctx: Ctx,
    max_chars: Annotated[int | None, Field(ge=1)] = None,
) -> Annotated[CallToolResult, FetchedResult]:
    """Read a result stored by reference."""

    async def fetch() -> FetchedResult:
        return FetchedResult(ref=ref, text=await _service(ctx).fetch_result(ref, max_chars))

    return await _answer(fetch())


async def dispatch_gc(ctx: Ctx) -> Annotated[CallToolResult, Count]:
    """Remove old finished run records and stored results."""

    async def gc() -> Count:
        return Count(removed=await _service(ctx).gc())

    return await _answer(gc())


async def list_agents(ctx: Ctx) -> Annotated[CallToolResult, AgentList]:
    """The registered agents, with what each is for and whether it is ready."""

    async def agents() -> AgentList:
        return AgentList(agents=await _service(ctx).list_agents())

    return await _answer(agents())


async def inspect_agent(
    name: Agent, ctx: Ctx, preview_lines: Annotated[int, Field(ge=0, le=500)] = 20
) -> Annotated[CallToolResult, AgentDetail]:
    """One agent in depth: CLAUDE.md/README preview, stacks, typical duration and cost."""
    return await _answer(_service(ctx).inspect_agent(name, preview_lines))


async def list_groups(ctx: Ctx) -> Annotated[CallToolResult, GroupList]:
    """The agent groups."""

    async def groups() -> GroupList:
        return GroupList(groups=await _service(ctx).list_groups())

    return await _answer(groups())


async def inspect_group(
    name: Annotated[str, Field(description="Group name.")], ctx: Ctx
) -> Annotated[CallToolResult, GroupDetail]:
    """A group's shared context and members, with what each member is used for."""
    return await _answer(_service(ctx).inspect_group(name))


async def add_agent(
    name: Annotated[str, Field(description="New agent name.")],
    directory: Annotated[str, Field(description="The agent's project directory.")],
    ctx: Ctx,
    description: str = "",
    model: str | None = None,
    timeout: Annotated[float | None, Field(gt=0)] = None,
    max_budget_usd: Annotated[float | None, Field(ge=0)] = None,
    permission_mode: PermissionMode | None = None,
    allowed_tools: list[str] | None = None,
    disallowed_tools: list[str] | None = None,
    instructions: str | None = None,
    mount: Mount | None = None,
) -> Annotated[CallToolResult, AgentInfo]:
    """Register an agent (its directory must lie under settings.allowed_roots when set)."""
    args = AgentArgs(
        directory=directory, description=description, model=model, timeout=timeout,
        max_budget_usd=max_budget_usd, permission_mode=permission_mode,
        allowed_tools=allowed_tools, disallowed_tools=disallowed_tools,
        instructions=instructions, mount=mount,
    )
    return await _answer(_service(ctx).add_agent(name, args))


async def update_agent(
    name: Agent,
    ctx: Ctx,
    directory: str | None = None,
    description: str | None = None,
    model: str | None = None,
    timeout: Annotated[float | None, Field(gt=0)] = None,
    max_budget_usd: Annotated[float | None, Field(ge=0)] = None,
    permission_mode: PermissionMode | None = None,
    allowed_tools: list[str] | None = None,
    disallowed_tools: list[str] | None = None,
    instructions: str | None = None,
    mount: Mount | None = None,
) -> Annotated[CallToolResult, AgentInfo]:
    """Change an agent's settings; omitted fields stay as they are."""
    args = AgentArgs(
        directory=directory, description=description, model=model, timeout=timeout,
        max_budget_usd=max_budget_usd, permission_mode=permission_mode,
        allowed_tools=allowed_tools, disallowed_tools=disallowed_tools,
        instructions=instructions, mount=mount,
    )
    return await _answer(_service(ctx).update_agent(name, args))


async def remove_agent(name: Agent, ctx: Ctx) -> Annotated[CallToolResult, AgentRemoved]:
    """Unregister an agent (its project directory is left alone)."""

    async def remove() -> AgentRemoved:
        await _service(ctx).remove_agent(name)
        return AgentRemoved(name=name)

    return await _answer(remove())


class CacheStats(BaseModel):
    stats: dict[str, Any]


async def cache_stats(ctx: Ctx) -> Annotated[CallToolResult, CacheStats]:
    """Result cache entries, hits and misses."""

    async def stats() -> CacheStats:
        return CacheStats(stats=await _service(ctx).cache_stats())

    return await _answer(stats())


async def cache_clear(ctx: Ctx) -> Annotated[CallToolResult, Count]:
    """Drop every cached result."""

    async def clear() -> Count:
        return Count(removed=await _service(ctx).cache_clear())

    return await _answer(clear())


async def sandbox_status(ctx: Ctx) -> Annotated[CallToolResult, SandboxStatus]:
    """Warm pool per agent, running containers, and budget left per run, per root and today."""
    return await _answer(_service(ctx).sandbox_status())


def _hints(*, read_only: bool, destructive: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=None if read_only else destructive,
        idempotent_hint=True if read_only else None,
        open_world_hint=False,
    )


_READ = _hints(read_only=True)
# A run may rewrite files in the agent's (rw-mounted) project: say so.
_RUN = _hints(read_only=False, destructive=True)
TOOLS: dict[str, tuple[Callable[..., Any], ToolAnnotations]] = {
    "dispatch": (dispatch, _RUN),
    "dispatch_session": (dispatch_session, _RUN),
    "dispatch_parallel": (dispatch_parallel, _RUN),
    "dispatch_stream": (dispatch_stream, _RUN),
    "dispatch_dialogue": (dispatch_dialogue, _RUN),
    "dispatch_async": (dispatch_async, _RUN),
    "dispatch_status": (dispatch_status, _READ),
    "dispatch_wait": (dispatch_wait, _READ),
    "dispatch_cancel": (dispatch_cancel, _hints(read_only=False, destructive=True)),
    "dispatch_jobs": (dispatch_jobs, _READ),
    "fetch_result": (fetch_result, _READ),
    "dispatch_gc": (dispatch_gc, _hints(read_only=False, destructive=True)),
    "list_agents": (list_agents, _READ),
    "inspect_agent": (inspect_agent, _READ),
    "list_groups": (list_groups, _READ),
    "inspect_group": (inspect_group, _READ),
    "cache_stats": (cache_stats, _READ),
    "cache_clear": (cache_clear, _hints(read_only=False, destructive=True)),
    "sandbox_status": (sandbox_status, _READ),
    "add_agent": (add_agent, _hints(read_only=False, destructive=False)),
    "update_agent": (update_agent, _hints(read_only=False, destructive=True)),
    "remove_agent": (remove_agent, _hints(read_only=False, destructive=True)),
}


