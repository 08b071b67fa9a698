"""The agents' MCP server on the gateway's ``/mcp`` (SPEC §5): nested dispatch.

An agent with ``dispatch_to`` gets it in its container as the ``ad-sandbox`` server. Every
request must carry its run token (``Authorization: Bearer <token>``); who calls, its root,
depth and budget come from that token (:class:`orchestrator.dispatch.AgentCalls`), never
from the arguments.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult
from pydantic import Field
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator import __version__
from orchestrator.dispatch import AgentCalls, AgentList, DispatchArgs, Lifespan, ParallelResult
from orchestrator.errors import UsageError
from orchestrator.results import DispatchResult
from orchestrator.server.results import _answer, _parallel_failed, _run_failed, refused_run
from orchestrator.server.tools import Agent, ContextArg, Format, Goal, Task, Timeout

logger = logging.getLogger(__name__)

AgentCtx = Context[AgentCalls, Any]
BEARER = "bearer "


def _calls(ctx: AgentCtx) -> AgentCalls:
    return ctx.request_context.lifespan_context


def _token(ctx: AgentCtx) -> str:
    request = ctx.request_context.request
    header = request.headers.get("authorization", "") if request is not None else ""
    if not header.lower().startswith(BEARER):
        raise UsageError("no run token on this request")
    return str(header[len(BEARER):]).strip()


async def dispatch(
    agent: Agent, task: Task, ctx: AgentCtx, context: ContextArg = "", goal: Goal = "",
    response_format: Format = "text", timeout_seconds: Timeout = None,
) -> Annotated[CallToolResult, DispatchResult]:
    """Hand a task to one of the agents you may dispatch to (list_agents); it runs in its own
    container and this call returns its result."""

    async def run() -> DispatchResult:
        args = DispatchArgs(agent=agent, task=task, context=context, goal=goal,
                            response_format=response_format, timeout_seconds=timeout_seconds)
        return await _calls(ctx).dispatch(_token(ctx), args)

    return await _answer(run(), _run_failed, lambda exc: refused_run(agent, exc))


async def dispatch_session(
    agent: Agent, task: Task,
    session_id: Annotated[str, Field(min_length=1, description="session_id of an earlier run.")],
    ctx: AgentCtx, context: ContextArg = "", goal: Goal = "", response_format: Format = "text",
    timeout_seconds: Timeout = None,
) -> Annotated[CallToolResult, DispatchResult]:
    """Continue a run you dispatched earlier (its session_id) with a follow-up task."""

    async def run() -> DispatchResult:
        args = DispatchArgs(agent=agent, task=task, context=context, goal=goal,
                            response_format=response_format, timeout_seconds=timeout_seconds)
        return await _calls(ctx).dispatch(_token(ctx), args, session_id=session_id)

    return await _answer(run(), _run_failed, lambda exc: refused_run(agent, exc))


async def dispatch_parallel(
    dispatches: Annotated[
        list[DispatchArgs], Field(min_length=1, description="Each: agent, task, options.")
    ],
    ctx: AgentCtx,
    aggregate: Annotated[
        str | None, Field(description="Agent that merges all results into one answer.")
    ] = None,
) -> Annotated[CallToolResult, ParallelResult]:
    """Run several dispatches at once; all are checked before any runs; results in order."""

    async def run() -> ParallelResult:
        return await _calls(ctx).dispatch_parallel(_token(ctx), dispatches, aggregate)

    return await _answer(run(), _parallel_failed)


async def list_agents(ctx: AgentCtx) -> Annotated[CallToolResult, AgentList]:
    """The agents you may dispatch to, with what each is for."""

    async def agents() -> AgentList:
        return AgentList(agents=_calls(ctx).list_agents(_token(ctx)))

    return await _answer(agents())


class RunTokenAuth:
    """ASGI guard: only a live run token passes (401 otherwise)."""

    def __init__(self, app: ASGIApp, calls: AgentCalls) -> None:
        self.app = app
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = Headers(scope=scope).get("authorization", "")
        token = header[len(BEARER):].strip() if header.lower().startswith(BEARER) else ""
        if self.calls.caller(token) is None:
            response = JSONResponse(
                {"error": "unauthorized", "hint": "send Authorization: Bearer <run token>"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def agent_mcp_routes(calls: AgentCalls) -> tuple[Sequence[BaseRoute], Lifespan]:
    """The ``/mcp`` route for the gateway and the lifespan that runs its sessions."""

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer[AgentCalls]) -> AsyncIterator[AgentCalls]:
        yield calls

    server: MCPServer[AgentCalls] = MCPServer(
        "ad-sandbox", version=__version__, lifespan=lifespan,
        instructions="Delegate tasks to the agents you may dispatch to (list_agents).")
    for fn in (dispatch, dispatch_parallel, list_agents, dispatch_session):
        server.add_tool(fn, name=fn.__name__)
    # The run token is the guard; the Host header is the gateway's address on the network.
    app: Starlette = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    routes: list[BaseRoute] = []
    for route in app.routes:
        if isinstance(route, Route) and route.path == "/mcp":
            routes.append(Route("/mcp", endpoint=RunTokenAuth(route.app, calls),
                                methods=route.methods))
    if not routes:
        raise RuntimeError("the MCP SDK's streamable HTTP app has no /mcp route")
    manager_lifespan: Lifespan = app.router.lifespan_context  # type: ignore[assignment]
    return routes, manager_lifespan
