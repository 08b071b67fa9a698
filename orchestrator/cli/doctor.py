"""``doctor``: check the engine, images, config, agent directories and registration."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict
from typing import Annotated

import typer

from orchestrator.cli.agents import health
from orchestrator.cli.app import app, out
from orchestrator.cli.setup import SERVER_NAME
from orchestrator.config import Config
from orchestrator.configfile import load_config
from orchestrator.dispatch import (
    Check,
    check_directories,
    check_engine,
    check_firewall,
    check_gvisor,
    check_images,
    check_isolation,
)
from orchestrator.errors import ConfigError
from orchestrator.paths import locate_config

CLAUDE_TIMEOUT = 20.0


def check_config() -> tuple[Check, Config | None]:
    """The file in use, why it was chosen, the candidates it shadows, and whether it loads."""
    try:
        where = locate_config()
        config = load_config(where.path)
    except ConfigError as exc:
        return Check("config", "fail", exc.one_line(), 2), None
    ignored = "".join(f"; ignored {path}" for path in where.ignored)
    if not where.path.exists():
        return Check("config", "warn", f"{where.path} ({where.source}) does not exist — run "
                     f"`ad-sandbox init`{ignored}"), config
    detail = (f"{where.path} ({where.source}): {len(config.agents)} agents, "
              f"{len(config.groups)} groups{ignored}")
    return Check("config", "ok", detail), config


def check_agents(config: Config) -> list[Check]:
    checks = []
    for name, agent in sorted(config.agents.items()):
        state = health(agent)
        if state == "ok":
            checks.append(Check(f"agent {name}", "ok", str(agent.path)))
        else:
            hint = f"fix it with `ad-sandbox update {name} --directory DIR`"
            checks.append(Check(f"agent {name}", "fail", f"{agent.path} {state} — {hint}", 2))
    return checks


def check_registration() -> Check:
    claude = shutil.which("claude")
    if claude is None:
        return Check("registration", "warn", "claude not on PATH; cannot check registration")
    try:
        done = subprocess.run(
            [claude, "mcp", "get", SERVER_NAME],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLAUDE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("registration", "warn", f"`claude mcp get` did not answer ({exc})")
    if done.returncode == 0:
        return Check("registration", "ok", f"MCP server {SERVER_NAME} registered in Claude Code")
    return Check("registration", "warn", f"{SERVER_NAME} not registered — run `ad-sandbox init`")


def run_checks() -> list[Check]:
    """All checks, in order: config, engine, images, agent directories, registration,
    user namespaces, gVisor, host firewall."""
    config_check, config = check_config()
    engine_check = check_engine()
    checks = [config_check, engine_check, *check_images(config, engine_check.status == "ok")]
    if config is not None:
        checks += check_agents(config) + check_directories(config)
    checks.append(check_registration())
    if engine_check.status == "ok":
        checks += [check_isolation(), check_gvisor(config)]
    checks.append(check_firewall(config))
    return checks


@app.command()
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
) -> None:
    """Check the setup. Exit 0 if nothing failed; 2 for config, 4 for Docker and images;
    with --strict, 1 when only warnings were found."""
    checks = run_checks()
    if json_output:
        rows = [{k: v for k, v in asdict(c).items() if k != "exit_code"} for c in checks]
        out(json.dumps(rows, indent=2))
    else:
        width = max(len(c.check) for c in checks)
        for c in checks:
            out(f"{c.status:<5} {c.check:<{width}}  {c.detail}")
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        # The first failure decides: config before engine before images.
        if not json_output:
            typer.echo(f"error: {failed[0].check}: {failed[0].detail}", err=True)
        raise typer.Exit(failed[0].exit_code)
    warned = [c for c in checks if c.status == "warn"]
    if strict and warned:
        if not json_output:
            typer.echo(f"error: --strict: {warned[0].check}: {warned[0].detail}", err=True)
        raise typer.Exit(1)
