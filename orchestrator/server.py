"""The MCP server (SPEC §7): thin tools over a DispatchService built in the lifespan.

The only module that imports ``mcp``. Every tool reads the service from the typed
lifespan context, turns progress updates into MCP progress notifications, and turns
:class:`AdSandboxError` and failed runs into ``isError`` results that keep their
structured fields. Logging goes to stderr: on stdio, stdout is the protocol.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal, TypeVar, cast

import anyio
import pydantic_core
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator import __version__
from orchestrator.config import Mount, PermissionMode
from orchestrator.errors import AdSandboxError, UsageError
from orchestrator.models import ErrorType, RunStatus
from orchestrator.results import DispatchResult, ProgressFn, ProgressUpdate
from orchestrator.service import (
    AgentArgs,
    AgentDetail,
    AgentInfo,
    AgentList,
    AgentRemoved,
    Count,
    DialogueResult,
    DispatchArgs,
    DispatchService,
    FetchedResult,
    GroupDetail,
    GroupList,
    JobList,
    JobStarted,
    JobStatus,
    ParallelResult,
    SandboxStatus,
)

logger = logging.getLogger(__name__)

ServiceFactory = Callable[[], AbstractAsyncContextManager[DispatchService]]
M = TypeVar("M", bound=BaseModel)
CANCEL_GRACE_S = 10.0
"""How long a cancelled tool may spend telling the service to kill its runs."""
MANAGEMENT_TOOLS = ("add_agent", "update_agent", "remove_agent")
LOOPBACK_NAMES = ("localhost",)


@dataclass
class AppState:
    """What the lifespan yields: the one service every tool call uses."""

    service: DispatchService


Ctx = Context[AppState, Any]


def _service(ctx: Ctx) -> DispatchService:
    return ctx.request_context.lifespan_context.service


# --- results -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return pydantic_core.to_jsonable_python(value, fallback=str)


def ok_result(model: BaseModel, *, is_error: bool = False) -> CallToolResult:
    """The model as structured content, and as JSON text for clients that read only text."""
    data = model.model_dump(mode="json")
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=data, is_error=is_error
    )


def error_result(exc: AdSandboxError) -> CallToolResult:
    """An ``isError`` result the calling model can act on: message, error_type, hint.

    Text only: strict clients check structured content against the tool's outputSchema
    even on errors, and an error has the shape of no tool's output.
    """
    data: dict[str, Any] = {
        "success": False,
        "error": exc.message,
        "error_type": exc.error_type,
        "hint": exc.hint,
    }
    if exc.data:
        data["details"] = _jsonable(exc.data)
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))],
        is_error=True,
    )


def refused_run(agent: str, exc: AdSandboxError) -> DispatchResult:
    """A refused dispatch as a failed run, so it keeps dispatch's outputSchema."""
    return DispatchResult(
        agent=agent,
        success=False,
        error=exc.message,
        error_type=cast(ErrorType, exc.error_type),
        hint=exc.hint,
        budget_exceeded=exc.error_type == "budget",
    )


def _crash(exc: Exception) -> AdSandboxError:
    # A bug, not bad input: keep serving, tell the caller where the traceback is.
    logger.exception("tool call crashed")
    return AdSandboxError(
        f"internal error: {type(exc).__name__}: {exc}",
        hint="This is an ad-sandbox bug; the server's stderr log has the traceback.",
    )


async def _answer(
    work: Awaitable[M],
    failed: Callable[[M], bool] = lambda _: False,
    as_result: Callable[[AdSandboxError], BaseModel] | None = None,
) -> CallToolResult:
    """Await the service; its refusals and crashes become ``isError`` results."""
    try:
        model = await work
    except Exception as exc:
        error = exc if isinstance(exc, AdSandboxError) else _crash(exc)
        logger.info("tool call refused: %s (%s)", error.message, error.error_type)
        if as_result is not None:
            return ok_result(as_result(error), is_error=True)
        return error_result(error)
    return ok_result(model, is_error=failed(model))


@dataclass
class _Progress:
    """Forwards ProgressUpdates as MCP progress and remembers which runs are live."""

    ctx: Ctx
    count: int = 0
    live: set[str] = field(default_factory=set)

    async def __call__(self, update: ProgressUpdate) -> None:
        if update.state == "finished":
            self.live.discard(update.run_id)
        else:
            self.live.add(update.run_id)
        self.count += 1
        try:
            await self.ctx.report_progress(self.count, None, update.message())
        except Exception:
            # The client went away; the run goes on and its record survives.
            logger.debug("progress not delivered", exc_info=True)


async def _long(
    ctx: Ctx,
    call: Callable[[ProgressFn], Awaitable[M]],
    failed: Callable[[M], bool],
    as_result: Callable[[AdSandboxError], BaseModel] | None = None,
) -> CallToolResult:
    """Run a long tool with progress; on MCP cancellation make sure its runs are killed."""
    progress = _Progress(ctx)
    try:
        return await _answer(call(progress), failed, as_result)
    except anyio.get_cancelled_exc_class():
        if not _cancel_requested(ctx):
            # Not the client's cancel but its going away (or shutdown): the runs go on in the
            # service and stay readable through dispatch_status / fetch_result and the CLI.
            logger.info("caller gone; runs %s continue", sorted(progress.live))
            raise
        with anyio.move_on_after(CANCEL_GRACE_S, shield=True):
            for run_id in sorted(progress.live):
                try:
                    await _service(ctx).cancel(run_id)
                except Exception as exc:  # already gone is fine; the cancel must still propagate
                    logger.debug("cancel %s after MCP cancellation: %s", run_id, exc)
        raise


def _cancel_requested(ctx: Ctx) -> bool:
    """Whether the client sent ``notifications/cancelled`` for this request.

    The SDK sets an event on the request's dispatch context before it cancels the handler;
    the tool Context does not expose it, the per-request session holds it. When it cannot be
    read, a cancellation counts as the client's (killing the runs is the safe side). The
    e2e tests pin both behaviours: a cancel kills, a disconnect does not.
    """
    try:
        dispatch_context = ctx.request_context.session._request_outbound
        event = dispatch_context.cancel_requested
    except (AttributeError, ValueError):
        return True
    return bool(event.is_set())


def _run_failed(result: DispatchResult) -> bool:
    return not result.success


def _parallel_failed(result: ParallelResult) -> bool:
    # Partial failures are still a useful answer; each entry carries its own success.
    if result.aggregate is not None and not result.aggregate.success:
        return True
    return not any(r.success for r in result.results)


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


# --- server ------------------------------------------------------------------------


def default_service_factory() -> AbstractAsyncContextManager[DispatchService]:
    """The production dispatcher, imported late so ``--help`` stays fast."""
    module = importlib.import_module("orchestrator.dispatch")
    return cast(AbstractAsyncContextManager[DispatchService], module.open_service())


async def _sync_management_tools(server: MCPServer[AppState], enabled: bool) -> None:
    present = {tool.name for tool in await server.list_tools()}
    for name in MANAGEMENT_TOOLS:
        if enabled and name not in present:
            fn, hints = TOOLS[name]
            server.add_tool(fn, name=name, annotations=hints)
        elif not enabled and name in present:
            server.remove_tool(name)


def create_server(service_factory: ServiceFactory | None = None) -> MCPServer[AppState]:
    """The ad-sandbox MCP server; the service is opened once per server run (lifespan)."""
    factory = service_factory or default_service_factory

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with factory() as service:
            # add/update/remove_agent exist only when settings.agent_management_tools is on.
            await _sync_management_tools(server, service.management_tools_enabled())
            yield AppState(service=service)

    server = MCPServer(
        "ad-sandbox",
        version=__version__,
        instructions=(
            "Hand tasks to specialised Claude Code agents, each running sandboxed in its own "
            "Docker container. Start with list_agents, then dispatch."
        ),
        lifespan=lifespan,
    )
    for name, (fn, hints) in TOOLS.items():
        if name not in MANAGEMENT_TOOLS:
            server.add_tool(fn, name=name, annotations=hints)
    return server


# --- transports --------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the server beyond loopback without a bearer token."""
    if not token and not is_loopback(host):
        raise UsageError(
            f"refusing to serve MCP on {host} without a bearer token",
            hint="Set a long random secret in AD_SANDBOX_MCP_TOKEN (or the variable named by "
            "--token-env), or bind --host 127.0.0.1.",
            host=host,
        )


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                response = JSONResponse(
                    {"error": "unauthorized", "hint": "send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _security(host: str, allowed_hosts: Sequence[str]) -> TransportSecuritySettings:
    if allowed_hosts:
        hosts = list(allowed_hosts)
    elif is_loopback(host):
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", f"{host}:*"]
    else:
        # Bound beyond loopback with no host list: the bearer token is the guard.
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def http_app(
    server: MCPServer[AppState], *, host: str, token: str | None, allowed_hosts: Sequence[str] = ()
) -> ASGIApp:
    """Streamable HTTP at ``/mcp``, behind DNS-rebinding checks and the bearer token."""
    app: ASGIApp = server.streamable_http_app(
        host=host, transport_security=_security(host, allowed_hosts)
    )
    return BearerAuth(app, token) if token else app


async def serve_http(
    server: MCPServer[AppState],
    *,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    import uvicorn  # only the HTTP transport needs it

    check_bind(host, token)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="Pick another --port (0 picks a free one) or stop what holds it.",
        ) from exc
    # Listening before the ready line, so a client that reads it can connect at once.
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"ad-sandbox MCP listening on http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        http_app(server, host=host, token=token, allowed_hosts=allowed_hosts),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    await uvicorn.Server(config).serve(sockets=[sock])


def run(
    server: MCPServer[AppState],
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve until the client (stdio) or a signal (http) ends it."""
    if transport == "stdio":
        server.run("stdio")
        return
    check_bind(host, token)
    anyio.run(
        partial(
            serve_http, server, host=host, port=port, token=token, allowed_hosts=allowed_hosts
        )
    )
