"""``serve``: run the MCP server over stdio (for Claude Code) or streamable HTTP."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import typer

from orchestrator.cli.app import app, handles_errors
from orchestrator.errors import UsageError

DEFAULT_TOKEN_ENV = "AD_SANDBOX_MCP_TOKEN"


@app.command()
@handles_errors
def serve(
    transport: Annotated[
        Literal["stdio", "http"], typer.Option(help="stdio for Claude Code; http serves /mcp.")
    ] = "stdio",
    host: Annotated[str, typer.Option(help="HTTP bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port; 0 picks one.")] = 8765,
    token_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the bearer token HTTP clients must send."),
    ] = DEFAULT_TOKEN_ENV,
    token_file: Annotated[
        Path | None,
        typer.Option(envvar="AD_SANDBOX_MCP_TOKEN_FILE",
                     help="File holding the bearer token (a compose secret); wins over "
                     "--token-env."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Host header to accept (repeatable), e.g. orchestrator:8765."),
    ] = None,
) -> None:
    """Serve the ad-sandbox MCP tools (stdout is the protocol on stdio; logs go to stderr)."""
    # Imported here so the rest of the CLI does not pay for importing mcp.
    from orchestrator import server

    token = os.environ.get(token_env) or None
    if token_file is not None:
        token = _read_token(token_file)
    if transport == "http":
        server.check_bind(host, token)  # refuse before opening anything
    # A stdio server ends when its client leaves: it finishes the runs in flight first. An
    # HTTP server ends when it is told to stop: it leaves them running for the next one.
    factory = partial(server.default_service_factory, wait_for_runs=transport == "stdio")
    server.run(
        server.create_server(factory),
        transport=transport,
        host=host,
        port=port,
        token=token,
        allowed_hosts=allowed_host or (),
    )


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror}",
                         hint="Check the compose secret or the --token-file path.") from exc
    if not token:
        raise UsageError(f"the token file {path} is empty",
                         hint="Put a long random secret in it (`openssl rand -hex 32`).")
    return token
