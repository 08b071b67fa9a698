"""The Typer application every command module registers on, and the error boundary."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from orchestrator.errors import AdSandboxError
from orchestrator.paths import CONFIG_ENV, locate_config
from orchestrator.textinput import check_arguments

log = logging.getLogger(__name__)

app = typer.Typer(
    name="ad-sandbox",
    no_args_is_help=True,
    add_completion=False,
    help="Callable Claude Code agents, one Docker container per run.",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="PATH", dir_okay=False,
        help=f"The agents file to use (sets {CONFIG_ENV}). Default: ./ad-sandbox.yaml, "
        "else ad-sandbox.yaml at the git root, else ~/.config/ad-sandbox/agents.yaml.")] = None,
) -> None:
    """Callable Claude Code agents, one Docker container per run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config is not None:
        # Through the environment, so children (serve, demo's server) read the same file.
        os.environ[CONFIG_ENV] = str(config.expanduser().absolute())
    if verbose:
        with contextlib.suppress(AdSandboxError):  # the command reports it
            log.info("config: %s", locate_config().describe())


image_app = typer.Typer(no_args_is_help=True, help="Build and inspect the agent images.")
app.add_typer(image_app, name="image")

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr; return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`AdSandboxError` into a one-line stderr message and its exit code.

    Text arguments that are not UTF-8 are refused here, before the command acts.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            check_arguments(kwargs)
            return func(*args, **kwargs)
        except AdSandboxError as exc:
            raise fail(exc.one_line(), exc.exit_code) from None

    return wrapper


def out(text: str) -> None:
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
