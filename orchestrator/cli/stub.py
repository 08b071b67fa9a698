"""``ad-sandbox stub-api``: run the stub model in the foreground (SPEC §5, §8)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.app import app, handles_errors
from orchestrator.stub.server import serve_forever


@app.command("stub-api")
@handles_errors
def stub_api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 0,
) -> None:
    """Serve the deterministic stub model (Anthropic Messages API) until Ctrl-C."""
    serve_forever(host, port, lambda url: typer.echo(f"stub model listening on {url}", err=True))
