"""``init``: create the config file and register the MCP server with Claude Code."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import app, handles_errors, out
from orchestrator.config import Settings
from orchestrator.configfile import save_config, validate_config
from orchestrator.paths import CONFIG_ENV, config_path

SERVER_NAME = "ad-sandbox"
CLAUDE_TIMEOUT = 30.0


def executable() -> str:
    """Absolute path of the ``ad-sandbox`` program Claude Code should start."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "ad-sandbox" and argv0.exists():
        return str(argv0.absolute())
    beside = Path(sys.executable).parent / "ad-sandbox"
    if beside.exists():
        return str(beside.absolute())
    return shutil.which("ad-sandbox") or "ad-sandbox"


def registration_argv(claude: str = "claude") -> list[str]:
    """``claude mcp add-json`` arguments registering ``ad-sandbox serve`` for this user."""
    server: dict[str, object] = {"type": "stdio", "command": executable(), "args": ["serve"]}
    if os.environ.get(CONFIG_ENV):
        # Claude Code starts the server with its own environment; carry the override along
        # so the server reads the file this command wrote.
        server["env"] = {CONFIG_ENV: str(config_path().absolute())}
    spec = json.dumps(server, separators=(",", ":"))
    return [claude, "mcp", "add-json", SERVER_NAME, spec, "--scope", "user"]


@app.command()
@handles_errors
def init(
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the config (the old one is kept as .bak).")
    ] = False,
) -> None:
    """Create the config file and register ad-sandbox as an MCP server in Claude Code."""
    path = config_path()
    if path.exists() and not force:
        out(f"config already exists at {path} (use --force to start over)")
    else:
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            shutil.copy2(path, backup)
            out(f"kept the old config as {backup}")
        # Every setting written out, so the file shows what can be tuned.
        save_config(validate_config({"settings": Settings().model_dump(mode="json")}), path)
        out(f"created {path}")
    _register()


def _register() -> None:
    claude = shutil.which("claude")
    argv = registration_argv(claude or "claude")
    manual = shlex.join(["claude", *argv[1:]])
    if claude is None:
        out("claude is not on PATH; register the server yourself with:")
        out(f"  {manual}")
        return
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLAUDE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        typer.echo(f"warning: could not run claude ({exc}); register with:\n  {manual}", err=True)
        return
    said = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        out(f"registered MCP server {SERVER_NAME} with Claude Code (user scope)")
    elif "already exists" in said:
        out(f"MCP server {SERVER_NAME} is already registered with Claude Code")
    else:
        last = said.splitlines()[-1] if said else f"exit {done.returncode}"
        typer.echo(f"warning: claude mcp add-json failed ({last}); register with:", err=True)
        typer.echo(f"  {manual}", err=True)
