"""The ``ad-sandbox`` command line: one small module per group of commands."""

from __future__ import annotations

from orchestrator.cli import (  # noqa: F401  (each module registers its commands)
    agents,
    demo,
    doctor,
    egress,
    groups,
    images,
    jobs,
    runs,
    serve,
    setup,
    stack,
    stub,
)
from orchestrator.cli.app import app


def main() -> None:
    app()
