"""The ``ad-sandbox`` command line: one small module per group of commands."""

from __future__ import annotations

from orchestrator.cli import agents, doctor, images, serve, stub  # noqa: F401  (registers commands)
from orchestrator.cli.app import app


def main() -> None:
    app()
