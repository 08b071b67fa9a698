"""``doctor``: check the engine, images, config, agent directories and registration."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import typer

from orchestrator.cli.agents import health
from orchestrator.cli.app import app, out
from orchestrator.cli.setup import SERVER_NAME
from orchestrator.config import Config
from orchestrator.configfile import load_config
from orchestrator.errors import AdSandboxError, ConfigError
from orchestrator.paths import config_path, state_dir
from orchestrator.run.dirpin import nested_agents, pin_problem
from orchestrator.state import StateStore

Status = Literal["ok", "warn", "fail"]
CLAUDE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    exit_code: int = 0
    """What a ``fail`` of this check makes the command exit with."""


def check_config() -> tuple[Check, Config | None]:
    path = config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        return Check("config", "fail", exc.one_line(), 2), None
    if not path.exists():
        return Check("config", "warn", f"{path} does not exist — run `ad-sandbox init`"), config
    detail = f"{path}: {len(config.agents)} agents, {len(config.groups)} groups"
    return Check("config", "ok", detail), config


def check_engine() -> Check:
    try:
        from orchestrator.runtime import engine

        engine.connect()
        return Check("engine", "ok", f"Docker {engine.engine_version()}")
    except AdSandboxError as exc:
        return Check("engine", "fail", exc.one_line(), 4)


def check_images(config: Config | None, engine_ok: bool) -> list[Check]:
    refs = [config.settings.images.agent if config else Config().settings.images.agent]
    if config:
        refs += sorted({a.image for a in config.agents.values() if a.image} - set(refs))
    if not engine_ok:
        return [Check(f"image {r}", "fail", "not checked: Docker engine not reachable", 4)
                for r in refs]  # fmt: skip
    from orchestrator.runtime.images import image_status

    checks: list[Check] = []
    for ref in refs:
        try:
            status = image_status(ref)
        except AdSandboxError as exc:
            checks.append(Check(f"image {ref}", "fail", exc.one_line(), 4))
            continue
        if status is None:
            hint = "build it with `ad-sandbox image build`"
            checks.append(Check(f"image {ref}", "fail", f"missing — {hint}", 4))
            continue
        size = f"{status.size_bytes / 1024**2:.0f} MB"
        version = f"claude {status.claude_version}" if status.claude_version else None
        detail = f"{status.id[:19]}, {size}, {version or 'claude version unknown'}"
        checks.append(Check(f"image {ref}", "ok" if version else "warn", detail))
    return checks


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


def check_directories(config: Config) -> list[Check]:
    """Agent directories swapped since they were registered (fail) and agent directories
    inside other agents' directories (warn: the outer agent can tamper with the inner)."""
    checks: list[Check] = []
    if (state_dir() / "state.db").exists():  # no pins yet otherwise; doctor creates nothing
        with StateStore() as state:
            for name, agent in sorted(config.agents.items()):
                problem = pin_problem(state, name, agent)
                if problem is not None:
                    checks.append(Check(f"agent {name}", "fail", problem, 2))
    checks += [Check(f"agent {n.inner}", "warn", n.warning()) for n in nested_agents(config)]
    return checks


def check_isolation() -> Check:
    """Whether the engine maps container users away from the host's (userns-remap, rootless).

    Without it the run's uid inside is the same uid on the host: the project's owner, or an
    unprivileged id where that is root. A warning, since the sandbox never runs as root.
    """
    from orchestrator.runtime import engine

    try:
        options = engine.security_options()
    except AdSandboxError as exc:
        return Check("user namespaces", "warn", f"not checked: {exc.one_line()}")
    names = {o.split(",")[0].removeprefix("name=") for o in options}
    if "rootless" in names:
        return Check("user namespaces", "ok", "rootless engine: container ids are not host ids")
    if "userns" in names:
        return Check("user namespaces", "ok", "userns-remap on: container ids are not host ids")
    return Check("user namespaces", "warn",
                 "off: a run's uid is the same uid on the host — turn on userns-remap "
                 "(dockerd --userns-remap=default) or use rootless Docker")


def check_firewall(config: Config | None) -> Check:
    """Whether the host rules that keep runs gateway-only are in place (runs install them)."""
    from orchestrator.runtime import firewall

    if config is not None and config.settings.host_firewall == "off":
        return Check("host firewall", "warn", "off (settings.host_firewall): every host "
                     "service on the agents network's addresses answers the agents")
    status = firewall.firewall_status()
    if status.in_place:
        return Check("host firewall", "ok", status.detail)
    if not status.installable:
        return Check("host firewall", "fail", f"{status.detail}: runs refuse to start — "
                     f"{firewall.OPT_OUT_HINT}", 4)
    return Check("host firewall", "warn", f"not in place ({status.detail}); the next run "
                 "installs it")


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
    user namespaces, host firewall."""
    config_check, config = check_config()
    engine_check = check_engine()
    checks = [config_check, engine_check, *check_images(config, engine_check.status == "ok")]
    if config is not None:
        checks += check_agents(config) + check_directories(config)
    checks.append(check_registration())
    if engine_check.status == "ok":
        checks.append(check_isolation())
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
