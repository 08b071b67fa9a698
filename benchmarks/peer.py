"""The peer in the same run: agent-dispatch (PyPI), the server a user would pick instead.

It lives in its own virtualenv (``benchmarks/.peer/venv``, created on first use), runs the
same pinned `claude` on the host against the same stub, and is driven over MCP stdio like
`ad-sandbox serve`. agent-dispatch finds `claude` as the first one on PATH and hands its
child the server's own environment, so each variant gets a PATH whose first entry holds:

- ``shipped``: a link to the pinned binary. The child inherits the server's stdin (the MCP
  pipe), and `claude -p` waits about 3 s for input that never comes.
- ``fixed``: a wrapper script that runs the pinned binary with stdin from /dev/null, the
  one-line fix of that stall; the fair peer to compare with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from benchmarks.harness import DEADLINE_S, BenchError, Workspace, host_env

PEER = "agent-dispatch"
PEER_VERSION = "0.16.0"
PEER_HOME = Path(__file__).resolve().parent / ".peer"
VENV = PEER_HOME / "venv"
SERVER = VENV / "bin" / PEER
PYTHON = VENV / "bin" / "python"
VARIANTS = ("shipped", "fixed")


def ensure_peer(say: Any) -> str:
    """The peer's virtualenv with agent-dispatch at the pinned version; returns its version."""
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(PEER_HOME.parent.parent)} for {PEER}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                       timeout=DEADLINE_S)
    if installed_version(PEER) != PEER_VERSION:
        say(f"installing {PEER}=={PEER_VERSION} into the peer's virtualenv")
        done = subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet",
                               f"{PEER}=={PEER_VERSION}"], capture_output=True, text=True,
                              timeout=DEADLINE_S * 5)
        if done.returncode != 0 or installed_version(PEER) != PEER_VERSION:
            raise BenchError(f"could not install {PEER}=={PEER_VERSION} into {VENV}: "
                             f"{done.stderr[-800:]}")
    return PEER_VERSION


def installed_version(package: str) -> str | None:
    """A package's version inside the peer's virtualenv (None when absent)."""
    if not PYTHON.exists():
        return None
    done = subprocess.run([str(PYTHON), "-c", "import importlib.metadata as m, sys; "
                           "print(m.version(sys.argv[1]))", package],
                          capture_output=True, text=True, timeout=DEADLINE_S)
    return done.stdout.strip() or None if done.returncode == 0 else None


def claude_on_path(ws: Workspace, claude: Path, variant: str) -> Path:
    """A directory whose `claude` is the pinned binary (shipped) or its stdin-less wrapper."""
    folder = ws.root / f"peer-bin-{variant}"
    folder.mkdir(exist_ok=True)
    target = folder / "claude"
    if target.exists() or target.is_symlink():
        return folder
    if variant == "shipped":
        target.symlink_to(claude)
    else:
        target.write_text(f'#!/bin/sh\nexec "{claude}" "$@" </dev/null\n')
        target.chmod(0o755)
    return folder


def peer_env(ws: Workspace, claude: Path, stub_url: str, variant: str, *, cache: bool,
             max_concurrency: int = 4) -> dict[str, str]:
    """The peer server's environment: its own config, the pinned claude first on PATH, and
    the same claude settings as the bare baseline (which its children inherit)."""
    folder = ws.root / f"peer-{variant}{'-cache' if cache else ''}"
    folder.mkdir(exist_ok=True)
    config = {
        "settings": {"max_concurrency": max_concurrency, "default_timeout": int(DEADLINE_S),
                     "cache": {"enabled": cache, "ttl": 3600}},
        "agents": {ws.agent(f"peer-{variant}"): {"directory": str(ws.project),
                                                  "description": "benchmark agent (peer)"}},
    }
    (folder / "agents.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    env = host_env(claude, stub_url, ws)
    env["PATH"] = f"{claude_on_path(ws, claude, variant)}{os.pathsep}{env['PATH']}"
    env.update(AGENT_DISPATCH_CONFIG=str(folder / "agents.yaml"),
               AGENT_DISPATCH_JOBS_DIR=str(folder / "jobs"),
               AGENT_DISPATCH_USAGE_LOG=str(folder / "usage.jsonl"))
    return env


@asynccontextmanager
async def peer_serve(env: dict[str, str], log: Path) -> AsyncIterator[Client]:
    """A real MCP client on `agent-dispatch serve` over stdio; its stderr goes to ``log``."""
    params = StdioServerParameters(command=str(SERVER), args=["serve"], env=env)
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            yield client


def peer_body(result: Any) -> Any:
    """The peer's tools return a JSON string; its parsed value (a tool error raises)."""
    text = result.content[0].text if result.content else ""
    if result.is_error:
        raise BenchError(f"{PEER} tool error: {text[:500]}")
    try:
        return json.loads(text)
    except ValueError:
        raise BenchError(f"{PEER} answered with no JSON: {text[:300]!r}") from None
