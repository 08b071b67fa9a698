"""`ad-sandbox demo`: the whole path, end to end, offline by default."""

from __future__ import annotations

import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.demo import run_demo
from orchestrator.runtime.images import ensure_images


@app.command("demo")
@handles_errors
def demo() -> None:
    """Build the images if missing, provision two sample agents, run a task on each."""
    built = ensure_images(progress=lambda line: typer.echo(f"  {line}", err=True))
    out(f"images: {'built ' + ', '.join(built) if built else 'present'}")
    results = run_demo(out)
    failed = [r for r in results if not r.success]
    out(f"\n{len(results) - len(failed)} of {len(results)} demo runs succeeded")
    raise typer.Exit(1 if failed else 0)
