"""``ad-sandbox image build`` and ``ad-sandbox image ls``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

import orchestrator
from orchestrator.cli.app import handles_errors, image_app, out
from orchestrator.dispatch import (
    agent_ref,
    build_engine,
    build_images,
    build_orchestrator,
    image_status,
    list_images,
)


def _progress(line: str) -> None:
    # Build output goes to stderr so stdout carries only the summary.
    typer.echo(f"  {line}", err=True)


@image_app.command("build")
@handles_errors
def build(
    offline_base: Annotated[
        bool,
        typer.Option(
            "--offline-base",
            help="Build the Debian base from packages with mmdebstrap (no registry needed).",
        ),
    ] = False,
    claude_version: Annotated[
        str, typer.Option("--claude-version", help="The claude CLI version to bake in.")
    ] = orchestrator.CLAUDE_VERSION,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even when the inputs did not change.")
    ] = False,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when the agent image exists.")
    ] = False,
    with_orchestrator: Annotated[
        bool,
        typer.Option("--orchestrator",
                     help="Also build ad-sandbox/orchestrator (compose/compose.yaml runs it)."),
    ] = False,
    with_engine: Annotated[
        bool,
        typer.Option("--engine",
                     help="Also build ad-sandbox/orchestrator and ad-sandbox/engine "
                     "(compose/compose.dind.yaml runs it)."),
    ] = False,
) -> None:
    """Build ad-sandbox/base and ad-sandbox/agent (skipped when already up to date)."""
    started = time.monotonic()
    if if_missing and image_status(agent_ref(claude_version)) is not None:
        out(f"{agent_ref(claude_version)} present")
        built: list[str] = []
    else:
        built = build_images(
            offline_base=offline_base, claude_version=claude_version, force=force,
            progress=_progress,
        )
    if with_orchestrator or with_engine:
        built += build_orchestrator(force=force, progress=_progress)
        if with_engine:
            built += build_engine(force=force, progress=_progress)
    elif if_missing and not built:
        return
    took = time.monotonic() - started
    out(f"built {', '.join(built)} in {took:.0f}s" if built else "images up to date")


@image_app.command("ls")
@handles_errors
def ls() -> None:
    """List the images ad-sandbox built, with sizes and claude versions."""
    found = list_images()
    if not found:
        out("no ad-sandbox images; build them with `ad-sandbox image build`")
        return
    out(f"{'IMAGE':<34} {'ID':<12} {'SIZE':>8}  CLAUDE")
    for status in found:
        short_id = status.id.removeprefix("sha256:")[:12]
        size = f"{status.size_bytes / 1e6:.0f}MB"
        out(f"{status.ref:<34} {short_id:<12} {size:>8}  {status.claude_version or '-'}")
