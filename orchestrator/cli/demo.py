"""`ad-sandbox demo`: the whole path, end to end, offline by default."""

from __future__ import annotations

import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.cli.demorun import run_demo
from orchestrator.dispatch import ensure_images


@app.command("demo")
@handles_errors
def demo() -> None:
    """Build the images if missing, provision two sample agents, run tasks on them directly
    and through the MCP server."""
    built = ensure_images(lambda line: typer.echo(f"  {line}", err=True))
    out(f"images: {'built ' + ', '.join(built) if built else 'present'}")
    raise typer.Exit(0 if run_demo(out) else 1)
