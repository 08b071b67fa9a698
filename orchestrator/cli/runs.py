"""`run` (alias `test`): one task on one agent, in its sandbox, from the command line."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import anyio
import typer

from orchestrator import outcomes
from orchestrator.cli.app import app, handles_errors, out
from orchestrator.dispatch import open_command_service
from orchestrator.models import RunRequest
from orchestrator.results import DispatchResult, ProgressUpdate
from orchestrator.textinput import read_task

DEFAULT_TEST_TASK = "Describe this project in two sentences."


def exit_code_for(result: DispatchResult) -> int:
    """SPEC §8: 0 ok, 1 task failed, 2 usage or config, 3 limit hit, 4 sandbox or Docker."""
    return outcomes.exit_code(result.success, result.error_type, result.exit_reason)


def dispatch_once(request: RunRequest, *, show_progress: bool) -> DispatchResult:
    async def show(update: ProgressUpdate) -> None:
        sys.stderr.write(f"… {update.message()}\n")

    async def main() -> DispatchResult:
        async with open_command_service() as service:
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
    agent: Annotated[str, typer.Argument(help="The agent's name.")],
    task: Annotated[str, typer.Argument(
        help="What to do; `-` reads it from stdin. Put `--` before a task starting with `-`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds before the run is killed.")] = None,
    context: Annotated[str, typer.Option(help="Background the agent should know.")] = "",
    goal: Annotated[str, typer.Option(help="The larger goal this task serves.")] = "",
    session: Annotated[str | None, typer.Option(help="Resume this session id.")] = None,
    response_format: Annotated[str, typer.Option(help="text or json.")] = "text",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Run TASK on AGENT in a fresh sandbox and print the answer."""
    if response_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--response-format")
    request = RunRequest(
        agent=agent, task=read_task(task), context=context, goal=goal, timeout=timeout,
        session_id=session, caller="cli", response_format=response_format,  # type: ignore[arg-type]
    )
    result = dispatch_once(request, show_progress=not quiet and not as_json)
    print_result(result, as_json=as_json)
    raise typer.Exit(exit_code_for(result))


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
