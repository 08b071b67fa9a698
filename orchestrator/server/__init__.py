"""The MCP server (SPEC §7): the only package importing ``mcp``.

Thin tools over a DispatchService built in the server's lifespan (``app``), their answers
(``results``), the tools themselves (``tools``) and the transports (``transports``).
"""

from orchestrator.server.app import create_server, default_service_factory
from orchestrator.server.results import error_result, ok_result, refused_run
from orchestrator.server.transports import BearerAuth, check_bind, http_app, run, serve_http

__all__ = [
    "BearerAuth", "check_bind", "create_server", "default_service_factory", "error_result",
    "http_app", "ok_result", "refused_run", "run", "serve_http",
]
