"""`run --file tasks.yaml`: a task list in parallel, as JSONL events, a JUnit report or text.

The logic is :mod:`orchestrator.dispatch.pipeline`'s; this only chooses where things go.
Nothing reads stdin or asks anything: it runs the same with no terminal at all (CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import anyio
import typer

from orchestrator.cli.app import out
from orchestrator.dispatch import (
    Event,
    PipelineResult,
    TaskFile,
    describe_event,
    open_command_service,
    run_pipeline,
    write_junit,
)
from orchestrator.server.agentmcp import agent_mcp_routes

EventFormat = Literal["jsonl"]


def run_tasks(taskfile: TaskFile, *, events: EventFormat | None, junit: Path | None,
              budget: float | None, as_json: bool) -> int:
    """Run the file's tasks; print as asked; write the report; the exit code (SPEC §8)."""
    show_progress = sys.stderr.isatty()

    def on_event(event: Event) -> None:
        if events == "jsonl":
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
            sys.stdout.flush()  # a reader (jq, a CI step) sees each event as it happens
        if show_progress and (line := describe_event(event)) is not None:
            sys.stderr.write(f"… {line}\n")

    async def main() -> PipelineResult:
        async with open_command_service(agent_mcp=agent_mcp_routes) as service:
            return await run_pipeline(service, taskfile, budget_usd=budget, on_event=on_event)

    result = anyio.run(main)
    if junit is not None:
        write_junit(result, junit)
    if as_json:
        out(json.dumps(result.model_dump(mode="json"), indent=2))
    elif events is None:
        print_text(result)
    return result.exit_code


def print_text(result: PipelineResult) -> None:
    """Each task's verdict and answer on stdout; errors and hints on stderr."""
    for task in result.tasks:
        verdict = "ok" if task.success else f"FAILED ({task.exit_reason or 'not run'})"
        out(f"--- {task.name}: {verdict}, ${task.cost_usd:.4f}, {task.duration_ms / 1000:.1f}s")
        if not task.success:
            typer.echo(f"error: [{task.index}] {task.error or 'the run failed'}", err=True)
            if task.hint:
                typer.echo(f"hint: [{task.index}] {task.hint}", err=True)
        if task.answer:
            out(task.answer)
    failed = sum(not t.success for t in result.tasks)
    budget = f" of ${result.budget_usd:.2f}" if result.budget_usd is not None else ""
    out(f"=== {len(result.tasks)} task(s), {failed} failed, ${result.cost_usd:.4f}{budget}")
