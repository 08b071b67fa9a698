"""Building the MCP server: the service opened in the lifespan, the tools registered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from mcp.server.mcpserver import MCPServer

from orchestrator import __version__
from orchestrator.dispatch import DispatchService, open_service
from orchestrator.server.agentmcp import agent_mcp_routes
from orchestrator.server.results import MANAGEMENT_TOOLS, AppState, ServiceFactory
from orchestrator.server.tools import TOOLS

logger = logging.getLogger(__name__)

# --- server ------------------------------------------------------------------------


def default_service_factory(*, wait_for_runs: bool = True,
                            ) -> AbstractAsyncContextManager[DispatchService]:
    """The production service: Docker, warm pools, runs adoptable by the next process."""
    return open_service(wait_for_runs=wait_for_runs, agent_mcp=agent_mcp_routes)


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


