"""`run` (alias `test`): one task on one agent, in its sandbox, from the command line;
`run --file` a task list (:mod:`orchestrator.cli.pipelines`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from orchestrator import outcomes
from orchestrator.cli.app import app, handles_errors, out
from orchestrator.cli.pipelines import EventFormat, run_tasks
from orchestrator.dispatch import PipelineTask, TaskFile, load_tasks, open_command_service
from orchestrator.errors import UsageError
from orchestrator.models import RunRequest
from orchestrator.results import DispatchResult, ProgressUpdate
from orchestrator.server.agentmcp import agent_mcp_routes
from orchestrator.textinput import read_task

DEFAULT_TEST_TASK = "Describe this project in two sentences."


def exit_code_for(result: DispatchResult) -> int:
    """SPEC §8: 0 ok, 1 task failed, 2 usage or config, 3 limit hit, 4 sandbox or Docker."""
    return outcomes.exit_code(result.success, result.error_type, result.exit_reason)


def dispatch_once(request: RunRequest, *, show_progress: bool) -> DispatchResult:
    async def show(update: ProgressUpdate) -> None:
        sys.stderr.write(f"… {update.message()}\n")

    async def main() -> DispatchResult:
        async with open_command_service(agent_mcp=agent_mcp_routes) as service:
            return await service.run(request, progress=show if show_progress else None)

    return anyio.run(main)


def print_result(result: DispatchResult, *, as_json: bool) -> None:
    if as_json:
        out(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    if result.success:
        out(result.result)
        return
    typer.echo(f"error: {result.error or 'the run failed'}", err=True)
    if result.hint:
        typer.echo(f"hint: {result.hint}", err=True)
    typer.echo(f"run: {result.run_id} ({result.exit_reason})", err=True)
    if result.result:
        out(result.result)


@app.command("run")
@handles_errors
def run(
    agent: Annotated[str | None, typer.Argument(
        help="The agent's name (not with --file).", show_default=False)] = None,
    task: Annotated[str | None, typer.Argument(
        help="What to do; `-` reads it from stdin. Put `--` before a task starting with `-`.",
        show_default=False)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", dir_okay=False, metavar="TASKS.yaml",
        help="Run a YAML list of {agent, task, timeout?, expect?} in parallel "
        "(up to settings.max_concurrency); the worst task's exit code.")] = None,
    events: Annotated[EventFormat | None, typer.Option(
        help="jsonl: one JSON event per line on stdout as runs start, call tools, spend "
        "and finish.")] = None,
    junit: Annotated[Path | None, typer.Option(
        dir_okay=False, metavar="FILE", help="Write a JUnit XML report, one test case a task.")
    ] = None,
    budget: Annotated[float | None, typer.Option(
        min=0, metavar="USD", help="Money for the whole invocation: no task starts once it "
        "is spent, each is capped at what is left.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds before the run is killed.")] = None,
    context: Annotated[str, typer.Option(help="Background the agent should know.")] = "",
    goal: Annotated[str, typer.Option(help="The larger goal this task serves.")] = "",
    session: Annotated[str | None, typer.Option(help="Resume this session id.")] = None,
    response_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Run TASK on AGENT in a fresh sandbox and print the answer (or every task of --file)."""
    if response_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--response-format")
    if file is not None or events is not None or junit is not None or budget is not None:
        if events is not None and as_json:
            raise UsageError("--events and --json both write stdout; choose one")
        if file is not None and (agent is not None or task is not None):
            raise UsageError("give either --file or AGENT TASK, not both")
        if file is None and (context or goal or session or response_format != "text"):
            raise UsageError("--events, --junit and --budget take no --context, --goal, "
                             "--session or --response-format", hint="Use --file for tasks.")
        taskfile = load_tasks(file) if file is not None else _one_task(agent, task)
        if timeout is not None:
            taskfile = taskfile.with_default_timeout(timeout)
        raise typer.Exit(run_tasks(taskfile, events=events, junit=junit, budget=budget,
                                   as_json=as_json))
    if agent is None or task is None:
        raise UsageError("give AGENT and TASK, or --file TASKS.yaml",
                         hint="See `ad-sandbox run --help`.")
    request = RunRequest(
        agent=agent, task=read_task(task), context=context, goal=goal, timeout=timeout,
        session_id=session, caller="cli", response_format=response_format,  # type: ignore[arg-type]
    )
    result = dispatch_once(request, show_progress=not quiet and not as_json)
    print_result(result, as_json=as_json)
    raise typer.Exit(exit_code_for(result))


def _one_task(agent: str | None, task: str | None) -> TaskFile:
    if agent is None or task is None:
        raise UsageError("give AGENT and TASK, or --file TASKS.yaml",
                         hint="See `ad-sandbox run --help`.")
    return TaskFile(path=Path("command line"), lines=[],
                    tasks=[PipelineTask(agent=agent, task=read_task(task))])


@app.command("test")
@handles_errors
def test(
    agent: Annotated[str, typer.Argument(help="The agent's name.")],
    task: Annotated[str, typer.Argument(help="What to do.")] = DEFAULT_TEST_TASK,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[float | None, typer.Option()] = None,
) -> None:
    """Alias of `run` with a default task: checks an agent answers from its sandbox."""
    request = RunRequest(agent=agent, task=task, timeout=timeout, caller="cli")
    result = dispatch_once(request, show_progress=not as_json)
    print_result(result, as_json=as_json)
    raise typer.Exit(exit_code_for(result))
