"""Serving over stdio or streamable HTTP, with the bearer-token and bind guards."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from functools import partial
from typing import Literal

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.errors import UsageError
from orchestrator.server.results import AppState

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)

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
