"""Building the MCP server: the service opened after the handshake, the tools registered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, InputRequiredResult
from mcp.types import Tool as MCPTool

from orchestrator import __version__
from orchestrator.dispatch import DispatchService, open_service
from orchestrator.errors import AdSandboxError
from orchestrator.server.agentmcp import agent_mcp_routes
from orchestrator.server.results import MANAGEMENT_TOOLS, AppState, ServiceFactory, error_result
from orchestrator.server.tools import TOOLS

logger = logging.getLogger(__name__)

# --- server ------------------------------------------------------------------------


def default_service_factory(*, wait_for_runs: bool = True,
                            ) -> AbstractAsyncContextManager[DispatchService]:
    """The production service: Docker, warm pools, runs adoptable by the next process."""
    return open_service(wait_for_runs=wait_for_runs, agent_mcp=agent_mcp_routes)


async def _sync_management_tools(server: MCPServer[AppState], enabled: bool) -> None:
    present = {tool.name for tool in await MCPServer.list_tools(server)}
    for name in MANAGEMENT_TOOLS:
        if enabled and name not in present:
            fn, hints = TOOLS[name]
            server.add_tool(fn, name=name, annotations=hints)
        elif not enabled and name in present:
            server.remove_tool(name)


class _Server(MCPServer[AppState]):
    """Lists and calls tools once the service that opens after the handshake is there."""

    state: AppState | None = None

    async def list_tools(self) -> list[MCPTool]:
        if self.state is not None:  # management tools appear once the service is open
            await self.state.wait_open()
        return await super().list_tools()

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[AppState, Any] | None = None,
                        ) -> CallToolResult | InputRequiredResult:
        if self.state is not None and (error := await self.state.wait_open()) is not None:
            return error_result(error)
        return await super().call_tool(name, arguments, context)


async def _hold_service(server: _Server, factory: ServiceFactory, state: AppState,
                        stop: anyio.Event) -> None:
    """Open the service, hand it to ``state`` and keep it open until ``stop``."""
    try:
        async with factory() as service:
            # add/update/remove_agent exist only when settings.agent_management_tools is on.
            await _sync_management_tools(server, service.management_tools_enabled())
            state.opened(service)
            await stop.wait()
    except Exception as exc:
        if state.is_open:
            raise
        # Each tool call answers with this error; the server goes on serving.
        logger.error("the dispatch service did not open: %s", exc, exc_info=True)
        state.failed(exc if isinstance(exc, AdSandboxError) else AdSandboxError(
            f"the dispatch service did not open: {type(exc).__name__}: {exc}",
            hint="The server's stderr log has the traceback."))


def create_server(service_factory: ServiceFactory | None = None) -> MCPServer[AppState]:
    """The ad-sandbox MCP server; the service is opened once per server run (lifespan),
    in the background: the handshake does not wait for Docker, tool calls do."""
    factory = service_factory or default_service_factory

    @asynccontextmanager
    async def lifespan(server: MCPServer[AppState]) -> AsyncIterator[AppState]:
        assert isinstance(server, _Server)
        state = server.state = AppState()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_hold_service, server, factory, state, stop)
            try:
                yield state
            finally:
                stop.set()  # the service closes as it did in the lifespan: runs waited for

    server = _Server(
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
